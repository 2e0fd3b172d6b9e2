"""The server's ASGI app in process: fuzzed requests, the work of clients that left, and
the size of an answer. (tests/test_server.py runs it over real HTTP.)"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searchr1 import Hit, Retriever
from searchr1.retrieval.server import ServerConfig, allowed_hosts, create_app, host_name

Message = dict[str, Any]
App = Callable[..., Awaitable[None]]

WORDS = ["river", "city", "king", "queen", "bridge", "museum", "lake", "island", "café"]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    tmp = tmp_path_factory.mktemp("app")
    corpus = tmp / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for i in range(200):
            words = " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 3 + i % 9))
            f.write(json.dumps({"id": f"p{i}", "contents": f'"T{i}"\n{words}'}) + "\n")
    return Retriever.build(corpus, tmp / "idx", progress=False, threads=1)


class Client:
    """Drives an ASGI app in the running event loop: its lifespan, then requests."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._lifespan: asyncio.Queue[Message] = asyncio.Queue()
        self._started: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        async def receive() -> Message:
            return await self._lifespan.get()

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._started.set()

        self._task = asyncio.create_task(self.app({"type": "lifespan"}, receive, send))
        await self._lifespan.put({"type": "lifespan.startup"})
        await self._started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._lifespan.put({"type": "lifespan.shutdown"})
        assert self._task is not None
        await self._task

    async def request(
        self,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
        path: str = "/retrieve",
        method: str = "POST",
        leave: asyncio.Event | None = None,
    ) -> tuple[int, bytes]:
        """The status and body of one request; with ``leave``, the client disconnects when
        it is set (and the status is 0 if nothing was sent before)."""
        sent: list[Message] = []
        chunks = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> Message:
            if chunks:
                return chunks.pop()
            await (leave.wait() if leave is not None else asyncio.Event().wait())
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), *headers],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        await self.app(scope, receive, send)
        if not sent:
            return 0, b""
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def run(app: App, work: Callable[[Client], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with Client(app) as client:
            return await work(client)

    return asyncio.run(main())


def config(**limits: Any) -> ServerConfig:
    return ServerConfig(index=Path("unused"), max_wait_ms=0, **limits)


# ---------------------------------------------------------------- fuzzing


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "queries": st.lists(st.text(max_size=30) | json_values, max_size=12) | json_values,
        "topk": st.integers(-5, 10**30) | json_values,
        "return_scores": st.booleans() | json_values,
    },
)
bodies = (
    requests.map(lambda r: json.dumps(r).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | st.builds(lambda n: b'{"queries": ["a"], "topk": ' + b"9" * n + b"}", st.integers(1, 6000))
)
LIMITS = {"max_topk": 8, "max_queries": 6, "max_hits": 20, "max_query_chars": 25}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bodies, min_size=1, max_size=6))
def test_any_body_gets_an_answer_or_a_4xx_that_says_why(
    retriever: Retriever, bodies: list[bytes]
) -> None:
    """Whatever arrives, each request gets a 200 with one row per query (each at most
    topk hits), or a 4xx with a message; never a 5xx."""
    app = create_app(config(**LIMITS), retriever)

    async def work(client: Client) -> list[tuple[int, bytes]]:
        return list(await asyncio.gather(*(client.request(b) for b in bodies)))

    for body, (status, answer) in zip(bodies, run(app, work), strict=True):
        decoded = json.loads(answer)
        if status == 200:
            sent = json.loads(body)
            topk = sent.get("topk") or 3
            assert len(decoded["result"]) == len(sent["queries"]) <= LIMITS["max_queries"]
            assert all(len(row) <= topk for row in decoded["result"])
            assert len(sent["queries"]) * topk <= LIMITS["max_hits"]
        else:
            assert status in (400, 413, 422), (status, body, decoded)
            assert isinstance(decoded["error"], str) and decoded["error"]


# ---------------------------------------------------------------- bounded work


