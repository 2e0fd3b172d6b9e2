"""The retrieval HTTP server: Search-R1's ``POST /retrieve``, micro-batched.

``POST /retrieve`` speaks Search-R1's wire format (:mod:`searchr1.retrieval.wire`
parses the requests and writes the answers). ``GET /health`` says the server is up and
what it serves; ``GET /metrics`` is Prometheus text (:mod:`searchr1.retrieval.metrics`:
requests by status, latency, micro-batch sizes, errors).

Concurrent requests are **micro-batched**: a collector task gathers the queries of the
requests that arrive while the previous batch runs (and up to ``max_wait_ms`` after the
first of them, up to ``max_batch`` queries), searches them in one call on a worker
thread (BM25 in Rust with the GIL released; dense queries encoded together), and hands
each request its own rows. The event loop never searches, so it keeps accepting,
parsing and validating requests meanwhile.

Bad input gets a 4xx with ``{"error": "…"}`` saying what was wrong; every limit is a
:class:`ServerConfig` field (and a ``searchr1 serve`` option). This module imports
starlette and uvicorn (the ``serve`` extra); ``import searchr1`` does not import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from searchr1.errors import InputError
from searchr1.retrieval.connections import guarded_protocol, raise_open_files_limit
from searchr1.retrieval.encoder import DTYPES as ENCODER_DTYPES
from searchr1.retrieval.index import MODES, Retriever
from searchr1.retrieval.metrics import PROMETHEUS, Instrumented, Metrics
from searchr1.retrieval.wire import (
    ApiError,
    RetrieveRequest,
    error_body,
    parse_request,
    response_body,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["MicroBatcher", "ServerConfig", "create_app", "serve"]

logger = logging.getLogger("uvicorn.error")

JSON = "application/json"
#: The log levels ``serve`` offers (uvicorn's).
LOG_LEVELS = ("debug", "info", "warning", "error")
ENDPOINTS = ("/retrieve", "/health", "/metrics")


@dataclass(frozen=True)
class ServerConfig:
    """Settings of ``searchr1 serve``; each field is also a command-line option."""

    index: Path = field(metadata={"help": "Index directory built by `searchr1 index`."})
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address to bind; loopback unless told otherwise (0.0.0.0: all)."},
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)."})
    topk: int = field(
        default=3, metadata={"help": "Hits per query when a request's topk is absent or null."}
    )
    mode: str | None = field(
        default=None,
        metadata={"help": "bm25, dense or hybrid [default: bm25 if the index has it, else dense]."},
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "Device of the query encoder for dense and hybrid mode (cpu, cuda). A "
            "CUDA device also searches the vectors: exactly, as torch matmuls over an f16 "
            "copy loaded at start-up ('cuda' spreads it over as many GPUs as it needs; "
            "cuda:0,cuda:1 lists them), instead of the Rust search on the CPU "
            "[default: the encoder on cuda when present, the search on the CPU]."
        },
    )
    encoder_dtype: str | None = field(
        default=None,
        metadata={
            "help": "What the query encoder computes in: float32, bfloat16 or float16 "
            "[default: bfloat16 on a GPU, float32 on a CPU; bfloat16 pays on CPUs with "
            "AVX512-BF16 or AMX]."
        },
    )
    exact: bool = field(
        default=False, metadata={"help": "Dense search over every vector, not the HNSW graph."}
    )
    max_topk: int = field(default=100, metadata={"help": "Largest topk a request may ask for."})
    max_queries: int = field(
        default=8192, metadata={"help": "Most queries in one request (413 beyond)."}
    )
    max_hits: int = field(
        default=65536,
        metadata={"help": "Most hits one request may ask for, queries x topk (413 beyond)."},
    )
    max_query_chars: int = field(
        default=4096, metadata={"help": "Longest query, in characters (413 beyond)."}
    )
    max_body_bytes: int = field(
        default=8 << 20, metadata={"help": "Largest request body in bytes (413 beyond)."}
    )
    max_response_bytes: int = field(
        default=64 << 20,
        metadata={"help": "Largest answer in bytes; a request whose answer is larger gets 413."},
    )
    body_timeout_s: float = field(
        default=30.0,
        metadata={"help": "How long a request's body may take to arrive (408 beyond)."},
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "How long a connection may take to send a request's headers, after "
            "opening or after its previous answer; it is closed beyond."
        },
    )
    idle_timeout_s: float = field(
        default=5.0,
        metadata={"help": "How long a kept-alive connection may sit idle before it is closed."},
    )
    max_connections: int = field(
        default=1000,
        metadata={
            "help": "Most open connections; beyond, a new one closes the connection that has "
            "waited longest for headers, or gets 503 when all are busy."
        },
    )
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Host names requests may address (repeatable; * for any) "
            "[default: loopback names when bound to loopback, else any]. Guards a loopback "
            "server against web pages that reach it by DNS rebinding (421 otherwise)."
        },
    )
    max_batch: int = field(
        default=1024,
        metadata={"help": "Most queries searched in one micro-batch; a larger request runs alone."},
    )
    max_wait_ms: float = field(
        default=2.0,
        metadata={
            "help": "How long a micro-batch waits for more requests after its first one, "
            "when the search thread is idle (requests that queue behind a running batch "
            "wait for it anyway)."
        },
    )
    allow_empty_queries: bool = field(
        default=False,
        metadata={
            "help": "Search empty or blank queries instead of rejecting them with 422 "
            "(Search-R1's trainer sends one when a model writes <search></search>)."
        },
    )
    shutdown_timeout_s: int = field(
        default=30,
        metadata={"help": "On SIGTERM, how long requests in flight may take to finish."},
    )
    log_level: str = field(default="info", metadata={"help": "uvicorn's log level."})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"port must be in 0..65535, not {self.port}")
        for name in (
            "max_topk",
            "max_queries",
            "max_hits",
            "max_query_chars",
            "max_body_bytes",
            "max_response_bytes",
            "max_connections",
            "max_batch",
        ):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 1 <= self.topk <= self.max_topk:
            raise InputError(f"topk must be in 1..max_topk ({self.max_topk}), not {self.topk}")
        if self.mode is not None and self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.encoder_dtype is not None and self.encoder_dtype not in ENCODER_DTYPES:
            raise InputError(
                f"encoder_dtype must be one of {', '.join(ENCODER_DTYPES)}, "
                f"not {self.encoder_dtype!r}"
            )
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            raise InputError(f"max_wait_ms must be a finite number >= 0, not {self.max_wait_ms}")
        for name in ("body_timeout_s", "header_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{name} must be a finite number > 0, not {value}")
        if self.topk > self.max_hits:
            raise InputError(f"topk ({self.topk}) must not exceed max_hits ({self.max_hits})")
        if self.shutdown_timeout_s < 1:
            raise InputError(
                f"shutdown_timeout_s must be at least 1, not {self.shutdown_timeout_s}"
            )
        if self.log_level not in LOG_LEVELS:
            raise InputError(
                f"unknown log_level {self.log_level!r}; expected one of {', '.join(LOG_LEVELS)}"
            )


# --------------------------------------------------------------------------- batching


@dataclass
class _Job:
    """One request's share of a micro-batch."""

    request: RetrieveRequest
    future: asyncio.Future[bytes]
    arrived: float


