"""Rewards on a model's response: exact match, token F1 and Search-R1's format reward.

Every reward reads the *response* only (the model's turns and the injected observations,
decoded with special tokens skipped, as :class:`searchr1.rollout.RolloutResult` gives
it), takes its last ``<answer>…</answer>``, and compares it with the gold answers after
:func:`normalize_answer`. They are chosen by name through a small registry::

    reward_fn = get_reward("em")          # or "f1", "format"
    score = reward_fn(response, ["Paris", "Paris, France"])

**Relation to Search-R1.** Search-R1 scores ``prompt + response`` and so asks for at
least two ``<answer>`` matches, meaning to skip the example in its instruction. That
instruction in fact holds *two* matches (``inside <answer> and </answer>`` and
``<answer> Beijing </answer>``), so whenever the response has an answer both read the
same last answer; we need only one match in the response. The one difference: when the
response has no answer, Search-R1 scores the prompt's ``Beijing``, where we score
nothing (0). ``answer_if_missing=SEARCH_R1_MISSING_ANSWER`` reproduces Search-R1 there
too (EM: 1.0 for a no-answer response when a gold answer is "Beijing"; format reward:
``final_format_score`` instead of 0 for a response that never answered).

This module does not need torch.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = [
    "REWARDS",
    "SEARCH_R1_MISSING_ANSWER",
    "RewardFn",
    "answer_exact_match",
    "answer_f1",
    "exact_match",
    "extract_answer",
    "f1_score",
    "format_reward",
    "get_reward",
    "is_retrieval_correct",
    "is_valid_sequence",
    "normalize_answer",
    "overlong_penalty",
    "register_reward",
]

#: A reward: ``fn(response, golden_answers, **settings) -> float``.
RewardFn = Callable[..., float]

_F = TypeVar("_F", bound=RewardFn)

#: Name -> reward function. Add to it with :func:`register_reward`.
REWARDS: dict[str, RewardFn] = {}

#: What Search-R1 scores when the response has no ``<answer>`` (its prompt's example).
SEARCH_R1_MISSING_ANSWER = "Beijing"

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_TAG = re.compile(r"(</?(?:think|search|information|answer)>)")
# F1 gives no partial credit around these (HotpotQA's rule, kept by FlashRAG).
_F1_EXACT_ONLY = frozenset({"yes", "no", "noanswer"})


def register_reward(name: str) -> Callable[[_F], _F]:
    """Decorator: register ``fn`` in :data:`REWARDS` under ``name``; returns ``fn``.

    Raises ``ValueError`` if ``name`` is already taken by another function.
    """

    def decorator(fn: _F) -> _F:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"a reward named {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    """The reward registered as ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return REWARDS[name]
    except KeyError:
        known = ", ".join(sorted(REWARDS))
        raise KeyError(f"unknown reward {name!r}; known rewards: {known}") from None


def normalize_answer(s: str) -> str:
    """Search-R1's (and SQuAD's) answer normalisation.

    In this order: lowercase; drop every ASCII punctuation character
    (``string.punctuation``: other Unicode punctuation stays); replace the whole words
    ``a``, ``an``, ``the`` by a space; collapse runs of whitespace (any Unicode
    whitespace) into one space and strip the ends. ``"The A-Team!"`` -> ``"ateam"``.
    """
    text = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def extract_answer(response: str) -> str | None:
    """The stripped content of the last ``<answer>…</answer>`` in ``response``, or None.

    ``.`` matches newlines, and the match is non-greedy, so ``<answer> a </answer> x
    <answer> b </answer>`` gives ``"b"``. See the module docstring for how this relates
    to Search-R1's "at least two matches" rule on ``prompt + response``.
    """
    matches = _ANSWER.findall(response)
    return matches[-1].strip() if matches else None


def _golds(golden_answers: str | Sequence[str]) -> list[str]:
    if isinstance(golden_answers, str):
        return [golden_answers]
    return [str(g) for g in golden_answers]


