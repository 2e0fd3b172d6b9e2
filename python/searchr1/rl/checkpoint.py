"""Checkpoints that a crash cannot corrupt.

A checkpoint is a directory ``step_NNNNNN`` under ``<output_dir>/checkpoints``: the actor
as a model directory (``actor/``, loadable by any tool), the critic when there is one,
and ``state.pt`` (optimizers, schedulers, RNG states, data position, step). It is
written under a temporary name, flushed, then renamed into place, and ``latest`` is
replaced atomically after it: a crash while saving leaves the previous checkpoint whole
and ``latest`` pointing at it.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["latest_checkpoint", "load_rng_state", "rng_state", "save_checkpoint"]


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run draws from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path,
    step: int,
    actor: Any,
    tokenizer: Any,
    state: dict[str, Any],
    critic: Any = None,
    keep: int = 2,
    actor_weights: dict[str, torch.Tensor] | None = None,
    critic_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Writes checkpoint ``step`` under ``root`` and keeps the newest ``keep``.

    ``actor_weights`` / ``critic_weights``: the full weights to write in place of the
    models' own (whose parameters are shards under FSDP).
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    actor.save_pretrained(tmp / "actor", state_dict=actor_weights)
    tokenizer.save_pretrained(tmp / "actor")
    if critic is not None:
        critic.save_pretrained(tmp / "critic", state_dict=critic_weights)
    torch.save(state, tmp / "state.pt")
    _fsync_tree(tmp)
    if final.exists():  # a re-run of the same step after a resume
        shutil.rmtree(final)
    os.rename(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    with latest_tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(latest_tmp, root / "latest")
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names under ``root``, or None when there is none."""
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a whole checkpoint")
    return path
