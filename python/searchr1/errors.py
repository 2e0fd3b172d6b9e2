"""The exceptions searchr1 raises on purpose.

Every error that searchr1 raises about its input derives from :class:`SearchR1Error`,
so ``except SearchR1Error`` catches them all; input errors are also ``ValueError``.
The Rust core raises these same classes.
"""

from __future__ import annotations

__all__ = [
    "CorpusError",
    "IndexFormatError",
    "InputError",
    "PackError",
    "RetrievalError",
    "SearchR1Error",
]


class SearchR1Error(Exception):
    """Base class of every error searchr1 raises on purpose."""


class InputError(SearchR1Error, ValueError):
    """An argument or a piece of data is invalid; the message says which and why."""


class PackError(InputError):
    """A rollout cannot be packed into batch arrays (a prompt too long, a length mismatch)."""


class CorpusError(InputError):
    """A corpus file is malformed: the message names the file, the line and the problem."""


class IndexFormatError(SearchR1Error):
    """An index directory is incomplete, corrupt, of another version or mismatched."""


class RetrievalError(SearchR1Error):
    """A retrieval server could not be reached, refused a request, or answered something
    that is not a ``/retrieve`` response. ``status`` is the HTTP status when there was one.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
