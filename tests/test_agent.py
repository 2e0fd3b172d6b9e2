"""rollout.mode=async: the agent loop without a turn barrier, against the lockstep loop."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from searchr1.retrieval import Hit, Retriever
from searchr1.rollout import (
    HFEngine,
    RolloutConfig,
    ScriptedEngine,
    run_rollouts,
    tokenize_prompts,
)
from searchr1.rollout.agent import run_agent_rollouts
from sources import Source
from test_rollout import scripted

LOCKSTEP = RolloutConfig(
    max_turns=3, max_response_length=24, max_length=360, topk=2, mode="lockstep"
)
ASYNC = replace(LOCKSTEP, mode="async", search_wait_ms=1.0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class Docs:
    """Documents that name the query; records each call; may fail or wait."""

    def __init__(self, fail_calls: int = 0, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.fail_calls = fail_calls
        self.delay = delay

    def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
        self.calls.append(list(queries))
        time.sleep(self.delay)
        if self.fail_calls:
            self.fail_calls -= 1
            raise ConnectionError("retriever down")
        return [[Hit(f"{q}-{j}", 1.0, f'"{q}"\n{q} text {j}') for j in range(k)] for q in queries]


REPLIES = {
    "a": ["<search> one </search>", "<search> two </search>", "<answer> A </answer>"],
    "b": ["<answer> B </answer>"],
    "c": ["no idea", "<search> one </search>", "still no idea", "<answer> C </answer>"],
    "d": ["word " * 40],  # runs into max_response_length every turn, then max_length
    "e": ["<search> x </search>", "<search> " + "long " * 50 + "</search>"],
}


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def same_rollouts(a: Any, b: Any) -> None:
    assert a.stats == b.stats
    assert a.responses == b.responses
    for x, y in zip(a.trajectories, b.trajectories, strict=True):
        assert [s.generated for s in x.segments] == [s.generated for s in y.segments]
        for s, t in zip(x.segments, y.segments, strict=True):
            assert np.array_equal(s.ids, t.ids)
    for name in ("input_ids", "attention_mask", "position_ids", "loss_mask"):
        assert np.array_equal(getattr(a.batch, name), getattr(b.batch, name)), name


def test_async_builds_the_trajectories_of_lockstep(tokenizer: Any) -> None:
    questions = list("abcde") * 2
    prompts = tokenize_prompts(tokenizer, questions)
    lockstep = run_rollouts(scripted(tokenizer, REPLIES), Docs(), prompts, LOCKSTEP)
    engine = scripted(tokenizer, REPLIES)
    agent = run_rollouts(engine, Docs(), prompts, ASYNC)
    same_rollouts(lockstep, agent)
    s = {q: agent.stats[i] for i, q in enumerate(questions)}
    assert (s["a"].searches, s["a"].answer, s["b"].turns) == (2, "A", 1)
    assert (s["c"].invalid_actions, s["c"].searches, s["c"].answer) == (2, 1, "C")
    assert (s["d"].turns, s["d"].invalid_actions, s["d"].truncated) == (3, 3, True)
    assert (s["e"].turns, s["e"].searches, s["e"].invalid_actions) == (4, 1, 3)
    for state, traj in zip(agent.stats, agent.trajectories, strict=True):
        length = len(traj.prompt_ids) + sum(len(seg.ids) for seg in traj.segments)
        assert length <= LOCKSTEP.max_length
        assert state.truncated == (length == LOCKSTEP.max_length)
    assert agent.metrics()["async/engine_calls"] == len(engine.calls)


def test_greedy_hf_rollouts_are_the_same_in_both_loops(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"id": "1", "contents": "\\"Riverton\\"\\nRiverton was founded by Alice Marlow."}\n'
        '{"id": "2", "contents": "\\"Hamlet\\"\\nA play by Shakespeare."}\n'
    )
    retriever = Retriever.build(corpus, tmp_path / "index", progress=False)
    engine = HFEngine.from_pretrained(tiny_model_dir)
    questions = ["who founded Riverton", "who wrote Hamlet", "where is Riverton"] * 2
    prompts = tokenize_prompts(engine.tokenizer, questions)
    config = RolloutConfig(max_turns=2, max_response_length=16, temperature=0.0, mode="lockstep")
    lockstep = run_rollouts(engine, retriever, prompts, config)
    agent = run_rollouts(engine, retriever, prompts, replace(config, mode="async"))
    same_rollouts(lockstep, agent)


def test_a_group_asking_the_same_query_searches_once(tokenizer: Any) -> None:
    replies = {"a": ["<search> same </search>", "<answer> A </answer>"]}
    docs = Docs()
    prompts = tokenize_prompts(tokenizer, ["a"] * 5)
    result = run_rollouts(scripted(tokenizer, replies), docs, prompts, ASYNC)
    assert docs.calls == [["same"]]
    assert [s.searches for s in result.stats] == [1] * 5
    assert result.metrics()["async/search_dedup"] == pytest.approx(4 / 5)
    assert len({r for r in result.responses}) == 1


def test_searches_in_flight_are_batched(tokenizer: Any) -> None:
    replies = {q: [f"<search> {q} </search>", f"<answer> {q} </answer>"] for q in "abcdef"}
    docs = Docs()
    config = replace(ASYNC, search_batch_size=4, search_wait_ms=50.0)
    prompts = tokenize_prompts(tokenizer, list("abcdef"))
    result = run_rollouts(scripted(tokenizer, replies), docs, prompts, config)
    assert [len(c) for c in docs.calls] == [4, 2]
    assert sorted(q for call in docs.calls for q in call) == list("abcdef")
    assert result.metrics()["async/search_batch"] == 3


def test_a_failing_search_fails_only_its_own_turns(tokenizer: Any) -> None:
    """The first call fails; a trajectory that searches later is not affected."""
    replies = {
        "a": ["<search> early </search>", "<answer> A </answer>"],
        "b": ["hm", "hm", "<search> late </search>", "<answer> B </answer>"],
    }
    docs = Docs(fail_calls=1)
    inner = scripted(tokenizer, replies)

    def script(context: str) -> str:
        said = inner.script(context)
        if "late" in said:  # b asks only once a's search has gone out, however slow
            assert wait_for(lambda: docs.calls)
        return said

    prompts = tokenize_prompts(tokenizer, ["a", "b"])
    result = run_rollouts(ScriptedEngine(tokenizer, script), docs, prompts, ASYNC)
    assert docs.calls == [["early"], ["late"]]
    a, b = result.stats
    assert (a.search_failures, a.answer, b.search_failures, b.answer) == (1, "A", 0, "B")
    assert "The search engine failed (ConnectionError: retriever down)" in result.responses[0]
    assert '"late"' in result.responses[1] or "late text" in result.responses[1]


def test_no_turn_waits_for_another_trajectorys_search(tokenizer: Any) -> None:
    """While a's search is in flight, b takes all its turns and answers."""
    b_done = threading.Event()
    replies = {
        "a": ["<search> slow </search>", "<answer> A </answer>"],
        "b": ["hm", "hm", "<answer> B </answer>"],
    }
    inner = scripted(tokenizer, replies)

    def script(context: str) -> str:
        said = inner.script(context)
        if said.startswith("<answer> B"):
            b_done.set()
        return said

    class Slow(Docs):
        def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
            self.waited = b_done.wait(timeout=10)
            return super().search(queries, k)

    docs = Slow()
    prompts = tokenize_prompts(tokenizer, ["a", "b"])
    result = run_rollouts(ScriptedEngine(tokenizer, script), docs, prompts, ASYNC)
    assert docs.waited
    assert [s.answer for s in result.stats] == ["A", "B"]


