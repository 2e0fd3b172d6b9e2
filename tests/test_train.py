"""The trainer: it updates, masks retrieved tokens, learns, and resumes exactly."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from searchr1.config import TrainConfig
from searchr1.reward import REWARDS, extract_answer, register_reward

torch = pytest.importorskip("torch")

FACTS = [
    ("Riverton", "Ada Marlow"),
    ("Stoneford", "Bruno Quist"),
    ("Oakhaven", "Cleo Ferro"),
    ("Frostmere", "Dario Osei"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


def make_world(root: Path) -> Path:
    """Four towns and their founders in ``root``: a corpus, its index, the questions."""
    from searchr1 import Retriever

    corpus = root / "corpus.jsonl"
    with corpus.open("w") as f:
        for i, (town, founder) in enumerate(FACTS):
            row = {"id": str(i), "contents": f'"{town}"\n{town} was founded by {founder}.'}
            f.write(json.dumps(row) + "\n")
    Retriever.build(corpus, root / "index")
    with (root / "train.jsonl").open("w") as f:
        for i, (town, founder) in enumerate(FACTS):
            row = {"id": str(i), "question": f"who founded {town}", "golden_answers": [founder]}
            f.write(json.dumps(row) + "\n")
    return root


def small_config(model: Path, world: Path, out: Path, **rl: Any) -> TrainConfig:
    config = TrainConfig.from_dict(
        {
            "model": {"path": str(model), "device": "cpu"},
            "data": {
                "train_files": [str(world / "train.jsonl")],
                "val_files": [str(world / "train.jsonl")],
            },
            "retrieval": {"index": str(world / "index")},
            "rollout": {"max_turns": 1, "max_response_length": 12, "max_obs_length": 24},
            "rl": {
                "batch_size": 2,
                "group_size": 2,
                "mini_batch_size": 0,
                "micro_batch_size": 2,
                "actor_lr": 1e-3,
                "warmup_ratio": 0.0,
                **rl,
            },
            "run": {"output_dir": str(out), "total_steps": 2, "progress": False},
        }
    )
    return config


@pytest.mark.slow
def test_one_step_changes_the_parameters(tiny_model_dir: Path, world: Path, tmp_path: Path) -> None:
    from searchr1.rl.trainer import Trainer

    for algorithm, group in (("grpo", 2), ("ppo", 1), ("rloo", 2), ("reinforce++", 1)):
        config = small_config(
            tiny_model_dir, world, tmp_path, algorithm=algorithm, group_size=group
        )
        trainer = Trainer(config)
        before = {k: v.clone() for k, v in trainer.actor.state_dict().items()}
        metrics = trainer.step()
        changed = [
            k for k, v in trainer.actor.state_dict().items() if not torch.equal(v, before[k])
        ]
        assert changed, algorithm
        assert trainer.ref is not None
        assert all(torch.equal(v, before[k]) for k, v in trainer.ref.state_dict().items()), (
            "the reference model must stay frozen"
        )
        for key in ("reward", "em", "searches", "pg_loss", "entropy", "kl", "time/rollout"):
            assert np.isfinite(metrics[key]), (algorithm, key)
        if algorithm == "ppo":
            assert "value_loss" in metrics


class _RecordingEngine:
    """An HFEngine on its own copy of the model (as vLLM holds its own weights) that
    records what the trainer asks of it."""

    def __init__(self, module: Any, tokenizer: Any, calls: list[str]) -> None:
        import copy

        from searchr1.rollout import HFEngine

        self.inner = HFEngine(copy.deepcopy(module), tokenizer)
        self.tokenizer = tokenizer
        self.calls = calls
        self.awake = True
        self.loaded: dict[str, Any] = {}

    def generate(self, prompts: Any, sampling: Any) -> Any:
        assert self.awake, "generate() while asleep"
        self.calls.append("generate")
        return self.inner.generate(prompts, sampling)

    def load_weights(self, weights: Any) -> None:
        assert self.awake, "load_weights() while asleep"
        self.loaded = {k: v.clone() for k, v in weights}
        self.calls.append("load_weights")
        self.inner.load_weights(self.loaded.items())

    def shares_weights(self, model: Any) -> bool:
        return False

    def sleep(self) -> None:
        self.awake = False
        self.calls.append("sleep")

    def wake(self) -> None:
        self.awake = True
        self.calls.append("wake")


@pytest.mark.slow
def test_the_trainer_drives_any_engine_through_the_protocol(
    tiny_model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer never asks which engine it has: an engine with weights of its own gets
    the actor's after each update, and sleeps from the rollouts until then; one that
    generates from the actor (hf) gets nothing to load."""
    from searchr1.rl.trainer import Trainer
    from searchr1.rollout import engines

    calls: list[str] = []
    kind = engines.EngineKind(
        lambda o: _RecordingEngine(o.module, o.tokenizer, calls),  # type: ignore[arg-type, return-value]
        from_module=True,
    )
    monkeypatch.setitem(engines.ENGINES, "recording", kind)
    config = small_config(tiny_model_dir, world, tmp_path, algorithm="grpo")
    config = replace(config, model=replace(config.model, engine="recording"))
    trainer = Trainer(config)
    trainer.step()
    turns = config.rollout.max_turns + 1
    assert calls[0] == "wake" and calls.count("generate") <= turns
    assert calls[calls.index("generate") + calls.count("generate")] == "sleep"
    assert calls[-2:] == ["wake", "load_weights"]
    actor = trainer.actor.state_dict()
    assert set(trainer.engine.loaded) == set(actor)
    assert all(torch.equal(trainer.engine.loaded[k], v) for k, v in actor.items())
    calls.clear()
    trainer.validate()
    assert calls[0] == "wake" and "generate" in calls

    hf = Trainer(small_config(tiny_model_dir, world, tmp_path / "hf", algorithm="grpo"))
    assert hf.engine.shares_weights(hf.actor)
    loads: list[Any] = []
    monkeypatch.setattr(hf.engine, "load_weights", loads.append)
    hf.step()
    assert loads == []


