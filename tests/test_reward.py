"""Rewards: normalisation, answer extraction, EM/F1, Search-R1's format reward, registry."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from searchr1.reward import (
    REWARDS,
    SEARCH_R1_MISSING_ANSWER,
    answer_exact_match,
    answer_f1,
    exact_match,
    extract_answer,
    f1_score,
    format_reward,
    get_reward,
    is_retrieval_correct,
    is_valid_sequence,
    normalize_answer,
    register_reward,
)


def test_does_not_need_torch() -> None:
    # Blocking torch makes any `import torch` raise ImportError.
    code = "import sys; sys.modules['torch'] = None; import searchr1.reward"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- normalize_answer -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("  PARIS  ", "paris"),
        ("The Beatles", "beatles"),
        ("a cat and an owl", "cat and owl"),
        ("the the the", ""),
        ("An", ""),
        # Articles are whole words only.
        ("theatre", "theatre"),
        ("Anna and the Atlas", "anna and atlas"),
        # Punctuation goes first, so it can expose or glue words.
        ("The A-Team!", "ateam"),
        ("a.b.c", "abc"),
        ("(a) dog", "dog"),
        ("U.S.A.", "usa"),
        ("rock'n'roll", "rocknroll"),
        ('"Hello," she said.', "hello she said"),
        ("1,000,000", "1000000"),
        ("$5.00 & 10%", "500 10"),
        # Whitespace of any kind collapses to one space.
        ("new\tyork\n\ncity", "new york city"),
        ("new\u00a0york\u3000city", "new york city"),
        ("", ""),
        ("   ", ""),
        ("!!!", ""),
        # Unicode: lowercased, but only ASCII punctuation is dropped.
        ("Zürich", "zürich"),
        ("SÃO PAULO", "são paulo"),
        ("L'Été", "lété"),
        ("東京", "東京"),
        ("Rock \u2019n\u2019 Roll", "rock \u2019n\u2019 roll"),
        ("Ça — va", "ça — va"),
        # Greek capitals that look like "THE" are not the article.
        ("\u03a4\u0397\u0395 \u0398", "\u03c4\u03b7\u03b5 \u03b8"),
        ("Théâtre the", "théâtre"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@given(st.text())
def test_normalize_answer_is_idempotent(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@given(st.text())
def test_normalize_answer_output_shape(text: str) -> None:
    out = normalize_answer(text)
    assert out == out.strip()
    assert "  " not in out
    assert not set(out) & set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    assert not set(out.split()) & {"a", "an", "the"}


# --- extract_answer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("", None),
        ("no tags at all", None),
        ("<answer> Paris", None),  # cut off before closing
        ("Paris </answer>", None),
        ("<answer> Paris </answer>", "Paris"),
        ("<answer></answer>", ""),
        ("<answer>   </answer>", ""),
        ("<think>hm</think><answer>Paris</answer>", "Paris"),
        ("<answer>Rome</answer> wait <answer> Paris </answer>", "Paris"),
        ("<answer>a</answer><answer>b</answer><answer>c</answer>", "c"),
        ("<answer>\n  New\n  York \n</answer>", "New\n  York"),
        ("<answer> x <answer> y </answer>", "x <answer> y"),  # non-greedy from the first
        ("<answer>Paris</answer>\n\nsome trailing text", "Paris"),
        ("<ANSWER>Paris</ANSWER>", None),  # tags are case-sensitive
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_extract_answer_ignores_the_prompt_examples_we_never_pass() -> None:
    # Search-R1's instruction holds two answer tags; we are given the response only.
    assert extract_answer("<think>no idea</think>") is None


# --- EM / F1 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "golds", "expected"),
    [
        ("<answer> Paris </answer>", ["Paris"], 1.0),
        ("<answer> paris. </answer>", "Paris", 1.0),  # single string gold
        ("<answer>The Eiffel Tower</answer>", ["eiffel tower"], 1.0),
        ("<answer>Paris, France</answer>", ["Paris"], 0.0),
        ("<answer>London</answer>", ["Paris", "london", "Rome"], 1.0),
        ("<answer>London</answer>", [], 0.0),
        ("Paris", ["Paris"], 0.0),  # no answer tag
        ("<answer>Paris</answer><answer>Rome</answer>", ["Paris"], 0.0),  # last one counts
        ("<answer>Rome</answer><answer>Paris</answer>", ["Paris"], 1.0),
        ("<answer></answer>", ["the"], 1.0),  # both normalise to ""
    ],
)
def test_exact_match(response: str, golds: str | list[str], expected: float) -> None:
    assert exact_match(response, golds) == expected


def test_exact_match_answer_if_missing() -> None:
    assert exact_match("<think>?</think>", ["Beijing"]) == 0.0
    assert exact_match("<think>?</think>", ["Beijing"], answer_if_missing="Beijing") == 1.0
    assert exact_match("<think>?</think>", ["Paris"], answer_if_missing="Beijing") == 0.0
    # It only fills in for a missing answer.
    assert exact_match("<answer>Paris</answer>", ["Beijing"], answer_if_missing="Beijing") == 0.0


def test_exact_match_accepts_tuple_golds() -> None:
    assert exact_match("<answer>b</answer>", ("a", "b")) == 1.0


@given(st.text())
def test_em_of_a_wrapped_gold_is_one(gold: str) -> None:
    assume("<answer>" not in gold and "</answer>" not in gold)
    assume(normalize_answer(gold))
    response = f"<think>I know this.</think>\n<answer>{gold}</answer>"
    assert exact_match(response, [gold]) == 1.0
    assert exact_match(response, gold) == 1.0
    assert f1_score(response, [gold]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", ["Paris"], 1.0),
        ("Paris France", ["Paris"], 2 * (1 / 2) * 1 / (1 / 2 + 1)),  # P=1/2, R=1 -> 2/3
        ("Paris", ["Paris France"], 2 / 3),  # P=1, R=1/2
        ("the city of Paris", ["Paris, the capital"], 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)),
        ("new york new york", ["new york"], 2 * (2 / 4) * 1 / (2 / 4 + 1)),  # counts capped
        ("London", ["Paris"], 0.0),
        ("Paris France", ["Rome", "France Paris Europe"], 2 * 1 * (2 / 3) / (1 + 2 / 3)),
        ("Paris France", ["Paris", "Paris France"], 1.0),  # max over golds
        ("", ["Paris"], 0.0),
        ("", [""], 0.0),  # no common token: 0 (FlashRAG), not 1
        ("Paris", [], 0.0),
        # yes / no / noanswer: all or nothing.
        ("yes", ["yes"], 1.0),
        ("yes", ["yes indeed"], 0.0),
        ("yes it is", ["yes"], 0.0),
        ("No.", ["no"], 1.0),
        ("noanswer", ["no answer"], 0.0),
    ],
)
def test_answer_f1(prediction: str, golds: list[str], expected: float) -> None:
    assert answer_f1(prediction, golds) == pytest.approx(expected, abs=1e-12)


def test_f1_score_on_a_response() -> None:
    assert f1_score("<answer>Paris France</answer>", "Paris") == pytest.approx(2 / 3)
    assert f1_score("Paris France", "Paris") == 0.0
    assert f1_score("x", "Paris", answer_if_missing="Paris") == 1.0


def test_answer_exact_match() -> None:
    assert answer_exact_match("The Paris!", ["paris"]) == 1.0
    assert answer_exact_match("Paris", "Rome") == 0.0


@given(st.text(max_size=30), st.lists(st.text(max_size=30), max_size=3))
def test_f1_bounds_and_em_implies_f1(prediction: str, golds: list[str]) -> None:
    f1 = answer_f1(prediction, golds)
    assert 0.0 <= f1 <= 1.0
    if answer_exact_match(prediction, golds) and normalize_answer(prediction):
        assert f1 == 1.0


# --- is_valid_sequence ------------------------------------------------------------------

INFO = '\n\n<information>Doc 1(Title: "Paris") Paris is the capital of France.\n</information>\n\n'


@pytest.mark.parametrize(
    "response",
    [
        "<think>easy</think><answer>Paris</answer>",
        "<think>easy</think>\n<answer>Paris</answer>\n",
        "  \n<think>\n</think> <answer> Paris </answer>  ",
        "<think></think><answer></answer>",
        f"<think>look up</think>\n<search>capital of France</search>{INFO}"
        "<think>found it</think>\n<answer>Paris</answer>",
        f"<think>a</think><search>q1</search>{INFO}<think>b</think><search>q2</search>{INFO}"
        "<think>c</think><answer>Paris</answer>",
        "<think>a < b and c > d</think><answer>x</answer>",
        "<think><thinking> is not a tag</think><answer>x</answer>",
    ],
)
def test_valid_sequences(response: str) -> None:
    assert is_valid_sequence(response)


@pytest.mark.parametrize(
    "response",
    [
        "",
        "Paris",
        "<answer>Paris</answer>",  # no think first
        "<think>a</think>",  # no answer
        "<think>a</think>Paris<answer>Paris</answer>",  # text between blocks
        "Sure! <think>a</think><answer>Paris</answer>",  # text before
        "<think>a</think><answer>Paris</answer> done",  # text after the answer
        "<think>a</think><answer>Paris</answer><answer>Paris</answer>",  # two answers
        "<think>a</think><answer>Paris</answer><think>b</think>",
        "<think>a</think><think>b</think><answer>Paris</answer>",  # think twice in a row
        "<think>a</think><search>q</search><answer>Paris</answer>",  # search w/o information
        f"<think>a</think><search>q</search>{INFO}<answer>Paris</answer>",  # no think after info
        f"<think>a</think>{INFO}<think>b</think><answer>Paris</answer>",  # info w/o search
        "<think>a<answer>Paris</answer></think>",  # nested
        "<think>a</think><answer>Paris",  # cut off
        "<think>a</answer>",
        "</think><answer>Paris</answer>",
    ],
)
def test_invalid_sequences(response: str) -> None:
    assert not is_valid_sequence(response)


# The grammar is_valid_sequence implements, written independently as one regex.
_TAGS = r"</?(?:think|search|information|answer)>"
_TEXT = rf"(?:(?!{_TAGS}).)*"
_GRAMMAR = re.compile(
    rf"\s*<think>{_TEXT}</think>\s*"
    rf"(?:<search>{_TEXT}</search>\s*<information>{_TEXT}</information>\s*"
    rf"<think>{_TEXT}</think>\s*)*"
    rf"<answer>{_TEXT}</answer>\s*",
    re.DOTALL,
)
_PIECES = [
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<information>",
    "</information>",
    "<answer>",
    "</answer>",
    " ",
    "\n",
    "paris",
    "<",
    "x>",
    "\u00a0",
]


@given(st.lists(st.sampled_from(_PIECES), max_size=16))
def test_is_valid_sequence_matches_the_grammar(pieces: list[str]) -> None:
    response = "".join(pieces)
    assert is_valid_sequence(response) == bool(_GRAMMAR.fullmatch(response))


@given(st.integers(0, 3), st.sampled_from(["", " ", "\n\n"]))
def test_generated_well_formed_sequences_are_valid(searches: int, sep: str) -> None:
    body = f"<think>t</think>{sep}"
    for i in range(searches):
        body += f"<search>q{i}</search>{sep}<information>d{i}</information>{sep}"
        body += f"<think>t{i}</think>{sep}"
    assert is_valid_sequence(body + "<answer>a</answer>")


# --- is_retrieval_correct ---------------------------------------------------------------


def test_is_retrieval_correct() -> None:
    assert is_retrieval_correct(INFO, ["paris"])
    assert is_retrieval_correct(INFO, "The Capital of France!")
    assert not is_retrieval_correct(INFO, ["London"])
    assert not is_retrieval_correct("no blocks, but Paris here", ["Paris"])
    # Only inside blocks: the search query does not count.
    assert not is_retrieval_correct("<search>Paris</search><information>x</information>", "Paris")
    # Any block will do, over several lines.
    two = "<information>Rome</information> <information>\nLondon\n is big</information>"
    assert is_retrieval_correct(two, ["Paris", "london is"])


# --- format_reward ----------------------------------------------------------------------

GOLD = ["Paris", "Paris, France"]
VALID_RIGHT = (
    f"<think>q</think><search>capital of France</search>{INFO}"
    "<think>ok</think><answer>Paris</answer>"
)
VALID_WRONG_RETRIEVED = VALID_RIGHT.replace("<answer>Paris", "<answer>Lyon")
VALID_WRONG = "<think>guess</think><answer>Lyon</answer>"
INVALID_RIGHT = "Let me answer. <answer>Paris</answer>"
INVALID_WRONG = "<answer>Lyon</answer> hmm"
NO_ANSWER = "<think>I will search</think><search>capital of France"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (VALID_RIGHT, 1.0),
        (INVALID_RIGHT, 0.8),
        (VALID_WRONG, 0.2),
        (VALID_WRONG_RETRIEVED, 0.2),  # retrieval_score is 0 by default
        (INVALID_WRONG, 0.1),
        (NO_ANSWER, 0.0),
        ("", 0.0),
    ],
)
def test_format_reward_default_scores(response: str, expected: float) -> None:
    assert format_reward(response, GOLD) == pytest.approx(expected)


def test_format_reward_retrieval_bonus() -> None:
    kw = {"retrieval_score": 0.1}
    assert format_reward(VALID_WRONG_RETRIEVED, GOLD, **kw) == pytest.approx(0.3)
    assert format_reward(VALID_WRONG, GOLD, **kw) == pytest.approx(0.2)  # nothing retrieved
    assert format_reward(VALID_RIGHT, GOLD, **kw) == 1.0  # correct: no bonus on top
    # Invalid: no bonus even when an information block holds the answer.
    invalid_retrieved = VALID_WRONG_RETRIEVED + " trailing"
    assert format_reward(invalid_retrieved, GOLD, **kw) == pytest.approx(0.1)


def test_format_reward_settings() -> None:
    kw = {"structure_format_score": 0.3, "final_format_score": 0.05, "retrieval_score": 0.0}
    assert format_reward(INVALID_RIGHT, GOLD, **kw) == pytest.approx(0.7)
    assert format_reward(VALID_WRONG, GOLD, **kw) == pytest.approx(0.3)
    assert format_reward(INVALID_WRONG, GOLD, **kw) == pytest.approx(0.05)
    # Positional settings, in Search-R1's order.
    assert format_reward(VALID_WRONG_RETRIEVED, GOLD, 0.2, 0.1, 0.15) == pytest.approx(0.35)


def test_format_reward_search_r1_missing_answer() -> None:
    kw = {"answer_if_missing": SEARCH_R1_MISSING_ANSWER}
    assert format_reward(NO_ANSWER, GOLD, **kw) == pytest.approx(0.1)
    assert format_reward(NO_ANSWER, ["Beijing"], **kw) == pytest.approx(0.8)
    assert format_reward(VALID_WRONG, GOLD, **kw) == pytest.approx(0.2)


def test_format_reward_single_string_gold() -> None:
    assert format_reward(VALID_RIGHT, "paris") == 1.0


# --- registry ---------------------------------------------------------------------------


def test_builtin_rewards_are_registered() -> None:
    assert get_reward("em") is exact_match
    assert get_reward("f1") is f1_score
    assert get_reward("format") is format_reward
    assert {"em", "f1", "format"} <= set(REWARDS)


def test_registered_rewards_take_the_common_signature() -> None:
    for name in ("em", "f1", "format"):
        fn = get_reward(name)
        assert fn(VALID_RIGHT, ["Paris"]) == 1.0
        assert fn(VALID_WRONG, ["Paris"]) in (0.0, 0.2)


def test_register_a_custom_reward() -> None:
    @register_reward("test-length")
    def length_reward(response: str, golden_answers: list[str], scale: float = 1.0) -> float:
        return scale * len(response)

    try:
        assert get_reward("test-length") is length_reward
        assert get_reward("test-length")("abc", [], scale=2.0) == 6.0
        # Registering the same function again is harmless; another one is refused.
        register_reward("test-length")(length_reward)
        with pytest.raises(ValueError, match="test-length"):
            register_reward("test-length")(exact_match)
    finally:
        del REWARDS["test-length"]
    assert "test-length" not in REWARDS


def test_unknown_reward_lists_the_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_reward("nope")
    message = str(info.value)
    assert "'nope'" in message
    assert "em, f1, format" in message


def test_overlong_penalty_by_hand() -> None:
    from searchr1.reward import overlong_penalty

    # cap 100, buffer 20: free up to 80 tokens, then -1/20 per token, -1 from 100 on.
    assert [overlong_penalty(n, 100, 20) for n in (0, 80, 81, 90, 100, 150)] == [
        0.0,
        0.0,
        -0.05,
        -0.5,
        -1.0,
        -1.0,
    ]
    assert overlong_penalty(90, 100, 20, penalty=0.5) == -0.25
    assert overlong_penalty(100, 100, 0) == 0.0  # off