def test_an_engine_error_ends_the_rollout_with_that_error(tokenizer: Any) -> None:
    class Broken(ScriptedEngine):
        def generate(self, prompts: Any, sampling: Any) -> Any:
            if self.calls:
                raise RuntimeError("CUDA out of memory")
            return super().generate(prompts, sampling)

    replies = {"a": ["<search> x </search>", "<answer> A </answer>"]}
    engine = Broken(tokenizer, scripted(tokenizer, replies).script)
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        run_rollouts(engine, Docs(), tokenize_prompts(tokenizer, ["a", "a"]), ASYNC)
    assert threading.active_count() == before


def test_it_runs_inside_an_event_loop(tokenizer: Any) -> None:
    replies = {"a": ["<search> x </search>", "<answer> A </answer>"]}

    async def main() -> Any:
        prompts = tokenize_prompts(tokenizer, ["a"])
        return run_agent_rollouts(scripted(tokenizer, replies), Docs(), prompts, ASYNC)

    result = asyncio.run(main())
    assert result.stats[0].answer == "A"


def test_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        RolloutConfig(mode="eager")
    with pytest.raises(ValueError, match="search_batch_size"):
        RolloutConfig(search_batch_size=0)


def test_serve_batches_continuously_and_generates_what_each_would_alone(
    tiny_model_dir: Path,
) -> None:
    """Rows that join a running batch (their cache padded to its width) and rows that
    leave it early sample, greedily, exactly what they would on their own."""
    from searchr1.rollout import SamplingConfig
    from searchr1.rollout.engine import Request

    engine = HFEngine.from_pretrained(tiny_model_dir)
    tok = engine.tokenizer
    prompts = {
        tag: np.asarray(tok.encode(text), dtype=np.int64)
        for tag, text in [
            ("long", "who founded the city of Riverton? It was"),
            ("short", "Riverton"),
            ("late", "<answer> Alice Marlow </answer> and then the town of"),
            ("later", "who"),
        ]
    }
    greedy = SamplingConfig(temperature=0.0, stop=("</search>",))
    budget = {"long": 24, "short": 3, "late": 6, "later": 9}

    def request(tag: str) -> Request:
        return Request(prompts[tag], replace(greedy, max_tokens=budget[tag]), tag)

    source = Source(
        [request("long"), request("short")],
        {"short": [request("late")], "late": [request("later")]},
    )
    engine.serve(source)
    assert [tag for tag, _ in source.delivered] == ["short", "late", "later", "long"]
    for tag, generation in source.delivered:
        (alone,) = engine.generate([prompts[tag]], replace(greedy, max_tokens=budget[tag]))
        assert np.array_equal(generation.token_ids, alone.token_ids), tag
        assert generation.finish_reason == alone.finish_reason
        np.testing.assert_allclose(generation.logprobs, alone.logprobs, atol=1e-4)