@pytest.mark.slow
@pytest.mark.parametrize("rounds", [1, 0])
def test_dynamic_sampling_keeps_groups_whose_rewards_differ(
    tiny_model_dir: Path, world: Path, tmp_path: Path, rounds: int
) -> None:
    """DAPO's dynamic sampling with a scripted reward: in the first round group A's
    rewards are equal (dropped) and B's differ; in the second, C's differ. With a second
    round the batch is B and C; without, it is B filled up with A."""
    from searchr1.rl.trainer import Trainer

    config = small_config(tiny_model_dir, world, tmp_path, algorithm="grpo")
    config = replace(
        config,
        rl=replace(config.rl, dynamic_sampling=True, dynamic_sampling_rounds=rounds),
    )
    trainer = Trainer(config)
    script = iter([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # A A B B | C C D D
    trainer.reward_fn = lambda response, golden: next(script)
    asked = [trainer.train_data[i].question for i in trainer.stream.take(4)]
    trainer.stream = type(trainer.stream)(trainer.stream.size, trainer.stream.seed)
    seen: list[Any] = []
    advantages = trainer._advantages

    def record(turn: Any, batch: Any) -> None:
        seen.append(turn)
        advantages(turn, batch)

    trainer._advantages = record  # type: ignore[method-assign]
    metrics = trainer.step()
    (turn,) = seen
    questions = [e.question for e in turn.examples]
    a, b, c = asked[0], asked[1], asked[2]
    if rounds:
        assert questions == [b, b, c, c] and turn.rewards == [0.0, 1.0, 1.0, 0.0]
        assert (metrics["dapo/rounds"], metrics["dapo/filled"]) == (2.0, 0.0)
    else:
        assert questions == [b, b, a, a] and turn.rewards == [0.0, 1.0, 0.0, 0.0]
        assert (metrics["dapo/rounds"], metrics["dapo/filled"]) == (1.0, 0.5)
    assert metrics["dapo/informative"] == 0.5
    assert turn.groups.tolist() == [0, 0, 1, 1]  # renumbered: one id per kept group


@pytest.mark.slow
def test_injected_tokens_contribute_no_gradient(
    tiny_model_dir: Path, world: Path, tmp_path: Path
) -> None:
    """Whatever the advantages, old and reference log-probs say at retrieved positions,
    the gradient is the same to the bit; without state masking it is not."""
    from searchr1.packing import Segment, Trajectory, pack
    from searchr1.rl.trainer import Trainer

    rng = np.random.default_rng(0)
    trajs = [
        Trajectory(
            rng.integers(5, 500, 12),
            [
                Segment(rng.integers(5, 500, 6), True),
                Segment(rng.integers(5, 500, 9), False),
                Segment(rng.integers(5, 500, 4), True),
            ],
        )
        for _ in range(3)
    ]
    packed = pack(trajs).to_torch()

    def grads(state_masking: bool, garbage: bool) -> list[Any]:
        config = small_config(tiny_model_dir, world, tmp_path, state_masking=state_masking)
        trainer = Trainer(config)
        batch = dict(packed)
        response = batch["attention_mask"][:, -batch["loss_mask"].shape[1] :].float()
        mask = batch["loss_mask"] if state_masking else response
        g = torch.Generator().manual_seed(1)
        shape = mask.shape
        fields = {
            "mask": mask,
            "old_logprobs": -torch.rand(shape, generator=g),
            "ref_logprobs": -torch.rand(shape, generator=g),
            "advantages": torch.randn(shape, generator=g),
        }
        if garbage:
            injected = (batch["loss_mask"] == 0) & (response == 1)
            for name in ("old_logprobs", "ref_logprobs", "advantages"):
                fields[name] = torch.where(injected, torch.full(shape, -7.0), fields[name])
        batch.update(fields)
        trainer.actor_opt.step = lambda *a, **k: None  # type: ignore[method-assign]
        trainer._update(batch, step=0)
        return [p.grad.clone() for p in trainer.actor.parameters() if p.grad is not None]

    masked = grads(True, False)
    assert all(torch.equal(a, b) for a, b in zip(masked, grads(True, True), strict=True))
    unmasked = grads(False, False)
    assert not all(torch.equal(a, b) for a, b in zip(unmasked, grads(False, True), strict=True))


@pytest.mark.slow
def test_grpo_raises_the_probability_of_the_rewarded_answer(
    tiny_model_dir: Path, world: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.rl.trainer import Trainer
    from searchr1.sft import Demonstration, SFTConfig, sft, to_trajectories

    # Warm start: answer red or blue, half and half.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    demos = [
        Demonstration(f"who founded {town}", [(f"<answer> {color} </answer>", True)])
        for town, _ in FACTS
        for color in ("red", "blue")
    ]
    sft(model, to_trajectories(tok, demos), SFTConfig(steps=40, batch_size=8, lr=3e-3))
    start = tmp_path / "start"
    model.save_pretrained(start)
    tok.save_pretrained(start)

    if "test-red" not in REWARDS:

        @register_reward("test-red")
        def _red(response: str, golden_answers: Any, **_: Any) -> float:
            return 1.0 if extract_answer(response) == "red" else 0.0

    config = small_config(start, world, tmp_path / "run", reward="test-red", kl_coef=0.0)
    config = replace(
        config,
        rl=replace(config.rl, batch_size=4, group_size=8, micro_batch_size=32, actor_lr=2e-3),
        rollout=replace(config.rollout, max_turns=0),
    )
    trainer = Trainer(config)

    def p_red() -> float:
        from searchr1.rl.modeling import response_logprobs

        good = to_trajectories(
            tok,
            [
                Demonstration(q, [("<answer> red </answer>", True)])
                for q in (f"who founded {t}" for t, _ in FACTS)
            ],
            eos=False,  # generation stops at </answer>: what follows is never trained
        )
        from searchr1.packing import pack

        batch = pack(good).to_torch()
        with torch.no_grad():
            lp, _ = response_logprobs(trainer.actor, batch)
        return float(torch.exp((lp * batch["loss_mask"]).sum(1)).mean())

    before = p_red()
    rewards = [trainer.step()["reward"] for _ in range(6)]
    after = p_red()
    assert after > before + 0.2, (before, after, rewards)
    assert rewards[-1] > rewards[0]


def run_cli(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "searchr1", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


@pytest.mark.slow
def test_metrics_go_to_tensorboard_too(tiny_model_dir: Path, world: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from searchr1.rl.trainer import train

    config = small_config(tiny_model_dir, world, tmp_path / "run")
    config = replace(config, run=replace(config.run, total_steps=2, eval_every=2))
    train(config)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    rows = metrics_of(tmp_path / "run")
    shown_keys = {k for k in events.Tags()["scalars"] if not k.startswith("time/")}
    assert shown_keys == {k for row in rows for k in row if k != "step"}
    for key in ("reward", "pg_loss", "entropy", "kl", "val/em"):
        logged = [(row["step"], row[key]) for row in rows if key in row]
        shown = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in shown] == [s for s, _ in logged], key
        assert [v for _, v in shown] == pytest.approx([v for _, v in logged], rel=1e-6), key


def metrics_of(out: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_a_killed_run_resumes_exactly(
    tiny_model_dir: Path, world: Path, tmp_path: Path, lora_rank: int
) -> None:
    """A run killed after its second checkpoint and resumed logs what an uninterrupted
    run logs; with LoRA the checkpoints hold only the adapters (and their optimizer)."""
    config = small_config(tiny_model_dir, world, tmp_path / "x", algorithm="ppo", group_size=1)
    config = replace(
        config,
        model=replace(config.model, lora_rank=lora_rank),
        run=replace(config.run, total_steps=5, save_every=1, eval_every=2),
    )
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())

    whole = tmp_path / "whole"
    proc = run_cli(["--config", str(path), "--set", f"run.output_dir={whole}"])
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()

    killed = tmp_path / "killed"
    proc = run_cli(["--config", str(path), "--set", f"run.output_dir={killed}"])
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step_000002").exists():
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(metrics_of(killed)) < 5
    proc = run_cli(["--config", str(path), "--set", f"run.output_dir={killed}", "--resume"])
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()
    resumed, uninterrupted = metrics_of(killed), metrics_of(whole)
    assert [row["step"] for row in resumed] == [1, 2, 3, 4, 5]
    actor = killed / "checkpoints" / "step_000005" / "actor"
    assert (actor / "adapter_config.json").exists() == bool(lora_rank)
    # Discrete outcomes (rewards, searches, lengths) are equal; floats agree to 1e-5: CPU
    # BLAS kernels are not bit-reproducible from one process to the next.
    for got, want in zip(resumed, uninterrupted, strict=True):
        assert got.keys() == want.keys()
        for key in ("reward", "em", "searches", "turns", "response_length", "lr"):
            assert got[key] == want[key], key
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    if importlib.util.find_spec("tensorboard") is not None:
        # TensorBoard drops what the killed run logged past its checkpoint, too.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(killed / "tensorboard"))
        events.Reload()
        shown = [(e.step, e.value) for e in events.Scalars("reward")]
        assert shown == [(row["step"], pytest.approx(row["reward"])) for row in resumed]


VARIANTS = [
    {"loss_agg": "seq-mean-token-sum"},
    {"policy_loss": "gspo", "loss_agg": "seq-mean-token-mean"},
    # with DAPO's overlong shaping: 12 tokens a turn, 2 turns; the last 20 cost reward
    {"policy_loss": "cispo", "loss_agg": "seq-mean-token-sum-norm", "overlong_buffer": 20},
    # greedy rollouts give a group equal rewards: every round drops all, the batch is filled
    {"dynamic_sampling": True, "dynamic_sampling_rounds": 1},
    # LoRA: the adapters start alike on every rank; the reference is the base model
    {"model.lora_rank": 4},
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fsdp", "algorithm", "ranks", "loss"),
    [
        (False, "grpo", 2, {}),
        (True, "grpo", 2, {}),
        (True, "ppo", 2, {}),
        (True, "grpo", 1, {}),
        *((False, "grpo", 2, variant) for variant in VARIANTS),
    ],
    ids=[
        *("replicas", "fsdp", "fsdp-ppo", "fsdp-1rank"),
        *("seq-sum", "gspo-seq-mean", "cispo-drgrpo", "dapo-sampling", "lora"),
    ],
)
def test_gloo_ranks_match_one_process(
    tiny_model_dir: Path,
    world: Path,
    tmp_path: Path,
    fsdp: bool,
    algorithm: str,
    ranks: int,
    loss: dict[str, Any],
) -> None:
    """torchrun with CPU ranks: the same metrics (losses, KL, entropy) as 1 process, in
    every loss aggregation (token-mean, the default, in the first four), with DAPO's
    sampling and shaping, and with LoRA.

    Greedy rollouts make the responses independent of how the batch is split; the
    entropy bonus and the KL loss give every step a gradient to check the sync with.
    With FSDP2 the run is also cut after step 2 and resumed (sharded optimizer state
    through a checkpoint), and its final weights are those of the 1-process run (for
    PPO, the critic's too). One rank with FSDP2 is the code path of many GPUs on one.
    """
    config = small_config(
        tiny_model_dir,
        world,
        tmp_path,
        algorithm=algorithm,
        batch_size=4,
        micro_batch_size=2,
        kl_coef=0.1,
    )
    model = {k.removeprefix("model."): v for k, v in loss.items() if k.startswith("model.")}
    rl = {k: v for k, v in loss.items() if not k.startswith("model.")}
    config = replace(
        config,
        model=replace(config.model, **model),
        rl=replace(config.rl, entropy_coef=0.01, **rl),
        rollout=replace(config.rollout, temperature=0.0),
        run=replace(config.run, total_steps=3, save_every=0, eval_every=3),
    )
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += [f"--nproc-per-node={ranks}", "-m", "searchr1"]

    def train(name: str, launcher: list[str], *args: str) -> Path:
        out = tmp_path / name
        cmd = [*launcher, "train", "--config", str(path), "--set", f"run.output_dir={out}"]
        done = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        layouts.append(done.stderr.partition("train: ")[2].partition("\n")[0])
        return out

    layouts: list[str] = []

    one = train("one", [sys.executable, "-m", "searchr1"])
    sharding = ("--set", f"model.fsdp={str(fsdp).lower()}")
    if fsdp:
        two = train("two", torchrun, *sharding, "--set", "run.total_steps=2")
        train("two", torchrun, *sharding, "--resume")
    else:
        two = train("two", torchrun, *sharding)
    rank_word = f"{ranks} torchrun rank{'s' if ranks > 1 else ''}"
    shards = "FSDP2 shards" if fsdp else "full weights"
    assert layouts[0] == "one process on cpu, full weights, fp32, hf engine"
    assert set(layouts[1:]) == {f"{rank_word} on cpu, {shards}, fp32, hf engine"}
    runs = {"one": metrics_of(one), "two": metrics_of(two)}
    assert [r["step"] for r in runs["two"]] == [1, 2, 3]
    for a, b in zip(runs["one"], runs["two"], strict=True):
        for key in ("em", "searches", "turns", "response_length"):
            assert a[key] == b[key], key
        for key in (
            "reward",
            "entropy",
            "kl",
            "kl_loss",
            "grad_norm",
            "pg_loss",
            "value_loss",
            "val/em",
        ):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    assert runs["one"][1]["kl"] > 0  # the first update moved the policy away from the reference
    if loss.get("dynamic_sampling"):
        assert all(r["dapo/filled"] == 1.0 and r["dapo/rounds"] == 2.0 for r in runs["two"])
    if "overlong_buffer" in loss:
        for a, b in zip(runs["one"], runs["two"], strict=True):
            assert a["overlong/penalty"] == pytest.approx(b["overlong/penalty"])
            assert a["overlong/penalized"] > 0
    if fsdp:
        from safetensors.torch import load_file

        def weights(out: Path, model: str) -> dict[str, Any]:
            (shard,) = (out / "checkpoints" / "step_000003" / model).glob("*.safetensors")
            return load_file(str(shard))

        for model in ("actor", "critic") if algorithm == "ppo" else ("actor",):
            ours, theirs = weights(two, model), weights(one, model)
            assert ours.keys() == theirs.keys()
            for key, value in theirs.items():
                torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=2e-5, msg=key)
        initial = transformers_weights(tiny_model_dir)
        final = weights(one, "actor")
        assert any(not torch.equal(initial[k], v) for k, v in final.items() if k in initial)


def transformers_weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    (shard,) = model_dir.glob("*.safetensors")
    return load_file(str(shard))
