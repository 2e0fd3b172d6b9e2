"""What ``searchr1 index`` will need before it starts: disk for the index, and memory.

:func:`estimate` is pure arithmetic over the sizes that decide an index's size (the
corpus's bytes and passages, the vectors' count, dimension and dtype, the graph's
links); :func:`check` measures those sizes cheaply (the first MiB of the corpus, a
faiss file's header, a model's ``config.json``) and sets the estimate against the free
disk on the index's filesystem. Nothing is built, and nothing big is read.
"""

from __future__ import annotations

import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

from searchr1.errors import InputError

__all__ = ["Estimate", "Preflight", "check", "corpus_size", "estimate", "human"]

#: BM25 bytes per corpus byte, on disk while building. Assumes tantivy's index (term
#: frequencies, no positions, no stored text) is at most a quarter of the corpus's
#: bytes, and that merging segments holds up to two copies of it for a while.
BM25_RATIO = 0.5
#: Bytes per passage besides its text: its offset in ``passages.idx`` (a u64), which
#: the build also holds in memory until the store is written.
ROW_BYTES = 8
#: Bytes per node of an HNSW graph besides its copy of the vector: assumes usearch
#: keeps 2·M links of 4 bytes at level 0, a tenth more for the upper levels, and a key
#: and header of 24 bytes.
HNSW_NODE_BYTES = 24
HNSW_LINK_BYTES = 2 * 4 * 1.1
#: Room the estimate leaves for what it does not count (the manifest, tantivy's meta
#: files, filesystem blocks).
DISK_MARGIN = 1.1
#: Memory of the process before it builds anything: Python, numpy, the Rust core.
BASE_MEMORY = 128 << 20
#: BM25 indexer memory per corpus byte, until its budget (``memory_mb``) is reached:
#: assumes tantivy's in-memory segments take no more than the text indexed into them.
BM25_MEMORY_RATIO = 1.0
#: Corpus bytes read to measure its passages' mean length (and a gzip file's ratio).
SAMPLE_BYTES = 1 << 20
#: Text bytes per gzip byte when a gzip corpus cannot be sampled: assumes gzip shrinks
#: JSONL text at most 4 times.
GZIP_RATIO = 4.0
#: gzip records a member's text length modulo this (its trailer's ISIZE).
_ISIZE_MODULUS = 1 << 32


#: Bytes per vector value of each dtype.
VALUE_BYTES = {"f32": 4, "f16": 2, "i8": 1}


def vector_bytes(dim: int, dtype: str) -> int:
    """Bytes of one stored vector of ``dim`` values: f32, f16, or i8 with an f32 scale
    (the graph's i8 copies have none)."""
    if dtype not in VALUE_BYTES:
        raise ValueError(f"unknown vector dtype {dtype!r}; expected f32, f16 or i8")
    return dim * VALUE_BYTES[dtype] + (4 if dtype == "i8" else 0)


@dataclass(frozen=True)
class Estimate:
    """Bytes a build needs: ``disk`` at its peak, ``memory`` resident at its peak."""

    disk: int
    memory: int


