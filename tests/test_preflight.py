"""What `searchr1 index` says it will need, and its refusal when the disk lacks room."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from searchr1.cli import main
from searchr1.retrieval import preflight
from searchr1.retrieval.preflight import Estimate, corpus_size, estimate, human

WORDS = [
    "".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 8))
    for i in range(3000)
]


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` passages of 20 to 120 Zipf-distributed words, as plain or gzip JSONL."""
    rng = random.Random(seed)
    weights = [1 / (r + 1) for r in range(len(WORDS))]
    lines = []
    for i in range(n):
        words = rng.choices(WORDS, weights, k=rng.randint(20, 120))
        title = " ".join(words[:3]).title()
        lines.append(json.dumps({"id": f"p{i}", "contents": f'"{title}"\n' + " ".join(words)}))
    text = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def write_flat_ip(path: Path, vectors: np.ndarray) -> Path:
    """An IndexFlatIP file as faiss writes it: fourcc, header, n·d, the floats."""
    n, d = vectors.shape
    with path.open("wb") as f:
        f.write(b"IxFI" + struct.pack("<iqqqBi", d, n, 0, 0, 1, 0))
        f.write(struct.pack("<Q", n * d) + vectors.astype("<f4").tobytes())
    return path


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fake_disk(free: int) -> Any:
    def disk_usage(path: object) -> Any:
        return shutil._ntuple_diskusage(10 * free + 1, 9 * free + 1, free)  # type: ignore[attr-defined]

    return disk_usage


def test_estimate_scales_with_what_the_build_writes() -> None:
    base = estimate(10**9, 10**6)
    assert estimate(2 * 10**9, 2 * 10**6).disk == pytest.approx(2 * base.disk, rel=1e-6)
    assert estimate(10**9, 10**6, bm25=False).disk < base.disk
    # Vectors: f32 rows cost 4 bytes a value, f16 2, i8 1 plus a 4-byte scale.
    rows, dim = 10**6, 768
    extra = {d: estimate(10**9, rows, dim=dim, dtype=d).disk - base.disk for d in ("f32", "f16")}
    assert extra["f32"] == pytest.approx(2 * extra["f16"], rel=1e-6)
    assert extra["f32"] >= rows * dim * 4
    i8 = estimate(10**9, rows, dim=dim, dtype="i8").disk - base.disk
    assert i8 == pytest.approx(extra["f32"] * (dim + 4) / (4 * dim), rel=1e-6)
    # The graph takes disk and memory, more with f32 copies and more links.
    flat = estimate(10**9, rows, dim=dim, dtype="f16")
    graph = estimate(10**9, rows, dim=dim, dtype="f16", hnsw=True)
    assert graph.disk - flat.disk > rows * dim  # at least its i8 copies
    assert graph.memory - flat.memory > rows * dim
    assert estimate(10**9, rows, dim=dim, hnsw=True, hnsw_dtype="f32").disk > graph.disk
    assert estimate(10**9, rows, dim=dim, hnsw=True, connectivity=48).disk > graph.disk
    # Shards beside the index until they are committed.
    sharded = estimate(10**9, rows, dim=dim, dtype="i8", shards=True).disk
    assert sharded - (base.disk + i8) >= rows * dim * 4


def test_memory_is_capped_by_the_indexing_budget() -> None:
    small, large = estimate(10**6, 10**3), estimate(10**11, 10**8)
    assert small.memory < 200 << 20  # a small corpus never fills the budget
    assert large.memory - estimate(10**11, 10**8, bm25=False).memory == 512 << 20
    capped = estimate(10**11, 10**8, memory_mb=2048).memory - large.memory
    assert capped == (2048 - 512) << 20
    assert estimate(10**9, 10, dim=8, model_bytes=10**9).memory >= 10**9


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="dtype"):
        estimate(1, 1, dim=8, dtype="f64")
    with pytest.raises(ValueError):
        estimate(-1, 1)


