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
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from searchr1.rl import fsdp
from searchr1.rl.modeling import ValueModel

if TYPE_CHECKING:
    from searchr1.rl.trainer import Trainer

__all__ = [
    "latest_checkpoint",
    "load_rng_state",
    "load_trainer",
    "rng_state",
    "save_checkpoint",
    "save_trainer",
    "trainer_state",
]


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


# --- a trainer's checkpoint --------------------------------------------------------------


def _optimizer_state(t: Trainer, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return fsdp.full_optimizer_state(model, optimizer) if t.fsdp else optimizer.state_dict()


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Everything of ``t`` but the weights that a resume needs (a collective under
    FSDP)."""
    state = {
        "step": t.step_no,
        "stream": asdict(t.stream),
        "actor_opt": _optimizer_state(t, t.actor, t.actor_opt),
        "actor_sched": t.actor_sched.state_dict(),
        "rng": rng_state(),
    }
    if t.critic_opt is not None and t.critic_sched is not None:
        state["critic_opt"] = _optimizer_state(t, t.critic, t.critic_opt)
        state["critic_sched"] = t.critic_sched.state_dict()
    return state


def save_trainer(t: Trainer) -> Path:
    """Writes a checkpoint (rank 0, from full weights; every rank takes part)."""
    root = t.out / "checkpoints"
    path = root / f"step_{t.step_no:06d}"
    state = trainer_state(t)
    # Under FSDP the HF engine's copy holds the full actor (synced after each update);
    # with vLLM the rollout model is the sharded actor, whose full weights are gathered.
    actor_weights = critic_weights = None
    if t.fsdp and t.rollout_model is t.actor:
        actor_weights = fsdp.full_state_dict(t.actor, everywhere=False)
    if t.fsdp and t.critic is not None:
        critic_weights = fsdp.full_state_dict(t.critic, everywhere=False)
    if t.dist.is_main:
        path = save_checkpoint(
            root,
            t.step_no,
            t.rollout_model,
            t.tokenizer,
            state,
            critic=t.critic,
            keep=t.config.run.keep_checkpoints,
            actor_weights=actor_weights,
            critic_weights=critic_weights,
        )
    t.dist.barrier()
    return path


def load_trainer(t: Trainer, path: Path) -> None:
    """Restores a checkpoint written by :meth:`save`."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for shard in sorted((path / "actor").glob("*.safetensors")):
        weights.update(load_file(str(shard), device=str(t.device)))
    expected = set(t.rollout_model.state_dict())
    tied = getattr(t.rollout_model.config, "tie_word_embeddings", False)
    embed = weights.get("model.embed_tokens.weight")
    if tied and "lm_head.weight" in expected - set(weights) and embed is not None:
        weights["lm_head.weight"] = embed  # a tied head is saved once, as the embedding
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit the model ({missing or unexpected})")
    _load_weights(t, t.actor, weights)
    state = torch.load(path / "state.pt", weights_only=False, map_location=t.device)
    if t.critic is not None:
        loaded = ValueModel.from_pretrained(path / "critic").to(t.device)
        _load_weights(t, t.critic, loaded.state_dict())
    _load_optimizer(t, t.actor, t.actor_opt, state["actor_opt"])
    t.actor_sched.load_state_dict(state["actor_sched"])
    if t.critic_opt is not None and t.critic_sched is not None:
        _load_optimizer(t, t.critic, t.critic_opt, state["critic_opt"])
        t.critic_sched.load_state_dict(state["critic_sched"])
    t.stream = type(t.stream)(**state["stream"])
    t.step_no = int(state["step"])
    load_rng_state(state["rng"])
    t._sync_engine()


def _load_weights(t: Trainer, model: Any, weights: dict[str, torch.Tensor]) -> None:
    if t.fsdp:
        fsdp.load_full_state_dict(model, weights)
    else:
        model.load_state_dict(weights)


def _load_optimizer(
    t: Trainer, model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    if t.fsdp:
        fsdp.load_full_optimizer_state(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)
