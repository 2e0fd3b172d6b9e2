"""The toy kit: everything `searchr1 demo` needs to show RL teaching a model to search
on a CPU, with no model hub.

- :mod:`~searchr1.toy.world`: a world of invented entities whose answers only search
  can find (corpus and QA files in Search-R1's formats);
- :mod:`~searchr1.toy.models`: tiny Qwen2 models and BPE tokenizers made from nothing;
- :mod:`~searchr1.toy.copying`: copy pre-training;
- :mod:`~searchr1.toy.warmstart`: the warm-start curriculum and :func:`warm_start`;
- :mod:`~searchr1.toy.demo`: world -> index -> model -> warm start -> GRPO -> table.

The library (``data``, ``rl``, ``rollout``, ``retrieval``) never imports this package.
"""

from __future__ import annotations

from searchr1.toy.copying import CopyConfig, copy_pretrain
from searchr1.toy.demo import DemoConfig, run_demo
from searchr1.toy.models import TinyModelConfig, init_model
from searchr1.toy.warmstart import WarmStartConfig, warm_start
from searchr1.toy.world import World, WorldConfig, build_world, read_world, write_world

__all__ = [
    "CopyConfig",
    "DemoConfig",
    "TinyModelConfig",
    "WarmStartConfig",
    "World",
    "WorldConfig",
    "build_world",
    "copy_pretrain",
    "init_model",
    "read_world",
    "run_demo",
    "warm_start",
    "write_world",
]
