"""Search-R1's retrieval wire format, both ends of it.

``POST /retrieve`` takes ``{"queries": [str], "topk": int | null, "return_scores": bool}``
and answers ``{"result": [[{"document": {"id", "contents"}, "score"}, …] per query]}``
(no ``"score"`` when ``return_scores`` is false); a refused request gets a 4xx/5xx with
``{"error": str}``. The server (``server.py``) parses requests and writes answers with
this module; :class:`~searchr1.retrieval.client.RemoteRetriever` writes requests and
parses answers with it. Standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from searchr1.retrieval.index import Hit

__all__ = [
    "ApiError",
    "MalformedResponse",
    "RequestLimits",
    "RetrieveRequest",
    "error_body",
    "error_message",
    "from_document",
    "parse_request",
    "parse_response",
    "request_body",
    "response_body",
    "to_document",
]


# --------------------------------------------------------------------------- documents


def to_document(hit: Hit, return_score: bool = True) -> dict[str, Any]:
    """``hit`` as Search-R1's retrieval server returns it:
    ``{"document": {"id", "contents"}, "score"}``."""
    out: dict[str, Any] = {"document": {"id": hit.id, "contents": hit.contents}}
    if return_score:
        out["score"] = hit.score
    return out


def from_document(item: Any) -> Hit:
    """The :class:`Hit` of one answered document; the score is NaN when absent (and
    must be a finite number when present).

    Search-R1's own BM25 server sends ``title`` and ``text`` (and no ``id``); they are
    joined into ``contents`` when it is missing. Raises KeyError, TypeError or
    ValueError for anything else.
    """
    doc = item["document"]
    contents = doc.get("contents")
    if contents is None:
        contents = f'"{doc["title"]}"\n{doc["text"]}'
    if not isinstance(contents, str):
        raise TypeError("contents must be a string")
    if "score" not in item:
        return Hit(str(doc.get("id", "")), math.nan, contents)
    score = item["score"]
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise TypeError("score must be a number")
    if not math.isfinite(score):
        raise ValueError("score must be finite")
    return Hit(str(doc.get("id", "")), float(score), contents)


# --------------------------------------------------------------------------- requests


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message for the client, and the
    ``reason`` label it is counted under in ``searchr1_errors_total``."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


class RequestLimits(Protocol):
    """What :func:`parse_request` checks a request against (``ServerConfig`` fits)."""

    @property
    def topk(self) -> int: ...
    @property
    def max_topk(self) -> int: ...
    @property
    def max_queries(self) -> int: ...
    @property
    def max_hits(self) -> int: ...
    @property
    def max_query_chars(self) -> int: ...
    @property
    def allow_empty_queries(self) -> bool: ...


@dataclass(frozen=True)
class RetrieveRequest:
    """A validated ``/retrieve`` body."""

    queries: list[str]
    topk: int
    return_scores: bool


def request_body(queries: Sequence[str], topk: int, return_scores: bool = True) -> bytes:
    """The ``/retrieve`` body asking for ``topk`` hits for each of ``queries``."""
    payload = {"queries": list(queries), "topk": topk, "return_scores": return_scores}
    return json.dumps(payload).encode()


def parse_request(body: bytes, limits: RequestLimits) -> RetrieveRequest:
    """Validates a ``/retrieve`` body against ``limits``.

    Raises :class:`ApiError`: 400 when the body is not UTF-8 JSON, 422 when it is JSON
    of the wrong shape (the message names the field, e.g. ``queries[2] is int, not str``),
    413 when it asks for more work than the limits allow (more than ``max_queries``
    queries, a query longer than ``max_query_chars``, or more than ``max_hits`` hits in
    all). An absent or null ``topk`` is ``limits.topk``.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(
            400,
            f"the body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})",
            "bad_utf8",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}", "bad_json") from None
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: nested too deeply", "bad_json") from None
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise ApiError(400, f"the body holds a number too large to read: {e}", "bad_json") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"the body must be a JSON object, not {json_type(data)}", "invalid")
    if "queries" not in data:
        raise ApiError(422, 'missing field "queries" (a list of strings)', "invalid")
    queries = data["queries"]
    if not isinstance(queries, list):
        raise ApiError(422, f'"queries" is {json_type(queries)}, not a list of strings', "invalid")
    if not queries:
        raise ApiError(422, '"queries" is empty; send at least one query', "invalid")
    if len(queries) > limits.max_queries:
        raise ApiError(
            413,
            f"{len(queries)} queries exceed the limit of {limits.max_queries} per request "
            "(--max-queries); split them over several requests",
            "too_many_queries",
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ApiError(422, f"queries[{i}] is {json_type(q)}, not str", "invalid")
        if len(q) > limits.max_query_chars:
            raise ApiError(
                413,
                f"queries[{i}] is {len(q)} characters long, over the limit of "
                f"{limits.max_query_chars} (--max-query-chars)",
                "query_too_long",
            )
        if not q.strip() and not limits.allow_empty_queries:
            raise ApiError(
                422,
                f"queries[{i}] is {'empty' if not q else 'blank'} (--allow-empty-queries "
                "lets the server search it)",
                "invalid",
            )
        if not q.isascii():
            try:
                q.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    422, f"queries[{i}] holds a lone surrogate (\\ud800-\\udfff)", "invalid"
                ) from None
    topk = data.get("topk")
    if topk is None:
        topk = limits.topk
    elif not isinstance(topk, int) or isinstance(topk, bool):
        raise ApiError(422, f'"topk" is {json_type(topk)}, not an integer', "invalid")
    elif topk < 1:
        raise ApiError(422, f'"topk" must be at least 1, got {topk}', "invalid")
    elif topk > limits.max_topk:
        raise ApiError(
            422, f"topk {topk} exceeds the limit of {limits.max_topk} (--max-topk)", "invalid"
        )
    if len(queries) * topk > limits.max_hits:
        raise ApiError(
            413,
            f"{len(queries)} queries x topk {topk} ask for {len(queries) * topk} hits, over "
            f"the limit of {limits.max_hits} per request (--max-hits); split them over "
            "several requests",
            "too_many_hits",
        )
    return_scores = data.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise ApiError(
            422, f'"return_scores" is {json_type(return_scores)}, not true or false', "invalid"
        )
    return RetrieveRequest(queries, topk, return_scores)


