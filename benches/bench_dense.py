"""Dense search: searchr1's flat index and HNSW graph vs faiss, in one run.

Vectors: 200,000 x 384 float32, L2-normalised, drawn around 10,000 random centres with
noise of half their scale (every vector has ~20 near neighbours, as with embeddings);
1,000 queries from the same law; top-10; 2 threads each. The time is the search of
the whole batch of query vectors, encoding excluded on both sides. Each side runs in
its own process (peak RSS is its own).

Exact search twice: f32 vectors (ours vs faiss IndexFlatIP), and 8-bit vectors (ours:
i8 with a scale per row, `searchr1 index --dtype i8`; faiss: IndexScalarQuantizer
QT_8bit, trained on the vectors), with the recall@10 of each against the f32 top-10.

HNSW: searchr1's graph (usearch's, through its Rust crate; M = its default, 24:
usearch links a new node to M others at level 0, faiss to 2M) vs faiss IndexHNSWFlat
(M = 16), built on 2 threads, at efConstruction 128 and again at 256 (each side at the
same value); efSearch is raised from 8 until recall@10 against the exact top-10 reaches
0.95, and queries/s are compared at recall 0.95 (interpolated between the two efSearch
values around it, on each side). Ours is the i8 graph (rows quantized by their largest
value, cosine metric) whose best candidates (4 k, at most efSearch) are re-scored
exactly against the stored f32 vectors (what `searchr1 index --hnsw` builds); faiss's
graph is f32, inner product. `--f32-graph` adds our f32 graph at the first
efConstruction.

Also: the open time of a 1,000,000-vector index in a fresh process. On an AVX-512
CPU faiss's OpenBLAS is told so (OPENBLAS_CORETYPE=SkylakeX) unless set already: it
takes some CPU models for a Prescott core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, peak_rss_mb, report, run_side


def vectors(n: int, dim: int, seed: int, groups: int = 10_000) -> np.ndarray:
    """Normalised vectors around `groups` centres (fixed by a seed of their own), so
    every vector has a couple of dozen near neighbours, as real embeddings do."""
    centres = np.random.default_rng(12345).standard_normal((groups, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, groups, n)]
    x += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_index(out: Path, base: np.ndarray, dtype: str = "f32") -> None:
    """An index directory holding `base` as dense vectors (passages are empty)."""
    from searchr1 import _core

    corpus = out.parent / "corpus.jsonl"
    with corpus.open("w") as f:
        f.writelines(f'{{"id": "{i}", "contents": ""}}\n' for i in range(len(base)))
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", base.shape[1], dtype)
    for start in range(0, len(base), 100_000):
        writer.add(base[start : start + 100_000])
    rows = writer.finish()
    builder.add_dense(base.shape[1], dtype, rows, json.dumps({"model": "synthetic"}))
    builder.finish()


def measure_exact(
    name: str, n: int, dim: int, queries: int, k: int, threads: int, dtype: str = "f32"
) -> dict[str, object]:
    """Queries/s of an exhaustive search; ``dtype`` i8: 8-bit vectors on both sides
    (ours a scale per row, faiss ``IndexScalarQuantizer`` QT_8bit)."""
    base = vectors(n, dim, 0)
    q = vectors(queries, dim, 1)
    if name == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        if dtype == "i8":
            index = faiss.IndexScalarQuantizer(
                dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
            index.train(base)
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(base)
        index.search(q[:10], k)
        start = time.perf_counter()
        _, ids = index.search(q, k)
        elapsed = time.perf_counter() - start
        top = ids.tolist()
    else:
        from searchr1 import _core

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "idx"
            write_index(out, base, dtype)
            del base
            index = _core.Index(out)
            index.search_dense(q[:10], k)
            start = time.perf_counter()
            hits = index.search_dense(q, k)
            elapsed = time.perf_counter() - start
            top = [[int(h[0]) for h in row] for row in hits]
    return {"qps": queries / elapsed, "ids": top, "rss_mb": peak_rss_mb()}


EF_SEARCH = (8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)


def recall_at(found: list[list[int]], truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth.tolist(), strict=True)])
    )


def measure_hnsw(
    name: str,
    n: int,
    dim: int,
    queries: int,
    k: int,
    threads: int,
    dtype: str = "f32",
    ef_construction: int = 128,
) -> dict[str, object]:
    """Build time, then (efSearch, recall, queries/s) up to the first recall >= 0.95."""
    base = vectors(n, dim, 0)
    q = vectors(queries, dim, 1)
    truth = np.argsort(-(q @ base.T), axis=1)[:, :k]
    curve = []
    if name == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        start = time.perf_counter()
        index.add(base)
        build = time.perf_counter() - start
        index.search(q, k)  # warm-up, untimed, as on our side
        for ef in EF_SEARCH:
            index.hnsw.efSearch = ef
            start = time.perf_counter()
            _, ids = index.search(q, k)
            elapsed = time.perf_counter() - start
            curve.append((ef, recall_at(ids.tolist(), truth), queries / elapsed))
            if curve[-1][1] >= 0.95:
                break
        rss = peak_rss_mb()
    else:
        from searchr1 import _core

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "idx"
            write_index(out, base)
            del base
            start = time.perf_counter()
            _core.add_hnsw(out, dtype=dtype, expansion_add=ef_construction, threads=threads)
            build = time.perf_counter() - start
            index = _core.Index(out)
            # Warm-up, untimed: the first pass faults the memory-mapped graph and
            # vectors in (faiss's are in memory already).
            index.search_dense(q, k)
            for ef in EF_SEARCH:
                index.set_ef_search(ef)
                start = time.perf_counter()
                hits = index.search_dense(q, k)
                elapsed = time.perf_counter() - start
                found = [[int(h[0]) for h in row] for row in hits]
                curve.append((ef, recall_at(found, truth), queries / elapsed))
                if curve[-1][1] >= 0.95:
                    break
            rss = peak_rss_mb()
    return {"build_s": build, "curve": curve, "rss_mb": rss}


def open_time(n: int, dim: int) -> float:
    """Seconds to open an index of `n` vectors, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "idx"
        rng = np.random.default_rng(2)
        write_index(out, rng.standard_normal((n, dim), dtype=np.float32), dtype="f16")
        code = (
            "import time, sys; from searchr1 import Retriever; t = time.perf_counter(); "
            "r = Retriever.open(sys.argv[1]); print(time.perf_counter() - t, len(r))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(out)], check=True, capture_output=True, text=True
        )
        seconds, rows = done.stdout.split()
        assert int(rows) == n
        return float(seconds)


