"""The connection limits uvicorn lacks: a deadline for a request's headers, and a cap on
open connections that makes room by closing the idle ones.

uvicorn closes a kept-alive connection after its idle timeout, but a client that sends
half a request line and then nothing (or one header byte a minute) holds its connection,
and its file descriptor, for ever. Enough of them and the server cannot accept anyone
(``EMFILE``). Here a connection must deliver a request's headers within
``header_timeout_s`` of opening or of its previous answer, and when ``max_connections``
are open a new one closes the connection that has waited longest for headers; when every
connection is busy with a request, the new one is answered 503 (which
:class:`~searchr1.retrieval.client.RemoteRetriever` retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any

__all__ = ["guarded_protocol", "raise_open_files_limit"]

logger = logging.getLogger("uvicorn.error")

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap (the class to
    pass as ``uvicorn.Config(http=...)``)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from searchr1.retrieval.wire import error_body

    busy_body = error_body(
        f"the server holds {max_connections} connections, all busy (--max-connections); "
        "try again shortly"
    )

    class GuardedH11Protocol(H11Protocol):
        # Set while the connection waits for a request's headers: when it began waiting,
        # and the timer that closes it at the deadline.
        _waiting_since: float | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._wait_for_headers()
            if len(self.connections) > max_connections and not self._evict_one():
                transport.write(BUSY % (len(busy_body), busy_body))
                transport.close()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request's headers are complete
                self._stop_waiting()

        def on_response_complete(self) -> None:
            cycle = self.cycle
            super().on_response_complete()
            # Unless a pipelined request started meanwhile, the next headers are due.
            if self.cycle is cycle and not self.transport.is_closing():
                self._wait_for_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _wait_for_headers(self) -> None:
            self._stop_waiting()
            self._waiting_since = self.loop.time()
            self._deadline = self.loop.call_later(header_timeout_s, self._close_idle)

        def _stop_waiting(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self._waiting_since = None

        def _close_idle(self) -> None:
            self._stop_waiting()
            if not self.transport.is_closing():
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()

        def _evict_one(self) -> bool:
            """Closes the connection (another than this one) that has waited longest
            for headers; False when every other connection is busy with a request."""
            waiting = {
                c: c._waiting_since
                for c in self.connections
                if isinstance(c, GuardedH11Protocol)
                and c is not self
                and c._waiting_since is not None
            }
            if not waiting:
                return False
            min(waiting, key=waiting.__getitem__)._close_idle()
            return True

    return GuardedH11Protocol


def raise_open_files_limit(wanted: int) -> int:
    """Raises this process's soft limit on open files towards ``wanted`` (at most the
    hard limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.warning("cannot raise the open-files limit from %d to %d", soft, target)
    return soft if soft != resource.RLIM_INFINITY else wanted
