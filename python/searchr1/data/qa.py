"""Question-answer files: JSONL rows ``{"id", "question", "golden_answers"}``.

This is FlashRAG's and Search-R1's row format; ``data_source`` (the dataset's name,
for per-source metrics) is optional and defaults to the file's stem. Files and rows are
read as ``searchr1 prepare`` reads them (JSONL, plain or .gz, a JSON array, or parquet),
so Search-R1's own columns (``prompt``, ``reward_model``, ``extra_info``) work too. A
row that is not valid stops loading with the file, the line and what was wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from searchr1.data.prepare import convert_row, read_rows

__all__ = ["QAExample", "load_qa"]


@dataclass(frozen=True)
class QAExample:
    """A question, the answers that count as right, and the dataset it came from."""

    id: str
    question: str
    golden_answers: tuple[str, ...]
    data_source: str


def load_qa(paths: str | Path | Iterable[str | Path]) -> list[QAExample]:
    """Every row of every file, in order, read as :func:`~searchr1.data.prepare.read_rows`
    and :func:`~searchr1.data.prepare.convert_row` read them (so Search-R1's own files
    too); a row without an id gets its place (``file:line``). Raises
    :class:`InputError` on a bad row."""
    if isinstance(paths, str | Path):
        paths = [paths]
    out: list[QAExample] = []
    for path in map(Path, paths):
        for where, row in read_rows(path):
            r = convert_row(row, where, path.stem)
            out.append(
                QAExample(
                    r["id"] or where, r["question"], tuple(r["golden_answers"]), r["data_source"]
                )
            )
    return out
