"""Question-answer files: JSONL rows ``{"id", "question", "golden_answers"}``.

This is FlashRAG's and Search-R1's row format; ``data_source`` (the dataset's name,
for per-source metrics) is optional and defaults to the file's stem. Rows are read as
``searchr1 prepare`` reads them, so Search-R1's own columns (``prompt``,
``reward_model``, ``extra_info``) work too. A row that is not valid stops loading with
the file, the line and what was wrong.
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
    """One line as a :class:`QAExample`: any row :func:`~searchr1.data.prepare.convert_row`
    reads (so Search-R1's own files too); without an id, the row's place is its id."""
    from searchr1.data.prepare import convert_row

    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON: {exc.msg}") from exc
    r = convert_row(row, where, default_source)
    return QAExample(r["id"] or where, r["question"], tuple(r["golden_answers"]), r["data_source"])