class MicroBatcher:
    """Gathers the queries of concurrent requests and searches them in one call.

    ``submit`` queues a request and waits for its answer; a collector task takes queued
    requests (whole, up to ``max_batch`` queries; a larger request goes alone), waiting
    at most ``max_wait_s`` after the first for more, and runs ``search_batch`` on one
    worker thread. ``search_batch`` gets the requests and returns, per request, its
    response body or the exception that request should fail with.
    """

    def __init__(
        self,
        search_batch: Callable[[list[RetrieveRequest]], list[bytes | Exception]],
        max_batch: int,
        max_wait_s: float,
        metrics: Metrics,
    ) -> None:
        self._search_batch = search_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._pending_queries = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="searchr1-search")
        self._task: asyncio.Task[None] | None = None
        metrics.pending = lambda: self._pending_queries

    async def __aenter__(self) -> MicroBatcher:
        self._task = asyncio.create_task(self._collect(), name="searchr1-batcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            job.future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, request: RetrieveRequest) -> bytes:
        """Queues ``request`` for the next micro-batch; returns its response body."""
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop.time())
        self._pending.append(job)
        self._pending_queries += len(request.queries)
        self._wake.set()
        return await job.future

    def _take(self) -> list[_Job]:
        """Pops the next micro-batch off the queue (jobs whose caller left are dropped)."""
        batch: list[_Job] = []
        size = 0
        while self._pending:
            job = self._pending[0]
            n = len(job.request.queries)
            if batch and size + n > self.max_batch:
                break
            self._pending.popleft()
            self._pending_queries -= n
            if not job.future.done():
                batch.append(job)
                size += n
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while self._pending_queries < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            requests = [job.request for job in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._search_batch, requests)
            except asyncio.CancelledError:
                for job in batch:
                    job.future.cancel()
                raise
            except Exception as e:  # a bug in search_batch: fail this batch, keep serving
                results = [e] * len(batch)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self.metrics.batch_requests.observe(len(batch))
            self.metrics.batch_queries.observe(sum(len(r.queries) for r in requests))
            for job, result in zip(batch, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)


