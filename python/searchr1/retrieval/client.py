""":class:`RemoteRetriever`: the :meth:`Retriever.search` of a server, over HTTP.

It talks Search-R1's ``POST /retrieve`` (``searchr1 serve``, or Search-R1's own
retrieval server) in the format of :mod:`searchr1.retrieval.wire`, keeps a small pool
of keep-alive connections so concurrent threads do not reconnect per call, retries
failed attempts with exponential backoff, and raises
:class:`~searchr1.errors.RetrievalError` with a message that says what went wrong when
the server is down, refuses the request, or answers something else. This is the one
place a search is retried: the rollout loop calls ``search`` once per turn and turns a
RetrievalError into its observation text. Only the standard library is used.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from searchr1.errors import InputError, RetrievalError
from searchr1.retrieval.index import MODES, Hit, check_queries
from searchr1.retrieval.wire import (
    MalformedResponse,
    error_message,
    excerpt,
    json_type,
    parse_response,
    request_body,
)

__all__ = ["RemoteRetriever"]

#: Statuses worth another try: the server is overloaded, restarting or behind a proxy.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RemoteRetriever:
    """A retrieval server (``searchr1 serve``) used like a :class:`Retriever`.

    ``url`` is the server's base address or its ``/retrieve`` endpoint (Search-R1's
    ``search_url``), e.g. ``http://127.0.0.1:8000``. Each attempt may take ``timeout``
    seconds per socket operation (connecting, sending, each read); a failed attempt — no
    connection, a timeout, a dropped connection, or status 429/502/503/504 — is tried
    again up to ``retries`` times, after ``backoff``, ``2 * backoff``, … seconds (with
    ±25% jitter, at most ``max_backoff``), as long as the call's ``deadline`` (seconds
    from its start, over all attempts) has not passed; no attempt waits past it. Other
    4xx/5xx answers fail at once. Up to
    ``pool_size`` idle connections are kept for reuse; any number of threads may search
    at the same time. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        deadline: float = 120.0,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        pool_size: int = 8,
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"not an http(s) URL: {url!r}")
        if timeout <= 0 or deadline <= 0 or retries < 0 or backoff < 0 or pool_size < 1:
            raise InputError(
                "timeout and deadline must be positive, retries and backoff non-negative, "
                "pool_size >= 1"
            )
        path = parts.path.rstrip("/")
        if path.endswith("/retrieve"):
            path = path[: -len("/retrieve")]
        self.url = f"{parts.scheme}://{parts.netloc}{path}"
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = path
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.pool_size = pool_size
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._server_mode: str | None = None

    def __repr__(self) -> str:
        return f"RemoteRetriever({self.url!r})"

    def __enter__(self) -> RemoteRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the pooled connections; later calls open new ones."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------ the API

    def search(
        self,
        queries: Sequence[str],
        k: int = 3,
        mode: str | None = None,
    ) -> list[list[Hit]]:
        """The best ``k`` passages for each query, best first: one list per query.

        The same call as :meth:`Retriever.search`, answered by the server in its one
        ``--mode``; ``mode``, when given, must be that mode (checked once against
        ``/health``). Raises :class:`~searchr1.errors.RetrievalError` when the server
        cannot be reached after the retries, refuses the request (the message is the
        server's), or answers something that is not a ``/retrieve`` response.
        """
        queries = check_queries(queries)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InputError(f"k must be a non-negative integer, got {k!r}")
        if mode is not None:
            self._check_mode(mode)
        if not queries:
            return []
        if k == 0:
            return [[] for _ in queries]
        answer = self._call("POST", "/retrieve", request_body(queries, k))
        try:
            return parse_response(answer, len(queries))
        except MalformedResponse as e:
            raise RetrievalError(
                f"{self.url}/retrieve answered something that is not a result: {e}"
            ) from None

    def health(self) -> dict[str, Any]:
        """The server's ``GET /health`` answer: its mode, index size and limits."""
        answer = self._call("GET", "/health", None)
        if not isinstance(answer, dict):
            raise RetrievalError(f"{self.url}/health answered {json_type(answer)}, not an object")
        return answer

    def _check_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if self._server_mode is None:
            self._server_mode = str(self.health().get("mode"))
        if mode != self._server_mode:
            raise InputError(
                f"the server at {self.url} searches in {self._server_mode} mode, not {mode} "
                "(its --mode)"
            )

    # ------------------------------------------------------------------ HTTP

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """An idle pooled connection (reused: True) or a new one (False), whose socket
        operations wait at most ``timeout`` seconds."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def _call(self, method: str, path: str, body: bytes | None) -> Any:
        """One request with retries; the decoded JSON answer of a 200."""
        url = f"{self.url}{path}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        last = ""
        attempt = 0
        give_up = time.monotonic() + self.deadline
        while True:
            conn, reused = self._connection(
                max(min(self.timeout, give_up - time.monotonic()), 0.001)
            )
            status: int | None = None
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                status = response.status
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                if reused and isinstance(e, ConnectionError):
                    continue  # the server closed an idle keep-alive connection: not a try
                if isinstance(e, http.client.BadStatusLine | http.client.LineTooLong) and not (
                    isinstance(e, ConnectionError)
                ):
                    raise RetrievalError(
                        f"{url} does not answer HTTP ({_describe(e)}); is it a retrieval server?"
                    ) from None
                last = _describe(e)
            else:
                if response.will_close:
                    conn.close()
                else:
                    self._release(conn)
                if status == 200:
                    try:
                        return json.loads(data)
                    except ValueError:
                        raise RetrievalError(
                            f"{url} answered 200 with a body that is not JSON: {excerpt(data)}",
                            status,
                        ) from None
                message = error_message(data)
                if status not in RETRY_STATUSES:
                    raise RetrievalError(f"{url} refused the request ({status}): {message}", status)
                last = f"status {status}: {message}"
            delay = min(self.backoff * 2**attempt, self.max_backoff) * random.uniform(0.75, 1.25)
            if attempt >= self.retries or time.monotonic() + delay >= give_up:
                within = "" if attempt >= self.retries else f" within {self.deadline:g} s"
                raise RetrievalError(
                    f"cannot get an answer from the retrieval server at {url} after "
                    f"{attempt + 1} attempts{within} (last: {last}); is `searchr1 serve` "
                    "running there?",
                    status,
                )
            time.sleep(delay)
            attempt += 1


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