def avx512() -> bool:
    """Whether this CPU has AVX-512 (Linux only; elsewhere, no)."""
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--open-vectors", type=int, default=1_000_000)
    ap.add_argument("--hnsw-vectors", type=int, default=200_000)
    ap.add_argument(
        "--ef-construction",
        type=int,
        nargs="+",
        default=[128, 256],
        help="efConstruction values, each built by both sides",
    )
    ap.add_argument("--f32-graph", action="store_true", help="also our f32 HNSW graph")
    ap.add_argument("--side", choices=["ours", "faiss"], help=argparse.SUPPRESS)
    ap.add_argument("--hnsw", action="store_true", help=argparse.SUPPRESS)
    # What the measured side stores: the flat vectors, or with --hnsw the graph's.
    ap.add_argument("--dtype", default="f32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.side:
        if args.hnsw:
            r = measure_hnsw(
                args.side,
                args.hnsw_vectors,
                args.dim,
                args.queries,
                args.k,
                args.threads,
                args.dtype,
                args.ef_construction[0],
            )
        else:
            r = measure_exact(
                args.side, args.vectors, args.dim, args.queries, args.k, args.threads, args.dtype
            )
        print(json.dumps(r))
        return {}

    # faiss-cpu's bundled OpenBLAS picks its kernels by CPU model, and takes a VM's
    # generic "Intel(R) Xeon(R) Processor" for a Prescott (SSE3) core: its SGEMM then
    # ran 4x slower than with its AVX-512 kernels (machine C). The peer runs at its best.
    if "OPENBLAS_CORETYPE" not in os.environ and avx512():
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"

    def side(name: str, *extra: str) -> dict[str, object]:
        flags = ["--side", name, "--vectors", str(args.vectors), *extra]
        flags += ["--hnsw-vectors", str(args.hnsw_vectors), "--dim", str(args.dim)]
        flags += [
            "--queries",
            str(args.queries),
            "--k",
            str(args.k),
            "--threads",
            str(args.threads),
        ]
        return run_side(__file__, flags, args.threads)

    ours, peer = side("ours"), side("faiss")
    agree = np.mean(
        [a == b for a, b in zip(ours["ids"], peer["ids"], strict=True)]  # type: ignore[call-overload]
    )
    ours8, peer8 = side("ours", "--dtype", "i8"), side("faiss", "--dtype", "i8")

    def recall(found: object) -> float:
        """Recall@k of ``found`` against the f32 exact top-k (faiss's)."""
        return recall_at(found, np.array(peer["ids"]))  # type: ignore[arg-type]

    opened = open_time(args.open_vectors, args.dim)

    def hnsw(name: str, efc: int, dtype: str) -> dict[str, object]:
        return side(name, "--hnsw", "--dtype", dtype, "--ef-construction", str(efc))

    graphs = [
        (efc, hnsw("ours", efc, "i8"), hnsw("faiss", efc, "f32")) for efc in args.ef_construction
    ]
    f32_graph = hnsw("ours", args.ef_construction[0], "f32") if args.f32_graph else None

    def at_target(curve: list[list[float]]) -> str:
        """The first efSearch at recall >= 0.95: "efSearch, recall, q/s"."""
        ef, recall, qps = curve[-1]
        return f"{int(ef)}, {recall:.3f}, {qps:.0f}"

    def at_recall(curve: list[list[float]], target: float = 0.95) -> float:
        """Queries/s at exactly ``target`` recall, interpolated between the efSearch
        values on either side (the first one when it is already above)."""
        if len(curve) < 2 or curve[-2][1] >= target or curve[-1][1] < target:
            return curve[-1][2]
        (_, r1, q1), (_, r2, q2) = curve[-2], curve[-1]
        return q1 + (target - r1) / (r2 - r1) * (q2 - q1)

    o_qps, p_qps = float(ours["qps"]), float(peer["qps"])  # type: ignore[arg-type]
    report(
        f"dense exact: {args.vectors} x {args.dim} f32, {args.queries} queries, "
        f"top-{args.k}, {args.threads} threads ({machine()})",
        [
            ("queries/s, searchr1 (batch)", f"{o_qps:8.0f}"),
            ("queries/s, faiss IndexFlatIP", f"{p_qps:8.0f}"),
            ("speed-up", f"{o_qps / p_qps:8.2f}x"),
            ("same top-k lists", f"{agree:8.3f}"),
            ("peak RSS, searchr1 / faiss", f"{ours['rss_mb']:.0f} MB / {peer['rss_mb']:.0f} MB"),
            ("i8 vectors: queries/s, searchr1", f"{ours8['qps']:8.0f}"),
            ("i8 vectors: queries/s, faiss SQ8", f"{peer8['qps']:8.0f}"),
            ("i8 speed-up", f"{float(ours8['qps']) / float(peer8['qps']):8.2f}x"),  # type: ignore[arg-type]
            ("i8 recall@k, searchr1", f"{recall(ours8['ids']):8.3f}"),
            ("i8 recall@k, faiss SQ8", f"{recall(peer8['ids']):8.3f}"),
            (f"open, {args.open_vectors} x {args.dim} f16", f"{opened * 1e3:8.1f} ms"),
        ],
    )
    from searchr1._core import DEFAULTS

    rows: list[tuple[str, str]] = []
    hnsw_results: dict[str, float] = {}
    for efc, ours_g, faiss_g in graphs:
        o_95, p_95 = at_recall(ours_g["curve"]), at_recall(faiss_g["curve"])  # type: ignore[arg-type]
        rows += [
            (
                f"efC {efc}: build, searchr1 i8 / faiss",
                f"{ours_g['build_s']:.1f} s / {faiss_g['build_s']:.1f} s",
            ),
            (f"efC {efc}: searchr1 i8+exact: efSearch, recall, q/s", at_target(ours_g["curve"])),  # type: ignore[arg-type]
            (f"efC {efc}: faiss f32:    efSearch, recall, q/s", at_target(faiss_g["curve"])),  # type: ignore[arg-type]
            (f"efC {efc}: q/s at recall 0.95, searchr1 / faiss", f"{o_95:.0f} / {p_95:.0f}"),
            (f"efC {efc}: speed-up at recall 0.95", f"{o_95 / p_95:8.2f}x"),
        ]
        hnsw_results |= {
            f"hnsw{efc}_build_s": float(ours_g["build_s"]),  # type: ignore[arg-type]
            f"faiss_hnsw{efc}_build_s": float(faiss_g["build_s"]),  # type: ignore[arg-type]
            f"hnsw{efc}_qps_at_95": o_95,
            f"faiss_hnsw{efc}_qps_at_95": p_95,
            f"hnsw{efc}_ratio": o_95 / p_95,
        }
    if f32_graph is not None:
        f_95 = at_recall(f32_graph["curve"])  # type: ignore[arg-type]
        p_95 = hnsw_results[f"faiss_hnsw{args.ef_construction[0]}_qps_at_95"]
        rows += [
            ("f32 graph: build", f"{f32_graph['build_s']:.1f} s"),
            ("f32 graph: efSearch, recall, q/s", at_target(f32_graph["curve"])),  # type: ignore[arg-type]
            ("f32 graph: speed-up at recall 0.95", f"{f_95 / p_95:8.2f}x"),
        ]
        hnsw_results["hnsw_f32_ratio"] = f_95 / p_95
    report(
        f"HNSW: {args.hnsw_vectors} x {args.dim}, M {DEFAULTS['connectivity']} "
        f"(faiss 16), {args.threads} threads, "
        f"at recall@{args.k} >= 0.95",
        rows,
    )
    return {
        "qps": o_qps,
        "faiss_qps": p_qps,
        "ratio": o_qps / p_qps,
        "agree": float(agree),
        "i8_qps": float(ours8["qps"]),  # type: ignore[arg-type]
        "faiss_sq8_qps": float(peer8["qps"]),  # type: ignore[arg-type]
        "i8_recall": recall(ours8["ids"]),
        "faiss_sq8_recall": recall(peer8["ids"]),
        "open_s": opened,
        **hnsw_results,
    }


if __name__ == "__main__":
    main()