def answer_exact_match(prediction: str, golden_answers: str | Sequence[str]) -> float:
    """1.0 if ``normalize_answer(prediction)`` equals that of any gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(g) == pred for g in _golds(golden_answers)) else 0.0


def answer_f1(prediction: str, golden_answers: str | Sequence[str]) -> float:
    """Token-level F1 of ``prediction``, the best over the gold answers (FlashRAG's).

    Tokens are the words of the normalised texts, counted with multiplicity:
    ``F1 = 2PR / (P + R)`` with ``P = common / len(pred)``, ``R = common / len(gold)``.
    A gold answer sharing no token scores 0, and so does an empty one. When either side
    normalises to ``yes``, ``no`` or ``noanswer`` the pair scores 1 only if both are
    equal, else 0 (HotpotQA's rule, kept by FlashRAG).
    """
    pred = normalize_answer(prediction)
    pred_tokens = pred.split()
    best = 0.0
    for golden in _golds(golden_answers):
        gold = normalize_answer(golden)
        if (pred in _F1_EXACT_ONLY or gold in _F1_EXACT_ONLY) and pred != gold:
            continue
        gold_tokens = gold.split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision = common / len(pred_tokens)
        recall = common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


@register_reward("em")
def exact_match(
    response: str,
    golden_answers: str | Sequence[str],
    *,
    answer_if_missing: str | None = None,
) -> float:
    """Exact match of the response's last answer: 1.0 or 0.0 (Search-R1's EM reward).

    A response with no ``<answer>`` scores 0.0, unless ``answer_if_missing`` is given:
    then that text is scored in its place (see :data:`SEARCH_R1_MISSING_ANSWER`).
    """
    answer = extract_answer(response)
    if answer is None:
        answer = answer_if_missing
    return 0.0 if answer is None else answer_exact_match(answer, golden_answers)


@register_reward("f1")
def f1_score(
    response: str,
    golden_answers: str | Sequence[str],
    *,
    answer_if_missing: str | None = None,
) -> float:
    """Token F1 (:func:`answer_f1`) of the response's last answer, in [0, 1].

    A response with no ``<answer>`` scores 0.0, unless ``answer_if_missing`` is given.
    """
    answer = extract_answer(response)
    if answer is None:
        answer = answer_if_missing
    return 0.0 if answer is None else answer_f1(answer, golden_answers)


# The tag grammar of a well-formed response, as a state machine:
#   think (search information think)* answer
# (state, tag) -> next state; any other tag in a state is an error.
_TRANSITIONS = {
    ("start", "<think>"): "in_think",
    ("after_information", "<think>"): "in_think",
    ("in_think", "</think>"): "after_think",
    ("after_think", "<search>"): "in_search",
    ("in_search", "</search>"): "after_search",
    ("after_search", "<information>"): "in_information",
    ("in_information", "</information>"): "after_information",
    ("after_think", "<answer>"): "in_answer",
    ("in_answer", "</answer>"): "end",
}
_INSIDE = frozenset({"in_think", "in_search", "in_information", "in_answer"})


def is_valid_sequence(response: str) -> bool:
    """Whether the response has Search-R1's tag structure (v0.3 format reward).

    Valid means: the response, split at the tags ``<think>``, ``</think>``, ``<search>``,
    ``</search>``, ``<information>``, ``</information>``, ``<answer>``, ``</answer>``,
    reads ``think (search information think)* answer`` — each block opened and closed in
    that order, any text inside a block, only whitespace between blocks and after the
    answer, and the answer last. A response with no tags, a second answer, a search not
    followed by its information, text outside the blocks, or a cut-off block is invalid.

    Search-R1's ``is_valid_sequence`` receives ``prompt + response`` decoded with the
    chat template, cuts it after the first ``<|im_start|>assistant`` marker (plus
    whitespace), and judges what follows — which is exactly the response. We take the
    response directly, so the verdicts are the same for every response. (Search-R1 also
    counts opening and closing tags first; the state machine already rejects any
    unbalanced sequence, so that check changes no verdict.) One consequence: with a chat
    template that has no ``<|im_start|>assistant`` marker (Llama 3, or none at all)
    Search-R1 finds every sequence invalid; here the structure is judged regardless.
    """
    state = "start"
    for part in _TAG.split(response):
        if not part.strip():
            continue
        if _TAG.fullmatch(part):
            nxt = _TRANSITIONS.get((state, part))
            if nxt is None:
                return False
            state = nxt
        elif state not in _INSIDE:
            return False
    return state == "end"


def is_retrieval_correct(response: str, golden_answers: str | Sequence[str]) -> bool:
    """Whether a normalised gold answer occurs inside a normalised ``<information>`` block.

    Blocks are the stripped contents of ``<information>…</information>`` (dot matches
    newline) in the response; the test is substring containment, so "paris" is found in
    "doc 1 title paris is capital of france". (Search-R1 runs this on ``prompt +
    response``, and its prompt's ``<information> and </information>`` adds a block
    "and": a gold answer normalising to a substring of "and" — the empty string, "d",
    "nd"... — counts as retrieved there even without a search. Not reproduced.)
    """
    golds = [normalize_answer(g) for g in _golds(golden_answers)]
    for block in _INFORMATION.findall(response):
        text = normalize_answer(block.strip())
        if any(g in text for g in golds):
            return True
    return False


@register_reward("format")
def format_reward(
    response: str,
    golden_answers: str | Sequence[str],
    structure_format_score: float = 0.2,
    final_format_score: float = 0.1,
    retrieval_score: float = 0.0,
    *,
    answer_if_missing: str | None = None,
) -> float:
    """Search-R1 v0.3's EM reward with format shaping (``qa_em_format.compute_score_em``).

    With ``s = structure_format_score``, ``f = final_format_score``,
    ``r = retrieval_score`` (the v0.3 recipe: 0.2, 0.1, 0), ``valid =``
    :func:`is_valid_sequence` and ``retrieved =`` :func:`is_retrieval_correct`:

    ==============================  ==========  ========================
    last answer                     valid       reward
    ==============================  ==========  ========================
    matches a gold answer (EM)      yes         1.0
    matches a gold answer (EM)      no          1.0 - s  (0.8)
    wrong, or none                  yes         s + r if retrieved else s  (0.2)
    wrong                           no          f  (0.1)
    none                            no          0.0
    ==============================  ==========  ========================

    A valid response always ends with an answer, so "none, valid" cannot happen with
    response-only extraction; in Search-R1 it could not either (see the module
    docstring). ``answer_if_missing`` is as in :func:`exact_match`; with
    :data:`SEARCH_R1_MISSING_ANSWER` a response that never answered scores ``f`` (0.1)
    as in Search-R1, not 0.
    """
    valid = is_valid_sequence(response)
    answer = extract_answer(response)
    if answer is None:
        answer = answer_if_missing
    if answer is not None and answer_exact_match(answer, golden_answers):
        return 1.0 if valid else 1.0 - structure_format_score
    if valid:
        retrieved = is_retrieval_correct(response, golden_answers)
        return structure_format_score + (retrieval_score if retrieved else 0.0)
    return final_format_score if answer is not None else 0.0


def overlong_penalty(length: int, cap: int, buffer: int, penalty: float = 1.0) -> float:
    """DAPO's soft overlong punishment, added to a response's reward.

    ``length``: the tokens the model sampled in the response; ``cap``: the most it may
    sample. Nothing up to ``cap - buffer`` tokens, then a penalty growing linearly to
    ``-penalty`` at ``cap`` (and ``-penalty`` beyond); ``buffer`` 0: no penalty.
    """
    if buffer <= 0 or length <= cap - buffer:
        return 0.0
    return -penalty * min(length - (cap - buffer), buffer) / buffer
