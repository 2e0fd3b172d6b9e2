"""The HNSW graph is usearch's: its file, the manifest's graph format, and old graphs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from searchr1 import IndexFormatError, _core

DIM = 32


def dense_index(out: Path, n: int = 2_000) -> np.ndarray:
    """An index of `n` clustered unit vectors (passages empty), without a graph."""
    corpus = out.parent / "ids.jsonl"
    corpus.write_text("".join(f'{{"id": "{i}", "contents": ""}}\n' for i in range(n)))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, DIM), dtype=np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", DIM, "f32")
    writer.add(x)
    builder.add_dense(DIM, "f32", writer.finish(), json.dumps({"model": "synthetic"}))
    builder.finish()
    return x


def test_the_graph_is_a_usearch_file_recorded_with_its_format(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    dense_index(out, n=2_000)
    manifest = json.loads(_core.add_hnsw(out, dtype="i8", threads=2))
    assert manifest["dense"]["hnsw"]["format"] == 2
    assert "dense/hnsw.usearch" in manifest["files"]
    data = (out / "dense" / "hnsw.usearch").read_bytes()
    # usearch's layout: the vectors' matrix (rows, bytes per row, then the rows), then
    # its header, which starts with its magic.
    rows, row_bytes = struct.unpack_from("<II", data)
    assert (rows, row_bytes) == (2_000, DIM)
    assert data[8 + rows * row_bytes :].startswith(b"usearch")
    index = _core.Index(out)
    assert index.has_hnsw
    q = np.eye(DIM, dtype=np.float32)[:3]
    approx, exact = index.search_dense(q, 5), index.search_dense(q, 5, exact=True)
    assert [{h[0] for h in row} for row in approx] == [{h[0] for h in row} for row in exact]


def test_an_older_graph_is_refused_until_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    dense_index(out)
    _core.add_hnsw(out, threads=2)
    # What an older searchr1 left: a graph format not named, its own graph file.
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["dense"]["hnsw"]["format"]
    path.write_text(json.dumps(manifest))
    (out / "dense" / "hnsw.graph").write_bytes(b"SR1HNSW1")
    with pytest.raises(IndexFormatError, match=r"older searchr1.*`searchr1 index --hnsw`"):
        _core.Index(out)
    rebuilt = json.loads(_core.add_hnsw(out, threads=2))
    assert rebuilt["dense"]["hnsw"]["format"] == 2
    assert not (out / "dense" / "hnsw.graph").exists()
    assert _core.Index(out).has_hnsw
    assert _core.verify_index(out)[3] == []
