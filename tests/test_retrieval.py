"""The BM25 retriever: exact scores against a reference, errors, CLI, the import rule."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from searchr1 import CorpusError, Hit, IndexFormatError, InputError, Retriever
from searchr1.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = [
    *("river", "city", "founded", "king", "queen", "war", "peace", "north", "south", "bridge"),
    *("museum", "opera", "painter", "novel", "author", "mountain", "lake", "island", "treaty"),
    *("empire", "railway", "harbour", "castle"),
]


def write_corpus(path: Path, n: int = 400, seed: int = 7) -> Path:
    """A corpus of passages drawn from a small vocabulary (so terms repeat)."""
    import random

    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            title = " ".join(rng.choices(WORDS, k=2)).title()
            body = " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))
            f.write(json.dumps({"id": f"p{i}", "contents": f'"{title}"\n{body}'}) + "\n")
    return path


# Lucene's SmallFloat.intToByte4 / byte4ToInt, written from its description: lengths
# up to 23 are exact; above that, 4 significant bits of (length - 24).
def _long_to_int4(i: int) -> int:
    bits = i.bit_length()
    if bits < 4:
        return i
    shift = bits - 4
    return ((i >> shift) & 0x07) | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits, shift = i & 0x07, (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_FREE = 255 - _long_to_int4(2**31 - 1)


def lucene_length(length: int) -> int:
    """A document length after Lucene's one-byte norm encoding and decoding."""
    code = length if length < _FREE else _FREE + _long_to_int4(length - _FREE)
    return code if code < _FREE else _FREE + _int4_to_long(code - _FREE)


def reference_bm25(
    docs: dict[str, list[str]], query: list[str], k1: float, b: float
) -> dict[str, float]:
    """Lucene BM25Similarity (Lucene >= 8: no (k1 + 1) factor), bag-of-words query."""
    n = len(docs)
    avgdl = sum(len(t) for t in docs.values()) / n
    df = Counter(term for terms in docs.values() for term in set(terms))
    scores: dict[str, float] = {}
    for term, count in Counter(query).items():
        if not df[term]:
            continue
        idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
        for doc_id, terms in docs.items():
            f = terms.count(term)
            if f:
                norm = k1 * (1 - b + b * lucene_length(len(terms)) / avgdl)
                scores[doc_id] = scores.get(doc_id, 0.0) + count * idf * f / (f + norm)
    return scores


def test_lucene_length_table() -> None:
    assert [lucene_length(i) for i in (0, 23, 39, 40, 41, 42, 56, 57, 60)] == [
        0, 23, 39, 40, 40, 42, 56, 56, 60
    ]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.mark.parametrize(("k1", "b", "stem"), [(0.9, 0.4, True), (1.2, 0.75, False)])
def test_scores_equal_lucene_reference(
    corpus: Path, tmp_path: Path, k1: float, b: float, stem: bool
) -> None:
    r = Retriever.build(corpus, tmp_path / "idx", k1=k1, b=b, stem=stem, threads=2)
    docs = {}
    for line in corpus.read_text().splitlines():
        row = json.loads(line)
        docs[row["id"]] = r.analyze(row["contents"])
    queries = ["river city", "king and the queen of the north", "museum museum opera", "zzz"]
    results = r.search(queries, k=10)
    for query, hits in zip(queries, results, strict=True):
        ref = reference_bm25(docs, r.analyze(query), k1, b)
        assert len(hits) == min(10, len(ref))
        best = sorted(ref.values(), reverse=True)[: len(hits)]
        assert [h.score for h in hits] == pytest.approx(best, abs=1e-4)
        for h in hits:
            assert h.score == pytest.approx(ref[h.id], abs=1e-4)


@pytest.mark.skipif(not (SHARED / "wiki18_sample.jsonl").exists(), reason="shared/data absent")
def test_wiki18_sample_against_reference(tmp_path: Path) -> None:
    corpus = SHARED / "wiki18_sample.jsonl"
    r = Retriever.build(corpus, tmp_path / "idx")
    assert len(r) == 1000
    docs = {}
    for line in corpus.read_text().splitlines():
        row = json.loads(line)
        docs[row["id"]] = r.analyze(row["contents"])
    questions = [
        json.loads(line)["question"]
        for line in (SHARED / "nq_sample.jsonl").read_text().splitlines()
    ]
    for question, hits in zip(questions, r.search(questions, k=5), strict=True):
        ref = reference_bm25(docs, r.analyze(question), 0.9, 0.4)
        for h in hits:
            assert h.score == pytest.approx(ref[h.id], abs=1e-4)
        assert [h.score for h in hits] == pytest.approx(
            sorted(ref.values(), reverse=True)[: len(hits)], abs=1e-4
        )


