"""Checkpoints: a crash at any file operation of a save leaves a whole one to resume from,
and loading one never runs code from it."""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from searchr1.rl.checkpoint import (  # noqa: E402
    MARKER,
    latest_checkpoint,
    load_rng_state,
    load_state,
    load_trainer,
    rng_state,
    save_trainer,
    why_incomplete,
)
from searchr1.rl.trainer import DataStream  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from searchr1.toy.models import train_tokenizer

    return train_tokenizer(["who founded Riverton? Ada Marlow founded it."] * 4, 300)


def tiny_model(tokenizer: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def fake_trainer(out: Path, tokenizer: Any) -> Any:
    """What save_trainer and load_trainer use of a Trainer, on the CPU without FSDP."""
    model = tiny_model(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return SimpleNamespace(
        out=out,
        step_no=0,
        stream=DataStream(size=10, seed=0),
        actor=model,
        rollout_model=model,
        tokenizer=tokenizer,
        critic=None,
        actor_opt=opt,
        actor_sched=sched,
        critic_opt=None,
        critic_sched=None,
        fsdp=False,
        device=torch.device("cpu"),
        dist=SimpleNamespace(is_main=True, barrier=lambda: None),
        config=SimpleNamespace(run=SimpleNamespace(keep_checkpoints=2)),
        _sync_engine=lambda: None,
    )


def train_step(t: Any) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    t.actor(input_ids=ids, labels=ids).loss.backward()
    t.actor_opt.step()
    t.actor_opt.zero_grad()
    t.actor_sched.step()
    t.stream.take(3)
    t.step_no += 1


def snapshot(t: Any) -> dict[str, Any]:
    """Everything a checkpoint restores, comparable with ==."""
    opt = t.actor_opt.state_dict()
    return {
        "step": t.step_no,
        "stream": asdict(t.stream),
        "weights": {k: v.tolist() for k, v in t.actor.state_dict().items()},
        "opt": {i: {k: v.tolist() for k, v in s.items()} for i, s in opt["state"].items()},
        "sched": t.actor_sched.state_dict(),
    }


def restored(path: Path, tokenizer: Any) -> dict[str, Any]:
    t = fake_trainer(path.parent.parent, tokenizer)
    load_trainer(t, path)
    return snapshot(t)


# --- crash injection ----------------------------------------------------------------------


class Crash(BaseException):
    """A kill at a file operation (a BaseException: no ``except Exception`` swallows it)."""


@contextmanager
def crash_at(k: int | None, tokenizer: Any, model: Any) -> Iterator[list[str]]:
    """Raises :class:`Crash` at the ``k``-th file operation (None: counts them)."""
    import transformers.modeling_utils as hf

    targets: list[tuple[Any, str]] = [
        (os, "rename"),
        (os, "replace"),
        (os, "fsync"),
        (os, "unlink"),
        (os, "rmdir"),
        (shutil, "rmtree"),
        (Path, "write_text"),
        (Path, "mkdir"),
        (torch, "save"),
        (hf.PreTrainedModel, "save_pretrained"),
        (type(tokenizer), "save_pretrained"),
    ]
    calls: list[str] = []

    def wrap(name: str, fn: Any) -> Any:
        def op(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            if len(calls) == k:
                raise Crash(name)
            return fn(*args, **kwargs)

        return op

    with pytest.MonkeyPatch.context() as mp:
        for owner, name in targets:
            mp.setattr(owner, name, wrap(name, getattr(owner, name)))
        yield calls


def quietly_latest(root: Path) -> Path | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return latest_checkpoint(root)


@pytest.mark.parametrize("same_step", [False, True], ids=["next-step", "re-save"])
def test_a_crash_anywhere_in_a_save_leaves_a_whole_checkpoint(
    tokenizer: Any, tmp_path: Path, same_step: bool
) -> None:
    t = fake_trainer(tmp_path / "template", tokenizer)
    for _ in range(2):
        train_step(t)
        save_trainer(t)
    before = snapshot(t)
    if same_step:
        # A resume of a finished run saves its step again; a changed weight and data
        # position tell the two saves apart (and a mix of them from either).
        with torch.no_grad():
            t.actor.model.norm.weight.add_(1.0)
        t.stream.position += 1
    else:
        train_step(t)
    after = snapshot(t)
    assert after != before

    def save_into(out: Path, k: int | None) -> list[str]:
        shutil.copytree(tmp_path / "template", out)
        t.out = out
        with crash_at(k, tokenizer, t.actor) as calls:
            if k is None:
                save_trainer(t)
            else:
                with pytest.raises(Crash):
                    save_trainer(t)
        return calls

    ops = save_into(tmp_path / "count", None)
    assert {"rename", "replace", "fsync", "rmtree", "write_text", "save"} <= set(ops), ops
    got = []
    for k in range(1, len(ops) + 1):
        root = tmp_path / f"crash{k}" / "checkpoints"
        save_into(root.parent, k)
        for live in root.glob("step_*"):
            assert why_incomplete(live) is None, (k, ops[k - 1], live, why_incomplete(live))
        path = quietly_latest(root)
        assert path is not None, (k, ops[k - 1])
        state = restored(path, tokenizer)
        assert state in (before, after), (k, ops[k - 1])
        got.append("after" if state == after else "before")
        # The next save tidies up what the crash left.
        t.out = root.parent
        save_trainer(t)
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [f"step_{n:06d}" for n in ((1, 2) if same_step else (2, 3))] + ["latest"]
        ), k
        assert latest_checkpoint(root) == root / f"step_{t.step_no:06d}"
    # Once the new checkpoint is the one to resume from, it stays so.
    switch = got.index("after")
    assert got == ["before"] * switch + ["after"] * (len(ops) - switch), got


# --- latest and whole ---------------------------------------------------------------------


@pytest.fixture
def two_saved(tokenizer: Any, tmp_path: Path) -> Path:
    t = fake_trainer(tmp_path, tokenizer)
    for _ in range(2):
        train_step(t)
        save_trainer(t)
    return tmp_path / "checkpoints"


def test_latest_names_a_whole_checkpoint(two_saved: Path) -> None:
    assert latest_checkpoint(two_saved) == two_saved / "step_000002"
    assert latest_checkpoint(two_saved.parent / "nothing") is None


def test_a_dangling_latest_falls_back_with_a_warning(two_saved: Path) -> None:
    (two_saved / "latest").write_text("step_000003\n")
    with pytest.warns(UserWarning, match="names step_000003, which does not exist"):
        assert latest_checkpoint(two_saved) == two_saved / "step_000002"
    (two_saved / "latest").unlink()
    with pytest.warns(UserWarning, match="latest is missing"):
        assert latest_checkpoint(two_saved) == two_saved / "step_000002"


def test_a_half_deleted_checkpoint_is_passed_over(two_saved: Path, tokenizer: Any) -> None:
    live = two_saved / "step_000002"
    (live / "actor" / "model.safetensors").unlink()  # state.pt is still there
    with pytest.warns(UserWarning, match="step_000002, which lacks actor/model.safetensors"):
        assert latest_checkpoint(two_saved) == two_saved / "step_000001"
    with pytest.raises(ValueError, match="not a whole checkpoint"):
        restored(live, tokenizer)
    (live / "state.pt").write_bytes(b"")  # a file cut short
    assert why_incomplete(live) is not None
    for path in two_saved.glob("step_*"):
        shutil.rmtree(path)
    with pytest.warns(UserWarning, match="no whole checkpoint"):
        assert latest_checkpoint(two_saved) is None


def test_a_checkpoint_renamed_aside_is_found(two_saved: Path, tokenizer: Any) -> None:
    # A re-save of step 2 cut between moving the live copy aside and moving the new in.
    os.rename(two_saved / "step_000002", two_saved / ".old-step_000002")
    with pytest.warns(UserWarning, match="newest whole checkpoint"):
        path = latest_checkpoint(two_saved)
    assert path == two_saved / ".old-step_000002"
    assert restored(path, tokenizer)["step"] == 2


# --- what state.pt may hold ---------------------------------------------------------------


class Payload:
    """Unpickling this creates the file ``target``: code run by a crafted state.pt."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> Any:
        return (open, (str(self.target), "w"))


def remark(path: Path) -> None:
    """Rewrites the marker's sizes, as whoever crafted a file would."""
    meta = json.loads((path / MARKER).read_text())
    meta["files"] = {name: (path / name).stat().st_size for name in meta["files"]}
    (path / MARKER).write_text(json.dumps(meta))


def test_a_state_that_would_run_code_is_refused(
    two_saved: Path, tokenizer: Any, tmp_path: Path
) -> None:
    path = two_saved / "step_000002"
    target = tmp_path / "pwned"
    torch.save({"step": 2, "payload": Payload(target)}, path / "state.pt")
    remark(path)
    assert latest_checkpoint(two_saved) == path
    with pytest.raises(ValueError, match=r"state\.pt: refused.*io\.open"):
        restored(path, tokenizer)
    assert not target.exists()


def test_an_old_checkpoint_is_refused_clearly(two_saved: Path, tokenizer: Any) -> None:
    path = two_saved / "step_000002"
    state = torch.load(path / "state.pt", weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # as searchr1 wrote it before
    torch.save(state, path / "state.pt")
    (path / MARKER).unlink()
    with pytest.raises(ValueError, match="older searchr1"):
        restored(path, tokenizer)
    # Had it a marker, the state itself would be refused.
    (path / MARKER).write_text(
        json.dumps({"format": 2, "step": 2, "files": {"state.pt": 0, "actor/config.json": 0}})
    )
    remark(path)
    with pytest.raises(ValueError, match="older searchr1"):
        load_state(path)


def test_rng_state_round_trips_through_a_safe_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in both
    np.random.standard_normal()
    torch.save(rng_state(), tmp_path / "rng.pt")

    def draws() -> tuple[Any, ...]:
        return (
            random.random(),
            random.gauss(0, 1),
            np.random.standard_normal(3).tolist(),
            torch.rand(3).tolist(),
        )

    want = draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert draws() != want
    load_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == want