def test_a_failing_engine_session_reports_its_error(tiny_model_dir: Path) -> None:
    engine = HFEngine.from_pretrained(tiny_model_dir)
    prompts = [np.asarray(engine.tokenizer.encode("who"), dtype=np.int64), np.zeros(0, np.int64)]
    before = threading.active_count()
    with pytest.raises(ValueError, match="empty"):
        run_rollouts(engine, Docs(), prompts, ASYNC)
    assert threading.active_count() == before


def test_seeded_async_rollouts_draw_the_same_whatever_the_timing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Every row draws from noise of its own (seed, step): a search that takes longer
    changes which requests share the batch, not what anyone samples."""
    import random as stdlib_random

    class Jittery(Docs):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.rng = stdlib_random.Random(seed)

        def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
            time.sleep(self.rng.uniform(0, 0.05))
            return super().search(queries, k)

    engine = HFEngine.from_pretrained(tiny_model_dir)
    prompts = tokenize_prompts(engine.tokenizer, ["who founded Riverton"] * 4 + ["who"] * 4)
    config = RolloutConfig(
        max_turns=2, max_response_length=12, temperature=1.0, seed=3, mode="async"
    )
    runs = [run_rollouts(engine, Jittery(s), prompts, config) for s in (0, 1)]
    assert runs[0].responses == runs[1].responses
    assert len(set(runs[0].responses[:4])) > 1  # copies of a prompt still differ
    lockstep = run_rollouts(engine, Jittery(0), prompts, replace(config, mode="lockstep"))
    assert lockstep.responses != runs[0].responses  # another draw, as documented


def test_seeded_rows_draw_the_same_in_any_batch(tiny_model_dir: Path) -> None:
    from searchr1.rollout import SamplingConfig

    engine = HFEngine.from_pretrained(tiny_model_dir)
    tok = engine.tokenizer
    prompts = [np.asarray(tok.encode(t), dtype=np.int64) for t in ("who", "Riverton was", "x")]
    sampling = SamplingConfig(max_tokens=10, temperature=1.0, top_k=50, stop=())
    together = engine.generate(prompts, sampling, seeds=[5, 6, 7])
    for prompt, seed, generation in zip(prompts, [5, 6, 7], together, strict=True):
        (alone,) = engine.generate([prompt], sampling, seeds=[seed])
        assert np.array_equal(alone.token_ids, generation.token_ids)
    other = engine.generate(prompts, sampling, seeds=[8, 9, 10])
    assert any(
        not np.array_equal(a.token_ids, b.token_ids) for a, b in zip(together, other, strict=True)
    )
