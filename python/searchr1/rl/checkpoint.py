"""Checkpoints that a crash cannot corrupt, read without running code from them.

A checkpoint is a directory ``step_NNNNNN`` under ``<output_dir>/checkpoints``:

- ``actor/``: the actor as a model directory with its tokenizer (loadable by any tool);
- ``critic/``: the critic, when there is one;
- ``state.pt``: optimizers, schedulers, RNG states, data position and step, as tensors and
  plain values only, so that it loads with ``torch.load(weights_only=True)``;
- ``complete.json``: written last, ``{"format", "step", "files": {path: bytes}}``. A
  directory is whole when every file it lists is there with that size.

``latest`` names the live checkpoint. A save writes ``.tmp-step_N``, fsyncs its files,
then the marker, then renames it into place and replaces ``latest`` (each rename made
durable by an fsync of the parent). A step already saved (a resume of a finished run) is
first renamed aside to ``.old-step_N``, and old checkpoints are renamed aside before they
are deleted: nothing whole is deleted under its live name. A crash at any point leaves
``latest`` naming a whole checkpoint, or :func:`latest_checkpoint` falls back to the
newest whole one (an ``.old-step_N`` included), and the next save tidies up.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from searchr1.rl import fsdp
from searchr1.rl.lora import is_lora, load_adapters
from searchr1.rl.modeling import ValueModel

if TYPE_CHECKING:
    from searchr1.rl.trainer import Trainer

__all__ = [
    "FORMAT",
    "MARKER",
    "latest_checkpoint",
    "load_rng_state",
    "load_state",
    "load_trainer",
    "rng_state",
    "save_checkpoint",
    "save_trainer",
    "trainer_state",
    "why_incomplete",
]

#: The layout version in ``complete.json``; 1 was a pickled ``state.pt`` without a marker.
FORMAT = 2
#: The file a save writes last into a checkpoint: its presence (and the sizes it lists)
#: says the checkpoint is whole.
MARKER = "complete.json"
_STEP = re.compile(r"(?:\.old-)?step_(\d+)")


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run draws from, as tensors and plain values.

    Python's state is a tuple of ints already; numpy's legacy tuple holds an ``uint32``
    array, stored as an ``int64`` tensor; torch's are ``uint8`` tensors.
    """
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned (its tensors on any device: a checkpoint
    is loaded onto the trainer's)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    key = n["key"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["name"], key, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- files on disk ------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Makes every file under ``root`` durable, then every directory (deepest first), so
    that the entries naming the files are durable too."""
    paths = sorted(root.rglob("*"))
    for path in paths:
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for path in reversed(paths):
        if path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def _write_marker(path: Path, step: int) -> None:
    """Lists every file of ``path`` with its size in :data:`MARKER` (after they are
    durable: the marker must not reach the disk before what it vouches for)."""
    files = {
        p.relative_to(path).as_posix(): p.stat().st_size
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
    marker = path / MARKER
    marker.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))
    with marker.open("rb") as f:
        os.fsync(f.fileno())
    _fsync_dir(path)


def why_incomplete(path: Path) -> str | None:
    """Why ``path`` is not a whole checkpoint, or None when it is."""
    if not path.is_dir():
        return "which does not exist"
    try:
        meta = json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        if (path / "state.pt").exists() and (path / "actor").is_dir():
            return (
                f"which has no {MARKER}: written by an older searchr1 (its state.pt can "
                "only be loaded unsafely), or by a save cut short"
            )
        return f"which has no {MARKER} (a save or a deletion cut short)"
    except (OSError, ValueError) as e:
        return f"whose {MARKER} is unreadable ({e})"
    files = meta.get("files") if isinstance(meta, dict) else None
    if (
        not isinstance(files, dict)
        or meta.get("format") != FORMAT
        or not all(isinstance(k, str) and isinstance(v, int) for k, v in files.items())
    ):
        return f"whose {MARKER} is not a format-{FORMAT} marker"
    match = _STEP.fullmatch(path.name)
    if match is None or meta.get("step") != int(match[1]):
        return f"whose {MARKER} is for step {meta.get('step')}, not {path.name}"
    if "state.pt" not in files:
        return f"whose {MARKER} does not list state.pt"
    # The actor: a model directory, or (LoRA) the adapters, which name their base model.
    if "actor/config.json" not in files and "actor/adapter_config.json" not in files:
        return f"whose {MARKER} lists no actor/config.json (nor adapter_config.json)"
    for name, size in files.items():
        try:
            found = (path / name).stat().st_size
        except OSError:
            return f"which lacks {name}"
        if found != size:
            return f"whose {name} has {found} bytes, not {size}"
    return None


def _step_of(path: Path) -> int:
    match = _STEP.fullmatch(path.name)
    assert match is not None
    return int(match[1])


def _tidy(root: Path) -> None:
    """Clears what a save cut short left behind (rank 0 only, before a save)."""
    for aside in root.glob(".old-step_*"):
        live = root / aside.name.removeprefix(".old-")
        if not live.exists() and why_incomplete(aside) is None:
            # A re-save cut between its two renames: this was the live copy.
            os.rename(aside, live)
        else:
            shutil.rmtree(aside)
    for tmp in root.glob(".tmp-step_*"):
        shutil.rmtree(tmp)
    (root / ".latest.tmp").unlink(missing_ok=True)
    _fsync_dir(root)


def _discard(root: Path, path: Path) -> None:
    """Deletes checkpoint ``path`` under another name: a deletion cut short then leaves
    no half checkpoint under a live name."""
    aside = root / f".old-{path.name}"
    os.rename(path, aside)
    _fsync_dir(root)
    shutil.rmtree(aside)


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
    """Writes checkpoint ``step`` under ``root``, points ``latest`` at it, and keeps the
    newest ``keep``.

    ``state``: tensors and plain values only (what :func:`load_state` reads back).
    ``actor_weights`` / ``critic_weights``: the full weights to write in place of the
    models' own (whose parameters are shards under FSDP).
    """
    root.mkdir(parents=True, exist_ok=True)
    _tidy(root)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-{final.name}"
    tmp.mkdir()
    actor.save_pretrained(tmp / "actor", state_dict=actor_weights)
    tokenizer.save_pretrained(tmp / "actor")
    if critic is not None:
        critic.save_pretrained(tmp / "critic", state_dict=critic_weights)
    torch.save(state, tmp / "state.pt")
    _fsync_tree(tmp)
    _write_marker(tmp, step)
    if final.exists():
        # A re-save of a saved step (a resume of a finished run): the live copy moves
        # aside, whole, until its replacement is in place.
        os.rename(final, root / f".old-{final.name}")
        _fsync_dir(root)
    os.rename(tmp, final)
    _fsync_dir(root)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    with latest_tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    if (root / f".old-{final.name}").exists():
        shutil.rmtree(root / f".old-{final.name}")
    saved = sorted((p for p in root.glob("step_*") if _STEP.fullmatch(p.name)), key=_step_of)
    for old in saved[:-keep]:
        if old != final:
            _discard(root, old)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names under ``root`` when it is whole; else, with a
    warning, the newest whole one (a save cut short); None when there is none.

    It only reads: every rank may call it at once.
    """
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        if _STEP.fullmatch(name) and not name.startswith("."):
            reason = why_incomplete(root / name)
            if reason is None:
                return root / name
            problem = f"{pointer} names {name}, {reason}"
        else:
            problem = f"{pointer} names {name!r}, not a checkpoint"
    else:
        problem = f"{pointer} is {'not a file' if pointer.exists() else 'missing'}"
    found = [p for p in root.glob("*step_*") if _STEP.fullmatch(p.name)]
    if not pointer.exists() and not found:
        return None  # nothing was ever saved here
    # At one step, the live name before a copy renamed aside.
    found.sort(key=lambda p: (_step_of(p), not p.name.startswith(".")), reverse=True)
    for path in found:
        reason = why_incomplete(path)
        if reason is None:
            warnings.warn(f"{problem}; using {path}, the newest whole checkpoint", stacklevel=2)
            return path
        problem += f"; {path.name} is not whole either ({reason})"
    warnings.warn(f"{problem}; no whole checkpoint under {root}", stacklevel=2)
    return None


def load_state(path: Path, map_location: Any = None) -> dict[str, Any]:
    """``state.pt`` of checkpoint ``path``, loaded as tensors and plain values only: a
    file that holds any other object is refused, unrun."""
    file = path / "state.pt"
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message goes on to suggest the unsafe load; only its reason is kept.
        why = [line for line in str(e).splitlines() if "WeightsUnpickler error:" in line]
        detail = why[0].split("error:", 1)[1].split(". ")[0].strip() if why else str(e)
        raise ValueError(
            f"{file}: refused, it holds objects other than tensors and plain values, which "
            "only an unsafe load (one that can run code from the file) would rebuild. A "
            "checkpoint written by an older searchr1 cannot be loaded safely; start from "
            f"its actor/ model directory instead. ({detail})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: refused, it holds a {type(state).__name__}, not a dict")
    return state


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
    """Restores a checkpoint written by :meth:`save` (refusing one that is not whole)."""
    reason = why_incomplete(path)
    if reason is not None:
        raise ValueError(f"{path} is not a whole checkpoint, {reason}")
    # The state first: a refused file leaves the trainer untouched.
    state = load_state(path, map_location=t.device)
    if is_lora(t.actor):
        load_adapters(t.actor, path / "actor", t.device)
    else:
        _load_actor(t, path / "actor")
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
    # Rank 0's next save may rename this checkpoint (tidying up after a crash): every
    # rank reads it first.
    t.dist.barrier()


def _load_actor(t: Trainer, directory: Path) -> None:
    """Loads the full weights of a checkpoint's ``actor/`` into the actor."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(str(shard), device=str(t.device)))
    expected = set(t.rollout_model.state_dict())
    tied = getattr(t.rollout_model.config, "tie_word_embeddings", False)
    embed = weights.get("model.embed_tokens.weight")
    if tied and "lm_head.weight" in expected - set(weights) and embed is not None:
        weights["lm_head.weight"] = embed  # a tied head is saved once, as the embedding
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{directory}: checkpoint does not fit the model ({missing or unexpected})"
        )
    _load_weights(t, t.actor, weights)


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
