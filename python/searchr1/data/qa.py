"""Question-answer files: JSONL rows ``{"id", "question", "golden_answers"}``.

This is FlashRAG's and Search-R1's row format; ``data_source`` (the dataset's name,
for per-source metrics) is optional and defaults to the file's stem. A row that is not
valid stops loading with the file, the line and what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from searchr1.errors import InputError

__all__ = ["QAExample", "load_qa"]


@dataclass(frozen=True)
class QAExample:
    """A question, the answers that count as right, and the dataset it came from."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str


def load_qa(paths: str | Path | Iterable[str | Path]) -> list[QAExample]:
    """Every row of every file, in order. Raises :class:`InputError` on a bad row."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[QAExample] = []
    for path in map(Path, paths):
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                out.append(_row(line, f"{path}:{line_no}", path.stem))
    return out


def _row(line: str, where: str, default_source: str) -> QAExample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON: {exc.msg}") from exc
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where}: 'question' must be a non-empty string")
    golds = row.get("golden_answers", row.get("answer"))
    if isinstance(golds, str):
        golds = [golds]
    if not isinstance(golds, list) or not golds or not all(isinstance(g, str) for g in golds):
        raise InputError(f"{where}: 'golden_answers' must be a string or a list of strings")
    source = row.get("data_source", default_source)
    return QAExample(str(row.get("id", where)), question, tuple(golds), str(source))
