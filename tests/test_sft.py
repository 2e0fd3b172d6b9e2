"""Supervised fine-tuning: it learns, and observations are never trained on."""

from __future__ import annotations

from dataclasses import replace
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_copy_pretraining_teaches_a_random_model_to_copy(tmp_path: Path) -> None:
    from searchr1.toy.copying import CopyConfig, copy_pretrain
    from searchr1.toy.models import TinyModelConfig, init_model

    texts = ["Riverton was founded by Alice Marlow in 1820, who founded Riverton?"] * 20
    config = TinyModelConfig(vocab_size=300, hidden_size=64, num_heads=2)
    model, tok = load(init_model(tmp_path / "m", texts, config))
    special = set(tok.all_special_ids)
    pool = torch.tensor([i for i in range(len(tok)) if i not in special])
    strings = pool[torch.randint(len(pool), (64, 6), generator=torch.Generator().manual_seed(9))]
    newline = tok("\n", add_special_tokens=False)["input_ids"]

    def copy_accuracy() -> float:
        """Unseen random strings of 6 tokens: how many tokens of the copy it predicts."""
        seq = torch.cat([strings, torch.full((64, 1), newline[0]), strings], dim=1)
        with torch.no_grad():
            logits = model(input_ids=seq).logits[:, 6:-1]
        return (logits.argmax(-1) == strings).float().mean().item()

    assert copy_accuracy() < 0.05  # chance: 1 in ~300
    config = CopyConfig(steps=300, batch_size=32, max_length=8, lr=3e-3, stop_accuracy=2.0)
    history = copy_pretrain(model, tok, config)
    assert len(history) == 300 and not model.training
    # Measured: 0.40 after 300 steps (5 s on one core).
    assert copy_accuracy() > 0.2
    assert np.mean([loss for loss, _ in history[-20:]]) < 0.6 * history[0][0]
    # A model that copies stops as soon as 20 steps average the stop accuracy.
    again = copy_pretrain(model, tok, replace(config, stop_accuracy=0.2, seed=1))
    assert len(again) == 20 and np.mean([a for _, a in again]) >= 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"min_length": 0}, "min_length"),
        ({"min_length": 9, "max_length": 8}, "min_length"),
        ({"lr": 0.0}, "lr"),
        ({"stop_accuracy": 0.0}, "stop_accuracy"),
    ],
)
def test_copy_config_is_checked(kwargs: dict[str, float], message: str) -> None:
    from searchr1.toy.copying import CopyConfig

    with pytest.raises(ValueError, match=message):
        CopyConfig(**kwargs)  # type: ignore[arg-type]


def test_progress_bar_is_closed_when_training_stops_early(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from searchr1.sft import progress_bar

    with pytest.raises(RuntimeError), progress_bar(5, "copy", "accuracy") as on_step:
        on_step(0, 1.0, 0.25)
        on_step(1, 0.5, 0.75)
        raise RuntimeError("stopped")
    err = capsys.readouterr().err
    assert "copy" in err and "2/5" in err and "accuracy=0.750" in err
    assert err.endswith("\n")  # closed: the bar's line is finished
