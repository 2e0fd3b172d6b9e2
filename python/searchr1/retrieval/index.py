"""The :class:`Retriever`: build an index from a corpus, open it, search it in batches."""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from searchr1 import _core
from searchr1.errors import IndexFormatError, InputError

if TYPE_CHECKING:
    from searchr1.retrieval.encoder import Encoder, EncoderConfig
    from searchr1.retrieval.faiss_import import FaissVectors
    from searchr1.retrieval.torch_search import TorchSearch

__all__ = ["MODES", "Hit", "Retriever", "Verified", "verify"]

#: Search modes an index may support: hybrid needs both BM25 and dense vectors.
MODES = ("bm25", "dense", "hybrid")
#: How dense vectors may be stored (and walked by HNSW).
VECTOR_DTYPES = ("f32", "f16", "i8")
#: What may run dense search: the Rust core on the CPU, or torch matmuls on a device.
DENSE_SEARCH = ("rust", "torch")
#: The constant of reciprocal rank fusion: score = sum of weight / (RRF_K + rank).
RRF_K = 60


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


def check_queries(queries: Sequence[str]) -> list[str]:
    """``queries`` as a list, or TypeError naming the first that is not a string."""
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
    GIL released. A retriever is safe to search from several threads at once: its
    result cache and its lazily loaded encoder are behind locks, which are never held
    while a search runs in Rust.
    """

    def __init__(
        self,
        index: _core.Index,
        path: Path,
        device: str | None = None,
        cache_size: int = 0,
        mode: str = "bm25",
        encoder_dtype: str | None = None,
        dense_search: str | None = None,
    ) -> None:
        self._index = index
        #: The mode of a search that names none (see :meth:`search`).
        self.mode = mode
        self.path = path
        self.manifest: dict[str, Any] = json.loads(index.manifest)
        self._device = device
        self._encoder_dtype = encoder_dtype
        self._encoder: Encoder | None = None
        self._encoder_lock = threading.Lock()
        #: What runs dense search: "rust" (the core, on the CPU) or "torch" (on ``device``).
        self.dense_search = _dense_search(dense_search, device)
        self._torch: TorchSearch | None = None
        self._torch_lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int, str], list[Hit]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_size = cache_size

    @classmethod
    def build(
        cls,
        corpus: str | Path,
        out: str | Path,
        *,
        bm25: bool = True,
        dense_model: str | Path | None = None,
        import_faiss: str | Path | None = None,
        k1: float | None = None,
        b: float | None = None,
        stem: bool | None = None,
        stopwords: bool | None = None,
        dtype: str | None = None,
        hnsw: bool = False,
        hnsw_dtype: str | None = None,
        connectivity: int | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
        pooling: str | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
        encoder_dtype: str | None = None,
        devices: str | Sequence[str] | None = None,
        threads: int | None = None,
        memory_mb: int | None = None,
        skip_bad: bool = False,
        progress: bool | None = None,
        overwrite: bool = False,
    ) -> Retriever:
        """Indexes ``corpus`` (JSONL, plain or ``.gz``) into the new directory ``out``.

        ``out`` must be absent or empty; with ``overwrite`` it may also hold a searchr1
        index or the leftover of an interrupted build, which is replaced (never any
        other directory). The build writes a marker file first, then the manifest
        after each stage (passages and BM25, dense vectors, graph) with checksums of
        the files, marked complete at the end: an index killed mid-build does not open
        (:class:`~searchr1.errors.IndexFormatError` says it was interrupted). Ctrl-C
        stops it promptly and removes what it wrote; so does any failure. A corpus
        with no passages is a :class:`~searchr1.errors.CorpusError`.

        Rows are ``{"id", "contents"}`` (Search-R1) or ``{"id", "title", "text"}``. A
        malformed row raises :class:`~searchr1.errors.CorpusError` naming the file and
        line, unless ``skip_bad`` (then it is skipped and counted in the manifest).
        A setting left ``None`` takes the Rust core's default, listed in
        ``searchr1._core.DEFAULTS``: for BM25 pyserini's ``k1`` and ``b``, with English
        stop words and Porter2 stemming. ``threads`` indexing threads (default: every
        core) share ``memory_mb``.

        ``dense_model`` (a transformers model directory, recorded by its absolute path;
        or the name of a model in the local Hugging Face cache: nothing is downloaded)
        adds dense vectors, stored as
        ``dtype`` ("f32", "f16", or "i8" with a scale per row); pooling and prefixes
        default to what suits the model (see :meth:`EncoderConfig.for_model`). ``hnsw``
        also builds an HNSW graph (usearch's, holding its own copy of the vectors in
        ``hnsw_dtype``: "f32", "f16" or "i8"; the walk's best candidates are re-scored
        exactly against the stored vectors; ``connectivity`` links per node,
        ``ef_construction`` / ``ef_search`` candidate lists) that dense search then
        uses. ``progress`` draws
        bars on standard error (default: when it is a terminal).

        ``import_faiss`` takes the dense vectors from a faiss index file instead of
        encoding the passages (IndexFlatIP, IndexFlatL2, or the vectors an
        IndexHNSWFlat stores; its graph is not read): vector i must be passage i of
        the corpus. The file is streamed, never held in memory. Its type, length,
        vector count against the corpus and dimensions against the encoder are
        checked before anything is built (:class:`~searchr1.errors.InputError` names
        the file). ``dense_model`` then names the encoder that made the vectors, which
        queries will be encoded with; it need not be at hand to import (default:
        e5-base-v2 from the local Hugging Face cache, with its "query: " prefix, mean
        pooling and normalised vectors, as Search-R1's e5 index). Dense search ranks
        by inner product: an IndexFlatL2's vectors must all have the same length
        (normalised ones do), for then that ranks as the L2 distance does, else the
        import fails; hit scores are inner products, not distances.

        Encoding runs on ``device`` (default: a GPU when there is one) in
        ``encoder_dtype`` (default: bfloat16 on a GPU), or in parallel: under
        ``torchrun`` each rank encodes a share of the corpus on its own GPU (or on
        ``device``), and with ``devices`` (``"cuda:0,cuda:1"``, ``"4"`` for the first
        four GPUs, ``"cpu,cpu"``) this process starts one rank per device. Ranks write
        their vectors as shards in ``OUT.shards/``; then rank 0 (or this process)
        builds the index and commits the shards into it, in corpus order, and removes
        them. Run again after a crash, the same build encodes only the shards that were
        not finished (see :mod:`~searchr1.retrieval.sharded`). The vectors are those of
        one process.
        """
        if not bm25 and dense_model is None and import_faiss is None:
            raise InputError(
                "nothing to build: enable bm25, or give a dense_model or a faiss index to import"
            )
        if hnsw and dense_model is None and import_faiss is None:
            raise InputError(
                "hnsw=True needs dense vectors: a dense_model to encode the passages with, "
                "or a faiss index to import"
            )
        if devices is not None and (dense_model is None or import_faiss is not None):
            raise InputError(
                "devices encode the passages: give a dense_model, and no faiss index to import"
            )
        overrides = {
            "pooling": pooling,
            "query_prefix": query_prefix,
            "passage_prefix": passage_prefix,
        }
        faiss = None
        if import_faiss is not None:
            from searchr1.retrieval import faiss_import

            encoder = faiss_import.import_encoder(
                dense_model, **{k: v for k, v in overrides.items() if v is not None}
            )
            # The file's type, length and counts fail before the passages are indexed.
            faiss = faiss_import.check_import(import_faiss, Path(corpus), encoder, skip_bad)
        elif dense_model is not None:
            from searchr1.retrieval.encoder import locate_model

            locate_model(dense_model)  # a missing model directory fails before any work
        if progress is None:
            progress = sys.stderr.isatty()
        out = Path(out)
        parallel = None
        if dense_model is not None and faiss is None:
            from searchr1.retrieval import sharded
            from searchr1.retrieval.encoder import EncoderConfig

            parallel = sharded.start(
                Path(corpus),
                out,
                EncoderConfig.for_model(
                    dense_model, **{k: v for k, v in overrides.items() if v is not None}
                ),
                encoder_dtype=encoder_dtype,
                batch_size=batch_size,
                skip_bad=skip_bad,
                dtype=dtype,
                device=device,
                devices=devices,
                progress=progress,
                overwrite=overwrite,
            )
            if parallel is not None and not parallel.commits:
                parallel.wait_for_commit()  # rank 0 builds the index; the others open it
                return cls.open(out, device=device)
        builder = _core.IndexBuilder(
            Path(corpus),
            out,
            bm25=bm25,
            k1=k1,
            b=b,
            stem=stem,
            stopwords=stopwords,
            threads=threads,
            memory_mb=memory_mb,
            skip_bad=skip_bad,
            progress=progress,
            overwrite=overwrite,
        )
        try:
            if faiss is not None:
                cls._import_dense(builder, Path(corpus), out, faiss, encoder, dtype, progress)
            elif parallel is not None:
                parallel.shards.commit(builder, out, dtype)
            elif dense_model is not None:
                passages = json.loads(builder.manifest)["corpus"]["passages"]
                cls._build_dense(
                    builder,
                    Path(corpus),
                    out,
                    passages,
                    dense_model,
                    dtype,
                    batch_size,
                    device,
                    encoder_dtype,
                    skip_bad,
                    progress,
                    overrides,
                )
            if hnsw:
                builder.add_hnsw(
                    dtype=hnsw_dtype,
                    connectivity=connectivity,
                    expansion_add=ef_construction,
                    expansion_search=ef_search,
                    threads=threads,
                    progress=progress,
                )
            builder.finish()
            if parallel is not None:
                parallel.committed()
        except BaseException:
            builder.abort()
            raise
        return cls.open(out, device=device)

    @staticmethod
    def _import_dense(
        builder: _core.IndexBuilder,
        corpus: Path,
        out: Path,
        vectors: FaissVectors,
        encoder: EncoderConfig,
        dtype: str | None,
        progress: bool,
    ) -> None:
        from searchr1.retrieval import faiss_import

        passages = json.loads(builder.manifest)["corpus"]["passages"]
        if passages != vectors.rows:
            raise InputError(
                f"{vectors.path} holds {vectors.rows:,} vectors but {corpus} has "
                f"{passages:,} passages: row i of the faiss index must be the vector of "
                "passage i of the corpus"
            )
        writer = _core.DenseWriter(out / "dense", vectors.dim, dtype)
        rows = faiss_import.copy_vectors(vectors, writer, progress)
        builder.add_dense(vectors.dim, dtype, rows, faiss_import.record(encoder, vectors))

    @staticmethod
    def _build_dense(
        builder: _core.IndexBuilder,
        corpus: Path,
        out: Path,
        passages: int,
        model: str | Path,
        dtype: str | None,
        batch_size: int,
        device: str | None,
        encoder_dtype: str | None,
        skip_bad: bool,
        progress: bool,
        overrides: dict[str, str | None],
    ) -> None:
        from searchr1.retrieval.encoder import Encoder, EncoderConfig

        config = EncoderConfig.for_model(
            model, **{k: v for k, v in overrides.items() if v is not None}
        )
        encoder = Encoder(config, device=device, dtype=encoder_dtype, batch_size=batch_size)
        writer = _core.DenseWriter(out / "dense", encoder.dim, dtype)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=passages, desc="encoding", unit="passage", file=sys.stderr)
        for batch in _core.CorpusBatches(corpus, batch_size * 16, skip_bad):
            writer.add(encoder.encode([contents for _, contents in batch], kind="passage"))
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        rows = writer.finish()
        builder.add_dense(encoder.dim, dtype, rows, config.to_json())

    @classmethod
    def open(
        cls,
        path: str | Path,
        device: str | None = None,
        cache_size: int = 0,
        mode: str = "bm25",
        encoder_dtype: str | None = None,
        dense_search: str | None = None,
    ) -> Retriever:
        """Opens the index directory ``path`` (memory-mapped; fast for any size).

        Raises :class:`~searchr1.errors.IndexFormatError` for a directory that is not a
        complete searchr1 index of a version this package reads, or whose files differ
        in size or in their first or last 4 KiB from what its build recorded
        (:func:`verify` reads them whole). The dense encoder is
        loaded on ``device`` at the first dense or hybrid search, computing in
        ``encoder_dtype`` (see :class:`~searchr1.retrieval.encoder.Encoder`). ``cache_size`` keeps
        the results of that many recent (query, k, mode) in an LRU cache. ``mode`` is
        the mode of searches that name none, such as those of a rollout.

        ``dense_search`` says what searches the vectors: "rust" (the core, on the CPU:
        exact, or through the HNSW graph) or "torch" (exact, as matmuls over an f16
        copy of the vectors on ``device``, made at the first dense search; "cuda"
        spreads it over as many GPUs as it needs; see
        :mod:`~searchr1.retrieval.torch_search`). Default: "torch" when ``device`` is a
        CUDA device, else "rust".
        """
        path = Path(path)
        return cls(
            _core.Index(path),
            path,
            device=device,
            cache_size=cache_size,
            mode=mode,
            encoder_dtype=encoder_dtype,
            dense_search=dense_search,
        )

    @property
    def modes(self) -> tuple[str, ...]:
        """The search modes this index supports."""
        have = {m for m in ("bm25", "dense") if self.manifest.get(m)}
        if have == {"bm25", "dense"}:
            have.add("hybrid")
        return tuple(m for m in MODES if m in have)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"Retriever({str(self.path)!r}, passages={len(self)}, modes={self.modes})"

    def analyze(self, text: str) -> list[str]:
        """The BM25 terms ``text`` is indexed and searched as."""
        return self._index.analyze(text)

    @property
    def encoder(self) -> Encoder:
        """The dense encoder recorded in the manifest (loaded once, on first use)."""
        encoder = self._encoder
        if encoder is None:
            with self._encoder_lock:
                # Threads that waited here find it loaded by the first one.
                if self._encoder is None:
                    self._encoder = self._load_encoder()
                encoder = self._encoder
        return encoder

    def _load_encoder(self) -> Encoder:
        from searchr1.retrieval.encoder import ENCODER_FIELDS, Encoder, EncoderConfig, locate_model

        dense = self.manifest.get("dense")
        if not dense:
            raise InputError(f"{self.path} has no dense vectors")
        recorded = dense["encoder"]["model"]
        # A relative model path (from an index built before paths were stored absolute)
        # is read relative to the index, never to the working directory or the Hub.
        # Keys beyond the encoder's settings (where imported vectors came from) are kept
        # for people reading the manifest.
        settings = {k: v for k, v in dense["encoder"].items() if k in ENCODER_FIELDS}
        config = EncoderConfig(**{**settings, "model": locate_model(recorded, self.path)})
        try:
            # A list of devices for the torch search has the encoder on the first.
            device = self._device.split(",")[0] if self._device else None
            encoder = Encoder(config, device=device, dtype=self._encoder_dtype)
        except InputError as e:
            raise InputError(f"{e} (the encoder of {self.path / 'manifest.json'})") from e
        if encoder.dim != dense["dim"]:
            raise IndexFormatError(
                f"{self.path}: the index holds {dense['dim']}-d vectors but the encoder "
                f"{dense['encoder']['model']!r} makes {encoder.dim}-d ones"
            )
        return encoder

    def search(
        self,
        queries: Sequence[str],
        k: int = 3,
        mode: str | None = None,
        weights: tuple[float, float] = (1.0, 1.0),
        exact: bool = False,
    ) -> list[list[Hit]]:
        """The best ``k`` passages for each query, best first: one list per query.

        ``mode``: "bm25", "dense" (inner product of normalised vectors: through the HNSW
        graph when the index has one, over every vector when it has not or ``exact``) or
        "hybrid" (reciprocal rank fusion of both, with ``weights`` for BM25 and dense;
        the hit score is then the fused score). None: the retriever's ``mode``.
        """
        mode = self.mode if mode is None else mode
        queries = check_queries(queries)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InputError(f"k must be a non-negative integer, got {k!r}")
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode not in self.modes:
            raise InputError(f"{self.path} cannot search in {mode} mode (it has: {self.modes})")
        if not self.cache_size:
            return self._search(queries, k, mode, weights, exact)
        # The hits in hand are taken under the lock; the search for the rest runs
        # without it, so other threads may evict any key meanwhile.
        known: dict[str, list[Hit]] = {}
        with self._cache_lock:
            for q in queries:
                hits = self._cache.get((mode, k, q))
                if hits is not None:
                    known[q] = hits
        missing = list(dict.fromkeys(q for q in queries if q not in known))
        found = self._search(missing, k, mode, weights, exact)
        known.update(zip(missing, found, strict=True))
        with self._cache_lock:
            for q in queries:
                self._cache[(mode, k, q)] = known[q]
                self._cache.move_to_end((mode, k, q))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [known[q] for q in queries]

    def search_vectors(
        self, vectors: npt.ArrayLike, k: int = 3, exact: bool = False
    ) -> list[list[Hit]]:
        """The best ``k`` passages for each query vector (``[n, dim]``, made as the
        index's passage vectors were: for e5, a "query: " prefix and normalised), best
        first by inner product, as :meth:`search` in dense mode does after encoding;
        for people who encode their queries themselves, as faiss users do."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InputError(f"k must be a non-negative integer, got {k!r}")
        if "dense" not in self.modes:
            raise InputError(f"{self.path} has no dense vectors to search")
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = self.manifest["dense"]["dim"]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise InputError(
                f"query vectors must have shape [n, {dim}] (the index's dimensions), "
                f"not {list(queries.shape)}"
            )
        if not np.isfinite(queries).all():
            raise InputError("query vectors must be finite (a NaN or an infinity was given)")
        rows = self._dense(queries, k, exact)
        return [[Hit(i, s, c) for i, s, c in row] for row in rows]

    def _search(
        self, queries: list[str], k: int, mode: str, weights: tuple[float, float], exact: bool
    ) -> list[list[Hit]]:
        if not queries:
            return []
        if mode == "bm25":
            rows = self._index.search_bm25(queries, k)
        elif mode == "dense":
            rows = self._dense(self.encoder.encode(queries), k, exact)
        else:
            depth = max(5 * k, 50)
            sparse = self._index.search_bm25(queries, depth)
            dense = self._dense(self.encoder.encode(queries), depth, exact)
            return [_fuse([s, d], weights, k) for s, d in zip(sparse, dense, strict=True)]
        return [[Hit(i, s, c) for i, s, c in row] for row in rows]

    def _dense(
        self, queries: npt.NDArray[np.float32], k: int, exact: bool
    ) -> list[list[tuple[str, float, str]]]:
        """``(id, score, contents)`` of the best ``k`` per query vector, by the Rust core
        or torch (which is always exact)."""
        if self.dense_search == "rust":
            return self._index.search_dense(queries, k, exact)
        torch_search = self._torch_search()
        rows, scores = torch_search.search(queries, k)
        found = []
        for query_rows, query_scores in zip(rows, scores, strict=True):
            hits = []
            for row, score in zip(query_rows, query_scores, strict=True):
                pid, contents = torch_search.passages[int(row)]
                hits.append((pid, float(score), contents))
            found.append(hits)
        return found

    def _torch_search(self) -> TorchSearch:
        """The torch search, its vectors copied onto the device at the first call."""
        found = self._torch
        if found is None:
            with self._torch_lock:
                if self._torch is None:
                    from searchr1.retrieval.torch_search import TorchSearch

                    self._torch = TorchSearch.open(self.path, self.manifest, self._device)
                found = self._torch
        return found


@dataclass(frozen=True)
class Verified:
    """What :func:`verify` found: ``files`` read whole (``bytes`` in all) and found as
    built, of ``recorded`` in the manifest, and ``problems``, one line per damaged
    file (none: the index is intact)."""

    files: int
    bytes: int
    recorded: int
    problems: list[str]


def verify(path: str | Path) -> Verified:
    """Reads every file of the index ``path`` and compares it with the checksums its
    build recorded, then opens it. Raises :class:`~searchr1.errors.IndexFormatError`
    when the manifest is unreadable or the build was interrupted; damaged files are
    listed in ``problems``. An index built before checksums has none recorded."""
    files, nbytes, recorded, problems = _core.verify_index(Path(path))
    return Verified(files, nbytes, recorded, problems)


def _dense_search(choice: str | None, device: str | None) -> str:
    """What runs dense search: ``choice``, or by default torch on a CUDA device."""
    if choice is None:
        return "torch" if device is not None and device.startswith("cuda") else "rust"
    if choice not in DENSE_SEARCH:
        raise InputError(f"dense_search must be one of {', '.join(DENSE_SEARCH)}, not {choice!r}")
    return choice


def _fuse(
    ranked: list[list[tuple[str, float, str]]], weights: tuple[float, ...], k: int
) -> list[Hit]:
    """Reciprocal rank fusion of ranked lists; ties go to the earlier-listed passage."""
    scores: dict[str, float] = {}
    contents: dict[str, str] = {}
    for weight, hits in zip(weights, ranked, strict=True):
        for rank, (pid, _, text) in enumerate(hits, 1):
            scores[pid] = scores.get(pid, 0.0) + weight / (RRF_K + rank)
            contents.setdefault(pid, text)
    best = sorted(scores.items(), key=lambda item: -item[1])[:k]
    return [Hit(pid, score, contents[pid]) for pid, score in best]
