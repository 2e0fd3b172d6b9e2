"""Type stubs of ``searchr1._core``, the Rust core (checked with ``mypy.stubtest``)."""

from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any, Literal, TypedDict, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULTS",
    "Action",
    "CorpusBatches",
    "DenseWriter",
    "Index",
    "IndexBuilder",
    "StopScanner",
    "TokenStopChecker",
    "__version__",
    "add_hnsw",
    "pack_trajectories",
    "parse_action",
    "verify_index",
]

__version__: str

class _Defaults(TypedDict):
    k1: float
    b: float
    stem: bool
    stopwords: bool
    memory_mb: int
    dtype: str
    hnsw_dtype: str
    connectivity: int
    ef_construction: int
    ef_search: int

#: The Rust core's default build settings, keyed by ``Retriever.build``'s parameter
#: names: what a ``None`` argument means, for display (a CLI's ``[default: ...]``).
DEFAULTS: _Defaults

@final
class Action:
    """The action of one turn, as Search-R1 parses it."""

    def __new__(cls, kind: str, content: str | None) -> Action: ...
    @property
    def kind(self) -> Literal["search", "answer", "invalid"]:
        """``"search"``, ``"answer"`` or ``"invalid"``."""
    @property
    def content(self) -> str | None:
        """The text between the tags, stripped; ``None`` when the action is invalid."""
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...

def parse_action(text: str) -> Action:
    """The first ``<search>…</search>`` or ``<answer>…</answer>`` in ``text``.

    Exactly Search-R1's ``re.search(r"<(search|answer)>(.*?)</\\1>", text, re.DOTALL)``
    with the content stripped as ``str.strip()`` does; ``Action("invalid", None)`` when
    there is no match.
    """

@final
class StopScanner:
    """Finds the first complete stop string in text fed in chunks.

    ``feed(chunk)`` returns the offset, in characters from the start of everything fed,
    just past the first stop string to complete (it may span chunks), else ``None``.
    Once a stop string is found every later call returns the same offset.
    """

    def __new__(cls, stops: Sequence[str]) -> StopScanner: ...
    def feed(self, chunk: str) -> int | None:
        """Feeds ``chunk``; the character offset just past the first stop string, or None."""
    @property
    def matched(self) -> int | None:
        """Index of the stop string found, or ``None``."""
    @property
    def stops(self) -> list[str]:
        """The stop strings looked for."""

@final
class TokenStopChecker:
    """Token-level stop checking for a batch of sequences decoded in lockstep.

    Built once from ``vocab[token_id]`` (the bytes each token decodes to; see
    ``searchr1.vocab_bytes``) and the stop strings. Ids past the vocabulary decode to
    nothing. Call ``reset(batch_size)`` before each batch.
    """

    def __new__(cls, vocab: Sequence[bytes], stops: Sequence[str]) -> TokenStopChecker: ...
    def reset(self, batch_size: int) -> None:
        """Starts tracking ``batch_size`` new sequences."""
    def step(
        self,
        token_ids: npt.NDArray[np.int64] | Sequence[int],
        rows: npt.NDArray[np.int64] | Sequence[int] | None = None,
    ) -> npt.NDArray[np.int32]:
        """Advances sequences by one token each: shape ``[n]`` in, ``[n]`` out.

        ``token_ids[i]`` is the new token of sequence ``rows[i]`` (of sequence ``i`` when
        ``rows`` is None). The result is -1 where the sequence goes on; otherwise the
        sequence has stopped, and the value is how many bytes of this token lie up to the
        end of the stop string (the token's length when the stop ends with it; 0 for a
        sequence that had already stopped).
        """
    def stopped(self, row: int) -> int | None:
        """Which stop string sequence ``row`` stopped on, or ``None`` while it runs."""
    def find(
        self, sequences: Iterable[npt.NDArray[np.int64] | Sequence[int]]
    ) -> list[tuple[int, int, int] | None]:
        """The first stop string in each whole sequence of token ids, or ``None``.

        A match is ``(token index, bytes of that token kept, which stop)``: what ``step``
        would have reported token by token. Leaves the tracked sequences alone.
        """
    @property
    def vocab_size(self) -> int:
        """Number of token ids in the vocabulary."""
    @property
    def batch_size(self) -> int:
        """Number of sequences tracked since the last ``reset``."""

def pack_trajectories(
    trajectories: Iterable[Any],
    max_prompt_len: int | None = None,
    max_response_len: int | None = None,
    pad_id: int = 0,
) -> dict[str, Any]:
    """Packs trajectories into numpy arrays; ``searchr1.pack`` wraps this.

    Each trajectory has ``prompt_ids`` and ``segments``; each segment ``ids``,
    ``generated`` and ``logprobs`` (or None). Returns a dict with ``input_ids``,
    ``attention_mask``, ``position_ids`` (int64 ``[B, P+R]``), ``loss_mask`` and
    ``old_logprobs`` (float32 ``[B, R]``), ``last_index`` (int64 ``[B]``: the response
    column of the last sampled token, -1 when none), ``truncated`` (bool ``[B]``),
    ``prompt_len`` and ``response_len``.
    """

