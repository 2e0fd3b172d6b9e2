"""The :class:`Retriever`: build an index from a corpus, open it, search it in batches."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchr1 import _core
from searchr1.errors import InputError

__all__ = ["MODES", "Hit", "Retriever"]

#: Search modes an index may support.
MODES = ("bm25",)


@dataclass(frozen=True)
class Hit:
    """A passage found by a search: its id, score and contents (``"Title"\\ntext``)."""

    id: str
    score: float
    contents: str

    @property
    def title(self) -> str:
        """The first line of the contents, quotes kept (as Search-R1 shows it)."""
        return self.contents.split("\n", 1)[0]

    @property
    def text(self) -> str:
        """The contents after the first line."""
        parts = self.contents.split("\n", 1)
        return parts[1] if len(parts) > 1 else ""

    def to_search_r1(self, return_score: bool = True) -> dict[str, Any]:
        """The hit as Search-R1's retrieval server returns it."""
        out: dict[str, Any] = {"document": {"id": self.id, "contents": self.contents}}
        if return_score:
            out["score"] = self.score
        return out


def _check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise TypeError("queries must be a list of strings; wrap a single query as [query]")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str):
            raise TypeError(f"query {i} is {type(q).__name__}, not str")
    return out


class Retriever:
    """A searchable index directory (see :meth:`build` and :meth:`open`).

    ``search`` takes a whole batch of queries and runs it in Rust on all cores with the
    GIL released. An index is safe to search from several threads at once.
    """

    def __init__(self, index: _core.Index, path: Path) -> None:
        self._index = index
        self.path = path
        self.manifest: dict[str, Any] = json.loads(index.manifest)

    @classmethod
    def build(
        cls,
        corpus: str | Path,
        out: str | Path,
        *,
        bm25: bool = True,
        k1: float = 0.9,
        b: float = 0.4,
        stem: bool = True,
        stopwords: bool = True,
        threads: int | None = None,
        memory_mb: int = 512,
        skip_bad: bool = False,
        progress: bool | None = None,
    ) -> Retriever:
        """Indexes ``corpus`` (JSONL, plain or ``.gz``) into the new directory ``out``.

        Rows are ``{"id", "contents"}`` (Search-R1) or ``{"id", "title", "text"}``. A
        malformed row raises :class:`~searchr1.errors.CorpusError` naming the file and
        line, unless ``skip_bad`` (then it is skipped and counted in the manifest).
        BM25 defaults are pyserini's (``k1=0.9``, ``b=0.4``), with English stop words
        and Porter2 stemming. ``threads`` indexing threads share ``memory_mb``.
        ``progress`` draws a bar on standard error (default: when it is a terminal).
        """
        if not bm25:
            raise InputError("nothing to build: bm25=False and no other method is available yet")
        if progress is None:
            progress = sys.stderr.isatty()
        _core.build_index(
            Path(corpus),
            Path(out),
            k1=k1,
            b=b,
            stem=stem,
            stopwords=stopwords,
            threads=threads,
            memory_mb=memory_mb,
            skip_bad=skip_bad,
            progress=progress,
        )
        return cls.open(out)

    @classmethod
    def open(cls, path: str | Path) -> Retriever:
        """Opens the index directory ``path`` (memory-mapped; fast for any size).

        Raises :class:`~searchr1.errors.IndexFormatError` for a directory that is not a
        complete searchr1 index of a version this package reads.
        """
        path = Path(path)
        return cls(_core.Index(path), path)

    @property
    def modes(self) -> tuple[str, ...]:
        """The search modes this index supports."""
        return tuple(m for m in MODES if self.manifest.get(m))

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"Retriever({str(self.path)!r}, passages={len(self)}, modes={self.modes})"

    def analyze(self, text: str) -> list[str]:
        """The BM25 terms ``text`` is indexed and searched as."""
        return self._index.analyze(text)

    def search(self, queries: Sequence[str], k: int = 3, mode: str = "bm25") -> list[list[Hit]]:
        """The best ``k`` passages for each query, best first: one list per query."""
        queries = _check_queries(queries)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InputError(f"k must be a non-negative integer, got {k!r}")
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode not in self.modes:
            raise InputError(f"{self.path} has no {mode} index")
        rows = self._index.search_bm25(queries, k)
        return [[Hit(i, s, c) for i, s, c in row] for row in rows]
