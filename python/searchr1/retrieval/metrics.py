"""What the retrieval server's ``GET /metrics`` reports, in Prometheus' text format.

Requests by endpoint and status, errors by reason, latency, micro-batch sizes and
times, and the queries waiting now. No client library: a counter and a histogram are
a few lines each, and the server updates them on its event loop's thread only.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PROMETHEUS", "Counter", "Histogram", "Instrumented", "Metrics"]

#: The content type of Prometheus' text exposition format.
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """A Prometheus histogram: cumulative counts at fixed upper bounds, sum and count."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help, self.buckets = name, help, list(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, n in zip([*self.buckets, math.inf], self.counts, strict=True):
            total += n
            le = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'{self.name}_bucket{{le="{le}"}} {total}')
        lines += [f"{self.name}_sum {self.sum:.6g}", f"{self.name}_count {self.count}"]
        return lines


class Counter:
    """A Prometheus counter with labels."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, by: float = 1) -> None:
        self.values[label_values] = self.values.get(label_values, 0) + by

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self.labels:
            lines.append(f"{self.name} {self.values.get((), 0):g}")
        for values, n in sorted(self.values.items()):
            if values:
                pairs = ",".join(f'{k}="{v}"' for k, v in zip(self.labels, values, strict=True))
                lines.append(f"{self.name}{{{pairs}}} {n:g}")
        return lines


class Metrics:
    """What ``GET /metrics`` reports. Updated on the event loop's thread only."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = Counter(
            "searchr1_requests_total", "HTTP requests answered.", ("endpoint", "status")
        )
        self.errors = Counter(
            "searchr1_errors_total",
            "Requests that failed, by reason (bad_json, bad_utf8, body_too_large, body_timeout, "
            "too_many_queries, invalid, not_found, method_not_allowed, disconnected, internal).",
            ("reason",),
        )
        self.queries = Counter("searchr1_queries_total", "Queries answered.")
        self.latency = Histogram(
            "searchr1_request_seconds",
            "Time from receiving a /retrieve request to handing back its answer.",
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        )
        sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
        self.batch_queries = Histogram(
            "searchr1_batch_queries", "Queries (repeats too) answered by one micro-batch.", sizes
        )
        self.batch_requests = Histogram(
            "searchr1_batch_requests", "Requests answered by one micro-batch.", sizes
        )
        self.batch_seconds = Histogram(
            "searchr1_batch_seconds",
            "Time one micro-batch takes to search (and encode) on the search thread.",
            [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        )
        #: The queries waiting for the search thread; the batcher sets it.
        self.pending: Callable[[], int] = lambda: 0

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.errors,
            self.queries,
            self.latency,
            self.batch_queries,
            self.batch_requests,
            self.batch_seconds,
        ):
            lines += metric.render()
        lines += [
            "# HELP searchr1_pending_queries Queries waiting for the search thread now.",
            "# TYPE searchr1_pending_queries gauge",
            f"searchr1_pending_queries {self.pending()}",
            "# HELP searchr1_start_time_seconds When the server started (Unix time).",
            "# TYPE searchr1_start_time_seconds gauge",
            f"searchr1_start_time_seconds {self.started:.3f}",
        ]
        return ("\n".join(lines) + "\n").encode()


class Instrumented:
    """ASGI wrapper that counts every HTTP response by endpoint and status; paths not
    in ``endpoints`` are counted as ``other`` (so scanners cannot grow the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            path = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.requests.inc(path, str(status))