def test_hit_fields(corpus: Path, tmp_path: Path) -> None:
    r = Retriever.build(corpus, tmp_path / "idx")
    hit = r.search(["river"], k=1)[0][0]
    assert hit.title.startswith('"') and hit.contents == f"{hit.title}\n{hit.text}"
    assert Hit("1", 0.0, "no newline").text == ""
    assert r.search([], k=3) == []
    assert r.search(["river"], k=0) == [[]]
    with pytest.raises(TypeError, match="wrap a single query"):
        r.search("river")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="unknown mode"):
        r.search(["river"], mode="magic")
    with pytest.raises(InputError, match="k must be"):
        r.search(["river"], k=-1)


def test_title_text_format_and_gzip(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "title": "Paris", "text": "Paris is the capital of France."},
        {"id": 2, "title": "Lima", "text": "Lima is the capital of Peru."},
    ]
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    r = Retriever.build(path, tmp_path / "idx")
    (hit,) = r.search(["capital of peru"], k=1)[0]
    assert (hit.id, hit.title, hit.text) == ("2", '"Lima"', "Lima is the capital of Peru.")
    assert r.manifest["corpus"]["crc32"] > 0


def test_corpus_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "x"}\n{"id": "b"}\n{"id": 3, "text": 3}\nnot json\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: no \"contents\" field"):
        Retriever.build(bad, tmp_path / "i1")
    bad.write_text('{"id": "a", "contents": "x"}\n{"id": 3, "text": 3}\nnot json\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: a field has the wrong type"):
        Retriever.build(bad, tmp_path / "i1")
    bad.write_text('{"id": "a", "contents": "x"}\nnot json\n{"id": 3, "text": 3}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: not valid JSON"):
        Retriever.build(bad, tmp_path / "i1")
    assert not (tmp_path / "i1").exists(), "a failed build leaves nothing behind"
    (tmp_path / "i2").mkdir()
    with pytest.raises(CorpusError):
        Retriever.build(bad, tmp_path / "i2")
    assert (tmp_path / "i2").is_dir() and not any((tmp_path / "i2").iterdir())
    r = Retriever.build(bad, tmp_path / "i2", skip_bad=True)
    assert len(r) == 1 and r.manifest["corpus"]["skipped_lines"] == 2
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "contents": "x"}\n{"id": "a", "contents": "y"}\n')
    with pytest.raises(CorpusError, match=r"dup\.jsonl:2: duplicate id \"a\""):
        Retriever.build(dup, tmp_path / "i3", skip_bad=True)
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        Retriever.build(tmp_path / "missing.jsonl", tmp_path / "i4")
    with pytest.raises(InputError, match="k1 >= 0"):
        Retriever.build(bad, tmp_path / "i5", k1=-1.0, skip_bad=True)


def test_index_errors(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    Retriever.build(corpus, out)
    with pytest.raises(InputError, match="refusing to overwrite"):
        Retriever.build(corpus, out)
    manifest = out / "manifest.json"
    body = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**body, "version": 1}))
    with pytest.raises(IndexFormatError, match="version 1"):
        Retriever.open(out)
    manifest.write_text(json.dumps({**body, "corpus": {**body["corpus"], "passages": 3}}))
    with pytest.raises(IndexFormatError, match="counts 3 passages but the passage store"):
        Retriever.open(out)
    manifest.write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        Retriever.open(out)
    manifest.unlink()
    with pytest.raises(IndexFormatError, match="interrupted before it wrote its manifest"):
        Retriever.open(out)
    (out / ".searchr1-index").unlink()
    with pytest.raises(IndexFormatError, match="did not finish"):
        Retriever.open(out)
    with pytest.raises(FileNotFoundError):
        Retriever.open(tmp_path / "nowhere")
    # A damaged BM25 index fails with a clear error naming the file, not a crash; one
    # whose checksums the manifest lacks still fails when tantivy opens it.
    manifest.write_text(json.dumps(body))
    for f in (out / "bm25").glob("meta.json"):
        f.write_text("garbage")
    with pytest.raises(IndexFormatError, match=r"bm25/meta\.json: 7 bytes, but the manifest"):
        Retriever.open(out)
    manifest.write_text(json.dumps({**body, "files": {}}))
    with pytest.raises(IndexFormatError, match="BM25 index cannot be opened"):
        Retriever.open(out)


