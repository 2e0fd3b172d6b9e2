"""The torch dense search (f16 matmuls, for GPUs), run on the CPU against the Rust one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from searchr1 import InputError, Retriever, _core

torch = pytest.importorskip("torch", reason="torch is absent")

N, DIM = 6000, 64


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Normalised vectors around 200 shared centres: close neighbours, as in embeddings."""
    centres = np.random.default_rng(12345).standard_normal((200, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 200, n)] + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(out: Path, vectors: np.ndarray, dtype: str) -> Path:
    corpus = out.parent / f"{out.name}.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "contents": f"passage {i}"}) + "\n"
            for i in range(len(vectors))
        )
    )
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", vectors.shape[1], dtype)
    writer.add(vectors)
    builder.add_dense(vectors.shape[1], dtype, writer.finish(), json.dumps({"model": "synthetic"}))
    builder.finish()
    return out


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    x = clustered(N, DIM, 0)
    x[N - 1] = x[10]  # a tie: the lower row ranks first on both paths
    return x


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_torch_top_k_equals_rust(
    dtype: str, base: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = build(tmp_path_factory.mktemp("torch") / "idx", base, dtype)
    rust = Retriever.open(out)
    assert rust.dense_search == "rust"
    queries = np.concatenate([clustered(200, DIM, 1), base[[10, 11]]])
    want = rust.search_vectors(queries, 10)
    for device in ("cpu", "cpu,cpu,cpu"):  # whole, and in three shards
        torch_path = Retriever.open(out, device=device, dense_search="torch")
        got = torch_path.search_vectors(queries, 10)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(
                [h.score for h in g], [h.score for h in w], rtol=1e-5, atol=1e-6
            )
            assert [h.contents for h in g] == [h.contents for h in w]
    assert [h.id for h in got[-2][:2]] == ["p10", f"p{N - 1}"]
    shards = torch_path._torch_search().shards
    assert [(start, len(t)) for start, t in shards] == [(0, 2000), (2000, 2000), (4000, 2000)]
    assert all(t.dtype == torch.float16 for _, t in shards)


def test_edges(base: np.ndarray, tmp_path: Path) -> None:
    out = build(tmp_path / "idx", base[:5], "f32")
    r = Retriever.open(out, device="cpu", dense_search="torch")
    rust = Retriever.open(out)
    q = base[:3]
    assert [len(row) for row in r.search_vectors(q, 50)] == [5, 5, 5]  # k beyond the rows
    assert [[h.id for h in row] for row in r.search_vectors(q, 50)] == [
        [h.id for h in row] for row in rust.search_vectors(q, 50)
    ]
    assert r.search_vectors(q, 0) == [[], [], []]
    assert r.search_vectors(np.zeros((0, DIM), np.float32), 3) == []


def test_large_batches_are_split(
    base: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from searchr1.retrieval import torch_search

    out = build(tmp_path / "idx", base[:3000], "f16")
    r = Retriever.open(out, device="cpu", dense_search="torch")
    queries = clustered(40, DIM, 3)
    whole = r.search_vectors(queries, 5)
    monkeypatch.setattr(torch_search, "MAX_QUERIES", 7)  # queries searched 7 at a time
    monkeypatch.setattr(torch_search, "MAX_BLOCK_ROWS", 500)  # in 6 products of 500 rows
    assert r.search_vectors(queries, 5) == whole


def test_choice_of_search(tmp_path: Path, base: np.ndarray) -> None:
    out = build(tmp_path / "idx", base[:50], "f32")
    assert Retriever.open(out, device="cuda").dense_search == "torch"
    assert Retriever.open(out, device="cuda:1", dense_search="rust").dense_search == "rust"
    assert Retriever.open(out, device="cpu").dense_search == "rust"
    with pytest.raises(InputError, match="dense_search must be one of rust, torch"):
        Retriever.open(out, dense_search="faiss")
    with pytest.raises(InputError, match="'gpu' is not a torch device"):
        Retriever.open(out, device="gpu", dense_search="torch").search_vectors(base[:1], 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_cuda_without_gpu_says_so(tmp_path: Path, base: np.ndarray) -> None:
    out = build(tmp_path / "idx", base[:50], "f32")
    with pytest.raises(InputError, match="no CUDA device is visible"):
        Retriever.open(out, device="cuda").search_vectors(base[:1], 1)
