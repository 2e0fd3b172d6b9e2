"""BM25: searchr1's tantivy index vs Lucene and bm25s, on the same corpus and queries.

Corpus: synthetic passages of Zipf-distributed words (default 200,000 passages of
40-160 words over a 60,000-word vocabulary), written once as Search-R1-format JSONL
under ~/.cache/searchr1/bench. Queries: 1,000 of 3-8 words from the same distribution.
Every side uses k1 = 0.9, b = 0.4 (Lucene's formula), English stop words, and 2 threads
where it can use threads; each runs in its own process, so its peak RSS is its own.

- searchr1 and bm25s stem with Snowball English. Build time runs from the JSONL file
  to a ready index; bm25s's JSON loading is reported apart and left out of its build
  time. bm25s keeps its index in memory: its size is that of its score matrix.
- Lucene is what Search-R1 runs (pyserini 0.22.1's Anserini, on Java; see lucene.py):
  JsonCollection indexed with the raw rows stored, Porter stemming, then
  `batch_search` on 2 threads. Its build time includes starting the JVM (~1.5 s).
  Skipped, with the reason, where Java or pyserini is missing.

Each side is warmed with 50 queries before the batch is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lucene
from common import machine, peak_rss_mb, report, run_side

CACHE = Path(os.environ.get("SEARCHR1_BENCH_CACHE", Path.home() / ".cache/searchr1/bench"))


def make_vocab(size: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(3, 11))
        words.add("".join(rng.choice(letters, n)))
    return sorted(words)


def zipf_ids(rng: np.random.Generator, vocab: int, n: int) -> np.ndarray:
    """Word ids with a Zipf(1.1) law truncated to the vocabulary."""
    ids = rng.zipf(1.1, n) - 1
    bad = ids >= vocab
    while bad.any():
        ids[bad] = rng.zipf(1.1, int(bad.sum())) - 1
        bad = ids >= vocab
    return ids


def private_tmp(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place: a name of its
    own, since two benches may make the same cached file at once."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def corpus_and_queries(passages: int, queries: int, seed: int = 0) -> tuple[Path, list[str]]:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"zipf-{passages}-{seed}.jsonl"
    rng = np.random.default_rng(seed)
    vocab = make_vocab(60_000, rng)
    words = np.array(vocab)
    if not path.exists():
        tmp = private_tmp(path)
        with tmp.open("w") as f:
            for start in range(0, passages, 10_000):
                n = min(10_000, passages - start)
                lengths = rng.integers(40, 161, n)
                flat = words[zipf_ids(rng, len(vocab), int(lengths.sum()))]
                pos = 0
                for i, length in enumerate(lengths):
                    body = " ".join(flat[pos : pos + length])
                    pos += length
                    title = " ".join(flat[pos - 3 : pos]).title()
                    row = {"id": str(start + i), "contents": f'"{title}"\n{body}'}
                    f.write(json.dumps(row) + "\n")
        tmp.rename(path)
    qrng = np.random.default_rng(seed + 1)
    qs = [
        " ".join(words[zipf_ids(qrng, len(vocab), int(qrng.integers(3, 9)))])
        for _ in range(queries)
    ]
    return path, qs


def run_ours(corpus: Path, queries: list[str], k: int, threads: int) -> dict[str, object]:
    from searchr1 import Retriever

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        retriever = Retriever.build(corpus, Path(tmp) / "index", threads=threads, progress=False)
        build = time.perf_counter() - start
        retriever.search(queries[:50], k=k)  # warm the page cache of the index files
        start = time.perf_counter()
        hits = retriever.search(queries, k=k)
        search = time.perf_counter() - start
        return {
            "build_s": build,
            "index_bytes": tree_bytes(Path(tmp) / "index"),
            "qps": len(queries) / search,
            "ids": [[h.id for h in row] for row in hits],
            "rss_mb": peak_rss_mb(),
        }


def run_lucene(corpus: Path, queries: list[str], k: int, threads: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        build = lucene.build(corpus, index, threads=threads)
        searcher = lucene.LuceneBatch(index, k1=0.9, b=0.4, threads=threads)
        searcher.search(queries[:50], k)  # as ours: the page cache, and the JIT a little
        start = time.perf_counter()
        ids = searcher.search(queries, k)
        search = time.perf_counter() - start
        return {
            "build_s": build,
            "index_bytes": tree_bytes(index),
            "qps": len(queries) / search,
            "ids": ids,
            "rss_mb": peak_rss_mb(),
        }


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bm25s_index(corpus: Path) -> tuple[Any, Any, list[str], float, float]:
    """bm25s's index of a JSONL corpus: the model, its stemmer, the passage ids, and the
    seconds spent loading the JSON and building (tokenising included)."""
    import bm25s
    import Stemmer

    start = time.perf_counter()
    ids, texts = [], []
    with corpus.open() as f:
        for line in f:
            row = json.loads(line)
            ids.append(row["id"])
            texts.append(row["contents"])
    load = time.perf_counter() - start
    stemmer = Stemmer.Stemmer("english")
    start = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
    del texts
    model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    model.index(tokens, show_progress=False)
    return model, stemmer, ids, load, time.perf_counter() - start


def run_bm25s(corpus: Path, queries: list[str], k: int, threads: int) -> dict[str, object]:
    import bm25s

    model, stemmer, ids, load, build = bm25s_index(corpus)
    warm = bm25s.tokenize(queries[:50], stopwords="en", stemmer=stemmer, show_progress=False)
    model.retrieve(warm, k=k, n_threads=threads, show_progress=False)
    start = time.perf_counter()
    q_tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    docs, _ = model.retrieve(q_tokens, k=k, n_threads=threads, show_progress=False)
    search = time.perf_counter() - start
    matrix = sum(getattr(a, "nbytes", 0) for a in model.scores.values())
    return {
        "load_s": load,
        "build_s": build,
        "index_bytes": matrix,
        "qps": len(queries) / search,
        "ids": [[ids[d] for d in row] for row in docs.tolist()],
        "rss_mb": peak_rss_mb(),
    }


def side(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one side in a fresh process and returns its figures."""
    flags = ["--side", name, "--passages", str(args.passages), "--queries", str(args.queries)]
    flags += ["--k", str(args.k), "--threads", str(args.threads)]
    return run_side(__file__, flags, args.threads)


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    """Mean share of `b`'s top list that `a`'s top list holds, over the queries."""
    return float(
        np.mean([len(set(x) & set(y)) / max(len(y), 1) for x, y in zip(a, b, strict=True)])
    )


