"""Reading the vectors of a faiss index file without faiss, streamed in batches.

faiss writes an index as a fourcc naming its type, a header, then that type's data
(``faiss/impl/index_write.cpp``). The types whose data are the vectors themselves, as
raw little-endian float32:

- ``IxFI`` IndexFlatIP, ``IxF2`` IndexFlatL2, ``IxFl`` IndexFlat (metric in the
  header): the header, then ``u64`` n·d and the n·d floats, row by row.
- ``IHNf`` IndexHNSWFlat: the header, the graph (five arrays, each a ``u64`` length
  and its items, then five ``i32``), then its storage: one of the flat indexes above.

The header is ``i32 d, i64 ntotal, i64, i64 (unused), u8 is_trained, i32 metric``,
then an ``f32`` argument for a metric other than inner product (0) and L2 (1).
Only the header and the graph's array lengths are read before the vectors: a 60 GB
file costs a few small reads to open, and its vectors go through one buffer of
:data:`BATCH_BYTES` at a time.
"""

from __future__ import annotations

import gzip
import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from searchr1 import _core
from searchr1.errors import InputError
from searchr1.retrieval.encoder import EncoderConfig

__all__ = [
    "DEFAULT_MODEL",
    "FaissVectors",
    "check_import",
    "copy_vectors",
    "import_encoder",
    "open_faiss",
    "read_batches",
]

#: The encoder recorded for imported vectors when none is named: Search-R1's e5-base-v2
#: ("query: " / "passage: " prefixes, mean pooling, normalised), looked up in the local
#: Hugging Face cache when queries are first encoded.
DEFAULT_MODEL = "intfloat/e5-base-v2"
#: Dimensions of the models whose size is known without loading them.
KNOWN_DIMS = {DEFAULT_MODEL: 768}
#: How far the lengths of an IndexFlatL2's vectors may differ (relatively) for the
#: inner product to rank as the L2 distance does (float32 normalisation leaves ~1e-7).
NORM_TOLERANCE = 1e-4

#: Flat index fourccs and the metric each implies (None: read from the header).
FLAT = {b"IxFI": "IndexFlatIP", b"IxF2": "IndexFlatL2", b"IxFl": "IndexFlat"}
HNSW_FLAT = b"IHNf"
#: faiss's MetricType values that our inner-product store can serve.
METRICS = {0: "inner_product", 1: "l2"}
_HEADER = struct.Struct("<iqqqBi")
#: Bytes of vectors read at once (and handed to the store's writer as one batch).
BATCH_BYTES = 32 << 20
#: The HNSW graph's arrays, by item size: assign_probas (f64), cum_nneighbor_per_level
#: (i32), levels (i32), offsets (u64), neighbors (i32); then five i32 settings.
_HNSW_ARRAYS = (8, 4, 4, 8, 4)
_HNSW_TAIL = 5 * 4


@dataclass(frozen=True)
class FaissVectors:
    """Where the vectors of a faiss file are: ``rows`` float32 rows of ``dim`` values
    from byte ``offset`` of ``path``. ``kind`` is the faiss class (the graph of an
    IndexHNSWFlat is not read), ``metric`` "inner_product" or "l2"."""

    path: Path
    kind: str
    metric: str
    dim: int
    rows: int
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of vectors in the file."""
        return self.rows * self.dim * 4


def open_faiss(path: str | Path) -> FaissVectors:
    """Reads the header of the faiss index file ``path`` and checks that the file holds
    all the vectors it announces.

    Raises :class:`~searchr1.errors.InputError` naming the file for a type other than
    IndexFlatIP, IndexFlatL2, IndexFlat and IndexHNSWFlat, a metric other than inner
    product and L2, a header that contradicts itself, or a file shorter than its
    vectors (a truncated download).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            fourcc = _read(f, path, 4, "the index type")
            if fourcc == HNSW_FLAT:
                _read_header(f, path)  # the storage's header below says the same
                _skip_hnsw_graph(f, path, size)
                storage = _read(f, path, 4, "the type of the HNSW index's storage")
                if storage not in FLAT:
                    raise InputError(
                        f"{path}: an IndexHNSWFlat whose storage is {_show(storage)}, "
                        "not a flat index"
                    )
                found = _read_flat(f, path, storage, "IndexHNSWFlat")
            elif fourcc in FLAT:
                found = _read_flat(f, path, fourcc, FLAT[fourcc])
            else:
                known = ", ".join(f"{name} ({code.decode()})" for code, name in FLAT.items())
                raise InputError(
                    f"{path}: a faiss index of type {_show(fourcc)}, which cannot be imported: "
                    f"only {known} and IndexHNSWFlat (IHNf) store their vectors whole"
                )
    except OSError as e:
        raise InputError(f"cannot read the faiss index {path}: {e.strerror or e}") from e
    end = found.offset + found.nbytes
    if size < end:
        raise InputError(
            f"{path}: truncated: {found.rows} vectors of {found.dim} floats end at byte "
            f"{end:,}, but the file has {size:,} bytes"
        )
    return found


