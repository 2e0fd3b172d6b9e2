"""Index builds that fail, are killed or interrupted, are overwritten or damaged; ties;
empty and odd corpora; encoder models named safely."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from searchr1 import CorpusError, IndexFormatError, InputError, Retriever, _core
from searchr1.cli import main
from searchr1.retrieval.encoder import Encoder, EncoderConfig

WORDS = [
    "river",
    "city",
    "king",
    "queen",
    "war",
    "peace",
    "north",
    "south",
    "bridge",
    "museum",
    "opera",
    "novel",
    "lake",
]


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough passages that a BM25 build takes a few seconds on two threads."""
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    with path.open("w") as f:
        for i in range(500_000):
            body = " ".join(rng.choices(WORDS, k=12)) + f" w{i % 5000} v{i % 777}"
            f.write(f'{{"id": "p{i}", "contents": "\\"T{i}\\"\\n{body}"}}\n')
    return path


def start_build(corpus: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    args = ["index", "--corpus", str(corpus), "--out", str(out), "-q", "--threads", "2", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "searchr1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Until the build has written ``path`` (polling: the build gives no other sign)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def assert_interrupted_or_complete(out: Path, passages: int) -> str:
    """A killed build's directory: absent, an index that opens whole, or one that open
    refuses as interrupted. Returns which."""
    if not out.exists():
        return "absent"
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["complete"]:
        assert len(Retriever.open(out)) == passages
        return "complete"
    with pytest.raises(IndexFormatError, match="interrupted"):
        Retriever.open(out)
    return "interrupted"


@pytest.mark.slow
def test_a_build_killed_at_any_point_does_not_open_and_overwrite_rebuilds_it(
    big_corpus: Path, tmp_path: Path
) -> None:
    outcomes = []
    for delay in (0.0, 0.3, 1.0, 2.5):
        out = tmp_path / f"killed-{delay}"
        proc = start_build(big_corpus, out)
        wait_for(out / "passages.bin", proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        outcomes.append(assert_interrupted_or_complete(out, 500_000))
        runner = CliRunner()
        plain = runner.invoke(main, ["index", "--corpus", str(big_corpus), "--out", str(out)])
        assert plain.exit_code == 1 and "--overwrite" in plain.output, plain.output
    assert "interrupted" in outcomes, outcomes
    # The last leftover, rebuilt in place.
    proc = start_build(big_corpus, out, "--overwrite")
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert len(Retriever.open(out)) == 500_000


@pytest.mark.slow
def test_a_dense_build_killed_at_any_point_does_not_open(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    corpus = write_rows(
        tmp_path / "c.jsonl",
        [{"id": str(i), "contents": f"passage {i} about " + " ".join(WORDS)} for i in range(4000)],
    )
    outcomes = []
    for delay in (0.5, 2.0, 4.0):
        out = tmp_path / f"dense-{delay}"
        proc = start_build(corpus, out, "--dense-model", str(tiny_model_dir), "--hnsw")
        wait_for(out / "passages.bin", proc)
        time.sleep(delay)
        proc.kill()
        proc.communicate()
        outcomes.append(assert_interrupted_or_complete(out, 4000))
        if outcomes[-1] == "interrupted" and (out / "manifest.json").exists():
            # Killed in the dense or graph stage: BM25 is committed, the index is not.
            manifest = json.loads((out / "manifest.json").read_text())
            assert manifest["bm25"] and not manifest["complete"]
    assert "interrupted" in outcomes, outcomes
    r = Retriever.build(corpus, out, dense_model=tiny_model_dir, overwrite=True, progress=False)
    assert r.modes == ("bm25", "dense", "hybrid") and len(r) == 4000


@pytest.mark.slow
def test_ctrl_c_stops_a_build_promptly_and_removes_it(big_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = start_build(big_corpus, out)
    wait_for(out / "passages.bin", proc)
    time.sleep(0.3)
    assert proc.poll() is None, "the build outlasts the wait"
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode != 0
    assert "Aborted" in stderr, stderr
    assert took < 1.0, f"Ctrl-C took {took:.1f}s to stop the build"
    assert not out.exists(), "an interrupted build removes what it wrote"


def test_overwrite_replaces_only_searchr1_directories(tmp_path: Path) -> None:
    corpus = write_rows(
        tmp_path / "c.jsonl", [{"id": str(i), "contents": f"word{i} river"} for i in range(50)]
    )
    runner = CliRunner()

    def index(out: Path, *extra: str) -> tuple[int, str]:
        args = ["index", "--corpus", str(corpus), "--out", str(out), "-q", *extra]
        result = runner.invoke(main, args)
        return result.exit_code, result.output

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        code, output = index(foreign, *extra)
        assert code == 1 and "is not a searchr1 index" in output, output
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "idx"
    assert index(out)[0] == 0
    code, output = index(out)
    assert code == 1 and "holds a searchr1 index" in output and "--overwrite" in output
    assert index(out, "--overwrite")[0] == 0
    assert len(Retriever.open(out)) == 50

    # Leftovers: a marker and nothing else (killed at once), an incomplete manifest.
    leftover = tmp_path / "leftover"
    leftover.mkdir()
    (leftover / ".searchr1-index").write_text("")
    (leftover / "passages.bin").write_bytes(b"partial")
    with pytest.raises(IndexFormatError, match="interrupted before it wrote its manifest"):
        Retriever.open(leftover)
    code, output = index(leftover)
    assert code == 1 and "unfinished searchr1 index build" in output, output
    assert index(leftover, "--overwrite")[0] == 0
    manifest = json.loads((leftover / "manifest.json").read_text())
    (leftover / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(IndexFormatError, match=r"interrupted.*--overwrite"):
        Retriever.open(leftover)
    assert index(leftover, "--overwrite")[0] == 0
    assert len(Retriever.open(leftover)) == 50


def test_a_damaged_store_is_refused_on_open_or_by_verify(tmp_path: Path) -> None:
    corpus = write_rows(
        tmp_path / "c.jsonl",
        [{"id": f"p{i}", "contents": f'"T{i}"\npassage {i} on rivers'} for i in range(3000)],
    )
    out = tmp_path / "idx"
    Retriever.build(corpus, out, threads=1)
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 0 and "intact" in result.output, result.output

    store = out / "passages.bin"
    original = store.read_bytes()
    store.write_bytes(bytes(len(original)))  # zero-filled, same size
    with pytest.raises(IndexFormatError, match=r"passages\.bin.*checksum mismatch"):
        Retriever.open(out)
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 1 and "passages.bin" in result.output, result.output

    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    store.write_bytes(bytes(changed))
    Retriever.open(out)  # only the ends are read on open
    result = runner.invoke(main, ["verify", str(out)])
    assert result.exit_code == 1, result.output
    assert f"{store}: CRC-32" in result.output and "--overwrite" in result.output


def dense_index(out: Path, vectors: np.ndarray) -> Path:
    """An index of ``len(vectors)`` empty passages with these vectors, no BM25."""
    corpus = out.parent / f"{out.name}.jsonl"
    write_rows(corpus, [{"id": str(i), "contents": ""} for i in range(len(vectors))])
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", vectors.shape[1], "f32")
    writer.add(vectors)
    builder.add_dense(vectors.shape[1], "f32", writer.finish(), json.dumps({"model": "/m"}))
    builder.finish()
    return out


def test_damaged_vectors_are_refused_on_open_or_by_verify(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = dense_index(tmp_path / "idx", rng.standard_normal((5000, 16), dtype=np.float32))
    vectors = out / "dense" / "vectors.bin"
    original = vectors.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x40
    vectors.write_bytes(bytes(changed))
    _core.Index(out)
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 1 and "vectors.bin" in result.output, result.output
    vectors.write_bytes(bytes(len(original)))
    with pytest.raises(IndexFormatError, match=r"vectors\.bin.*checksum mismatch"):
        _core.Index(out)
    vectors.write_bytes(original[:-4])
    with pytest.raises(IndexFormatError, match="bytes, but the manifest records"):
        _core.Index(out)


def test_verify_says_when_a_build_was_interrupted(tmp_path: Path) -> None:
    corpus = write_rows(tmp_path / "c.jsonl", [{"id": "a", "contents": "x"}])
    builder = _core.IndexBuilder(corpus, tmp_path / "idx")
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "idx")])
    assert result.exit_code == 1 and "interrupted" in result.output, result.output
    builder.abort()


def test_ties_rank_in_corpus_order_whatever_the_threads(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = []
    for i in range(30_000):
        if i % 97 == 13:
            rows.append({"id": f"same{i}", "contents": '"Same"\nthe opera by the lake'})
        else:
            rows.append({"id": f"p{i}", "contents": " ".join(rng.choices(WORDS[:8], k=10))})
    corpus = write_rows(tmp_path / "ties.jsonl", rows)
    want = [r["id"] for r in rows if str(r["id"]).startswith("same")][:25]
    got = {}
    for threads in (1, 2, 4):
        r = Retriever.build(corpus, tmp_path / f"t{threads}", threads=threads, memory_mb=16)
        got[threads] = [h.id for h in r.search(["opera lake"], k=25)[0]]
    assert got[1] == got[2] == got[4] == want

    # Exact dense search: equal vectors rank by row, across blocks and tasks.
    vectors = np.zeros((40_000, 8), dtype=np.float32)
    vectors[:, 0] = 0.5
    same = list(range(7, 40_000, 3001))
    vectors[same] = 1.0
    index = _core.Index(dense_index(tmp_path / "dense", vectors))
    hits = index.search_dense(np.ones((1, 8), dtype=np.float32), len(same), exact=True)[0]
    assert [int(h[0]) for h in hits] == same


def test_empty_corpora_are_errors_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CorpusError, match=r"empty\.jsonl: no passages: the file is empty"):
        Retriever.build(empty, tmp_path / "i1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('not json\n{"id": "a"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl: no passages: all 2 of its lines"):
        Retriever.build(bad, tmp_path / "i2", skip_bad=True)
    result = CliRunner().invoke(
        main, ["index", "--corpus", str(empty), "--out", str(tmp_path / "i3")]
    )
    assert result.exit_code == 1 and "empty.jsonl: no passages" in result.output
    assert not any((tmp_path / name).exists() for name in ("i1", "i2", "i3"))


def test_a_leading_bom_is_skipped_and_odd_ids_say_what_is_wrong(tmp_path: Path) -> None:
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "contents": "river"}\n{"id": 5, "contents": "lake"}\n'
    )
    r = Retriever.build(bom, tmp_path / "i1")
    assert [h.id for h in r.search(["river", "lake"], k=1)[0] + r.search(["lake"], k=1)[0]] == [
        "a",
        "5",
    ]
    for id_text, kind in (
        ("5.5", "a number with a fraction"),
        ("null", "null"),
        ("[1]", "an array"),
    ):
        odd = tmp_path / "odd.jsonl"
        odd.write_text(f'{{"id": "a", "contents": "x"}}\n{{"id": {id_text}, "contents": "y"}}\n')
        with pytest.raises(CorpusError, match=rf'odd\.jsonl:2: "id" is {kind}.*must be strings'):
            Retriever.build(odd, tmp_path / "i2")


def test_a_relative_model_path_is_stored_absolute(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "models" / "tiny")
    write_rows(work / "c.jsonl", [{"id": str(i), "contents": f"river {i}"} for i in range(20)])
    monkeypatch.chdir(work)
    result = CliRunner().invoke(
        main, ["index", "--corpus", "c.jsonl", "--out", "idx", "--dense-model", "models/tiny", "-q"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((work / "idx" / "manifest.json").read_text())
    assert manifest["dense"]["encoder"]["model"] == str(work / "models" / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = Retriever.open(work / "idx")
    assert len(r.search(["river 3"], k=2, mode="dense")[0]) == 2

    # A relative path recorded by an older build is read relative to the index only.
    shutil.copytree(tiny_model_dir, work / "idx" / "model")
    manifest["dense"]["encoder"]["model"] = "model"
    (work / "idx" / "manifest.json").write_text(json.dumps(manifest))
    assert len(Retriever.open(work / "idx").search(["river"], k=1, mode="dense")[0]) == 1
    manifest["dense"]["encoder"]["model"] = "models/tiny"  # exists from the build's cwd only
    (work / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"'models/tiny'.*idx/manifest\.json"):
        Retriever.open(work / "idx").search(["river"], k=1, mode="dense")


def test_a_missing_model_is_a_clear_error_and_nothing_is_downloaded(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_rows(tmp_path / "c.jsonl", [{"id": "a", "contents": "x"}])
    missing = tmp_path / "models" / "gone"
    with pytest.raises(InputError, match=rf"encoder model .*{missing}.* does not exist"):
        Retriever.build(corpus, tmp_path / "i1", dense_model=missing)
    assert not (tmp_path / "i1").exists()

    out = tmp_path / "i2"
    Retriever.build(corpus, out, dense_model=tiny_model_dir, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["dense"]["encoder"]["model"] = str(missing)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=rf"{missing}.*\(named in {out}/manifest\.json\)"):
        Retriever.open(out).search(["x"], mode="dense")

    import transformers

    calls: list[dict[str, object]] = []

    def record(name: str, **kwargs: object) -> None:
        calls.append({"name": name, **kwargs})
        raise OSError("not in the cache")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    with pytest.raises(InputError, match="no model of that name in the local Hugging Face cache"):
        Encoder(EncoderConfig(model="sentence-transformers/nope"))
    assert calls == [{"name": "sentence-transformers/nope", "local_files_only": True}]


@pytest.mark.slow
def test_a_hub_name_is_never_fetched_even_online(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty cache
    code = (
        "from searchr1.retrieval.encoder import Encoder, EncoderConfig\n"
        "Encoder(EncoderConfig(model='sentence-transformers/nope'))\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert "local Hugging Face cache" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - started < 60
    assert not any((tmp_path / "hf").rglob("*.json")), "nothing was downloaded"
