"""Retrieval server under hostile traffic: what well-behaved clients see beside attackers.

Corpus: bench_bm25's synthetic passages (default 100,000), one BM25 index built here.
Good clients: `--clients` (16) concurrent keep-alive clients sending Search-R1 trainer
bodies (8..64 queries, top-3) back to back, as in bench_server.py. Each server is
loaded twice in this run: quiet (the good clients alone), then hostile (the same good
clients while an attacker process runs beside them). Measured: the good clients'
requests/s, p50 / p99 latency and errors in each phase, and what the attackers got.

The attackers (one process of their own, so that their work does not slow the
measuring loop):

- slowloris: `--half-open` (300) connections that send half a request line and then
  nothing, each reopened as soon as the server closes it;
- greedy: one client sending the largest request the body limit lets through,
  8,192 queries at top-100 (a body of a few hundred KB asking for 819,200 hits), back
  to back;
- leavers: clients that send a 512-query request and hang up without reading;
- junk: bad JSON, a 5,000-digit topk, a text/plain body, on keep-alive connections.

Sides, each a server process of its own on uvicorn (RAYON_NUM_THREADS = `--threads`):
`searchr1 serve` with its default limits, and `reference_server.py` (FastAPI + pydantic,
built like Search-R1's retrieval server) on our index, one query per search call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_bm25 import corpus_and_queries
from bench_server import Load, _load, _start, free_port, read_head, request_bodies, stop
from common import machine, report

HERE = Path(__file__).parent


# --------------------------------------------------------------------------- attackers


async def _status_and_drain(reader: asyncio.StreamReader) -> int:
    """Reads one response, discarding its body in chunks (it may be hundreds of MB)."""
    status, length = await read_head(reader)
    while length:
        chunk = await reader.read(min(length, 1 << 20))
        if not chunk:
            break
        length -= len(chunk)
    return status


def _post(body: bytes, kind: str = "application/json") -> bytes:
    head = (
        f"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _attack(port: int, seconds: float, half_open: int, queries: list[str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    stop = time.monotonic() + seconds

    async def slowloris() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
                await writer.drain()
                seen["slowloris: opened"] += 1
                async with asyncio.timeout(max(stop - time.monotonic(), 0.01)):
                    await reader.read()  # returns when the server closes it
                seen["slowloris: closed by the server"] += 1
                writer.close()
            except TimeoutError:
                return
            except OSError:
                seen["slowloris: refused or reset"] += 1
                await asyncio.sleep(0.1)

    async def keep_sending(name: str, bodies: list[bytes], pause: float = 0.0) -> None:
        i = 0
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                while time.monotonic() < stop:
                    writer.write(bodies[i % len(bodies)])
                    i += 1
                    async with asyncio.timeout(max(stop - time.monotonic(), 0.01)):
                        seen[f"{name}: {await _status_and_drain(reader)}"] += 1
                    await asyncio.sleep(pause)
            except TimeoutError:
                return
            except (OSError, asyncio.IncompleteReadError, ValueError):
                seen[f"{name}: connection lost"] += 1
                await asyncio.sleep(0.1)

    async def leaver() -> None:
        body = _post(json.dumps({"queries": queries[:512], "topk": 10}).encode())
        while time.monotonic() < stop:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(body)
                await writer.drain()
                writer.close()
                seen["leavers: sent and left"] += 1
            except OSError:
                seen["leavers: refused or reset"] += 1
            await asyncio.sleep(0.05)

    greedy = json.dumps({"queries": (queries * 9)[:8192], "topk": 100, "return_scores": True})
    junk = [
        _post(b"{not json"),
        _post(b'{"queries": ["a"], "topk": 1' + b"0" * 5000 + b"}"),
        _post(json.dumps({"queries": ["river"]}).encode(), kind="text/plain"),
    ]
    tasks = [slowloris() for _ in range(half_open)]
    tasks += [keep_sending("greedy", [_post(greedy.encode())])]
    tasks += [leaver() for _ in range(2)]
    tasks += [keep_sending("junk", junk, pause=0.01)]
    await asyncio.gather(*tasks)
    return seen


# --------------------------------------------------------------------------- one side


def run_side(
    name: str,
    cmd: list[str],
    bodies: list[tuple[bytes, int]],
    queries: list[str],
    args: argparse.Namespace,
    log_dir: Path,
) -> dict[str, Any]:
    port = free_port()
    proc = _start([*cmd, "--port", str(port)], port, args.threads, log_dir / f"{name}.log")
    try:
        asyncio.run(_load(port, bodies[:4], 2, 2, 60))  # warm up
        quiet = asyncio.run(_load(port, bodies, args.clients, 10**6, args.seconds))
        attack = [sys.executable, __file__, "--attack", str(port), "--seconds", str(args.seconds)]
        attack += ["--half-open", str(args.half_open), "--passages", str(args.passages)]
        attacker = subprocess.Popen(attack, stdout=subprocess.PIPE)
        time.sleep(2)  # the attack in full swing
        hostile = asyncio.run(_load(port, bodies, args.clients, 10**6, args.seconds - 2))
        out, _ = attacker.communicate(timeout=args.seconds * 3 + 120)
        attacks = json.loads(out)
    finally:
        stop(proc)
    for phase, load in (("quiet", quiet), ("hostile", hostile)):
        print(f"  {name:<10} {phase:<8} {_line(load)}", file=sys.stderr)
    print(f"  {name:<10} attackers got: {attacks}", file=sys.stderr)
    return {"quiet": quiet, "hostile": hostile, "attacks": attacks}


def _line(load: Load) -> str:
    if not load.latencies:
        return f"no request answered; {load.errors} errors"
    return (
        f"{load.rps:6.1f} req/s  p50 {load.pct(50):6.0f} ms  p99 {load.pct(99):7.0f} ms  "
        f"{load.errors} errors"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=16, help="well-behaved clients")
    ap.add_argument("--seconds", type=float, default=20, help="length of each phase")
    ap.add_argument("--half-open", type=int, default=300, help="slowloris connections")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    corpus, queries = corpus_and_queries(args.passages, 10_000)
    if args.attack:
        seen = asyncio.run(_attack(args.attack, args.seconds, args.half_open, queries))
        print(json.dumps(dict(sorted(seen.items()))))
        return {}
    bodies = request_bodies(queries, 4096, (8, 64), 3)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        from searchr1 import Retriever

        Retriever.build(corpus, tmpdir / "bm25", threads=args.threads, progress=False)
        index = ["--index", str(tmpdir / "bm25")]
        serve = [sys.executable, "-m", "searchr1", "serve", "--log-level", "warning", *index]
        ref = [sys.executable, str(HERE / "reference_server.py"), "--engine", "searchr1"]
        sides = {
            "searchr1": run_side("searchr1", serve, bodies, queries, args, tmpdir),
            "reference": run_side("reference", [*ref, *index], bodies, queries, args, tmpdir),
        }
    rows = []
    for name, side in sides.items():
        for phase in ("quiet", "hostile"):
            rows.append((f"{name}, {phase}", _line(side[phase])))
        results[name] = {
            **{
                f"{phase}_{key}": value
                for phase in ("quiet", "hostile")
                for key, value in _summary(side[phase]).items()
            },
            "attacks": side["attacks"],
        }
    ours, peer = sides["searchr1"]["hostile"], sides["reference"]["hostile"]
    if ours.latencies and peer.latencies:
        rows.append(
            ("p99 under attack, reference / searchr1", f"{peer.pct(99) / ours.pct(99):.1f}x")
        )
    report(
        f"Retrieval server under attack: {args.passages} passages, {args.clients} good clients, "
        f"{args.half_open} half-open connections + greedy + leavers + junk, "
        f"{args.threads} threads ({machine()})",
        rows,
    )
    return results


def _summary(load: Load) -> dict[str, float]:
    out: dict[str, float] = {"requests": load.requests, "errors": load.errors, "rps": load.rps}
    if load.latencies:
        out |= {"p50_ms": load.pct(50), "p99_ms": load.pct(99)}
    return out


if __name__ == "__main__":
    main()
