"""Growth: BM25 and dense search as the corpus grows, and a projection to 21M passages.

BM25: the synthetic corpus of bench_bm25 (Zipf(1.1) words over a 60,000-word
vocabulary, 40-160 words a passage, ~100 on average, Search-R1 JSONL, cached under
~/.cache/searchr1/bench) at 200,000, 1,000,000 and 5,000,000 passages, and its 1,000
queries of 3-8 words. For each size, each in its own process (so peak RSS is its own):
our build from the JSONL file (2 threads, the default memory budget), then a fresh
process that opens the index, answers one query (the open time), warms up on 50 queries
and answers the batch of 1,000 at top-3 (queries/s) and at top-10 (the ids compared).
Bytes are the disk use (du) of the index directory; build time with CPU time (every
thread), peak RSS (VmHWM, mapped files' pages included) with the build's peak anonymous
memory (RssAnon, sampled). Beside it, at k1 0.9 / b 0.4 and
2 threads on each side: Lucene (Anserini through pyserini, what Search-R1 runs; through
benches/lucene.py; skipped with its reason where it cannot run) and bm25s (in RAM:
skipped at sizes where its estimated peak would not fit in memory), with their top-10
agreement with ours. Then the growth exponent of each figure (the slope of log figure
over log size, fitted over the sizes) and its projection to 21M passages.

Dense: 1,000,000 x 768 vectors around rows/20 shared centres (bench_dense's law, every
vector with ~20 near neighbours), generated and written 100,000 rows at a time, stored
as f16 and as i8 (a scale per row); exact search and an HNSW graph (usearch's, i8,
built over the f16 store, whose vectors re-score its candidates). For each: build time
(vector generation left out), bytes, peak RSS, open time, queries/s of the batch of
1,000 query vectors at top-3, recall@10 against the exact f32 top-10 (computed from the
same generated vectors). The graph is searched at rising efSearch until recall@10
reaches 0.95, and its queries/s are taken there.

A smaller corpus whose size is a multiple of 10,000 is the prefix of a larger one (the
generator draws passages 10,000 at a time from one seeded stream), so it is cut from a
cached larger file rather than generated again.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_bm25 import CACHE, bm25s_index, corpus_and_queries, private_tmp
from bench_dense import EF_SEARCH, recall_at, vectors
from common import machine, peak_rss_mb, report, run_side

#: The size of Search-R1's corpus (wiki-18, 100-word passages), which the growth is
#: projected to.
TARGET = 21_000_000
#: Rows generated, written and scored at a time on the dense side.
CHUNK = 100_000
#: bm25s's peak RSS per passage on this corpus when none is measured yet (945 MB at
#: 200,000 passages, benches/README.md's BM25 section).
BM25S_BYTES_PER_PASSAGE = 4_800
#: The recall@10 the HNSW graph is searched at.
RECALL = 0.95


def log(msg: str) -> None:
    """A progress line on standard error (a full run takes tens of minutes)."""
    load = os.getloadavg()[0]
    print(f"[{time.strftime('%H:%M:%S')} load {load:.1f}] {msg}", file=sys.stderr, flush=True)


def corpus(passages: int, queries: int) -> tuple[Path, list[str]]:
    """bench_bm25's corpus of ``passages`` (cut from a cached larger one when it can be)
    and its ``queries``."""
    path = CACHE / f"zipf-{passages}-0.jsonl"
    if not path.exists() and passages % 10_000 == 0:
        larger = []
        for p in CACHE.glob("zipf-*-0.jsonl"):
            n = int(p.name.split("-")[1])
            if n > passages:
                larger.append((n, p))
        if larger:
            source = min(larger)[1]
            tmp = private_tmp(path)
            with source.open("rb") as src, tmp.open("wb") as dst:
                for _ in range(passages):
                    dst.write(src.readline())
            tmp.rename(path)
    return corpus_and_queries(passages, queries)


def disk_bytes(path: Path) -> int:
    """Disk use of a directory's files, as du counts it (allocated blocks)."""
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


