"""Supervised fine-tuning: it learns, and observations are never trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from searchr1.packing import Segment, Trajectory
from searchr1.sft import Demonstration, SFTConfig, sft, to_trajectories

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def load(path: Path) -> tuple[object, object]:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path))
    return model, tok


def test_demonstrations_become_masked_trajectories(tiny_model_dir: Path) -> None:
    _, tok = load(tiny_model_dir)
    demo = Demonstration("who founded Riverton", [("<search> x </search>", True), ("docs", False)])
    (traj,) = to_trajectories(tok, [demo])
    assert [s.generated for s in traj.segments] == [True, False, True]
    assert list(traj.segments[-1].ids) == [tok.eos_token_id]
    assert tok.decode(traj.prompt_ids).endswith("<|im_start|>assistant\n")


def test_sft_learns_the_demonstrations(tiny_model_dir: Path) -> None:
    model, tok = load(tiny_model_dir)
    demos = [
        Demonstration(f"who founded town {i}", [(f"<answer> Founder {i} </answer>", True)])
        for i in range(4)
    ]
    losses = sft(model, to_trajectories(tok, demos), SFTConfig(steps=30, batch_size=4, lr=3e-3))
    assert losses[-1] < 0.3 * losses[0]


def test_observations_add_no_loss(tiny_model_dir: Path) -> None:
    model, _ = load(tiny_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = np.arange(5, 15, dtype=np.int64)
    said = Segment(np.arange(20, 30, dtype=np.int64), True)

    def first_loss(observation: list[int]) -> float:
        model.load_state_dict(state)
        traj = Trajectory(prompt, [said, Segment(np.asarray(observation, np.int64), False)])
        return sft(model, [traj], SFTConfig(steps=1, batch_size=1, warmup=1))[0]

    # The same words followed by different injected text: the same loss, to the bit.
    assert first_loss([40, 41, 42]) == first_loss([77, 78, 79])
    # And generated text there would count.
    model.load_state_dict(state)
    with_more = Trajectory(prompt, [said, Segment(np.asarray([77, 78, 79], np.int64), True)])
    assert sft(model, [with_more], SFTConfig(steps=1, batch_size=1, warmup=1))[0] != first_loss(
        [77, 78, 79]
    )


def test_loss_is_the_mean_next_token_nll_of_the_said_tokens(tiny_model_dir: Path) -> None:
    # sft computes logits for the response only; the loss must equal the plain one
    # (the model's own loss over the whole sequence with every other label ignored).
    model, _ = load(tiny_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = np.arange(5, 15, dtype=np.int64)
    segments = [
        Segment(np.arange(20, 26, dtype=np.int64), True),
        Segment(np.arange(40, 44, dtype=np.int64), False),
        Segment(np.arange(30, 33, dtype=np.int64), True),
    ]
    ids = torch.as_tensor(np.concatenate([prompt, *(s.ids for s in segments)]))[None]
    labels = ids.clone()
    labels[:, : len(prompt)] = -100
    labels[:, len(prompt) + 6 : len(prompt) + 10] = -100
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss.item()
    model.load_state_dict(state)
    loss = sft(model, [Trajectory(prompt, segments)], SFTConfig(steps=1, batch_size=1, warmup=1))
    assert loss[0] == pytest.approx(expected, rel=1e-5)
