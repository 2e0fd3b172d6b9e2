"""Tag scanning: parse_action against Python's re, stop strings over any chunking."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import searchr1
from searchr1 import Action, InputError, StopScanner, TokenStopChecker, parse_action
from searchr1.tags import SEARCH_R1_STOPS, stop_checker_for, vocab_bytes

SEARCH_R1_PATTERN = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


def search_r1_action(text: str) -> tuple[str, str | None]:
    """What Search-R1's postprocess_predictions reads from a turn."""
    m = SEARCH_R1_PATTERN.search(text)
    return (m.group(1), m.group(2).strip()) if m else ("invalid", None)


PIECES = st.sampled_from(
    [
        "<search>", "</search>", "<answer>", "</answer>", "<", "</", ">", "search", "answer",
        " ", "\n", "\t", "\x1f", "\u3000", "é", "東", "x", "<think>", "</think>",
    ]
)  # fmt: skip
TAG_TEXT = st.lists(st.one_of(PIECES, st.text(max_size=4)), max_size=16).map("".join)


@given(TAG_TEXT)
def test_parse_action_agrees_with_re(text: str) -> None:
    action = parse_action(text)
    assert (action.kind, action.content) == search_r1_action(text)


@pytest.mark.parametrize(
    ("text", "kind", "content"),
    [
        ("<think>x</think>\n<search> capital of France </search>", "search", "capital of France"),
        ("<answer>\n Paris\n</answer> trailing", "answer", "Paris"),
        ("<search>unclosed <answer>a</answer>", "answer", "a"),
        ("<search>a</search>b</search>", "search", "a"),
        ("<search></search>", "search", ""),
        ("<search>a</answer>", "invalid", None),
        ("no tags at all", "invalid", None),
    ],
)
def test_parse_action_cases(text: str, kind: str, content: str | None) -> None:
    assert parse_action(text) == Action(kind, content)


def test_action_repr_and_bad_kind() -> None:
    assert repr(parse_action("<answer>x</answer>")) == 'Action(kind="answer", content="x")'
    with pytest.raises(InputError, match="unknown action kind"):
        Action("guess", None)


@given(TAG_TEXT, st.lists(st.integers(0, 64), max_size=6))
def test_stop_scanner_any_chunking(text: str, cuts: list[int]) -> None:
    stops = ["</search>", "</answer>", "é>"]
    ends = [text.find(s) + len(s) for s in stops if s in text]
    expected = min(ends) if ends else None
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    scanner = StopScanner(stops)
    got = None
    for a, b in itertools.pairwise(bounds):
        got = scanner.feed(text[a:b])
    if len(bounds) == 1:
        got = scanner.feed("")
    assert got == expected
    if expected is not None:
        assert scanner.matched is not None
        assert text[:expected].endswith(stops[scanner.matched])


def test_stop_scanner_errors() -> None:
    with pytest.raises(InputError, match="stop string 1 is empty"):
        StopScanner(["</search>", ""])
    with pytest.raises(TypeError):
        StopScanner("</search>")  # type: ignore[arg-type]


def test_vocab_bytes_round_trips(bpe_tokenizer) -> None:  # type: ignore[no-untyped-def]
    vocab = vocab_bytes(bpe_tokenizer)
    assert len(vocab) == bpe_tokenizer.get_vocab_size()
    for text in ["Naïve café 東京 </search>\n\n", "<answer> Zürich </answer>"]:
        ids = bpe_tokenizer.encode(text).ids
        assert b"".join(vocab[i] for i in ids).decode("utf-8") == bpe_tokenizer.decode(ids)


def test_vocab_bytes_sentencepiece_style() -> None:
    class SentencePieceLike:
        def get_vocab(self) -> dict[str, int]:
            return {"▁the": 0, "<0x0A>": 1, "</s>": 2, "ab": 4}

    assert vocab_bytes(SentencePieceLike()) == [b" the", b"\n", b"</s>", b"", b"ab"]
    with pytest.raises(TypeError, match="get_vocab"):
        vocab_bytes(object())


def naive_stop_offsets(texts: list[bytes], stops: tuple[str, ...]) -> int | None:
    """Byte offset just past the first stop string in the concatenation, or None."""
    whole = b"".join(texts)
    ends = [whole.find(s.encode()) + len(s.encode()) for s in stops if s.encode() in whole]
    return min(ends) if ends else None


STOP_PIECES = ["</", "search", ">", "\n", " a", "</answer>", "é", "東京", "answer", ">\n\n", "<"]


@given(words=st.lists(st.sampled_from(STOP_PIECES), max_size=30))
def test_token_checker_agrees_with_text(words: list[str], bpe_tokenizer) -> None:  # type: ignore[no-untyped-def]
    text = "".join(words)
    ids = bpe_tokenizer.encode(text).ids
    vocab = vocab_bytes(bpe_tokenizer)
    checker = stop_checker_for(bpe_tokenizer)
    checker.reset(1)
    seen: list[bytes] = []
    stopped_at = None
    for token in ids:
        keep = int(checker.step(np.array([token], dtype=np.int64))[0])
        if keep >= 0:
            stopped_at = sum(map(len, seen)) + keep
            assert 1 <= keep <= len(vocab[token])
            break
        seen.append(vocab[token])
    assert stopped_at == naive_stop_offsets([vocab[i] for i in ids], SEARCH_R1_STOPS)


def test_token_checker_batch_rows_and_errors() -> None:
    vocab = [b"</", b"search", b">", b"</search>", b">\n\n", b"a"]
    checker = TokenStopChecker(vocab, ["</search>"])
    checker.reset(3)
    assert checker.batch_size == 3 and checker.vocab_size == 6
    assert checker.step([0, 3, 5]).tolist() == [-1, 9, -1]
    assert checker.step(np.array([1, 5], dtype=np.int64), rows=[0, 2]).tolist() == [-1, -1]
    out = checker.step([4, 5, 5])
    assert out.dtype == np.int32 and out.tolist() == [1, 0, -1]
    assert [checker.stopped(r) for r in range(3)] == [0, 0, None]
    # Token ids past the vocabulary (padded embedding rows) decode to nothing.
    assert checker.step([999], rows=[2]).tolist() == [-1]
    with pytest.raises(InputError, match="row 7 is out of range"):
        checker.step([1], rows=[7])
    with pytest.raises(InputError, match="negative"):
        checker.step([-1], rows=[2])
    with pytest.raises(InputError, match="entries but 3 were expected"):
        checker.step([1, 2])
    with pytest.raises(TypeError, match="not a string"):
        checker.step("abc")  # type: ignore[arg-type]


def test_public_api_is_documented() -> None:
    for name in searchr1.__all__:
        obj = getattr(searchr1, name)
        if callable(obj):
            assert obj.__doc__, f"searchr1.{name} has no docstring"