def estimate(
    corpus_bytes: int,
    passages: int,
    *,
    bm25: bool = True,
    dim: int | None = None,
    dtype: str = "f32",
    hnsw: bool = False,
    hnsw_dtype: str = "i8",
    connectivity: int = 24,
    memory_mb: int = 512,
    shards: bool = False,
    model_bytes: int = 0,
    encoders: int = 1,
) -> Estimate:
    """What indexing ``corpus_bytes`` bytes of JSONL text holding ``passages`` passages
    needs. ``dim``: the size of the dense vectors, stored as ``dtype`` (None: none);
    ``hnsw`` adds a graph of ``connectivity`` links per node over copies in
    ``hnsw_dtype``, built in memory. ``shards``: the vectors are encoded into f32 shards
    first (``--devices``, torchrun), which stay until they are committed. ``memory_mb``
    caps the BM25 indexer's memory; ``model_bytes`` the encoder's weights, when passages
    are encoded on this machine, by ``encoders`` processes (one per ``--devices``
    device), each of which loads them into memory first.

    The passage store is at most the corpus's text (a row holds the id and the
    contents, without the JSON around them); see the module's constants for the rest.
    """
    if corpus_bytes < 0 or passages < 0:
        raise ValueError("corpus_bytes and passages must be >= 0")
    disk: float = corpus_bytes + ROW_BYTES * (passages + 1)
    memory: float = BASE_MEMORY + ROW_BYTES * passages
    if bm25:
        disk += BM25_RATIO * corpus_bytes
        memory += min(memory_mb << 20, BM25_MEMORY_RATIO * corpus_bytes)
    if dim is not None:
        disk += passages * vector_bytes(dim, dtype)
        if shards:
            disk += passages * vector_bytes(dim, "f16" if dtype == "f16" else "f32")
        memory += model_bytes * encoders
        if hnsw:
            node = dim * VALUE_BYTES[hnsw_dtype] + HNSW_NODE_BYTES
            graph = passages * (node + HNSW_LINK_BYTES * connectivity)
            disk += graph
            memory += graph
    return Estimate(disk=round(disk * DISK_MARGIN), memory=round(memory))


def corpus_size(corpus: Path) -> tuple[int, int]:
    """``(text bytes, passages)`` of a JSONL corpus (gzip when it ends in ``.gz``),
    estimated from its first :data:`SAMPLE_BYTES`: exact for a file that short, else
    its size (times the sample's gzip ratio) over the sample's mean line length."""
    size = corpus.stat().st_size
    with corpus.open("rb") as f:
        head = f.read(SAMPLE_BYTES)
    whole = len(head) == size
    text_bytes = size
    if corpus.suffix == ".gz":
        with corpus.open("rb") as f:
            f.seek(max(0, size - 4))
            isize = int.from_bytes(f.read(4), "little")
        head, text_bytes, whole = _gunzip_head(head, size, whole, isize)
    if whole:
        return text_bytes, _lines(head)
    complete = head[: head.rfind(b"\n") + 1]
    if not complete:
        return text_bytes, 1  # one line longer than the sample
    return text_bytes, max(1, round(text_bytes * _lines(complete) / len(complete)))