def search_batch(
    retriever: Retriever, mode: str, exact: bool = False, max_response_bytes: int | None = None
) -> Callable[[list[RetrieveRequest]], list[bytes | Exception]]:
    """The search of one micro-batch: one ``retriever.search`` call per distinct topk
    (usually one) over the distinct queries of the requests that asked for it (GRPO
    groups often repeat a query), whose rows are split back into each request's body.
    A body over ``max_response_bytes`` becomes a 413 :class:`ApiError`."""

    def run(requests: list[RetrieveRequest]) -> list[bytes | Exception]:
        out: list[bytes | Exception] = [b""] * len(requests)
        by_topk: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            by_topk.setdefault(request.topk, []).append(i)
        for topk, members in by_topk.items():
            distinct = list(dict.fromkeys(q for i in members for q in requests[i].queries))
            try:
                rows = retriever.search(distinct, k=topk, mode=mode, exact=exact)
            except Exception as e:
                for i in members:
                    out[i] = e
                continue
            found = dict(zip(distinct, rows, strict=True))
            for i in members:
                mine = [found[q] for q in requests[i].queries]
                body = response_body(mine, requests[i].return_scores)
                if max_response_bytes is not None and len(body) > max_response_bytes:
                    out[i] = ApiError(
                        413,
                        f"the answer is {len(body)} bytes, over the limit of "
                        f"{max_response_bytes} (--max-response-bytes); ask for fewer "
                        "queries or a smaller topk per request",
                        "response_too_large",
                    )
                else:
                    out[i] = body
        return out

    return run


# --------------------------------------------------------------------------- the app


def resolve_mode(retriever: Retriever, mode: str | None) -> str:
    """``mode``, checked against what the index supports (default: bm25, else dense)."""
    if mode is None:
        return "bm25" if "bm25" in retriever.modes else retriever.modes[0]
    if mode not in retriever.modes:
        raise InputError(f"{retriever.path} cannot serve {mode} mode (it has: {retriever.modes})")
    return mode


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address to bind) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(config: ServerConfig) -> frozenset[str] | None:
    """The names a request's Host header may give (lower case, no port); None: any.

    A server bound to loopback answers only to loopback names, so that a web page whose
    name was rebound to 127.0.0.1 cannot use it; ``config.allowed_hosts`` adds names
    (``*``: any).
    """
    names = {h.lower().strip("[]") for h in config.allowed_hosts}
    if "*" in names:
        return None
    if is_loopback(config.host):
        names |= {*LOOPBACK_NAMES, config.host.lower().strip("[]")}
    return frozenset(names) or None


