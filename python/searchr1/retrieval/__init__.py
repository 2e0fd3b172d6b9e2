"""Retrieval: a BM25 index in Rust (tantivy), opened memory-mapped, searched in batches;
:class:`RemoteRetriever` searches one that ``searchr1 serve`` serves over HTTP.

Importing this package does not import torch, starlette or uvicorn.
"""

from __future__ import annotations

from searchr1.retrieval.client import RemoteRetriever
from searchr1.retrieval.index import MODES, Hit, Retriever

__all__ = ["MODES", "Hit", "RemoteRetriever", "Retriever"]
