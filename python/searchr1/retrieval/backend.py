"""One way to open what searches go to: an index directory or a retrieval server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from searchr1.errors import InputError

__all__ = ["open_backend"]


def open_backend(
    index: str | Path | None = None,
    url: str | None = None,
    *,
    mode: str = "bm25",
    device: str | None = None,
    **client_options: Any,
) -> Any:
    """A :class:`~searchr1.retrieval.Retriever` on ``index`` (searched in-process with
    ``mode``, the encoder on ``device``) or a :class:`~searchr1.retrieval.RemoteRetriever`
    on ``url`` (``client_options`` go to it); exactly one of the two. Both have the
    ``search(queries, k)`` the rollout loop needs."""
    if index is not None and url is None:
        from searchr1.retrieval.index import Retriever

        return Retriever.open(index, mode=mode, device=device)
    if url is not None and index is None:
        from searchr1.retrieval.client import RemoteRetriever

        return RemoteRetriever(url, **client_options)
    raise InputError("give an index directory or a retrieval server URL, not both or neither")
