"""Run configs: YAML sections, overrides, and errors that name what was wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchr1.config import TrainConfig

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = TrainConfig.from_yaml(path)
    assert config.model.path
    assert config.data.train_files
    # A dump reads back to the same config.
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_recipes_follow_search_r1() -> None:
    grpo = TrainConfig.from_yaml(CONFIGS / "qwen2.5-3b-grpo.yaml")
    assert (grpo.rl.algorithm, grpo.rl.group_size, grpo.rl.kl_estimator) == ("grpo", 5, "k3")
    assert (grpo.rl.actor_lr, grpo.rl.warmup_ratio, grpo.rl.kl_coef) == (1e-6, 0.285, 0.001)
    assert (grpo.rollout.topk, grpo.rollout.max_obs_length, grpo.rl.state_masking) == (3, 500, True)
    ppo = TrainConfig.from_yaml(CONFIGS / "qwen2.5-3b-ppo.yaml")
    assert (ppo.rl.algorithm, ppo.rl.gamma, ppo.rl.lam, ppo.rl.kl_in_reward) == ("ppo", 1, 1, True)
    assert (ppo.rl.critic_lr, ppo.rl.value_clip) == (1e-5, 0.5)


def test_overrides_are_typed(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {path: m}\ndata: {train_files: [t.jsonl]}\n")
    config = TrainConfig.from_yaml(
        path, ["rl.kl_coef=0.01", "rollout.max_turns=2", "run.seed=7", "rl.dual_clip=3"]
    )
    assert config.rl.kl_coef == 0.01 and config.rollout.max_turns == 2
    assert config.run.seed == 7 and config.rl.dual_clip == 3.0
    assert config.model.path == "m" and config.rl.algorithm == "grpo"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("nope: {}\n", [], "unknown section(s) ['nope']"),
        ("rl: {kl_cof: 1}\n", [], "unknown field(s) ['kl_cof']"),
        ("rl: {group_size: two}\n", [], "rl.group_size: expected int"),
        ("rl: {state_masking: 1}\n", [], "expected true or false"),
        ("rl: {algorithm: dpo}\n", [], "rl.algorithm: unknown 'dpo'; known: grpo, ppo"),
        ("rl: {reward: exact}\n", [], "rl.reward: unknown 'exact'; known: em, f1, format"),
        ("rl: {kl_estimator: k4}\n", [], "rl.kl_estimator: unknown 'k4'; known: k1, k2, k3"),
        ("model: {engine: sglang}\n", [], "model.engine: unknown 'sglang'; known: hf, vllm"),
        ("rl: {algorithm: grpo, group_size: 1}\n", [], "group_size must be >= 2"),
        ("rollout: {max_turns: -1}\n", [], "max_turns must be >= 0"),
        ("[1, 2]\n", [], "expected a mapping"),
        ("rl: {}\n", ["rl.kl_coef"], "expected section.field=value"),
        ("rl: {}\n", ["rl.nope=1"], "unknown 'rl.nope'"),
        ("rl: {}\n", ["data.train_files=x"], "expected a list"),
    ],
)
def test_bad_configs_say_what_is_wrong(
    tmp_path: Path, text: str, overrides: list[str], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        TrainConfig.from_yaml(path, overrides)
    assert message in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("rl: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: not valid YAML"):
        TrainConfig.from_yaml(path)
