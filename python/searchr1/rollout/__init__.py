"""Multi-turn rollouts with search: the prompt, the engines and the loop.

- :func:`build_prompt`, :func:`tokenize_prompts`: Search-R1's prompt for a question.
- :class:`Engine`: token ids in; token ids, log-probs and a finish reason out, cut
  exactly at ``</search>``, ``</answer>`` or EOS. :class:`HFEngine` runs transformers,
  :class:`VLLMEngine` runs vLLM (imported only when one is made), and
  :class:`ScriptedEngine` emits scripted text for tests.
- :func:`run_rollouts`: the multi-turn loop with batched search, returning the packed
  batch and per-trajectory stats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from searchr1.rollout.engine import Engine, FinishReason, Generation, SamplingConfig
from searchr1.rollout.hf import HFEngine
from searchr1.rollout.loop import (
    RolloutConfig,
    RolloutResult,
    SearchBackend,
    TrajectoryStats,
    run_rollouts,
    tokenize_prompts,
)
from searchr1.rollout.prompt import (
    INVALID_ACTION,
    PROMPT_TEMPLATE,
    build_prompt,
    format_documents,
    information,
    normalize_question,
)
from searchr1.rollout.scripted import ScriptedEngine

if TYPE_CHECKING:
    from searchr1.rollout.vllm import VLLMEngine

__all__ = [
    "INVALID_ACTION",
    "PROMPT_TEMPLATE",
    "Engine",
    "FinishReason",
    "Generation",
    "HFEngine",
    "RolloutConfig",
    "RolloutResult",
    "SamplingConfig",
    "ScriptedEngine",
    "SearchBackend",
    "TrajectoryStats",
    "VLLMEngine",
    "build_prompt",
    "format_documents",
    "information",
    "normalize_question",
    "run_rollouts",
    "tokenize_prompts",
]


def __getattr__(name: str) -> Any:
    # VLLMEngine lives in its own module so that importing this package never needs vLLM.
    if name == "VLLMEngine":
        from searchr1.rollout.vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