def test_defaults_have_one_owner(corpus: Path, tmp_path: Path) -> None:
    from searchr1._core import DEFAULTS

    assert (DEFAULTS["k1"], DEFAULTS["b"]) == (0.9, 0.4)  # pyserini's
    r = Retriever.build(corpus, tmp_path / "idx", threads=2)
    assert r.manifest["bm25"] == {k: DEFAULTS[k] for k in ("k1", "b", "stem", "stopwords")}
    tuned = Retriever.build(corpus, tmp_path / "tuned", k1=1.2, stem=False, threads=2)
    assert tuned.manifest["bm25"] == {"k1": 1.2, "b": 0.4, "stem": False, "stopwords": True}


def test_the_manifest_is_complete_last(corpus: Path, tmp_path: Path) -> None:
    from searchr1 import _core

    out = tmp_path / "idx"
    builder = _core.IndexBuilder(corpus, out, threads=2)
    assert (out / "passages.bin").is_file()
    assert json.loads(builder.manifest)["corpus"]["passages"] == 400
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(IndexFormatError, match="interrupted"):
        Retriever.open(out)
    with pytest.raises(InputError, match="no dense vectors"):
        builder.add_hnsw()
    assert json.loads(builder.finish()) == Retriever.open(out).manifest
    with pytest.raises(InputError, match="finished"):
        builder.finish()
    builder.abort()  # nothing to undo once finished
    assert Retriever.open(out).search(["river"], k=1)[0]

    unfinished = _core.IndexBuilder(corpus, tmp_path / "gone", bm25=False)
    unfinished.abort()
    assert not (tmp_path / "gone").exists()


def test_searches_from_many_threads_equal_sequential_ones(corpus: Path, tmp_path: Path) -> None:
    """A small cache churned by eight threads (each search evicting what another is
    about to reuse) returns what an uncached retriever returns one search at a time."""
    import random
    import threading

    out = tmp_path / "idx"
    Retriever.build(corpus, out, threads=2)
    queries = [" ".join(pair) for pair in zip(WORDS, WORDS[3:] + WORDS[:3], strict=True)]
    plain = Retriever.open(out)
    want = dict(zip(queries, plain.search(queries, k=4), strict=True))
    cached = Retriever.open(out, cache_size=5)
    barrier = threading.Barrier(8)
    failures: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(60):
            batch = rng.sample(queries, rng.randint(1, 6))
            try:
                got = cached.search(batch, k=4)
            except Exception as e:  # reported below, with the thread's batch
                failures.append(f"{batch}: {e!r}")
                return
            if got != [want[q] for q in batch]:
                failures.append(f"{batch}: wrong hits")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert len(cached._cache) == 5


def test_cli_index_and_search(corpus: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "idx"
    result = runner.invoke(main, ["index", "--corpus", str(corpus), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "indexed 400 passages" in result.output
    result = runner.invoke(main, ["search", "--index", str(out), "-k", "2", "river city", "zzz"])
    assert result.exit_code == 0, result.output
    assert "# river city" in result.output and "(no match)" in result.output
    result = runner.invoke(main, ["search", "--index", str(out), "--json", "-k", "2", "opera"])
    body = json.loads(result.output)
    assert len(body["result"]) == 1 and len(body["result"][0]) == 2
    assert set(body["result"][0][0]) == {"document", "score"}
    result = runner.invoke(main, ["index", "--corpus", str(corpus), "--out", str(out)])
    assert result.exit_code == 1 and "refusing to overwrite" in result.output


def test_import_does_not_import_torch() -> None:
    code = "import sys, searchr1, searchr1.retrieval; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