# --------------------------------------------------------------------------- answers


def response_body(rows: Sequence[Sequence[Hit]], return_scores: bool) -> bytes:
    """The ``/retrieve`` answer for ``rows`` (one list of hits per query), as JSON bytes."""
    result = [[to_document(hit, return_scores) for hit in row] for row in rows]
    return json.dumps({"result": result}, ensure_ascii=False, separators=(",", ":")).encode()


class MalformedResponse(ValueError):
    """A 200 answer that is not a ``/retrieve`` result; the message says what is wrong."""


def parse_response(answer: Any, n: int) -> list[list[Hit]]:
    """The hits of a decoded ``/retrieve`` answer to ``n`` queries, one list per query.

    Raises :class:`MalformedResponse` when ``answer`` is not such a result.
    """
    if not isinstance(answer, dict) or "result" not in answer:
        raise MalformedResponse(f'expected an object with "result", got {excerpt(answer)}')
    rows = answer["result"]
    if not isinstance(rows, list) or len(rows) != n:
        got = f"{len(rows)} rows" if isinstance(rows, list) else json_type(rows)
        raise MalformedResponse(f"expected a list of {n} rows (one per query), got {got}")
    out: list[list[Hit]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise MalformedResponse(f"result[{i}] is {json_type(row)}, not a list")
        hits = []
        for j, item in enumerate(row):
            try:
                hits.append(from_document(item))
            except KeyError as e:
                raise MalformedResponse(
                    f"result[{i}][{j}] is {excerpt(item)}, without {e}"
                ) from None
            except (TypeError, ValueError) as e:
                raise MalformedResponse(f"result[{i}][{j}] is {excerpt(item)}: {e}") from None
        out.append(hits)
    return out


def error_body(message: str) -> bytes:
    """The body of a refused request: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


def error_message(body: bytes) -> str:
    """The message of an :func:`error_body`, else the start of ``body`` (a proxy's page)."""
    try:
        message = json.loads(body)["error"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return excerpt(body)


# --------------------------------------------------------------------------- naming values


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type (``object``, ``list``, ``null``, …)."""
    names = {dict: "object", list: "list", str: "str", bool: "bool", int: "int", float: "float"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def excerpt(value: object, limit: int = 120) -> str:
    """The start of ``value`` (bytes, text or decoded JSON), quoted, for a message."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str)
    text = text.strip() or "(empty)"
    return repr(text[:limit] + ("…" if len(text) > limit else ""))