SIDES = {"ours": run_ours, "lucene": run_lucene, "bm25s": run_bm25s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    corpus, queries = corpus_and_queries(args.passages, args.queries)
    if args.side:
        print(json.dumps(SIDES[args.side](corpus, queries, args.k, args.threads)))
        return {}

    ours = side("ours", args)
    peer = side("bm25s", args)
    skipped = lucene.unavailable()
    luc = side("lucene", args) if skipped is None else None
    mb = 1 << 20
    o_build, p_build = float(ours["build_s"]), float(peer["build_s"])
    o_qps, p_qps = float(ours["qps"]), float(peer["qps"])
    rows = [
        ("build, searchr1 (from JSONL)", f"{o_build:8.2f} s"),
        ("build, bm25s (tokenize + index)", f"{p_build:8.2f} s  (+{peer['load_s']:.2f} s JSON)"),
        ("build speed-up vs bm25s", f"{p_build / o_build:8.1f}x"),
        ("queries/s, searchr1 (batch)", f"{o_qps:8.0f}"),
        ("queries/s, bm25s (batch)", f"{p_qps:8.0f}"),
        ("query speed-up vs bm25s", f"{o_qps / p_qps:8.1f}x"),
        ("peak RSS, searchr1 / bm25s", f"{ours['rss_mb']:.0f} MB / {peer['rss_mb']:.0f} MB"),
        (
            "index, searchr1 / bm25s (memory)",
            f"{ours['index_bytes'] / mb:.0f} MB / {peer['index_bytes'] / mb:.0f} MB",
        ),
        ("top-k overlap with bm25s", f"{overlap(ours['ids'], peer['ids']):8.2f}"),
    ]
    results: dict[str, Any] = {
        "build_s": o_build,
        "bm25s_build_s": p_build,
        "build_ratio": p_build / o_build,
        "qps": o_qps,
        "bm25s_qps": p_qps,
        "qps_ratio": o_qps / p_qps,
        "rss_mb": float(ours["rss_mb"]),
        "bm25s_rss_mb": float(peer["rss_mb"]),
        "index_mb": ours["index_bytes"] / mb,
        "overlap": overlap(ours["ids"], peer["ids"]),
    }
    if luc is None:
        print(f"Lucene skipped: {skipped}", file=sys.stderr)
        rows.append(("Lucene", f"skipped: {skipped}"))
        results["lucene_skipped"] = skipped
    else:
        l_build, l_qps = float(luc["build_s"]), float(luc["qps"])
        rows += [
            ("build, Lucene (pyserini, from JSONL)", f"{l_build:8.2f} s"),
            ("build speed-up vs Lucene", f"{l_build / o_build:8.1f}x"),
            ("queries/s, Lucene (batch_search)", f"{l_qps:8.0f}"),
            ("query speed-up vs Lucene", f"{o_qps / l_qps:8.1f}x"),
            ("peak RSS, Lucene (JVM + Python)", f"{luc['rss_mb']:.0f} MB"),
            ("index, Lucene (raw rows stored)", f"{luc['index_bytes'] / mb:.0f} MB"),
            ("top-k overlap with Lucene", f"{overlap(ours['ids'], luc['ids']):8.2f}"),
            ("top-k overlap, bm25s with Lucene", f"{overlap(peer['ids'], luc['ids']):8.2f}"),
        ]
        results |= {
            "lucene_build_s": l_build,
            "lucene_build_ratio": l_build / o_build,
            "lucene_qps": l_qps,
            "lucene_qps_ratio": o_qps / l_qps,
            "lucene_rss_mb": float(luc["rss_mb"]),
            "lucene_index_mb": luc["index_bytes"] / mb,
            "lucene_overlap": overlap(ours["ids"], luc["ids"]),
            "bm25s_lucene_overlap": overlap(peer["ids"], luc["ids"]),
        }
    report(
        f"BM25: {args.passages} passages, {args.queries} queries, top-{args.k}, "
        f"{args.threads} threads ({machine()}); stemmers differ (Snowball, Porter)",
        rows,
    )
    return results


if __name__ == "__main__":
    main()
