"""How a model asks for a search and gives its answer: the turn protocols of a rollout.

Two protocols, chosen by ``rollout.protocol``:

- ``search_r1``: Search-R1's tags. The prompt asks for ``<search> query </search>`` and
  ``<answer> … </answer>``; observations are plain text (``<information>…``) appended
  to the model's turn. This is the paper's protocol, character for character.
- ``tool_call``: the model's own chat format. The search tool is declared as a function
  through the tokenizer's chat template (``tools=``), a turn ends at the template's
  tool-call end marker (``</tool_call>`` for Qwen2.5 and Qwen3), the call's JSON is
  parsed, and the documents come back as the template's tool message. The final answer
  is still given inside ``<answer>`` tags, so every reward reads it the same way.

Both are token-in/token-out: a protocol only says what text to append after a turn;
earlier turns are never re-rendered or re-tokenized. For ``tool_call`` the text of each
observation is cut once from the chat template itself (see :class:`ToolCallProtocol`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from searchr1.rollout.prompt import (
    INVALID_ACTION,
    build_prompt,
    information,
    normalize_question,
)
from searchr1.tags import SEARCH_R1_STOPS, Action, parse_action

__all__ = [
    "PROTOCOLS",
    "SEARCH_TOOL",
    "TOOL_INVALID_ACTION",
    "TOOL_PROMPT_TEMPLATE",
    "SearchR1Protocol",
    "ToolCallProtocol",
    "TurnProtocol",
    "make_protocol",
]

#: The names ``rollout.protocol`` takes.
PROTOCOLS = ("search_r1", "tool_call")

#: The search tool as a function declaration (the JSON schema chat templates expect).
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches the knowledge source and returns the top passages.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "what to search for"}},
            "required": ["query"],
        },
    },
}

#: The user message of ``tool_call``: Search-R1's instruction, with the tool in place of
#: the ``<search>`` tags.
TOOL_PROMPT_TEMPLATE = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> "
    "first every time you get new information. After reasoning, if you find you lack some "
    "knowledge, you can call the search tool and it will return the top searched results. "
    "You can search as many times as you want. If you find no further external knowledge "
    "needed, you can directly provide the answer inside <answer> and </answer>, without "
    "detailed illustrations. For example, <answer> Beijing </answer>. Question: {question}\n"
)

#: The user message after a turn with neither a tool call nor an answer.
TOOL_INVALID_ACTION = (
    "My previous action is invalid. If I want to search, I should call the search tool. "
    "If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again."
)

# Stand-ins rendered through the template to find where observation text goes.
_SLOT = "@@searchr1-slot@@"
_TURN = "@@searchr1-turn@@"


class TurnProtocol(Protocol):
    """What the rollout loop asks of a protocol.

    ``parse`` and the observation methods take the text of the model's last turn,
    decoded with special tokens kept or skipped as ``skip_special_tokens`` says.
    """

    name: str
    #: The strings that end a turn (kept in the turn).
    stops: tuple[str, ...]
    skip_special_tokens: bool

    def prompt(self, question: str) -> str:
        """The prompt text of ``question``, ready to tokenize."""
        ...

    def call(self, query: str) -> str:
        """The text in which a model asks to search for ``query`` (for demonstrations)."""
        ...

    def parse(self, turn: str) -> Action:
        """The action of a turn: ``search`` with its query, ``answer``, or ``invalid``
        (with a reason as content when the model tried and got the form wrong)."""
        ...

    def documents(self, turn: str, text: str) -> str:
        """What follows a search turn: the formatted documents (or the failure)."""
        ...

    def invalid(self, turn: str, action: Action) -> str:
        """What follows a turn whose action was invalid."""
        ...


class SearchR1Protocol:
    """Search-R1's tags; see the module docstring."""

    name = "search_r1"
    stops: tuple[str, ...] = SEARCH_R1_STOPS
    skip_special_tokens = True

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def prompt(self, question: str) -> str:
        """Search-R1's prompt, through the chat template when there is one."""
        return build_prompt(question, self.tokenizer)

    def call(self, query: str) -> str:
        """``<search> query </search>``."""
        return f"<search> {query} </search>"

    def parse(self, turn: str) -> Action:
        """The first ``<search>`` or ``<answer>``, as Search-R1 finds it."""
        return parse_action(turn)

    def documents(self, turn: str, text: str) -> str:
        """``<information>`` around the documents."""
        return information(text)

    def invalid(self, turn: str, action: Action) -> str:
        """Search-R1's invalid-action text."""
        return INVALID_ACTION