def host_name(header: str) -> str:
    """The name in a Host header, without the port: ``[::1]:80`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_checked(app: ASGIApp, allowed: frozenset[str]) -> ASGIApp:
    """``app``, answering 421 to HTTP requests whose Host header is not in ``allowed``
    (a request without one, which no browser sends, passes)."""
    from starlette.datastructures import Headers
    from starlette.responses import Response

    async def checked(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host")
            if host is not None and host_name(host) not in allowed:
                message = (
                    f"this server does not answer to the host {host!r} "
                    f"(it answers to {', '.join(sorted(allowed))}; --allowed-host adds names)"
                )
                await Response(error_body(message), 421, media_type=JSON)(scope, receive, send)
                return
        await app(scope, receive, send)

    return checked


async def until_disconnect(request: Request, work: Awaitable[bytes]) -> bytes:
    """The result of ``work``, which is cancelled (so a queued search is dropped before
    it runs) if the client disconnects first; then raises ``ClientDisconnect``."""
    from starlette.requests import ClientDisconnect

    async def disconnected() -> None:
        # The body has been read: receive() now returns only when the client leaves.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    raise ClientDisconnect


def create_app(config: ServerConfig, retriever: Retriever) -> ASGIApp:
    """The ASGI application serving ``retriever`` under ``config``'s limits."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response
    from starlette.routing import Route

    from searchr1 import __version__

    def error(status: int, message: str) -> Response:
        return Response(error_body(message), status, media_type=JSON)

    mode = resolve_mode(retriever, config.mode)
    metrics = Metrics()
    batcher: MicroBatcher | None = None
    health = json.dumps(
        {
            "status": "ok",
            "version": __version__,
            "index": str(retriever.path),
            "passages": len(retriever),
            "mode": mode,
            "modes": list(retriever.modes),
            "topk": config.topk,
            "max_topk": config.max_topk,
            "max_queries": config.max_queries,
            "max_hits": config.max_hits,
        }
    ).encode()

    async def read_body(request: Request) -> bytes:
        limit = config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413,
                f"the body is {int(declared)} bytes, over the limit of {limit} (--max-body-bytes)",
                "body_too_large",
            )
        chunks, size = [], 0
        try:
            async with asyncio.timeout(config.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(
                            413,
                            f"the body is over the limit of {limit} bytes (--max-body-bytes)",
                            "body_too_large",
                        )
                    chunks.append(chunk)
        except TimeoutError:
            raise ApiError(
                408,
                f"the body did not arrive within {config.body_timeout_s:g} s "
                f"({size} bytes came; --body-timeout-s)",
                "body_timeout",
            ) from None
        return b"".join(chunks)

    async def retrieve(request: Request) -> Response:
        started = time.perf_counter()
        try:
            kind = request.headers.get("content-type", "")
            if kind.partition(";")[0].strip().lower() != JSON:
                raise ApiError(
                    415,
                    f"send the body as Content-Type: application/json, not {kind or 'none'!r}",
                    "bad_content_type",
                )
            parsed = parse_request(await read_body(request), config)
            assert batcher is not None, "the lifespan starts the batcher before requests"
            body = await until_disconnect(request, batcher.submit(parsed))
        except ApiError as e:
            metrics.errors.inc(e.reason)
            return error(e.status, e.message)
        except ClientDisconnect:
            metrics.errors.inc("disconnected")
            return Response(status_code=400)  # nobody is there to read it
        except InputError as e:  # the retriever refused the batch; never expected here
            metrics.errors.inc("invalid")
            return error(422, str(e))
        except Exception as e:
            metrics.errors.inc("internal")
            logger.exception("searching failed")
            return error(500, f"internal error while searching: {type(e).__name__}: {e}")
        metrics.queries.inc(by=len(parsed.queries))
        metrics.latency.observe(time.perf_counter() - started)
        return Response(body, media_type=JSON)

    async def get_health(request: Request) -> Response:
        return Response(health, media_type=JSON)

    async def get_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            metrics.errors.inc("not_found")
            message = (
                f"no endpoint {request.url.path}; "
                "this server has POST /retrieve, GET /health and GET /metrics"
            )
        elif exc.status_code == 405:
            metrics.errors.inc("method_not_allowed")
            allowed = exc.headers.get("Allow", "") if exc.headers else ""
            message = f"{request.url.path} takes {allowed}, not {request.method}"
        else:
            metrics.errors.inc("invalid")
            message = str(exc.detail)
        return error(exc.status_code, message)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal batcher
        run = search_batch(retriever, mode, config.exact, config.max_response_bytes)
        async with MicroBatcher(run, config.max_batch, config.max_wait_ms / 1000, metrics) as b:
            batcher = b
            yield

    app = Starlette(
        routes=[
            Route("/retrieve", retrieve, methods=["POST"]),
            Route("/health", get_health, methods=["GET"]),
            Route("/metrics", get_metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    allowed = allowed_hosts(config)
    return Instrumented(app if allowed is None else host_checked(app, allowed), metrics, ENDPOINTS)


@contextlib.contextmanager
def _sigterm_exits_cleanly() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the
    handler it found; a handler that does nothing lets the process exit with status 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(config: ServerConfig) -> None:
    """Opens the index, warms it up, and serves it until SIGTERM or Ctrl-C.

    Raises :class:`~searchr1.errors.SearchR1Error` (or ``OSError``) before binding when
    the index cannot be opened or cannot serve the mode asked for.
    """
    import uvicorn

    retriever = Retriever.open(
        config.index, device=config.device, encoder_dtype=config.encoder_dtype
    )
    mode = resolve_mode(retriever, config.mode)
    started = time.perf_counter()
    retriever.search(["warm up"], k=config.topk, mode=mode, exact=config.exact)  # loads the encoder
    # Each connection holds a file descriptor, and so do those accepted in a burst (up to
    # the backlog, a few bursts deep) before the cap closes others: all stay within the
    # process's limit, with room for the index's files.
    spare, backlog = 64, 2048
    files = raise_open_files_limit(config.max_connections + 2 * backlog + spare) - spare
    max_connections = max(min(config.max_connections, files // 2), 1)
    backlog = max(min(backlog, files // 8), 1)
    server_config = uvicorn.Config(
        create_app(config, retriever),
        host=config.host,
        port=config.port,
        http=guarded_protocol(max_connections, config.header_timeout_s),
        backlog=backlog,
        timeout_keep_alive=config.idle_timeout_s,  # type: ignore[arg-type]
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=config.shutdown_timeout_s,
        server_header=False,
    )  # sets up uvicorn's loggers, ours among them
    if max_connections < config.max_connections:
        logger.warning(
            "at most %d connections (not %d): the open-files limit is low (ulimit -n)",
            max_connections,
            config.max_connections,
        )
    logger.info(
        "searchr1 serve: %s (%d passages, %s mode) ready in %.1fs; micro-batches of up to "
        "%d queries, %.1f ms wait",
        config.index,
        len(retriever),
        mode,
        time.perf_counter() - started,
        config.max_batch,
        config.max_wait_ms,
    )
    server = uvicorn.Server(server_config)
    with _sigterm_exits_cleanly():
        server.run()