class AnonPeak:
    """Samples this process's anonymous resident memory (RssAnon: heap, stacks; not the
    pages of memory-mapped files, which VmHWM counts too) every 50 ms while in a
    ``with`` block; ``mb`` is the largest sample."""

    def __init__(self) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.mb = max(self.mb, int(line.split()[1]) / 1024)
            if self._stop.wait(0.05):
                return

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_with_children_mb() -> float:
    """Peak RSS of this process or of the largest child it waited for (a JVM), in MB."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(peak_rss_mb(), children)


def available_mb() -> float:
    """MemAvailable of this machine now, in MB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    """Mean share of ``b``'s top-k ids that ``a`` also returned."""
    return float(
        np.mean([len(set(x) & set(y)) / max(len(y), 1) for x, y in zip(a, b, strict=True)])
    )


# ---- sides: each runs in a fresh process and returns a JSON object ----


def bm25_build(p: dict[str, Any]) -> dict[str, Any]:
    from searchr1 import Retriever

    path, _ = corpus(p["passages"], p["queries"])
    with AnonPeak() as anon:
        start, cpu = time.perf_counter(), time.process_time()
        Retriever.build(
            path, p["out"], threads=p["threads"], memory_mb=p["memory_mb"], progress=False
        )
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "build_s": took,
        "cpu_s": cpu,
        "build_rss_mb": peak_rss_mb(),
        "build_anon_mb": anon.mb,
    }


def bm25_search(p: dict[str, Any]) -> dict[str, Any]:
    from searchr1 import Retriever

    _, queries = corpus(p["passages"], p["queries"])
    start = time.perf_counter()
    retriever = Retriever.open(p["out"])
    opened = time.perf_counter() - start
    retriever.search(queries[:1], k=p["k"])
    first = time.perf_counter() - start
    retriever.search(queries[:50], k=p["k"])  # warm-up, as bench_bm25
    start = time.perf_counter()
    retriever.search(queries, k=p["k"])
    qps = len(queries) / (time.perf_counter() - start)
    hits = retriever.search(queries, k=p["agree_k"])
    return {
        "open_s": opened,
        "open_query_s": first,
        "qps": qps,
        "ids": [[h.id for h in row] for row in hits],
        "search_rss_mb": peak_rss_mb(),
    }


def lucene_check(p: dict[str, Any]) -> dict[str, Any]:
    try:
        import lucene  # benches/lucene.py
    except ImportError as e:
        return {"reason": f"benches/lucene.py cannot be imported ({e})"}
    return {"reason": lucene.unavailable()}


def lucene_build(p: dict[str, Any]) -> dict[str, Any]:
    import lucene

    path, _ = corpus(p["passages"], p["queries"])
    cpu = time.process_time()  # every thread of the process: the JVM's too
    seconds = lucene.build(path, Path(p["out"]), threads=p["threads"])
    cpu = time.process_time() - cpu
    return {"build_s": seconds, "cpu_s": cpu, "build_rss_mb": rss_with_children_mb()}


def lucene_search(p: dict[str, Any]) -> dict[str, Any]:
    import lucene

    _, queries = corpus(p["passages"], p["queries"])
    start = time.perf_counter()
    searcher = lucene.LuceneBatch(p["out"], k1=0.9, b=0.4, threads=p["threads"])
    searcher.search(queries[:1], p["k"])
    first = time.perf_counter() - start
    searcher.search(queries[:50], p["k"])
    start = time.perf_counter()
    searcher.search(queries, p["k"])
    qps = len(queries) / (time.perf_counter() - start)
    ids = searcher.search(queries, p["agree_k"])
    return {"open_query_s": first, "qps": qps, "ids": ids, "search_rss_mb": rss_with_children_mb()}


def bm25s_side(p: dict[str, Any]) -> dict[str, Any]:
    import bm25s

    path, queries = corpus(p["passages"], p["queries"])
    model, stemmer, ids, load, build = bm25s_index(path)

    def retrieve(k: int) -> list[list[int]]:
        q = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
        docs, _ = model.retrieve(q, k=k, n_threads=p["threads"], show_progress=False)
        rows: list[list[int]] = docs.tolist()
        return rows

    start = time.perf_counter()
    retrieve(p["k"])
    qps = len(queries) / (time.perf_counter() - start)
    top = retrieve(p["agree_k"])
    return {
        "load_s": load,
        "build_s": build,
        "qps": qps,
        "ids": [[ids[d] for d in row] for row in top],
        "rss_mb": peak_rss_mb(),
    }