_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class ToolCallProtocol:
    """Tool calls in the tokenizer's chat format; see the module docstring.

    At construction the chat template is rendered twice with stand-in contents: once
    with an assistant tool call followed by a tool message, once with an assistant reply
    followed by a user message. What the template writes between the assistant's text
    and the next message's content, and after that content up to the generation prompt,
    is the text injected after a turn. When the turn already ends with the special token
    that text starts with (an instruct model ends its reply with ``<|im_end|>``), only
    the rest is added.

    Raises ``ValueError`` if the tokenizer has no chat template, or its template ignores
    ``tools=`` or writes calls in other tags than ``<tool_call>…</tool_call>``.
    """

    name = "tool_call"
    start = "<tool_call>"
    end = "</tool_call>"
    skip_special_tokens = False

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "rollout.protocol=tool_call needs a tokenizer with a chat template; "
                "this one has none (use rollout.protocol=search_r1)"
            )
        self.stops: tuple[str, ...] = (self.end, "</answer>")
        if self._user_prompt("q", tools=True) == self._user_prompt("q", tools=False):
            raise ValueError(
                "the tokenizer's chat template ignores tools=: the prompt it renders is "
                "the same with and without the search tool (use rollout.protocol=search_r1)"
            )
        call = {"name": "search", "arguments": {"query": _TURN}}
        tool_text = self._render(
            {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
            {"role": "tool", "content": _SLOT},
        )
        call_start = tool_text.rfind(self.start)
        call_end = tool_text.find(self.end, call_start)
        if call_start < 0 or call_end < 0 or _TURN not in tool_text[call_start:call_end]:
            raise ValueError(
                "the tokenizer's chat template does not write tool calls inside "
                f"{self.start}…{self.end}; this protocol reads only that form"
            )
        self._tool = _split(tool_text[call_end + len(self.end) :])
        self._user = _split(
            self._render(
                {"role": "assistant", "content": _TURN}, {"role": "user", "content": _SLOT}
            ).split(_TURN, 1)[1]
        )

    def _render(self, *messages: dict[str, Any]) -> str:
        """The template's text of a user question followed by ``messages``."""
        text: str = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, *messages],
            tools=[SEARCH_TOOL],
            add_generation_prompt=True,
            tokenize=False,
        )
        return text

    def prompt(self, question: str) -> str:
        """One user message with the search tool declared, and the generation prompt."""
        return self._user_prompt(TOOL_PROMPT_TEMPLATE.format(question=normalize_question(question)))

    def _user_prompt(self, content: str, tools: bool = True) -> str:
        text: str = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tools=[SEARCH_TOOL] if tools else None,
            add_generation_prompt=True,
            tokenize=False,
        )
        return text

    def call(self, query: str) -> str:
        """The call as Qwen's templates write it (``tojson`` of the arguments)."""
        arguments = json.dumps({"query": query}, ensure_ascii=False)
        return f'{self.start}\n{{"name": "search", "arguments": {arguments}}}\n{self.end}'

    def parse(self, turn: str) -> Action:
        """The call or answer that ended the turn (whichever closed first).

        A call must be a JSON object naming ``search`` with a non-empty string
        ``query`` among its ``arguments`` (an object, or a string holding one);
        anything else is an invalid action whose content says what was wrong.
        """
        call, answer = _TOOL_CALL.search(turn), _ANSWER.search(turn)
        if answer is not None and (call is None or answer.end() < call.end()):
            return Action("answer", answer.group(1).strip())
        if call is None:
            return Action("invalid", None)
        query, error = _search_query(call.group(1))
        if error is not None:
            return Action("invalid", error)
        return Action("search", query)

    def documents(self, turn: str, text: str) -> str:
        """The tool message holding the documents, then the generation prompt."""
        return self._fill(self._tool, turn, text.strip())

    def invalid(self, turn: str, action: Action) -> str:
        """A malformed call is answered by a tool message saying what was wrong; a turn
        with no call and no answer by a user message saying what to do."""
        if action.content is not None:
            message = (
                f"Invalid tool call: {action.content}. Call the search tool with a JSON "
                'object such as {"name": "search", "arguments": {"query": "..."}}.'
            )
            return self._fill(self._tool, turn, message)
        return self._fill(self._user, turn, TOOL_INVALID_ACTION)

    def _fill(self, parts: tuple[str, str], turn: str, content: str) -> str:
        """``content`` between ``parts``, less a special token the turn already ended
        with (the ``<|im_end|>`` at which an engine stops on EOS)."""
        before, after = parts
        ended = [
            s
            for s in self.tokenizer.all_special_tokens
            if turn.endswith(s) and before.startswith(s)
        ]
        if ended:
            before = before[len(max(ended, key=len)) :]
        return before + content + after


def _split(rendered: str) -> tuple[str, str]:
    """The text before and after the content slot in a rendered observation."""
    before, sep, after = rendered.partition(_SLOT)
    if not sep:
        raise ValueError("the tokenizer's chat template dropped a message's content")
    return before, after


def _search_query(body: str) -> tuple[str, None] | tuple[None, str]:
    """The query of a call's JSON body, or what was wrong with it."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(call, dict):
        return None, "not a JSON object"
    if call.get("name") != "search":
        return None, f"unknown tool {call.get('name')!r}; the only tool is 'search'"
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None, "arguments are not a JSON object"
    if not isinstance(arguments, dict):
        return None, "arguments are not a JSON object"
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        return None, "no query: arguments need a non-empty string 'query'"
    return query.strip(), None


def make_protocol(name: str, tokenizer: Any) -> TurnProtocol:
    """The protocol called ``name`` (one of :data:`PROTOCOLS`) for ``tokenizer``."""
    if name == "search_r1":
        return SearchR1Protocol(tokenizer)
    if name == "tool_call":
        return ToolCallProtocol(tokenizer)
    raise ValueError(f"unknown rollout protocol {name!r}; expected one of {PROTOCOLS}")
