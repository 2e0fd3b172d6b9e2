"""The study (`searchr1 study`): how each arm is scored, the table, the command, and the
quick study end to end (about 1.5 minutes on 2 cores)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from searchr1 import Hit
from searchr1.data import QAExample
from searchr1.rollout import RolloutConfig, ScriptedEngine
from searchr1.toy.demo import DemoConfig
from searchr1.toy.study import (
    ARMS,
    StudyConfig,
    evaluate_arm,
    markdown_table,
    quick,
    run_study,
    summarize_arms,
)

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


class TitleRetriever:
    """Answers query q with documents titled "q answer", "q other", ...; records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
        self.calls.append((list(queries), k))
        titles = ("answer", "other", "third")
        return [
            [Hit(f"{q}-{j}", 1.0, f'"{q} {titles[j]}"\n{q} text {j}') for j in range(k)]
            for q in queries
        ]


def reader(tokenizer: Any) -> ScriptedEngine:
    """Searches for the question until it has read a passage, then answers with the
    first passage's title (so EM 1 whenever the passage is in its context)."""

    def script(context: str) -> str:
        read = re.search(r'Doc 1\(Title: "(.*?)"\)', context)
        if read:
            return f"<think>read</think><answer> {read.group(1)} </answer>"
        question = re.search(r"Question: (.*?)\?\n", context)
        assert question is not None
        return f"<think>no idea</think><search> {question.group(1)} </search>"

    return ScriptedEngine(tokenizer, script)


EXAMPLES = [QAExample(f"q{i}", f"who is q{i}", (f"who is q{i} answer",), "toy") for i in range(3)]


def test_search_arms_search_and_read(tokenizer: Any) -> None:
    retriever = TitleRetriever()
    m = evaluate_arm(reader(tokenizer), retriever, EXAMPLES, RolloutConfig(max_turns=2, topk=2))
    assert (m["em"], m["search_rate"], m["searches"], m["valid_rate"]) == (1.0, 1.0, 1.0, 1.0)
    assert retriever.calls == [([e.question for e in EXAMPLES], 2)]
    # The passages count in the response length, not in the model's own tokens.
    assert m["response_length"] > m["generated_length"] > 0


def test_direct_answers_in_one_turn_without_search(tokenizer: Any) -> None:
    retriever = TitleRetriever()
    m = evaluate_arm(reader(tokenizer), retriever, EXAMPLES, RolloutConfig(), mode="direct")
    # Its one turn searched: nothing came back and no answer was given.
    assert (m["em"], m["search_rate"], m["turns"], m["valid_rate"]) == (0.0, 0.0, 1.0, 1.0)
    assert retriever.calls == []
    assert m["response_length"] == m["generated_length"]


@pytest.mark.parametrize("topk", [None, 3])
def test_rag_puts_the_questions_passages_in_the_prompt(tokenizer: Any, topk: int | None) -> None:
    retriever = TitleRetriever()
    rollout = RolloutConfig(topk=1)
    m = evaluate_arm(reader(tokenizer), retriever, EXAMPLES, rollout, mode="rag", topk=topk)
    assert (m["em"], m["search_rate"], m["turns"]) == (1.0, 0.0, 1.0)
    # One batched search, the questions as queries, top-k the search arms' unless given.
    assert retriever.calls == [([e.question for e in EXAMPLES], topk or 1)]
    assert m["response_length"] == m["generated_length"]  # the passages are prompt
    with pytest.raises(ValueError, match="tool_call"):
        evaluate_arm(
            reader(tokenizer), retriever, EXAMPLES, replace(rollout, protocol="tool_call"), "rag"
        )


def _metrics(em: float) -> dict[str, float]:
    return {
        "em": em,
        "search_rate": 0.5,
        "searches": 0.75,
        "valid_rate": 0.9,
        "response_length": 80.0,
        "minutes": 1.0,
    }


def test_the_table_has_a_row_per_arm_with_em_over_seeds() -> None:
    results = {
        0: {"direct": _metrics(0.0), "grpo": _metrics(0.4)},
        1: {"direct": _metrics(0.1), "grpo": _metrics(0.6)},
    }
    summary = summarize_arms(results)
    assert summary["grpo"]["em"] == pytest.approx(0.5)
    assert (summary["grpo"]["em_min"], summary["grpo"]["em_max"]) == (0.4, 0.6)
    assert summary["grpo"]["em_per_seed"] == {"0": 0.4, "1": 0.6}
    lines = markdown_table(summary, [0, 1]).splitlines()
    assert len(lines) == 2 + 2
    assert {line.count("|") for line in lines} == {10}
    assert lines[3].startswith(f"| {ARMS['grpo'].label} | 0.500 | 0.400 to 0.600 | 0.400, 0.600 |")


