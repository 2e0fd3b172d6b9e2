"""rollout.protocol=tool_call: the search tool called in the chat template's own format."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chat_templates import QWEN3, QWEN3_THINK_TOKENS, QWEN25, QWEN_TOOL_TOKENS
from searchr1.config import TrainConfig
from searchr1.retrieval import Hit
from searchr1.reward import get_reward
from searchr1.rollout import RolloutConfig, ScriptedEngine, run_rollouts, tokenize_prompts
from searchr1.rollout.prompt import format_documents
from searchr1.rollout.protocol import (
    SEARCH_TOOL,
    TOOL_INVALID_ACTION,
    ToolCallProtocol,
    make_protocol,
)
from searchr1.tags import Action
from searchr1.toy.models import train_tokenizer

TEXTS = [
    "who founded the city of Riverton? Riverton was founded by Alice Marlow in 1820.",
    '<tool_call>\n{"name": "search", "arguments": {"query": "Riverton founder"}}\n</tool_call>',
    "<think>\nI need to search.\n</think>\n\n<answer> Alice Marlow </answer>",
]


def qwen_tokenizer(template: str) -> Any:
    """A byte-level BPE tokenizer with ChatML tokens, Qwen's tool tokens and ``template``."""
    tok = train_tokenizer(TEXTS * 10, vocab_size=700)
    extra = QWEN_TOOL_TOKENS + (QWEN3_THINK_TOKENS if template is QWEN3 else [])
    tok.add_tokens(extra)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module", params=["qwen2.5", "qwen3"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return qwen_tokenizer(QWEN25 if request.param == "qwen2.5" else QWEN3)


