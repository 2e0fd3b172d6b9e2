"""searchr1: train language models with RL to reason and search, and search fast.

The Rust core (``searchr1._core``) does the data-parallel work with the GIL released:
tag scanning, token-level stop checking, and packing rollouts into batch arrays.
"""

from __future__ import annotations

from searchr1._core import __version__
from searchr1.errors import (
    CorpusError,
    IndexFormatError,
    InputError,
    PackError,
    RetrievalError,
    SearchR1Error,
)
from searchr1.packing import PackedBatch, Segment, Trajectory, pack
from searchr1.retrieval import Hit, RemoteRetriever, Retriever
from searchr1.tags import (
    SEARCH_R1_STOPS,
    Action,
    StopScanner,
    TokenStopChecker,
    parse_action,
    stop_checker_for,
    vocab_bytes,
)

__all__ = [
    "SEARCH_R1_STOPS",
    "Action",
    "CorpusError",
    "Hit",
    "IndexFormatError",
    "InputError",
    "PackError",
    "PackedBatch",
    "RemoteRetriever",
    "RetrievalError",
    "Retriever",
    "SearchR1Error",
    "Segment",
    "StopScanner",
    "TokenStopChecker",
    "Trajectory",
    "__version__",
    "pack",
    "parse_action",
    "stop_checker_for",
    "vocab_bytes",
]
