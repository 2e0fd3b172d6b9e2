"""LoRA on the actor: only the adapters train, the reference is the base model, engines
with weights of their own get the merged weights, checkpoints hold the adapters."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("peft")

from searchr1.rl.lora import merged_weights
from searchr1.rl.modeling import response_logprobs
from test_train import make_world, small_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


def lora_trainer(model: Path, world: Path, out: Path) -> Any:
    from searchr1.rl.trainer import Trainer

    config = small_config(model, world, out, algorithm="grpo", kl_coef=0.1, actor_lr=1e-2)
    return Trainer(replace(config, model=replace(config.model, lora_rank=4)))


def base_model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()


@pytest.mark.slow
def test_only_the_adapters_train_and_the_reference_is_the_base(
    tiny_model_dir: Path, world: Path, tmp_path: Path
) -> None:
    trainer = lora_trainer(tiny_model_dir, world, tmp_path)
    assert trainer.ref is None  # no second copy of the weights
    trained = {n for n, p in trainer.actor.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    before = {n: p.detach().clone() for n, p in trainer.actor.named_parameters()}
    seen: list[dict[str, torch.Tensor]] = []
    update = trainer._update

    def record(batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        seen.append(batch)
        return update(batch, step)

    trainer._update = record  # type: ignore[method-assign]
    metrics = trainer.step()
    after = dict(trainer.actor.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trained, sorted(changed - trained)[:3]
    assert metrics["kl"] == 0.0  # the first rollout's policy is the base model itself

    # The reference log-probs the step used are the base model's, to the bit.
    (batch,) = seen
    with torch.no_grad():
        base = response_logprobs(base_model(tiny_model_dir), batch)[0]
    torch.testing.assert_close(batch["ref_logprobs"], base.float(), rtol=0, atol=0)

    # An engine with weights of its own gets the adapters folded into the base weights:
    # the same policy (compared in float64, where folding adds no visible rounding).
    actor = copy.deepcopy(trainer.actor).double()
    merged = base_model(tiny_model_dir).double()
    merged.load_state_dict(merged_weights(actor))
    with torch.no_grad():
        ours = response_logprobs(actor, batch)[0]
        theirs = response_logprobs(merged, batch)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(ours.float(), base, atol=1e-3)  # the adapters moved the policy
