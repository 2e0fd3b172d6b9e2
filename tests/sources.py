"""A scripted request source for the engines' ``serve`` (continuous batching)."""

from __future__ import annotations

from typing import Any


class Source:
    """A RequestSource: starts with ``first``; when a request named in ``then`` is
    delivered, its follow-ups join."""

    def __init__(self, first: list[Any], then: dict[str, list[Any]]) -> None:
        self.queue, self.then = list(first), then
        self.delivered: list[tuple[str, Any]] = []

    def take(self, block: bool) -> list[Any] | None:
        taken, self.queue = self.queue, []
        return None if block and not taken else taken

    def deliver(self, request: Any, generation: Any) -> None:
        self.delivered.append((request.tag, generation))
        self.queue += self.then.get(request.tag, [])
