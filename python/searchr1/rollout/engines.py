"""The engines a trainer can roll out with, by name (``model.engine``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from searchr1.rollout.engine import Engine

__all__ = ["ENGINES", "EngineKind", "EngineOptions", "engine_kind"]


@dataclass(frozen=True)
class EngineOptions:
    """What a trainer hands an engine it makes.

    ``model_path``: the model directory. ``module``: a torch module with full weights
    that the engine may generate from in place (in-process engines). ``sleep_mode``:
    free the accelerator's memory between rollouts (:meth:`Engine.sleep`).
    """

    model_path: str
    module: Any
    tokenizer: Any
    max_model_len: int
    gpu_memory_utilization: float
    sleep_mode: bool


@dataclass(frozen=True)
class EngineKind:
    """How to make an engine. ``from_module``: it generates from ``options.module``
    (so a trainer that shards its actor must hand it a full copy), else from the model
    directory with weights of its own."""

    build: Callable[[EngineOptions], Engine]
    from_module: bool


def _hf(options: EngineOptions) -> Engine:
    from searchr1.rollout.hf import HFEngine

    return HFEngine(options.module, options.tokenizer)


def _vllm(options: EngineOptions) -> Engine:
    from searchr1.rollout.vllm import VLLMEngine

    return VLLMEngine(
        options.model_path,
        max_model_len=options.max_model_len,
        gpu_memory_utilization=options.gpu_memory_utilization,
        enable_sleep_mode=options.sleep_mode,
    )


#: Engine kinds by name: ``hf`` (transformers, in process) and ``vllm``.
ENGINES: dict[str, EngineKind] = {
    "hf": EngineKind(_hf, from_module=True),
    "vllm": EngineKind(_vllm, from_module=False),
}


def engine_kind(name: str) -> EngineKind:
    """The :class:`EngineKind` called ``name``; ``ValueError`` naming the known ones."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None