class Docs:
    """A retriever whose documents name the query; records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
        self.calls.append(list(queries))
        return [[Hit(f"{q}-{j}", 1.0, f'"{q}"\n{q} text {j}') for j in range(k)] for q in queries]


def call(query: str) -> str:
    arguments = json.dumps({"query": query}, ensure_ascii=False)
    return f'<tool_call>\n{{"name": "search", "arguments": {arguments}}}\n</tool_call>'


def scripted(tokenizer: Any, turns: list[str]) -> ScriptedEngine:
    """Says ``turns[n]`` once n tool results or corrections are in the context."""

    def script(context: str) -> str:
        n = context.count("<tool_response>") + context.count(TOOL_INVALID_ACTION)
        return turns[min(n, len(turns) - 1)]

    return ScriptedEngine(tokenizer, script)


def rollout(tokenizer: Any, turns: list[str], **config: Any) -> Any:
    engine = scripted(tokenizer, turns)
    prompts = tokenize_prompts(tokenizer, ["who founded Riverton"], "tool_call")
    cfg = RolloutConfig(protocol="tool_call", topk=2, **config)
    return run_rollouts(engine, Docs(), prompts, cfg)


def test_the_prompt_declares_the_search_tool(tokenizer: Any) -> None:
    text = ToolCallProtocol(tokenizer).prompt("who founded Riverton")
    assert "<tools>\n" + json.dumps(SEARCH_TOOL) + "\n</tools>" in text
    assert "Question: who founded Riverton?\n<|im_end|>\n<|im_start|>assistant\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_a_call_then_an_answer_is_what_the_template_renders(tokenizer: Any) -> None:
    """Token-in/token-out gives, token for token, the conversation the chat template
    renders from the same messages: nothing was re-rendered, nothing differs."""
    think = "<think>\nI need to search.\n</think>\n\n" if tokenizer.chat_template is QWEN3 else ""
    result = rollout(tokenizer, [think + call("Riverton founder"), "<answer> Alice </answer>"])
    stats = result.stats[0]
    assert (stats.turns, stats.searches, stats.valid_actions, stats.answer) == (
        2,
        1,
        2,
        "Alice",
    )
    hits = Docs().search(["Riverton founder"], 2)[0]
    question = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", result.transcripts[0], re.DOTALL)
    assert question is not None
    messages = [
        {"role": "user", "content": question.group(1)},
        {
            "role": "assistant",
            "content": think,
            "tool_calls": [
                {"function": {"name": "search", "arguments": {"query": "Riverton founder"}}}
            ],
        },
        {"role": "tool", "content": format_documents(hits).strip()},
    ]
    rendered = tokenizer.apply_chat_template(
        messages, tools=[SEARCH_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert result.transcripts[0] == rendered + "<answer> Alice </answer>"


def test_only_the_models_tokens_are_trained(tokenizer: Any) -> None:
    result = rollout(tokenizer, [call("a"), "<answer> b </answer>"])
    traj, batch = result.trajectories[0], result.batch
    model, observation, answer = traj.segments
    assert (model.generated, observation.generated, answer.generated) == (True, False, True)
    text = tokenizer.decode(observation.ids)
    assert text.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\n")
    assert text.endswith("\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    lengths = [len(s.ids) for s in traj.segments]
    mask = batch.loss_mask[0, : sum(lengths)]
    expected = np.repeat([1, 0, 1], lengths)
    assert np.array_equal(mask, expected)


def test_a_reply_that_ends_at_eos_is_corrected_without_a_second_im_end(tokenizer: Any) -> None:
    result = rollout(tokenizer, ["I do not know.<|im_end|>", "<answer> Alice </answer>"])
    stats = result.stats[0]
    assert (stats.invalid_actions, stats.valid_actions, stats.answer) == (1, 1, "Alice")
    assert result.transcripts[0].endswith(
        f"I do not know.<|im_end|>\n<|im_start|>user\n{TOOL_INVALID_ACTION}<|im_end|>\n"
        "<|im_start|>assistant\n<answer> Alice </answer>"
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"name": "search", "arguments": {"query": "x"', "not JSON"),
        ('["search"]', "not a JSON object"),
        ('{"name": "lookup", "arguments": {"query": "x"}}', "unknown tool 'lookup'"),
        ('{"name": "search", "arguments": {"q": "x"}}', "no query"),
        ('{"name": "search", "arguments": "{\\"query\\": 3}"}', "no query"),
    ],
)
def test_a_malformed_call_gets_the_invalid_action_observation(
    tokenizer: Any, body: str, reason: str
) -> None:
    bad = f"<tool_call>\n{body}\n</tool_call>"
    result = rollout(tokenizer, [bad, "<answer> Alice </answer>"])
    stats = result.stats[0]
    assert (stats.invalid_actions, stats.searches, stats.answer) == (1, 0, "Alice")
    observation = tokenizer.decode(result.trajectories[0].segments[1].ids)
    assert observation.startswith("<|im_end|>\n<|im_start|>user\n<tool_response>\nInvalid")
    assert reason in observation


def test_arguments_given_as_a_json_string_are_read(tokenizer: Any) -> None:
    protocol = ToolCallProtocol(tokenizer)
    turn = '<tool_call>\n{"name": "search", "arguments": "{\\"query\\": \\" x \\"}"}\n</tool_call>'
    action = protocol.parse(turn)
    assert (action.kind, action.content) == ("search", "x")


def test_the_turn_stops_at_the_end_of_the_call(tokenizer: Any) -> None:
    engine = scripted(tokenizer, [call("a") + "\nand then some", "<answer> b </answer>"])
    prompts = tokenize_prompts(tokenizer, ["q"], "tool_call")
    result = run_rollouts(engine, Docs(), prompts, RolloutConfig(protocol="tool_call"))
    first = tokenizer.decode(result.trajectories[0].segments[0].ids)
    assert first == call("a")


def test_em_reads_the_answer_in_either_protocol(tokenizer: Any) -> None:
    result = rollout(tokenizer, [call("a"), "<answer> Alice Marlow </answer>"])
    em = get_reward("em")
    assert em(result.responses[0], ["Alice Marlow"]) == 1.0
    assert em(result.responses[0], ["Bob"]) == 0.0


def test_the_last_turn_gets_no_search(tokenizer: Any) -> None:
    result = rollout(tokenizer, [call("a")], max_turns=1)
    stats = result.stats[0]
    assert (stats.turns, stats.searches, stats.valid_actions, stats.finished) == (2, 1, 2, False)


def test_tokenizers_that_cannot_call_tools_are_refused() -> None:
    tok = qwen_tokenizer(QWEN25)
    tok.chat_template = None
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        make_protocol("tool_call", tok)
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content }}{% endfor %}"
    )
    with pytest.raises(ValueError, match="ignores tools="):
        make_protocol("tool_call", tok)
    with pytest.raises(ValueError, match="unknown rollout protocol"):
        make_protocol("xml", tok)
    with pytest.raises(ValueError, match="protocol must be one of"):
        RolloutConfig(protocol="xml")


def test_the_format_reward_is_refused_with_tool_calls() -> None:
    with pytest.raises(ValueError, match="format"):
        TrainConfig.from_dict({"rl": {"reward": "format"}, "rollout": {"protocol": "tool_call"}})


def test_a_real_model_rolls_out_in_the_chat_format(tiny_model_dir: Path) -> None:
    """HFEngine on a random tiny model: whatever it says, every turn ends at a stop, EOS
    or the budget, and exactly its own tokens carry loss."""
    from searchr1.rollout import HFEngine

    engine = HFEngine.from_pretrained(tiny_model_dir)
    engine.tokenizer.chat_template = QWEN25
    prompts = tokenize_prompts(engine.tokenizer, ["who founded Riverton"] * 3, "tool_call")
    assert engine.tokenizer.decode(prompts[0]).count("<tools>") == 2  # header and its example
    config = RolloutConfig(protocol="tool_call", max_turns=2, max_response_length=12, seed=0)
    result = run_rollouts(engine, Docs(), prompts, config)
    for stats, traj, row in zip(
        result.stats, result.trajectories, result.batch.loss_mask, strict=True
    ):
        assert 1 <= stats.turns <= 3
        assert stats.turns == stats.valid_actions + stats.invalid_actions
        generated = sum(len(s.ids) for s in traj.segments if s.generated)
        assert int(row.sum()) == generated
        for segment in traj.segments[1::2]:
            assert not segment.generated
            assert engine.tokenizer.decode(segment.ids).endswith("<|im_start|>assistant\n")


def test_demonstrations_are_written_as_tool_calls(tokenizer: Any) -> None:
    """SFT data for tool_call: the same turns a tool_call rollout would produce."""
    from searchr1.rollout.prompt import INVALID_ACTION, information
    from searchr1.sft import Demonstration, in_protocol, to_trajectories

    protocol = ToolCallProtocol(tokenizer)
    pieces = [
        ("<think>hm</think>\n<search> Riverton founder </search>", True),
        (information("Doc 1(Title: Riverton) text"), False),
        ("not sure", True),
        (INVALID_ACTION, False),
        ("<answer> Alice </answer>", True),
    ]
    written = in_protocol(pieces, protocol)
    said = "<think>hm</think>\n" + call("Riverton founder")
    assert written == [
        (said, True),
        (protocol.documents(said, "Doc 1(Title: Riverton) text"), False),
        ("not sure", True),
        (protocol.invalid("not sure", Action("invalid", None)), False),
        ("<answer> Alice </answer>", True),
    ]
    with pytest.raises(ValueError, match="neither <information>"):
        in_protocol([("x", True), ("surprise", False)], protocol)
    (traj,) = to_trajectories(tokenizer, [Demonstration("q", pieces)], protocol="tool_call")
    assert tokenizer.decode(traj.prompt_ids) == protocol.prompt("q")
    assert [s.generated for s in traj.segments] == [True, False, True, False, True, True]


def test_the_toy_template_takes_tools() -> None:
    """The toy kit's tokenizers can roll out in either protocol; without tools= their
    template renders what it always did."""
    tok = train_tokenizer(TEXTS, vocab_size=400)
    protocol = ToolCallProtocol(tok)
    assert protocol.documents(call("a"), "D") == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\nD\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    plain = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
