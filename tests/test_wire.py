"""Search-R1's retrieval wire format: what the server writes, the client reads back."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from searchr1 import Hit
from searchr1.retrieval.wire import (
    ApiError,
    MalformedResponse,
    RetrieveRequest,
    error_body,
    error_message,
    from_document,
    parse_request,
    parse_response,
    request_body,
    response_body,
    to_document,
)


@dataclass(frozen=True)
class Limits:
    topk: int = 3
    max_topk: int = 100
    max_queries: int = 64
    max_hits: int = 6400
    max_query_chars: int = 1000
    allow_empty_queries: bool = False


hits = st.builds(
    Hit,
    id=st.text(max_size=8),
    score=st.floats(allow_nan=False, allow_infinity=False),
    contents=st.text(max_size=40),
)
rows = st.lists(st.lists(hits, max_size=4), max_size=5)


@given(rows)
def test_what_the_server_writes_the_client_reads(rows: list[list[Hit]]) -> None:
    answer = json.loads(response_body(rows, return_scores=True))
    assert parse_response(answer, len(rows)) == rows


@given(rows)
def test_without_scores_the_client_reads_nan(rows: list[list[Hit]]) -> None:
    answer = json.loads(response_body(rows, return_scores=False))
    got = parse_response(answer, len(rows))
    assert [[(h.id, h.contents) for h in row] for row in got] == [
        [(h.id, h.contents) for h in row] for row in rows
    ]
    assert all(math.isnan(h.score) for row in got for h in row)


@given(
    st.lists(st.text(min_size=1).filter(str.strip), min_size=1, max_size=8),
    st.integers(1, 100),
    st.booleans(),
)
def test_what_the_client_asks_the_server_reads(
    queries: list[str], topk: int, return_scores: bool
) -> None:
    body = request_body(queries, topk, return_scores)
    assert parse_request(body, Limits()) == RetrieveRequest(queries, topk, return_scores)


def test_request_defaults_come_from_the_limits() -> None:
    assert parse_request(b'{"queries": ["a"]}', Limits(topk=7)) == RetrieveRequest(["a"], 7, False)
    assert parse_request(b'{"queries": [""]}', Limits(allow_empty_queries=True)).queries == [""]
    with pytest.raises(ApiError, match="exceed the limit of 1") as e:
        parse_request(b'{"queries": ["a", "b"]}', Limits(max_queries=1))
    assert (e.value.status, e.value.reason) == (413, "too_many_queries")


@pytest.mark.parametrize(
    ("body", "limits", "status", "reason"),
    [
        (b'{"queries": ["a"], "topk": 1' + b"0" * 5000 + b"}", Limits(), 400, "bad_json"),
        (b'{"queries": ["a", "b", "c"], "topk": 5}', Limits(max_hits=14), 413, "too_many_hits"),
        (b'{"queries": ["abcd"]}', Limits(max_query_chars=3), 413, "query_too_long"),
    ],
)
def test_requests_over_the_budget(body: bytes, limits: Limits, status: int, reason: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_request(body, limits)
    assert (e.value.status, e.value.reason) == (status, reason)
    assert parse_request(b'{"queries": ["a", "b", "c"], "topk": 5}', Limits(max_hits=15))


def test_document_shape() -> None:
    hit = Hit("p1", 2.5, '"Title"\ntext')
    assert to_document(hit) == {"document": {"id": "p1", "contents": '"Title"\ntext'}, "score": 2.5}
    assert to_document(hit, return_score=False) == {
        "document": {"id": "p1", "contents": '"Title"\ntext'}
    }
    assert from_document(to_document(hit)) == hit


def test_search_r1_bm25_documents() -> None:
    """Search-R1's own BM25 server sends title and text, and no id."""
    hit = from_document({"document": {"title": "Dune", "text": "A novel."}, "score": 1})
    assert (hit.id, hit.title, hit.text, hit.score) == ("", '"Dune"', "A novel.", 1.0)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([], r'expected an object with "result", got \'\[\]\''),
        ({"result": {}}, r"expected a list of 1 rows \(one per query\), got object"),
        ({"result": [{}]}, r"result\[0\] is object, not a list"),
        ({"result": [[{"document": {"id": "1"}}]]}, r"result\[0\]\[0\] is"),
        ({"result": [[{"document": {"contents": "x"}, "score": True}]]}, r"result\[0\]\[0\]"),
        ({"result": [[{"document": {"contents": "x"}, "score": math.nan}]]}, r"must be finite"),
        ({"result": [[{"document": {"contents": "x"}, "score": math.inf}]]}, r"must be finite"),
    ],
)
def test_malformed_answers(answer: object, message: str) -> None:
    with pytest.raises(MalformedResponse, match=message):
        parse_response(answer, 1)


def test_error_bodies() -> None:
    assert error_message(error_body("topk 51 exceeds — the limit")) == "topk 51 exceeds — the limit"
    assert error_message(b"<html>Bad Gateway</html>") == "'<html>Bad Gateway</html>'"
    assert error_message(b'{"error": 5}') == "'{\"error\": 5}'"
    assert error_message(b"") == "'(empty)'"
