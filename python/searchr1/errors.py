"""The exceptions searchr1 raises on purpose.

Every error that searchr1 raises about its input derives from :class:`SearchR1Error`,
so ``except SearchR1Error`` catches them all; input errors are also ``ValueError``.
The Rust core raises these same classes.
"""

from __future__ import annotations

__all__ = ["InputError", "PackError", "SearchR1Error"]


class SearchR1Error(Exception):
    """Base class of every error searchr1 raises on purpose."""


class InputError(SearchR1Error, ValueError):
    """An argument or a piece of data is invalid; the message says which and why."""


class PackError(InputError):
    """A rollout cannot be packed into batch arrays (a prompt too long, a length mismatch)."""