def _gunzip_head(head: bytes, size: int, whole: bool, isize: int) -> tuple[bytes, int, bool]:
    """The text that the gzip bytes ``head`` (the file's first, ``whole`` when they are
    all of its ``size`` bytes) decompress to, the file's text bytes, and whether that
    text is the file's whole text. The text bytes are the size times the sample's ratio,
    or, when that is near, the trailer's ``isize`` (a one-member file's text bytes modulo
    2^32) plus the multiple of 2^32 that comes nearest it: a file of several members
    (pigz, bgzip) records its last member's."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        text = inflate.decompress(head, SAMPLE_BYTES * 64)
    except zlib.error:
        return b"", round(size * GZIP_RATIO), False  # the build will say what is wrong
    used = len(head) - len(inflate.unconsumed_tail) - len(inflate.unused_data)
    if whole and inflate.eof and not inflate.unused_data:
        return text, len(text), True
    guess = round(size * len(text) / used) if text and used else round(size * GZIP_RATIO)
    if inflate.eof:  # the first member ended: several members, and ISIZE is the last's
        return text, guess, False
    trailer = isize + max(0, round((guess - isize) / _ISIZE_MODULUS)) * _ISIZE_MODULUS
    near = guess / 1.5 <= trailer <= guess * 1.5
    return text, trailer if near else guess, False


def _lines(text: bytes) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Preflight:
    """An :class:`Estimate` set against the free disk ``free`` on the filesystem
    mounted at ``where``. ``dense_unknown``: the build makes dense vectors whose size
    is unknown before their model loads, so they are not counted."""

    need: Estimate
    free: int
    where: Path
    dense_unknown: bool = False

    @property
    def fits(self) -> bool:
        return self.free >= self.need.disk

    def line(self) -> str:
        """``index: needs about X GB of disk (free: Y GB on /path), about Z GB of memory``."""
        unknown = " (dense vectors not counted: their size is known once the model loads)"
        return (
            f"index: needs about {human(self.need.disk)} of disk (free: {human(self.free)} "
            f"on {self.where}), about {human(self.need.memory)} of memory"
            + (unknown if self.dense_unknown else "")
        )

    def refusal(self) -> str:
        return (
            f"not enough disk: the index needs about {human(self.need.disk)} and "
            f"{self.where} has {human(self.free)} free; free some room or pick another "
            "--out (or build anyway with --no-preflight)"
        )


def human(n: float) -> str:
    """Bytes in GB, or MB or kB below that: one decimal below 10."""
    unit, size = next(((u, s) for u, s in (("GB", 1e9), ("MB", 1e6)) if n >= s), ("kB", 1e3))
    v = n / size
    return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"


def check(
    corpus: Path,
    out: Path,
    *,
    bm25: bool = True,
    dense_model: str | Path | None = None,
    import_faiss: Path | None = None,
    dtype: str | None = None,
    hnsw: bool = False,
    hnsw_dtype: str | None = None,
    memory_mb: int | None = None,
    devices: str | None = None,
    overwrite: bool = False,
) -> Preflight:
    """The estimate for ``searchr1 index`` with these options (None: the core's
    default), and the free disk where ``out`` will be. With ``overwrite``, what ``out``
    holds now counts as free: the build removes it first. Raises
    :class:`~searchr1.errors.InputError` for a faiss file it cannot read."""
    from searchr1._core import DEFAULTS

    text_bytes, passages = corpus_size(corpus)
    dim, model_bytes = None, 0
    dense = dense_model is not None or import_faiss is not None
    encoders = 1
    if import_faiss is not None:
        from searchr1.retrieval.faiss_import import open_faiss

        vectors = open_faiss(import_faiss)
        dim, passages = vectors.dim, vectors.rows
    elif dense_model is not None:
        dim, model_bytes = _model_size(dense_model)
        if devices is not None:
            from searchr1.retrieval.sharded import parse_devices

            encoders = len(parse_devices(devices))
    need = estimate(
        text_bytes,
        passages,
        bm25=bm25,
        dim=dim,
        dtype=dtype or DEFAULTS["dtype"],
        hnsw=hnsw,
        hnsw_dtype=hnsw_dtype or DEFAULTS["hnsw_dtype"],
        connectivity=DEFAULTS["connectivity"],
        memory_mb=memory_mb or DEFAULTS["memory_mb"],
        shards=dense_model is not None and import_faiss is None and _sharded(devices),
        model_bytes=model_bytes,
        encoders=encoders,
    )
    where = _existing(out)
    free = shutil.disk_usage(where).free
    if overwrite and out.is_dir():
        free += _tree_bytes(out)
    return Preflight(need, free, _mount(where), dense_unknown=dense and dim is None)


def _model_size(model: str | Path) -> tuple[int | None, int]:
    """The vector size (from ``config.json``'s ``hidden_size``) and weight bytes of the
    encoder ``model``, a directory or a model in the local Hugging Face cache; None and
    0 for what cannot be found without loading it."""
    from searchr1.retrieval.faiss_import import model_dim

    path = Path(model).expanduser()
    if not path.is_dir():
        try:
            from searchr1.hub import local_model

            path = Path(local_model(model))
        except (ImportError, InputError):  # no such model, or no huggingface_hub
            return model_dim(str(model)), 0
    weights = sum(
        p.stat().st_size
        for p in path.iterdir()
        if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file()
    )
    return model_dim(str(path)), weights


def _sharded(devices: str | None) -> bool:
    """Whether the passages are encoded into shards first (see ``retrieval.sharded``)."""
    return devices is not None or ("WORLD_SIZE" in os.environ and "RANK" in os.environ)


def _existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount(path: Path) -> Path:
    """The mount point of the filesystem holding the existing ``path``."""
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