def test_the_study_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="known"):
        StudyConfig(arms=("grpo", "nope"))
    with pytest.raises(ValueError, match="each once"):
        StudyConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="eval_every"):
        StudyConfig(eval_every=-1)
    with pytest.raises(ValueError, match="jobs"):
        StudyConfig(jobs=0)
    config = StudyConfig(out="x", seeds=(4,))
    assert config.seed_config(4) == replace(DemoConfig(), out=str(Path("x") / "seed4"), seed=4)


def test_study_command_passes_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import searchr1.toy.study
    from searchr1.cli import main

    seen: list[StudyConfig] = []
    monkeypatch.setattr(searchr1.toy.study, "run_study", lambda config, log: seen.append(config))
    runner = CliRunner()
    result = runner.invoke(main, ["study"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == StudyConfig()
    args = ["study", "--out", "x", "--seed", "1", "--seed", "2", "--arm", "rag", "--arm", "ppo"]
    args += ["--rl-steps", "7", "--eval-every", "0", "--jobs", "2", "--set", "rl.kl_coef=0"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen[-1] == StudyConfig(
        out="x",
        seeds=(1, 2),
        arms=("rag", "ppo"),
        eval_every=0,
        jobs=2,
        demo=DemoConfig(train_overrides=("rl.kl_coef=0", "run.total_steps=7")),
    )
    result = runner.invoke(main, ["study", "--quick", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == replace(quick(StudyConfig()), seeds=(5,))
    assert runner.invoke(main, ["study", "--quick", "--seed", "1", "--seed", "2"]).exit_code == 2
    assert runner.invoke(main, ["study", "--arm", "nope"]).exit_code == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_quick_study_runs_every_arm(tmp_path: Path) -> None:
    """`searchr1 study --quick`: every arm yields numbers, the table has a row for each,
    the RL arms log their curves, and a re-run reuses every arm."""
    config = quick(StudyConfig(out=str(tmp_path / "study")))
    lines: list[str] = []
    report = run_study(config, log=lines.append)
    out = Path(config.out)
    saved = json.loads((out / "study.json").read_text())
    assert saved["summary"] == report["summary"] and list(saved["seeds"]) == ["0"]
    assert list(report["summary"]) == list(ARMS)
    for arm, m in report["summary"].items():
        for key in ("em", "search_rate", "searches", "valid_rate", "response_length"):
            assert isinstance(m[key], float) and m[key] == m[key], (arm, key)  # not NaN
        assert 0 <= m["em"] <= 1 and 0 <= m["valid_rate"] <= 1, arm
    assert report["summary"]["direct"]["searches"] == 0.0
    assert report["summary"]["rag"]["searches"] == 0.0

    table = (out / "study.md").read_text().strip().splitlines()
    rows = [line for line in table if line.startswith("|")]
    assert len(rows) == 2 + len(ARMS)
    assert {row.count("|") for row in rows} == {10}
    for name, row in zip(ARMS, rows[2:], strict=True):
        assert row.startswith(f"| {ARMS[name].label} |")
    assert (out / "training.png").exists()
    for arm in ("grpo", "grpo-nomask", "ppo", "grpo-base"):
        metrics = (out / "seed0" / arm / "metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 4 and "val/em" in json.loads(metrics[-1]), arm
    assert (out / "seed0" / "copy-model" / "config.json").exists()
    assert "rl.state_masking=false" not in json.dumps(saved["config"])  # arms, not overrides

    lines.clear()
    again = run_study(config, log=lines.append)
    assert again["summary"] == report["summary"]
    assert sum("reusing" in line for line in lines) == 1 + len(ARMS)  # warm start, arms

    # Two arms at once, each in a process of its own, on the same prepared world.
    for arm in ("direct", "grpo"):
        (out / "seed0" / arm / "result.json").unlink()
    lines.clear()
    both = run_study(replace(config, arms=("direct", "grpo"), jobs=2), log=lines.append)
    assert sum("reusing" in line for line in lines) == 1  # the warm start
    assert [line.split()[0] for line in lines if line.startswith("[")] == ["[grpo]", "[direct]"]
    for arm in ("direct", "grpo"):
        assert (out / "seed0" / arm / "result.json").exists(), arm
        assert 0 <= both["summary"][arm]["em"] <= 1, arm