def test_human_sizes() -> None:
    assert [human(n) for n in (512, 2.5e6, 35e6, 1.25e9, 310e9)] == [
        "0.5 kB",
        "2.5 MB",
        "35 MB",
        "1.2 GB",
        "310 GB",
    ]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_corpus_size_is_exact_for_a_short_file(tmp_path: Path, name: str) -> None:
    path = write_corpus(tmp_path / name, 200)
    text = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert corpus_size(path) == (len(text), 200)


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_corpus_size_of_a_long_file_is_close(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond the sample, the passages are counted from their mean length; a gzip
    file's text length comes from its trailer."""
    monkeypatch.setattr(preflight, "SAMPLE_BYTES", 16 << 10)
    path = write_corpus(tmp_path / name, 3000)
    text = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    assert len(path.read_bytes()) > preflight.SAMPLE_BYTES
    text_bytes, passages = corpus_size(path)
    assert text_bytes == len(text)
    assert passages == pytest.approx(3000, rel=0.1)


def test_corpus_size_of_several_gzip_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trailer of a multi-member file is its last member's: the sample's ratio is used."""
    monkeypatch.setattr(preflight, "SAMPLE_BYTES", 16 << 10)
    parts = [write_corpus(tmp_path / f"{i}.jsonl", 1500, seed=i).read_bytes() for i in (1, 2)]
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress(parts[0]) + gzip.compress(parts[1]))
    text_bytes, passages = corpus_size(path)
    assert text_bytes == pytest.approx(sum(map(len, parts)), rel=0.15)
    assert passages == pytest.approx(3000, rel=0.15)


def test_a_real_build_fits_its_estimate(tmp_path: Path) -> None:
    """BM25, f16 vectors (imported) and an HNSW graph: the index written is no bigger
    than the estimate, and not far smaller."""
    corpus = write_corpus(tmp_path / "c.jsonl", 400)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 768), dtype=np.float32)
    faiss = write_flat_ip(tmp_path / "v.index", vectors / np.linalg.norm(vectors, axis=1)[:, None])
    out = tmp_path / "index"
    args = ["index", "--corpus", str(corpus), "--out", str(out), "--threads", "2"]
    args += ["--import-faiss", str(faiss), "--dtype", "f16", "--hnsw"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = preflight.check(corpus, out, import_faiss=faiss, dtype="f16", hnsw=True)
    assert tree_bytes(out) <= report.need.disk <= 2 * tree_bytes(out)


def test_dense_model_size_comes_from_its_config(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 100)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": 384}))
    (model / "model.safetensors").write_bytes(bytes(5000))
    report = preflight.check(corpus, tmp_path / "out", dense_model=model, dtype="i8")
    text_bytes, passages = corpus_size(corpus)
    assert report.need == estimate(text_bytes, passages, dim=384, dtype="i8", model_bytes=5000)
    assert not report.dense_unknown
    # Each device's process loads the encoder.
    three = preflight.check(corpus, tmp_path / "out", dense_model=model, devices="cpu,cpu,cpu")
    assert (
        three.need.memory
        == estimate(text_bytes, passages, dim=384, shards=True, model_bytes=5000, encoders=3).memory
    )
    assert three.need.memory - report.need.memory == 2 * 5000
    (model / "config.json").unlink()
    report = preflight.check(corpus, tmp_path / "out", dense_model=model)
    assert report.dense_unknown and "not counted" in report.line()
    assert report.need.disk == estimate(text_bytes, passages).disk


def test_index_prints_its_needs_on_stderr(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 50)
    result = CliRunner().invoke(
        main, ["index", "--corpus", str(corpus), "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("index: needs about ")
    assert " of disk (free: " in result.stderr and " of memory" in result.stderr
    assert "index:" not in result.stdout and "indexed 50 passages" in result.stdout
    quiet = CliRunner().invoke(
        main, ["index", "--corpus", str(corpus), "--out", str(tmp_path / "b"), "-q"]
    )
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_index_refuses_without_room_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 200)
    need = preflight.check(corpus, tmp_path).need.disk
    monkeypatch.setattr(shutil, "disk_usage", fake_disk(need - 1))
    out = tmp_path / "deep" / "index"
    runner = CliRunner()
    result = runner.invoke(main, ["index", "--corpus", str(corpus), "--out", str(out)])
    assert result.exit_code == 1
    assert "not enough disk" in result.stderr and "--no-preflight" in result.stderr
    assert not (tmp_path / "deep").exists()
    # Quiet or not, the check stands; --no-preflight builds anyway.
    quiet = runner.invoke(main, ["index", "--corpus", str(corpus), "--out", str(out), "-q"])
    assert quiet.exit_code == 1 and "not enough disk" in quiet.stderr
    args = ["index", "--corpus", str(corpus), "--out", str(out), "--no-preflight"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    # Replacing an index counts the room it frees.
    args = ["index", "--corpus", str(corpus), "--out", str(out), "--overwrite"]
    monkeypatch.setattr(shutil, "disk_usage", fake_disk(need - tree_bytes(out) - 1))
    assert runner.invoke(main, args).exit_code == 1
    monkeypatch.setattr(shutil, "disk_usage", fake_disk(need - tree_bytes(out)))
    assert runner.invoke(main, args).exit_code == 0


def test_index_fits_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 20)
    need = preflight.check(corpus, tmp_path).need.disk
    monkeypatch.setattr(shutil, "disk_usage", fake_disk(need))
    result = CliRunner().invoke(
        main, ["index", "--corpus", str(corpus), "--out", str(tmp_path / "i")]
    )
    assert result.exit_code == 0, result.output
    assert f"(free: {human(need)} on " in result.stderr


def test_an_empty_build_needs_the_base() -> None:
    assert estimate(0, 0, bm25=False) == Estimate(
        disk=round(8 * preflight.DISK_MARGIN), memory=preflight.BASE_MEMORY
    )