def test_a_grpo_batch_fits_the_default_limits(retriever: Retriever) -> None:
    """Search-R1's GRPO step (512 prompts x 5 responses) sends up to 2,560 queries at
    top-3 in one request; the defaults take it, with room for Wikipedia's ~100-word
    passages (under 1 KB a hit) in the answer."""
    defaults = ServerConfig(index=Path("unused"))
    queries = [f"{WORDS[i % len(WORDS)]} {i}" for i in range(512 * 5)]
    body = json.dumps({"queries": queries, "topk": 3, "return_scores": True}).encode()
    assert len(body) <= defaults.max_body_bytes
    assert len(queries) * 3 * 1000 <= defaults.max_response_bytes
    app = create_app(defaults, retriever)

    async def work(client: Client) -> tuple[int, bytes]:
        return await client.request(body)

    status, answer = run(app, work)
    assert status == 200 and len(json.loads(answer)["result"]) == len(queries)


def test_an_answer_over_the_limit_gets_413(retriever: Retriever) -> None:
    app = create_app(config(max_response_bytes=400), retriever)
    small = json.dumps({"queries": ["river"], "topk": 1}).encode()
    large = json.dumps({"queries": ["river", "lake", "king"], "topk": 5}).encode()

    async def work(client: Client) -> list[tuple[int, bytes]]:
        return [await client.request(small), await client.request(large)]

    (status, _), (status_large, answer) = run(app, work)
    assert status == 200
    assert status_large == 413
    assert "over the limit of 400 (--max-response-bytes)" in json.loads(answer)["error"]


class Gated:
    """A retriever whose first search waits for a gate; it records every query searched."""

    def __init__(self, inner: Retriever) -> None:
        self.inner = inner
        self.path, self.modes = inner.path, inner.modes
        self.gate = threading.Event()
        self.searching = threading.Event()
        self.searched: list[str] = []

    def __len__(self) -> int:
        return len(self.inner)

    def search(self, queries: list[str], **options: Any) -> list[list[Hit]]:
        self.searching.set()
        assert self.gate.wait(30)
        self.searched += queries
        return self.inner.search(queries, **options)


def test_the_work_of_a_client_that_left_is_dropped(retriever: Retriever) -> None:
    """A request queued behind a running batch whose client disconnects is never
    searched; the others are answered."""
    gated = Gated(retriever)
    app = create_app(config(), gated)  # type: ignore[arg-type]

    def body(query: str) -> bytes:
        return json.dumps({"queries": [query], "topk": 2}).encode()

    async def work(client: Client) -> list[tuple[int, bytes]]:
        first = asyncio.create_task(client.request(body("river")))
        await asyncio.to_thread(gated.searching.wait, 30)  # the first batch is running
        leave = asyncio.Event()
        gone = asyncio.create_task(client.request(body("museum"), leave=leave))
        stays = asyncio.create_task(client.request(body("lake")))
        await asyncio.sleep(0.05)
        leave.set()
        await asyncio.sleep(0.05)
        gated.gate.set()
        return [await first, await gone, await stays]

    (first, _), (gone, _), (stays, _) = run(app, work)
    assert (first, stays) == (200, 200)
    assert gone == 400  # nobody reads it; counted as a disconnect
    assert gated.searched == ["river", "lake"]


# ---------------------------------------------------------------- hosts


def test_the_host_names_a_server_answers_to() -> None:
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == host_name("[::1]") == "::1"
    assert host_name("example.org") == "example.org"
    loopback = allowed_hosts(config())
    assert loopback is not None and {"localhost", "127.0.0.1", "::1"} <= loopback
    assert allowed_hosts(ServerConfig(index=Path("i"), host="0.0.0.0")) is None
    named = allowed_hosts(ServerConfig(index=Path("i"), host="0.0.0.0", allowed_hosts=("a.b",)))
    assert named == frozenset({"a.b"})
    assert allowed_hosts(ServerConfig(index=Path("i"), allowed_hosts=("*",))) is None
