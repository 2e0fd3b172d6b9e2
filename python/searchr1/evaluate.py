"""Evaluation: greedy rollouts with search on QA sets, EM and F1 per data source.

Used by ``searchr1 eval``, ``searchr1 demo`` and the trainer's validation alike.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from searchr1.data import QAExample
from searchr1.reward import exact_match, extract_answer, f1_score
from searchr1.rollout import RolloutConfig, SearchBackend, run_rollouts, tokenize_prompts

__all__ = ["EvalReport", "evaluate", "summarize"]


@dataclass
class EvalReport:
    """Per-source and overall metrics, and one record per question."""

    metrics: dict[str, dict[str, float]]
    records: list[dict[str, Any]]

    def table(self) -> str:
        """The metrics as an aligned text table, one row per data source."""
        cols = ("n", "em", "f1", "search_rate", "searches", "turns", "valid_rate")
        lines = [f"{'source':<16}" + "".join(f"{c:>12}" for c in cols)]
        for source, m in self.metrics.items():
            cells = "".join(f"{int(m[c]):>12d}" if c == "n" else f"{m[c]:>12.3f}" for c in cols)
            lines.append(f"{source:<16}{cells}")
        return "\n".join(lines)


def summarize(
    responses: Sequence[str], examples: Sequence[QAExample], stats: Sequence[Any]
) -> EvalReport:
    """EM, F1, search rate, searches, turns and valid-action rate per data source."""
    records = []
    for response, example, s in zip(responses, examples, stats, strict=True):
        records.append(
            {
                "id": example.id,
                "data_source": example.data_source,
                "question": example.question,
                "golden_answers": list(example.golden_answers),
                "answer": extract_answer(response),
                "em": exact_match(response, example.golden_answers),
                "f1": f1_score(response, example.golden_answers),
                "searches": s.searches,
                "turns": s.turns,
                "valid_actions": s.valid_actions,
                "response": response,
            }
        )
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["data_source"]].append(r)
    if len(groups) > 1:
        groups["all"] = records
    metrics = {}
    for source, rows in groups.items():
        metrics[source] = {
            "n": float(len(rows)),
            "em": float(np.mean([r["em"] for r in rows])),
            "f1": float(np.mean([r["f1"] for r in rows])),
            "search_rate": float(np.mean([r["searches"] > 0 for r in rows])),
            "searches": float(np.mean([r["searches"] for r in rows])),
            "turns": float(np.mean([r["turns"] for r in rows])),
            "valid_rate": float(
                np.sum([r["valid_actions"] for r in rows])
                / max(1, np.sum([r["turns"] for r in rows]))
            ),
        }
    return EvalReport(metrics, records)


def evaluate(
    engine: Any,
    retriever: SearchBackend | None,
    examples: Sequence[QAExample],
    config: RolloutConfig | None = None,
    batch_size: int = 64,
) -> EvalReport:
    """Greedy rollouts of every question, in batches, scored."""
    config = replace(config or RolloutConfig(), temperature=0.0, seed=None)
    responses: list[str] = []
    stats: list[Any] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = tokenize_prompts(engine.tokenizer, [e.question for e in chunk], config.protocol)
        result = run_rollouts(engine, retriever, prompts, config)
        responses += result.responses
        stats += result.stats
    return summarize(responses, examples, stats)
