"""The demo pipeline: its wiring (a miniature), and that RL really teaches searching
(the shortened demo, about 2.5 minutes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from searchr1.toy.demo import TOY_CONFIG, DemoConfig, comparison, quick, run_demo, train_config
from searchr1.toy.models import TinyModelConfig
from searchr1.toy.warmstart import WarmStartConfig

pytest.importorskip("torch")


@pytest.mark.slow
def test_a_miniature_demo_runs_and_reuses_its_warm_start(tmp_path: Path) -> None:
    config = DemoConfig(
        out=str(tmp_path / "toy"),
        people=20,
        towns=8,
        orgs=6,
        warm_start=WarmStartConfig(copy_steps=2, sft_steps=3, drills=4),
        train_overrides=(
            "run.total_steps=1",
            "rl.batch_size=2",
            "rl.group_size=2",
            "data.val_size=6",
        ),
        model=TinyModelConfig(vocab_size=600, hidden_size=64, num_heads=1),
    )
    lines: list[str] = []
    summary = run_demo(config, log=lines.append)
    out = Path(config.out)
    for path in (
        "world/corpus.jsonl",
        "index/manifest.json",
        "sft-model/config.json",
        "grpo/metrics.jsonl",
        "demo.json",
        "training.png",
    ):
        assert (out / path).exists(), path
    saved = json.loads((out / "demo.json").read_text())
    assert saved["before"] == summary["before"] and saved["after"] == summary["after"]
    assert any(line.startswith("held-out test") for line in "\n".join(lines).splitlines())
    assert any("warm start: SFT" in line for line in lines)
    assert any("copy pre-training, up to 2 steps" in line for line in lines)

    # A second run with the same settings skips the warm start; other settings redo it.
    lines.clear()
    run_demo(config, log=lines.append)
    assert any("reusing" in line for line in lines)
    changes = ({"sft_steps": 4}, {"drills": 5}, {"reading_worlds": 0}, {"copy_steps": 0})
    for change in changes:
        lines.clear()
        changed = replace(config, warm_start=replace(config.warm_start, **change))
        run_demo(changed, log=lines.append)
        assert not any("reusing" in line for line in lines), change
    assert not any("copy pre-training" in line for line in lines)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rl_teaches_the_warm_start_to_search(tmp_path: Path) -> None:
    """`searchr1 demo --quick --two-hop 0.5`, seed 0: GRPO on the training questions
    makes the warm start search where it guessed, on held-out questions about entities
    it never trained on, and search twice on 2-hop ones."""
    config = quick(DemoConfig(out=str(tmp_path / "toy"), two_hop_fraction=0.5))
    summary = run_demo(config, log=lambda _: None)
    before, after = summary["before"], summary["after"]
    # The quick demo has no copy pre-training or drills (with them: 3.7 min, and 16 GRPO
    # steps raised the search rate 0.08 -> 0.52 while valid actions fell 0.86 -> 0.52).
    # Measured on 2 cores with 4 heads (the default): search rate 0.62 -> 0.98, 2-hop
    # searches 0.58 -> 1.92, EM 0.04 -> 0.06; reward negated: search rate 0.62 -> 0.
    # Seed 1 (not asserted): 0.40 -> 0.74 and 0.50 -> 1.05, but EM 0.16 -> 0.14 (one of
    # 50 questions), so the EM bar holds for seed 0 only. With 2 heads: 0.54 -> 0.80.
    assert after["all"]["search_rate"] >= before["all"]["search_rate"] + 0.15, (before, after)
    assert after["toy-2hop"]["searches"] >= before["toy-2hop"]["searches"] + 0.5, (before, after)
    assert after["all"]["em"] >= before["all"]["em"], (before, after)
    assert after["all"]["valid_rate"] >= 0.9, after


def test_comparison_table() -> None:
    before = {
        "toy-1hop": {
            "em": 0.1,
            "f1": 0.2,
            "search_rate": 0.3,
            "searches": 0.3,
            "turns": 1.2,
            "valid_rate": 0.9,
        }
    }
    after = {"toy-1hop": {**before["toy-1hop"], "em": 0.5, "search_rate": 0.9}}
    table = comparison(before, after)
    assert "EM                             0.100       0.500    +0.400" in table
    assert "search rate" in table.splitlines()[3]


def test_demo_command_passes_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import searchr1.toy.demo
    from searchr1.cli import main

    seen: list[DemoConfig] = []
    monkeypatch.setattr(searchr1.toy.demo, "run_demo", lambda config, log: seen.append(config))
    runner = CliRunner()
    args = ["demo", "--out", "x", "--seed", "3", "--copy-steps", "0", "--drills", "7"]
    args += ["--reading-worlds", "2", "--rl-steps", "5", "--two-hop", "0.5"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen[-1] == replace(
        DemoConfig(out="x", seed=3),
        warm_start=WarmStartConfig(copy_steps=0, drills=7, reading_worlds=2),
        train_overrides=("run.total_steps=5",),
        two_hop_fraction=0.5,
    )
    result = runner.invoke(main, ["demo", "--quick", "--sft-steps", "9", "--set", "rl.kl_coef=0"])
    assert result.exit_code == 0, result.output
    shortened = quick(DemoConfig())
    assert seen[-1] == replace(
        shortened,
        warm_start=replace(shortened.warm_start, sft_steps=9),
        train_overrides=("run.total_steps=16", "rl.kl_coef=0"),
    )
    assert runner.invoke(main, ["demo", "--drills", "-1"]).exit_code == 2


def test_the_demo_trains_as_the_toy_config_says(tmp_path: Path) -> None:
    """The RL settings live in configs/toy.yaml alone: the demo changes its paths and
    seed, turns off validation during training, and applies the overrides."""
    from searchr1.config import TrainConfig

    assert (Path(__file__).parents[1] / "configs" / "toy.yaml").resolve() == TOY_CONFIG
    toy = TrainConfig.from_yaml(TOY_CONFIG)
    paths = {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    config = DemoConfig(out=str(tmp_path), seed=7, train_overrides=("rl.group_size=3",))
    made = train_config(config, paths)
    assert made.rl == replace(toy.rl, group_size=3)
    assert made.rollout == toy.rollout and made.model == replace(
        toy.model, path=str(tmp_path / "sft-model")
    )
    assert made.run == replace(toy.run, output_dir=str(tmp_path / "grpo"), seed=7, eval_every=0)
    assert made.data.train_files == [str(paths["train"])]
    assert made.retrieval.index == str(tmp_path / "index")
