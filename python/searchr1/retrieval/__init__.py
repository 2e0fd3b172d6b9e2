"""Retrieval: a BM25 index in Rust (tantivy), opened memory-mapped, searched in batches.

Importing this package does not import torch.
"""

from __future__ import annotations

from searchr1.retrieval.index import MODES, Hit, Retriever

__all__ = ["MODES", "Hit", "Retriever"]