def groups(rows: int) -> int:
    """Centres of the dense law: ~20 vectors each, as in bench_dense."""
    return max(10_000, rows // 20)


def dense_chunks(rows: int, dim: int) -> Iterator[np.ndarray]:
    """The base vectors, ``CHUNK`` rows at a time (each chunk from a seed of its own)."""
    for i, start in enumerate(range(0, rows, CHUNK)):
        yield vectors(min(CHUNK, rows - start), dim, 100 + i, groups(rows))


def dense_queries(rows: int, dim: int, n: int) -> np.ndarray:
    return vectors(n, dim, 1, groups(rows))


def dense_truth(p: dict[str, Any]) -> dict[str, Any]:
    """The exact f32 top ``agree_k`` of every query vector, saved as .npy."""
    q = dense_queries(p["rows"], p["dim"], p["queries"])
    k = p["agree_k"]
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    base = 0
    for chunk in dense_chunks(p["rows"], p["dim"]):
        scores = q @ chunk.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        i = np.concatenate([best_i, top + base], axis=1)
        keep = np.argsort(-s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, axis=1), np.take_along_axis(i, keep, axis=1)
        base += len(chunk)
    np.save(p["truth"], best_i)
    return {"rss_mb": peak_rss_mb()}


def dense_build(p: dict[str, Any]) -> dict[str, Any]:
    """An index of ``rows`` empty passages with their vectors stored as ``dtype``."""
    from searchr1 import _core

    out = Path(p["out"])
    lines = out.parent / f"{out.name}.jsonl"
    with lines.open("w") as f:
        f.writelines(f'{{"id": "{i}", "contents": ""}}\n' for i in range(p["rows"]))
    start = time.perf_counter()
    builder = _core.IndexBuilder(lines, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", p["dim"], p["dtype"])
    elapsed, added = time.perf_counter() - start, 0.0
    for chunk in dense_chunks(p["rows"], p["dim"]):
        start = time.perf_counter()
        writer.add(chunk)
        added += time.perf_counter() - start
    start = time.perf_counter()
    rows = writer.finish()
    builder.add_dense(p["dim"], p["dtype"], rows, json.dumps({"model": "synthetic"}))
    builder.finish()
    elapsed += time.perf_counter() - start
    lines.unlink()
    return {"build_s": elapsed + added, "add_s": added, "build_rss_mb": peak_rss_mb()}


def hnsw_build(p: dict[str, Any]) -> dict[str, Any]:
    from searchr1 import _core

    start, cpu = time.perf_counter(), time.process_time()
    _core.add_hnsw(
        p["out"], dtype=p["dtype"], expansion_add=p["ef_construction"], threads=p["threads"]
    )
    return {
        "build_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "build_rss_mb": peak_rss_mb(),
    }


def dense_search(p: dict[str, Any]) -> dict[str, Any]:
    """Open time, then queries/s at top-``k`` and recall@``agree_k``: exactly, or
    through the graph at the first efSearch that reaches ``RECALL``."""
    from searchr1 import Retriever, _core

    q = dense_queries(p["rows"], p["dim"], p["queries"])
    truth = np.load(p["truth"])
    exact = not p["hnsw"]
    start = time.perf_counter()
    retriever = Retriever.open(p["out"])
    opened = time.perf_counter() - start
    retriever.search_vectors(q[:1], k=p["k"], exact=exact)
    first = time.perf_counter() - start
    index = _core.Index(p["out"])

    def batch(k: int) -> tuple[float, float]:
        start = time.perf_counter()
        hits = index.search_dense(q, k, exact=exact)
        qps = len(q) / (time.perf_counter() - start)
        return qps, recall_at([[int(h[0]) for h in row] for row in hits], truth[:, :k])

    index.search_dense(q[:50], p["k"], exact=exact)  # warm-up
    ef = None
    if exact:
        _, recall = batch(p["agree_k"])
    else:
        index.search_dense(q, p["k"])  # faults the graph in, as bench_dense
        for ef in EF_SEARCH:
            index.set_ef_search(ef)
            _, recall = batch(p["agree_k"])
            if recall >= RECALL:
                break
    qps, _ = batch(p["k"])
    return {
        "open_s": opened,
        "open_query_s": first,
        "qps": qps,
        "recall": recall,
        "ef_search": ef,
        "search_rss_mb": peak_rss_mb(),
    }


SIDES = {
    f.__name__.replace("_side", ""): f
    for f in (
        bm25_build,
        bm25_search,
        lucene_check,
        lucene_build,
        lucene_search,
        bm25s_side,
        dense_truth,
        dense_build,
        hnsw_build,
        dense_search,
    )
}


def side(name: str, threads: int, /, **params: Any) -> dict[str, Any]:
    """Runs side ``name`` in a fresh process; its standard error is shown when it fails."""
    flags = ["--side", name, "--params", json.dumps(params, default=str)]
    try:
        return run_side(__file__, flags, threads)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(e.stderr or "")
        raise


def peer(name: str, threads: int, /, **params: Any) -> dict[str, Any]:
    """A peer's side; a failure is recorded as its reason instead of ending the run."""
    try:
        return side(name, threads, **params)
    except subprocess.CalledProcessError as e:
        last = (e.stderr or "").strip().splitlines()
        return {"skipped": f"failed: {last[-1] if last else e}"}


# ---- growth ----


def exponent(sizes: list[int], values: list[float]) -> float:
    """The slope of log(value) over log(size), least squares."""
    slope, _ = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(slope)


def project(sizes: list[int], values: list[float], to: int = TARGET) -> float:
    """The value at ``to``: that at the largest size times (to / size) ^ exponent."""
    return values[-1] * (to / sizes[-1]) ** exponent(sizes, values)


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 600 else f"{s:.1f} s" if s >= 1 else f"{s * 1e3:.1f} ms"


def with_cpu(r: dict[str, Any]) -> str:
    """A build's wall time, with its CPU time (every thread) where it was measured."""
    cpu = f" ({fmt_s(r['cpu_s'])} CPU)" if "cpu_s" in r else ""
    return fmt_s(r["build_s"]) + cpu


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Prints a markdown table (as benches/README.md holds it)."""
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def run_bm25(args: argparse.Namespace, work: Path) -> dict[int, dict[str, Any]]:
    """Every BM25 side at every size; figures by size, then by side."""
    sizes = sorted(args.sizes)
    for n in reversed(sizes):  # the largest first: the others are cut from it
        start = time.perf_counter()
        path, _ = corpus(n, args.queries)
        took = time.perf_counter() - start
        log(f"corpus {path.name}: {fmt_bytes(path.stat().st_size)}, {took:.0f} s")
    common = {
        "queries": args.queries,
        "k": args.k,
        "agree_k": args.agree_k,
        "threads": args.threads,
        "memory_mb": args.memory_mb,
    }
    lucene_reason = "--skip-lucene" if args.skip_lucene else side("lucene_check", 1)["reason"]
    bm25s_per_passage = float(BM25S_BYTES_PER_PASSAGE)
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        path, _ = corpus(n, args.queries)
        r: dict[str, Any] = {"corpus_bytes": path.stat().st_size}
        out = work / f"bm25-{n}"
        log(f"{n:,}: searchr1 build")
        r["ours"] = side("bm25_build", args.threads, passages=n, out=out, **common)
        r["ours"]["bytes"] = disk_bytes(out)
        log(f"{n:,}: searchr1 open + search")
        r["ours"] |= side("bm25_search", args.threads, passages=n, out=out, **common)
        shutil.rmtree(out)
        if lucene_reason:
            r["lucene"] = {"skipped": lucene_reason}
        else:
            lout = work / f"lucene-{n}"
            log(f"{n:,}: Lucene build")
            r["lucene"] = peer("lucene_build", args.threads, passages=n, out=lout, **common)
            if "skipped" not in r["lucene"]:
                r["lucene"]["bytes"] = disk_bytes(lout)
                log(f"{n:,}: Lucene search")
                r["lucene"] |= peer("lucene_search", args.threads, passages=n, out=lout, **common)
            shutil.rmtree(lout, ignore_errors=True)
        need_mb = bm25s_per_passage * n / 1e6
        if args.skip_bm25s:
            r["bm25s"] = {"skipped": "--skip-bm25s"}
        elif need_mb > 0.6 * available_mb():
            r["bm25s"] = {
                "skipped": f"it holds everything in RAM: ~{need_mb / 1e3:.1f} GB estimated "
                f"({bm25s_per_passage / 1e3:.1f} KB a passage, as measured at a smaller "
                f"size) is over 60% of the {available_mb() / 1e3:.1f} GB available"
            }
        else:
            log(f"{n:,}: bm25s")
            r["bm25s"] = peer("bm25s", args.threads, passages=n, **common)
            if "rss_mb" in r["bm25s"]:
                bm25s_per_passage = r["bm25s"]["rss_mb"] * 1e6 / n
        for name in ("lucene", "bm25s"):
            if "ids" in r[name]:
                r[name]["agree"] = overlap(r["ours"]["ids"], r[name]["ids"])
                del r[name]["ids"]
        del r["ours"]["ids"]
        results[n] = r
    return results


def report_bm25(args: argparse.Namespace, results: dict[int, dict[str, Any]]) -> dict[str, float]:
    sizes = sorted(results)
    print(
        f"\n== BM25, searchr1: {args.queries} queries at top-{args.k}, "
        f"{args.threads} threads ({machine()})"
    )
    table(
        [
            "passages",
            "JSONL",
            "build",
            "index (du)",
            "build peak RSS (of it anonymous)",
            "open",
            "open + 1 query",
            f"queries/s (top-{args.k})",
            "search peak RSS",
        ],
        [
            [
                f"{n:,}",
                fmt_bytes(r["corpus_bytes"]),
                with_cpu(r["ours"]),
                fmt_bytes(r["ours"]["bytes"]),
                f"{r['ours']['build_rss_mb']:,.0f} MB ({r['ours']['build_anon_mb']:,.0f} MB)",
                fmt_s(r["ours"]["open_s"]),
                fmt_s(r["ours"]["open_query_s"]),
                f"{r['ours']['qps']:,.0f}",
                f"{r['ours']['search_rss_mb']:,.0f} MB",
            ]
            for n, r in results.items()
        ],
    )

    def peer_cell(p: dict[str, Any], what: str) -> str:
        if "skipped" in p:
            return "—"
        if what == "build":
            load = f" (+{p['load_s']:.1f} s JSON)" if "load_s" in p else ""
            return with_cpu(p) + load
        if what == "qps":
            return f"{p['qps']:,.0f}"
        if what == "agree":
            return f"{p['agree']:.3f}"
        rss = [p[key] for key in ("build_rss_mb", "search_rss_mb", "rss_mb") if key in p]
        return " / ".join(f"{x:,.0f}" for x in rss) + " MB"

    print(
        f"\n== BM25 peers: k1 0.9, b 0.4, {args.threads} threads; agreement: the share "
        f"of their top-{args.agree_k} ids that searchr1 also returns"
    )
    table(
        [
            "passages",
            "side",
            "build",
            f"queries/s (top-{args.k})",
            f"top-{args.agree_k} agreement",
            "peak RSS (build / search)",
        ],
        [
            [f"{n:,}", name] + [peer_cell(r[name], w) for w in ("build", "qps", "agree", "rss")]
            for n, r in results.items()
            for name in ("lucene", "bm25s")
        ],
    )
    skipped = {
        f"{name} at {n:,}: {r[name]['skipped']}"
        for n, r in results.items()
        for name in ("lucene", "bm25s")
        if "skipped" in r[name]
    }
    for line in sorted(skipped):
        print(f"  skipped: {line}")

    out: dict[str, float] = {}
    for n, r in results.items():
        for key in (
            "build_s",
            "bytes",
            "build_rss_mb",
            "open_s",
            "open_query_s",
            "qps",
            "search_rss_mb",
        ):
            out[f"bm25_{n}_{key}"] = float(r["ours"][key])
        for name in ("lucene", "bm25s"):
            for key in ("build_s", "qps", "agree"):
                if key in r[name]:
                    out[f"{name}_{n}_{key}"] = float(r[name][key])
    if len(sizes) < 2:
        return out

    figures = [
        ("searchr1 build time", [results[n]["ours"]["build_s"] for n in sizes], fmt_s),
        ("searchr1 build CPU time", [results[n]["ours"]["cpu_s"] for n in sizes], fmt_s),
        ("searchr1 index bytes", [results[n]["ours"]["bytes"] for n in sizes], fmt_bytes),
        (
            "searchr1 build peak RSS",
            [results[n]["ours"]["build_rss_mb"] * 1e6 for n in sizes],
            fmt_bytes,
        ),
        (
            "searchr1 build peak anonymous RSS",
            [results[n]["ours"]["build_anon_mb"] * 1e6 for n in sizes],
            fmt_bytes,
        ),
        ("searchr1 open + 1 query", [results[n]["ours"]["open_query_s"] for n in sizes], fmt_s),
        ("searchr1 queries/s", [results[n]["ours"]["qps"] for n in sizes], fmt_count),
    ]
    for name in ("lucene", "bm25s"):
        for key, label, fmt in (
            ("build_s", "build time", fmt_s),
            ("cpu_s", "build CPU time", fmt_s),
            ("qps", "queries/s", fmt_count),
        ):
            if all(key in results[n][name] for n in sizes):
                figures.append((f"{name} {label}", [results[n][name][key] for n in sizes], fmt))
    print(
        f"\n== Growth over {', '.join(f'{n:,}' for n in sizes)} passages: value ~ size^exponent, "
        f"projected to {TARGET:,} from the largest size"
    )
    table(
        [
            "figure",
            "exponent (fit)",
            "exponent (last two sizes)",
            f"at {sizes[-1]:,}",
            f"projected at {TARGET:,}",
        ],
        [
            [
                label,
                f"{exponent(sizes, values):.2f}",
                f"{exponent(sizes[-2:], values[-2:]):.2f}",
                fmt(values[-1]),
                fmt(project(sizes, values)),
            ]
            for label, values, fmt in figures
        ],
    )
    build = [results[n]["ours"]["build_s"] for n in sizes]
    rss = [results[n]["ours"]["build_rss_mb"] for n in sizes]
    anon = [results[n]["ours"]["build_anon_mb"] for n in sizes]
    largest = results[sizes[-1]]["ours"]
    projected = project(sizes, build)
    # The wall time of a build with both threads busy all along, on an idle machine.
    ideal = project(sizes, [results[n]["ours"]["cpu_s"] for n in sizes]) / args.threads
    out |= {
        "bm25_build_exponent": exponent(sizes, build),
        "bm25_build_21m_s": projected,
        "bm25_build_21m_cpu_s": ideal * args.threads,
        "bm25_bytes_21m": project(sizes, [results[n]["ours"]["bytes"] for n in sizes]),
        "bm25_rss_exponent": exponent(sizes, rss),
        "bm25_anon_exponent": exponent(sizes, anon),
    }

    # Flat: the largest size's peak within 1.5x the smallest's (an exponent of 0.13 over
    # 200,000 -> 5,000,000), and never over 8 GB.
    def flat(mb: list[float]) -> str:
        ok = mb[-1] <= 1.5 * mb[0] and max(mb) <= 8_000
        return (
            f"{'met' if ok else 'NOT met'} ({min(mb):,.0f}-{max(mb):,.0f} MB, largest / "
            f"smallest {mb[-1] / mb[0]:.2f}, exponent {exponent(sizes, mb):.2f})"
        )

    report(
        "BM25 targets",
        [
            ("build peak RSS flat with size, <= 8 GB", flat(rss)),
            ("  the same, anonymous memory only (no mapped files)", flat(anon)),
            (
                f"open of the {sizes[-1]:,}-passage index (+ 1 query) <= 1 s",
                f"{'met' if largest['open_query_s'] <= 1 else 'NOT met'} "
                f"({fmt_s(largest['open_s'])}; {fmt_s(largest['open_query_s'])} with the query)",
            ),
            (
                f"projected {TARGET:,}-passage build <= 30 min",
                f"{'met' if projected <= 1800 else 'NOT met'} ({projected / 60:.1f} min; "
                f"CPU time / {args.threads} threads: {ideal / 60:.1f} min)",
            ),
        ],
    )
    return out


def run_dense(args: argparse.Namespace, work: Path) -> dict[str, float]:
    rows, dim = args.dense_rows, args.dim
    common = {"rows": rows, "dim": dim, "queries": args.queries, "k": args.k}
    common |= {"agree_k": args.agree_k, "threads": args.threads, "truth": work / "truth.npy"}
    log(f"dense {rows:,} x {dim}: exact f32 top-{args.agree_k}")
    side("dense_truth", args.threads, **common)
    measured: list[tuple[str, dict[str, Any]]] = []
    for dtype in args.dense_dtypes:
        out = work / f"dense-{dtype}"
        log(f"dense {dtype}: build")
        r = side("dense_build", args.threads, out=out, dtype=dtype, **common)
        r["bytes"] = disk_bytes(out)
        log(f"dense {dtype}: exact search")
        r |= side("dense_search", args.threads, out=out, hnsw=False, **common)
        measured.append((f"exact, {dtype} store", r))
        if dtype == args.dense_dtypes[0]:
            for graph in args.hnsw_dtypes:
                log(f"dense {dtype}: HNSW {graph} build")
                g = side(
                    "hnsw_build",
                    args.threads,
                    out=out,
                    dtype=graph,
                    ef_construction=args.ef_construction,
                    **common,
                )
                g["bytes"] = disk_bytes(out) - r["bytes"]
                log(f"dense {dtype}: HNSW {graph} search")
                g |= side("dense_search", args.threads, out=out, hnsw=True, **common)
                measured.append((f"HNSW {graph} graph (re-scored on {dtype})", g))
        shutil.rmtree(out)
    print(
        f"\n== Dense: {rows:,} x {dim} clustered vectors, {args.queries} query vectors, "
        f"{args.threads} threads; recall@{args.agree_k} against the exact f32 top-{args.agree_k}"
    )
    table(
        [
            "index",
            "build (of it DenseWriter.add)",
            "bytes (du)",
            "build peak RSS",
            "open / + 1 query",
            f"queries/s (top-{args.k})",
            f"recall@{args.agree_k}",
            "search peak RSS",
        ],
        [
            [
                label,
                with_cpu(r) + (f" ({fmt_s(r['add_s'])})" if "add_s" in r else ""),
                fmt_bytes(r["bytes"]),
                f"{r['build_rss_mb']:,.0f} MB",
                f"{fmt_s(r['open_s'])} / {fmt_s(r['open_query_s'])}",
                f"{r['qps']:,.0f}" + (f" (efSearch {r['ef_search']})" if r["ef_search"] else ""),
                f"{r['recall']:.3f}",
                f"{r['search_rss_mb']:,.0f} MB",
            ]
            for label, r in measured
        ],
    )
    out: dict[str, float] = {}
    for label, r in measured:
        key = label.split(" (")[0].replace(", ", "_").replace(" ", "_")
        for name in ("build_s", "bytes", "qps", "recall", "open_s"):
            out[f"dense_{key}_{name}"] = float(r[name])
    return out


def int_list(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x]


def word_list(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def fmt_count(x: float) -> str:
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        type=int_list,
        default=[200_000, 1_000_000, 5_000_000],
        help="passages, comma-separated",
    )
    ap.add_argument("--dense-rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument(
        "--dense-dtypes", type=word_list, default=["f16", "i8"], help="stores searched exactly"
    )
    ap.add_argument(
        "--hnsw-dtypes", type=word_list, default=["i8"], help="graphs built over the first store"
    )
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=3, help="top-k of the timed batches")
    ap.add_argument("--agree-k", type=int, default=10, help="top-k of agreement and recall")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--memory-mb",
        type=int,
        help="our BM25 build's indexing memory budget (default: the core's, "
        "searchr1._core.DEFAULTS['memory_mb'])",
    )
    ap.add_argument("--skip-bm25", action="store_true")
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--skip-lucene", action="store_true")
    ap.add_argument("--skip-bm25s", action="store_true")
    ap.add_argument(
        "--work", type=Path, help="where the indexes are built (default: a temporary directory)"
    )
    ap.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.side:
        print(json.dumps(SIDES[args.side](json.loads(args.params))))
        return {}

    work = Path(tempfile.mkdtemp(prefix="searchr1-scale-", dir=args.work))
    results: dict[str, float] = {}
    try:
        if not args.skip_bm25:
            results |= report_bm25(args, run_bm25(args, work))
        if not args.skip_dense:
            results |= run_dense(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