def read_batches(vectors: FaissVectors) -> Iterator[npt.NDArray[np.float32]]:
    """The vectors in order, as float32 arrays ``[rows, dim]`` of up to
    :data:`BATCH_BYTES`; one buffer is reused, so each array is valid until the next is
    asked for."""
    batch_rows = max(1, BATCH_BYTES // (4 * vectors.dim))
    buffer = np.empty((batch_rows, vectors.dim), dtype="<f4")
    with vectors.path.open("rb") as f:
        f.seek(vectors.offset)
        done = 0
        while done < vectors.rows:
            n = min(batch_rows, vectors.rows - done)
            view = buffer[:n]
            got = f.readinto(view.data.cast("B"))
            if got != view.nbytes:
                missing = done + got // (4 * vectors.dim)
                raise InputError(
                    f"{vectors.path}: truncated while reading: row {missing} of "
                    f"{vectors.rows} is missing"
                )
            done += n
            yield view


def _read_flat(f: BinaryIO, path: Path, fourcc: bytes, kind: str) -> FaissVectors:
    dim, rows, metric = _read_header(f, path)
    if (fourcc == b"IxFI" and metric != 0) or (fourcc == b"IxF2" and metric != 1):
        raise InputError(f"{path}: a {FLAT[fourcc]} whose header names metric {metric}")
    if metric not in METRICS:
        raise InputError(
            f"{path}: the vectors are compared by faiss metric {metric}; only inner "
            "product (0) and L2 (1) can be imported"
        )
    (values,) = struct.unpack("<Q", _read(f, path, 8, "the number of vector values"))
    if values != rows * dim:
        raise InputError(
            f"{path}: the header announces {rows} vectors of {dim} floats, but the data "
            f"holds {values} floats"
        )
    kind = {0: "IndexFlatIP", 1: "IndexFlatL2"}[metric] if kind == "IndexFlat" else kind
    return FaissVectors(path, kind, METRICS[metric], dim, rows, f.tell())


def _read_header(f: BinaryIO, path: Path) -> tuple[int, int, int]:
    """``(dim, rows, metric)`` of the header at the file's position."""
    dim, rows, _, _, _, metric = _HEADER.unpack(_read(f, path, _HEADER.size, "the header"))
    if dim < 1 or rows < 0:
        raise InputError(f"{path}: not a faiss index header ({dim} dimensions, {rows} vectors)")
    if metric > 1:
        _read(f, path, 4, "the metric's argument")
    return dim, rows, metric


def _skip_hnsw_graph(f: BinaryIO, path: Path, size: int) -> None:
    """Moves past the graph of an IndexHNSWFlat, reading only its arrays' lengths."""
    for item in _HNSW_ARRAYS:
        (n,) = struct.unpack("<Q", _read(f, path, 8, "the HNSW graph"))
        target = f.tell() + n * item
        if target > size:
            raise InputError(
                f"{path}: truncated in the HNSW graph (an array of {n} items ends at byte "
                f"{target:,}, past the end of the file at {size:,})"
            )
        f.seek(target)
    _read(f, path, _HNSW_TAIL, "the HNSW graph's settings")


def _read(f: BinaryIO, path: Path, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise InputError(f"{path}: truncated: the file ends in {what} (at byte {f.tell():,})")
    return data


def _show(fourcc: bytes) -> str:
    """A fourcc as text when it is printable, else as its bytes."""
    text = fourcc.decode("ascii", "replace")
    return repr(text) if text.isprintable() and "\ufffd" not in text else repr(fourcc)


def import_encoder(model: str | Path | None, **overrides: str) -> EncoderConfig:
    """The encoder to record for imported vectors: ``model`` (a model directory, or the
    name of a model in the local Hugging Face cache) with the settings that suit it,
    else :data:`DEFAULT_MODEL`'s. Nothing is loaded."""
    from searchr1.retrieval.encoder import locate_model

    name = DEFAULT_MODEL if model is None else locate_model(model)
    return EncoderConfig.for_model(name, **overrides)


def check_import(
    path: str | Path, corpus: Path, encoder: EncoderConfig, skip_bad: bool
) -> FaissVectors:
    """The vectors of the faiss file ``path``, checked before any index is built: its
    type and length (see :func:`open_faiss`), its dimensions against the encoder's when
    they are known without loading it, and its row count against the corpus's non-blank
    lines (each a passage; with ``skip_bad`` some may be skipped, so there must be at
    least as many lines as vectors). Raises :class:`~searchr1.errors.InputError`."""
    vectors = open_faiss(path)
    dim = model_dim(encoder.model)
    if dim is not None and dim != vectors.dim:
        raise InputError(
            f"{vectors.path}: {vectors.dim}-d vectors, but the encoder {encoder.model!r} "
            f"makes {dim}-d ones: name the model that made them with --dense-model"
        )
    lines = count_lines(corpus)
    if lines < vectors.rows or (lines > vectors.rows and not skip_bad):
        raise InputError(
            f"{vectors.path} holds {vectors.rows:,} vectors but {corpus} has {lines:,} "
            "passages: row i of the faiss index must be the vector of passage i of the corpus"
        )
    return vectors


def model_dim(model: str) -> int | None:
    """The vector size of ``model`` when its config says it (or it is a model whose
    size is known), without loading it; None otherwise."""
    if model in KNOWN_DIMS:
        return KNOWN_DIMS[model]
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    size = json.loads(config.read_text()).get("hidden_size")
    return size if isinstance(size, int) else None


def count_lines(corpus: Path) -> int:
    """Non-blank lines of ``corpus`` (gzip when it ends in ``.gz``, as the corpus reader
    decides): the passages it holds when every line is well formed. Read at ~1.6 GB/s,
    seconds against the minutes of a BM25 build that a mismatch would waste."""
    opener = gzip.open if corpus.suffix == ".gz" else open
    with opener(corpus, "rb") as f:
        return sum(1 for line in f if not _blank(line))


def _blank(line: bytes) -> bool:
    # The corpus reader skips lines that are whitespace to Rust's str::trim (Unicode's
    # White_Space), which str.isspace follows; bytes.strip knows ASCII only.
    return not line.strip() or (not line.isascii() and line.decode("utf-8", "replace").isspace())


def copy_vectors(vectors: FaissVectors, writer: _core.DenseWriter, progress: bool = False) -> int:
    """Streams the vectors into ``writer`` (which stores them in its dtype) in order;
    returns the rows written. An IndexFlatL2's vectors must all have the same length,
    since then ranking by inner product, as searchr1 does, is ranking by L2 distance;
    otherwise :class:`~searchr1.errors.InputError` names the first row that differs."""
    bar = _progress(vectors, progress)
    norm: float | None = None
    done = 0
    for batch in read_batches(vectors):
        if vectors.metric == "l2":
            norm = _check_norms(vectors, batch, done, norm)
        try:
            writer.add(batch)
        except InputError as e:
            raise InputError(f"{vectors.path}: {e}") from e
        done += len(batch)
        if bar is not None:
            bar.update(batch.nbytes)
    if bar is not None:
        bar.close()
    return writer.finish()


def _check_norms(
    vectors: FaissVectors, batch: npt.NDArray[np.float32], first: int, norm: float | None
) -> float:
    """The common length of the vectors (that of row 0), checked over ``batch``."""
    norms = np.sqrt(np.einsum("ij,ij->i", batch, batch, dtype=np.float64))
    if norm is None:
        norm = float(norms[0])
    off = np.flatnonzero(np.abs(norms - norm) > NORM_TOLERANCE * max(norm, 1e-30))
    if off.size:
        row = first + int(off[0])
        raise InputError(
            f"{vectors.path}: an {vectors.kind} (L2 distance) whose vectors differ in length "
            f"(row 0: {norm:.6g}, row {row}: {norms[off[0]]:.6g}). searchr1 ranks by inner "
            "product, which ranks as the L2 distance only when every vector has the same "
            "length, so this index cannot be imported without changing its rankings: "
            "normalise the vectors (and the queries) and index them as an IndexFlatIP"
        )
    return norm


def _progress(vectors: FaissVectors, progress: bool) -> Any:
    """A progress bar in bytes (tqdm shows the rate in MB/s and the time left), or None."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=vectors.nbytes,
        desc="importing",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
    )


def record(config: EncoderConfig, vectors: FaissVectors) -> str:
    """The manifest's ``dense.encoder`` for imported vectors: the encoder's settings, and
    where the vectors came from."""
    source = {"path": str(vectors.path.resolve()), "type": vectors.kind, "metric": vectors.metric}
    return json.dumps({**asdict(config), "imported_from": source})
