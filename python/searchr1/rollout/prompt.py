"""The text of Search-R1's protocol: the prompt, the observations, the question form.

Everything here matches Search-R1 character for character, so that its checkpoints and
datasets work unchanged (typos included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = [
    "INVALID_ACTION",
    "PROMPT_TEMPLATE",
    "SEARCH_FAILED",
    "build_prompt",
    "format_documents",
    "information",
    "normalize_question",
]

PROMPT_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> "
    "first every time you get new information. After reasoning, if you find you lack some "
    "knowledge, you can call a search engine by <search> query </search> and it will return "
    "the top searched results between <information> and </information>. You can search as "
    "many times as your want. If you find no further external knowledge needed, you can "
    "directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)

#: The observation after a turn with neither a search nor an answer.
INVALID_ACTION = (
    "\nMy previous action is invalid. If I want to search, I should put the query between "
    "<search> and </search>. If I want to give the final answer, I should put the answer "
    "between <answer> and </answer>. Let me try again.\n"
)

#: What the documents say when the retriever failed after its retries (ours, not
#: Search-R1's: its trainer crashes instead).
SEARCH_FAILED = "The search engine failed ({error}); no documents were retrieved."


class Passage(Protocol):
    """Anything with Search-R1's ``contents`` (``"Title"\\ntext``), such as a ``Hit``."""

    @property
    def contents(self) -> str: ...


def normalize_question(question: str) -> str:
    """The question stripped, with a ``?`` appended when it does not end with one."""
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return question


def build_prompt(question: str, tokenizer: Any = None) -> str:
    """The prompt text for ``question``.

    When ``tokenizer`` has a chat template the prompt is one user message with the
    generation prompt added (as Search-R1 does for base and instruct models alike).
    """
    text = PROMPT_TEMPLATE.format(question=normalize_question(question))
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        templated: str = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return templated
    return text


def format_documents(hits: Sequence[Passage]) -> str:
    """``Doc {i}(Title: {title}) {text}\\n`` for each hit, as Search-R1 writes them."""
    parts = []
    for i, hit in enumerate(hits, start=1):
        title, _, text = hit.contents.partition("\n")
        parts.append(f"Doc {i}(Title: {title}) {text}\n")
    return "".join(parts)


def information(documents: str) -> str:
    """The observation after a search: the documents, stripped, in ``<information>``."""
    return f"\n\n<information>{documents.strip()}</information>\n\n"