# Every setting left None below takes the default listed in DEFAULTS.

@final
class IndexBuilder:
    """An index being built in ``out`` (absent or empty, or with ``overwrite`` a
    searchr1 index or interrupted build to replace): the passages (and BM25) on
    creation, then optionally dense vectors and an HNSW graph, each stage committed by
    an incomplete manifest; ``finish`` marks it complete. ``abort`` (or dropping the
    builder unfinished) removes what the build wrote; so does Ctrl-C during a step,
    which then raises ``KeyboardInterrupt``."""

    def __new__(
        cls,
        corpus: PathLike[str] | str,
        out: PathLike[str] | str,
        *,
        bm25: bool = True,
        k1: float | None = None,
        b: float | None = None,
        stem: bool | None = None,
        stopwords: bool | None = None,
        threads: int | None = None,
        memory_mb: int | None = None,
        skip_bad: bool = False,
        progress: bool = False,
        overwrite: bool = False,
    ) -> IndexBuilder: ...
    @property
    def manifest(self) -> str:
        """The manifest as it stands (incomplete until ``finish``), as JSON text."""
    def add_dense(self, dim: int, dtype: str | None, rows: int, encoder: str) -> None:
        """Records the vectors a ``DenseWriter`` wrote into the index's ``dense`` directory
        (reading them back for their checksum)."""
    def add_hnsw(
        self,
        *,
        dtype: str | None = None,
        connectivity: int | None = None,
        expansion_add: int | None = None,
        expansion_search: int | None = None,
        threads: int | None = None,
        progress: bool = False,
    ) -> None:
        """Builds an HNSW graph (usearch's) over the dense vectors, adding rows on
        ``threads`` threads."""
    def finish(self) -> str:
        """Writes the manifest marked complete, which commits the index; returns it as
        JSON text."""
    def abort(self) -> None:
        """Removes what the build wrote (nothing once finished)."""

@final
class Index:
    """An opened index directory; ``searchr1.Retriever`` wraps it."""

    def __new__(cls, path: PathLike[str] | str) -> Index: ...
    @property
    def manifest(self) -> str:
        """The manifest, as JSON text."""
    def __len__(self) -> int: ...
    def analyze(self, text: str) -> list[str]:
        """The terms ``text`` is indexed as."""
    def search_bm25(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float, str]]]:
        """BM25 top ``k`` of each query: ``(id, score, contents)``, best first."""
    @property
    def dense_dim(self) -> int | None:
        """Dimensions of the dense vectors, or ``None`` without them."""
    def set_ef_search(self, n: int) -> None:
        """Sets the HNSW search breadth (efSearch) for later searches."""
    @property
    def has_hnsw(self) -> bool:
        """Whether the index has an HNSW graph for approximate dense search."""
    def search_dense(
        self, queries: npt.NDArray[np.float32], k: int, exact: bool = False
    ) -> list[list[tuple[str, float, str]]]:
        """Inner-product top ``k`` per query vector (float32 ``[n, dim]``): through the
        HNSW graph when there is one, unless ``exact``."""

@final
class DenseWriter:
    """Writes the vectors of an index's passages, in corpus order, into its ``dense``
    directory."""

    def __new__(
        cls, dir: PathLike[str] | str, dim: int, dtype: str | None = None
    ) -> DenseWriter: ...
    def add(self, vectors: npt.NDArray[np.float32]) -> None:
        """Appends the vectors of the next passages (float32, shape ``[n, dim]``)."""
    @property
    def rows(self) -> int:
        """Rows written so far."""
    def finish(self) -> int:
        """Flushes the files; returns the number of rows."""

def add_hnsw(
    dir: PathLike[str] | str,
    *,
    dtype: str | None = None,
    connectivity: int | None = None,
    expansion_add: int | None = None,
    expansion_search: int | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> str:
    """Builds an HNSW graph (usearch's) over the dense vectors of the index ``dir``,
    replacing any graph it had (an older searchr1's graph must be rebuilt this way);
    returns the manifest."""

def verify_index(dir: PathLike[str] | str) -> tuple[int, int, int, list[str]]:
    """Reads every file of the index ``dir`` against the checksums of its manifest;
    returns ``(files checked, their bytes, files recorded, problems)``."""

@final
class CorpusBatches:
    """Reads a corpus in batches of ``(id, contents)`` pairs."""

    def __new__(
        cls, path: PathLike[str] | str, batch_size: int = 1024, skip_bad: bool = False
    ) -> CorpusBatches: ...
    def __iter__(self) -> CorpusBatches: ...
    def __next__(self) -> list[tuple[str, str]]: ...
    @property
    def skipped(self) -> int:
        """Malformed lines skipped so far."""
