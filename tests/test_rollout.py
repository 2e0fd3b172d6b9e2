"""Rollouts: the protocol text, the engines' stopping, and the multi-turn loop."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from searchr1 import Hit, RemoteRetriever, Retriever
from searchr1.retrieval.wire import response_body
from searchr1.rollout import (
    INVALID_ACTION,
    HFEngine,
    RolloutConfig,
    SamplingConfig,
    ScriptedEngine,
    build_prompt,
    format_documents,
    information,
    normalize_question,
    run_rollouts,
    tokenize_prompts,
)
from searchr1.rollout.engine import StopHandler

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# --- the protocol's text -------------------------------------------------------------


def test_prompt_is_search_r1s() -> None:
    text = build_prompt("  who wrote Hamlet ")
    assert text.startswith("Answer the given question. You must conduct reasoning inside <think>")
    assert "You can search as many times as your want." in text  # the typo is kept
    assert text.endswith("For example, <answer> Beijing </answer>. Question: who wrote Hamlet?\n")
    assert normalize_question("is it?") == "is it?"
    assert normalize_question(" x ") == "x?"


def test_prompt_goes_through_the_chat_template(tokenizer: Any) -> None:
    text = build_prompt("who wrote Hamlet", tokenizer)
    assert text.startswith("<|im_start|>user\nAnswer the given question.")
    assert text.endswith("Question: who wrote Hamlet?\n<|im_end|>\n<|im_start|>assistant\n")


def test_observation_text() -> None:
    hits = [
        Hit("1", 1.0, '"Hamlet"\nA play by Shakespeare.\nSecond line.'),
        Hit("2", 0.5, "NoText"),
    ]
    docs = format_documents(hits)
    assert docs == (
        'Doc 1(Title: "Hamlet") A play by Shakespeare.\nSecond line.\nDoc 2(Title: NoText) \n'
    )
    assert information(docs) == f"\n\n<information>{docs.strip()}</information>\n\n"
    assert information(format_documents([])) == "\n\n<information></information>\n\n"


# --- stopping -------------------------------------------------------------------------


def test_find_agrees_with_step(tokenizer: Any) -> None:
    handler = StopHandler(tokenizer)
    checker = handler.checker(("</search>", "</answer>"))
    texts = ["a </search> b", "<answer> x </answer>\n\n", "no stop here", "</sea", "</answer>"]
    seqs = [np.asarray(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    found = checker.find(seqs)
    checker.reset(len(seqs))
    for i, ids in enumerate(seqs):
        expected = None
        for j, t in enumerate(ids):
            kept = int(checker.step([int(t)], [i])[0])
            if kept >= 0:
                expected = (j, kept, checker.stopped(i))
                break
        assert found[i] == expected, texts[i]
    assert found[2] is None and found[3] is None


def test_stop_inside_a_token_is_cut_and_retokenized(tokenizer: Any) -> None:
    ids = np.asarray(tokenizer.encode("<search> q </search>\n\nmore", add_special_tokens=False))
    tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert ">ĊĊ" in tokens  # the vocabulary merges the stop's '>' with what follows
    handler = StopHandler(tokenizer)
    lps = np.linspace(-1, -2, len(ids)).astype(np.float32)
    gen = handler.finish(ids, lps, SamplingConfig(), eos_ids=[])
    assert gen.finish_reason == "stop" and gen.stop == "</search>"
    assert tokenizer.decode(gen.token_ids) == "<search> q </search>"
    last = tokens.index(">ĊĊ")
    assert gen.token_ids[:last].tolist() == ids[:last].tolist()
    assert gen.token_ids[last:].tolist() == tokenizer.encode(">", add_special_tokens=False)
    assert gen.logprobs[:last].tolist() == lps[:last].tolist()
    assert (gen.logprobs[last:] == 0).all()


class ScriptLM(torch.nn.Module):  # type: ignore[misc]
    """A causal-LM stand-in that emits ``scripts[i]`` after prompt ``i``.

    Prompt ``i`` must have ``100 * i + 1`` tokens: a row's position then says which
    script and which step it is at, whatever rows the engine has dropped.
    """

    def __init__(self, scripts: list[list[int]], vocab_size: int, eos: int) -> None:
        super().__init__()
        from transformers import GenerationConfig

        self.scripts = scripts
        self.eos = eos
        self.head = torch.nn.Linear(1, vocab_size, bias=False)
        self.generation_config = GenerationConfig(eos_token_id=eos)
        self.batch_sizes: list[int] = []

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head

    def forward(self, input_ids: Any, position_ids: Any, **kwargs: Any) -> Any:
        last = position_ids[:, -1]
        self.batch_sizes.append(len(last))
        logits = torch.zeros(len(last), 1, self.head.out_features)
        for r, p in enumerate(last.tolist()):
            script = self.scripts[p // 100]
            step = p % 100
            logits[r, 0, script[step] if step < len(script) else self.eos] = 30.0
        return type("Out", (), {"logits": logits})()


def test_hf_engine_stops_exactly_and_drops_finished_rows(tokenizer: Any) -> None:
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    eos = tokenizer.eos_token_id
    filler = enc(" think think think think think think think think think think")
    scripts = [
        enc("<search> q </search>\n\nmore text after the stop"),  # stop inside '>\n\n'
        enc("<answer> x </answer> and more"),  # stop at a token's end
        [*enc("nothing to see"), eos, *enc("after eos")],
        filler * 3,  # runs out of tokens
        enc("<search> a"),
        [*enc("</"), *enc("answer"), *enc(">"), *filler],  # stop split across tokens
        *[filler * 3] * 4,
    ]
    model = ScriptLM(scripts, len(tokenizer), eos)
    engine = HFEngine(model, tokenizer)
    prompts = [[7] * (100 * i + 1) for i in range(len(scripts))]
    gens = engine.generate(prompts, SamplingConfig(max_tokens=20, temperature=0))
    texts = [tokenizer.decode(g.token_ids) for g in gens]
    assert texts[0] == "<search> q </search>"
    assert (gens[0].finish_reason, gens[0].stop) == ("stop", "</search>")
    assert texts[1] == "<answer> x </answer>"
    assert gens[1].stop == "</answer>"
    assert gens[2].finish_reason == "eos" and gens[2].token_ids[-1] == eos
    assert texts[2] == "nothing to see<|im_end|>"
    assert gens[3].finish_reason == "length" and len(gens[3].token_ids) == 20
    assert gens[4].finish_reason == "eos"  # an open tag with no stop, then EOS
    assert texts[4] == "<search> a<|im_end|>"
    assert texts[5] == "</answer>" and gens[5].stop == "</answer>"
    # Rows that finished left the batch: later steps ran on fewer rows.
    assert model.batch_sizes[0] == len(scripts)
    assert model.batch_sizes[-1] < len(scripts)


def test_hf_engine_greedy_equals_generate(tiny_model_dir: Path) -> None:
    engine = HFEngine.from_pretrained(tiny_model_dir)
    tok = engine.tokenizer
    questions = ["who founded Riverton", "x", "a longer question about the city of Riverton"]
    prompts = tokenize_prompts(tok, questions)
    gens = engine.generate(prompts, SamplingConfig(max_tokens=24, temperature=0, stop=()))
    batch = tok.pad(
        {"input_ids": [p.tolist() for p in prompts]}, return_tensors="pt", padding_side="left"
    )
    ref = engine.model.generate(**batch, max_new_tokens=24, do_sample=False)[
        :, batch["input_ids"].shape[1] :
    ]
    for gen, row in zip(gens, ref, strict=True):
        n = len(gen.token_ids)
        assert gen.token_ids.tolist() == row[:n].tolist()
        assert gen.finish_reason in ("eos", "length")
        # The log-probs are the model's own.
        assert np.all(gen.logprobs <= 0) and np.all(np.isfinite(gen.logprobs))


@pytest.mark.slow
def test_hf_engine_sampling_is_seeded(tiny_model_dir: Path) -> None:
    engine = HFEngine.from_pretrained(tiny_model_dir)
    prompts = tokenize_prompts(engine.tokenizer, ["who founded Riverton"] * 4)
    a = engine.generate(prompts, SamplingConfig(max_tokens=16, seed=3, top_p=0.9, top_k=50))
    b = engine.generate(prompts, SamplingConfig(max_tokens=16, seed=3, top_p=0.9, top_k=50))
    c = engine.generate(prompts, SamplingConfig(max_tokens=16, seed=4, top_p=0.9, top_k=50))
    assert [g.token_ids.tolist() for g in a] == [g.token_ids.tolist() for g in b]
    assert [g.token_ids.tolist() for g in a] != [g.token_ids.tolist() for g in c]
    # The rows of one batch sample independently.
    assert len({tuple(g.token_ids.tolist()) for g in a}) > 1


def test_sampling_config_rejects_nonsense() -> None:
    for bad in (
        {"max_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"top_k": -1},
        {"stop": ("",)},
    ):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)  # type: ignore[arg-type]


# --- the loop ---------------------------------------------------------------------------


class FakeRetriever:
    """Answers every query with documents naming it; records each batched call."""

    def __init__(self, k_docs: int | None = None, fail: int = 0):
        self.calls: list[list[str]] = []
        self.k_docs = k_docs
        self.fail = fail

    def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
        self.calls.append(list(queries))
        if self.fail:
            self.fail -= 1
            raise ConnectionError("retriever down")
        n = k if self.k_docs is None else self.k_docs
        return [
            [Hit(f"{q}-{j}", 1.0, f'"{q} title"\n{q} text {j}') for j in range(n)] for q in queries
        ]


def scripted(tokenizer: Any, replies: dict[str, list[str]]) -> ScriptedEngine:
    """An engine that answers question q with replies[q][turn], turn counted from the
    observations already in the context."""

    def script(context: str) -> str:
        question = re.search(r"Question: (.*?)\?\n", context)
        assert question is not None
        turn = context.count("\n\n<information>") + context.count("Let me try again.")
        turns = replies[question.group(1)]
        return turns[min(turn, len(turns) - 1)]

    return ScriptedEngine(tokenizer, script)


def test_search_then_answer(tokenizer: Any) -> None:
    engine = scripted(
        tokenizer,
        {
            "q1": [
                "<think>hm</think><search> riverton founder </search>\n\ntrailing",
                "<answer> Alice </answer>",
            ],
            "q2": ["<answer> Bob </answer>"],
            "q3": ["I don't know", "<answer> Carol </answer>"],
        },
    )
    retriever = FakeRetriever()
    prompts = tokenize_prompts(tokenizer, ["q1", "q2", "q3"])
    # The lockstep loop: one engine call per turn (test_agent.py covers the async one).
    result = run_rollouts(engine, retriever, prompts, RolloutConfig(topk=2, mode="lockstep"))
    s1, s2, s3 = result.stats
    assert (s1.turns, s1.searches, s1.valid_actions, s1.finished, s1.answer) == (
        2,
        1,
        2,
        True,
        "Alice",
    )
    assert (s2.turns, s2.searches, s2.finished, s2.answer) == (1, 0, True, "Bob")
    assert (s3.turns, s3.invalid_actions, s3.valid_actions, s3.answer) == (2, 1, 1, "Carol")
    # One batched retriever call in the turn with a search, with the exact query.
    assert retriever.calls == [["riverton founder"]]
    docs = "".join(
        f'Doc {j + 1}(Title: "riverton founder title") riverton founder text {j}\n'
        for j in range(2)
    ).strip()
    assert result.responses[0] == (
        "<think>hm</think><search> riverton founder </search>"
        f"\n\n<information>{docs}</information>\n\n<answer> Alice </answer>"
    )
    assert result.responses[2] == f"I don't know{INVALID_ACTION}<answer> Carol </answer>"
    assert engine.calls == [3, 2]  # the second turn ran only the two unfinished rows


def test_loss_mask_hides_exactly_the_observations(tokenizer: Any) -> None:
    engine = scripted(tokenizer, {"q": ["<search> a </search>", "bad", "<answer> b </answer>"]})
    result = run_rollouts(engine, FakeRetriever(), tokenize_prompts(tokenizer, ["q"]))
    traj, batch = result.trajectories[0], result.batch
    assert [s.generated for s in traj.segments] == [True, False, True, False, True]
    mask = batch.loss_mask[0]
    response = batch.responses[0]
    start = 0
    for seg in traj.segments:
        n = len(seg.ids)
        assert response[start : start + n].tolist() == list(seg.ids)
        assert (mask[start : start + n] == (1.0 if seg.generated else 0.0)).all()
        start += n
    assert mask[start:].sum() == 0
    observations = [tokenizer.decode(s.ids) for s in traj.segments if not s.generated]
    assert observations[0].startswith("\n\n<information>Doc 1(Title:")
    assert observations[1] == INVALID_ACTION


def test_max_turns_then_a_last_turn_without_search(tokenizer: Any) -> None:
    engine = scripted(tokenizer, {"q": ["<search> again </search>"]})
    retriever = FakeRetriever()
    # Lockstep: the async loop would answer the repeated query from its cache.
    config = RolloutConfig(max_turns=3, mode="lockstep")
    result = run_rollouts(engine, retriever, tokenize_prompts(tokenizer, ["q"]), config)
    stats = result.stats[0]
    assert stats.turns == 4 and stats.searches == 3 and not stats.finished
    assert len(retriever.calls) == 3
    # The last turn is generated, and nothing is appended after it.
    assert result.trajectories[0].segments[-1].generated
    assert result.responses[0].count("<information>") == 3
    assert result.responses[0].endswith("<search> again </search>")


def test_empty_retrieval_results(tokenizer: Any) -> None:
    engine = scripted(tokenizer, {"q": ["<search> x </search>", "<answer> y </answer>"]})
    result = run_rollouts(engine, FakeRetriever(k_docs=0), tokenize_prompts(tokenizer, ["q"]))
    assert "<information></information>" in result.responses[0]
    assert result.stats[0].finished


def test_observations_are_cut_to_max_obs_length(tokenizer: Any) -> None:
    engine = scripted(tokenizer, {"q": ["<search> x </search>", "<answer> y </answer>"]})
    config = RolloutConfig(max_obs_length=7)
    result = run_rollouts(engine, FakeRetriever(), tokenize_prompts(tokenizer, ["q"]), config)
    obs = result.trajectories[0].segments[1]
    assert not obs.generated and len(obs.ids) == 7
    full = tokenizer.encode(
        information(format_documents(FakeRetriever().search(["x"])[0])), add_special_tokens=False
    )
    assert list(obs.ids) == full[:7]
    assert result.stats[0].finished and not result.stats[0].truncated


def test_length_cap(tokenizer: Any) -> None:
    engine = scripted(
        tokenizer,
        {"q": ["<search> x </search>", "<answer> y </answer>"], "r": ["<answer> z </answer>"]},
    )
    prompts = tokenize_prompts(tokenizer, ["q", "r"])
    cap = len(prompts[0]) + 12
    result = run_rollouts(engine, FakeRetriever(), prompts, RolloutConfig(max_length=cap))
    lengths = result.batch.attention_mask.sum(axis=1)
    assert lengths[0] == cap  # the observation was cut to fit
    assert result.stats[0].truncated and not result.stats[0].finished
    assert result.stats[1].finished and not result.stats[1].truncated

    # A prompt already at the cap gets no response at all.
    at_cap = run_rollouts(
        engine, FakeRetriever(), prompts[:1], RolloutConfig(max_length=len(prompts[0]))
    )
    assert at_cap.stats[0].turns == 0 and at_cap.stats[0].truncated
    assert at_cap.batch.last_index[0] == -1


def test_a_failing_search_is_called_once_and_reported(tokenizer: Any) -> None:
    replies = {"q": ["<search> x </search>", "<search> x </search>", "<answer> y </answer>"]}
    flaky = FakeRetriever(fail=1)
    result = run_rollouts(scripted(tokenizer, replies), flaky, tokenize_prompts(tokenizer, ["q"]))
    # One call per turn: the failed turn is not retried by the loop.
    assert flaky.calls == [["x"], ["x"]]
    stats = result.stats[0]
    assert (stats.searches, stats.search_failures, stats.finished) == (2, 1, True)
    failed, found = result.responses[0].split("<information>")[1:]
    assert failed.startswith(
        "The search engine failed (ConnectionError: retriever down); no documents"
    )
    assert found.startswith("Doc 1(Title:")
    assert result.metrics()["search_failures"] == 1.0

    nothing = run_rollouts(scripted(tokenizer, replies), None, tokenize_prompts(tokenizer, ["q"]))
    assert nothing.stats[0].search_failures == 2
    assert "The search engine failed (no retriever was given)" in nothing.responses[0]


@contextlib.contextmanager
def http_server(statuses: list[int]) -> Iterator[tuple[str, list[Any]]]:
    """A stand-in retrieval server: the n-th request gets ``statuses[n]`` (the last one
    from then on), a 200 answering every query with one document. Yields its URL and the
    requests it received (decoded)."""
    seen: list[Any] = []

    class Handle(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            status = statuses[min(len(seen), len(statuses)) - 1]
            rows = [[Hit(q, 1.0, f'"{q}"\nabout {q}')] for q in request["queries"]]
            body = response_body(rows, True) if status == 200 else b'{"error": "busy"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_remote_search_is_retried_by_the_client_alone(tokenizer: Any) -> None:
    replies = {"q": ["<search> x </search>", "<answer> y </answer>"]}
    prompts = tokenize_prompts(tokenizer, ["q"])
    with (
        http_server([503, 503, 200]) as (url, seen),
        RemoteRetriever(url, retries=2, backoff=0) as remote,
    ):
        ok = run_rollouts(scripted(tokenizer, replies), remote, prompts)
    assert len(seen) == 3 and ok.stats[0].search_failures == 0
    assert 'Doc 1(Title: "x") about x' in ok.responses[0]

    # Down for good: 3 requests in all (1 + 2 retries), not retries nested in retries.
    with (
        http_server([503]) as (url, seen),
        RemoteRetriever(url, retries=2, backoff=0) as remote,
    ):
        down = run_rollouts(scripted(tokenizer, replies), remote, prompts)
    assert len(seen) == 3
    assert down.stats[0].search_failures == 1 and down.stats[0].finished
    assert "The search engine failed (RetrievalError: " in down.responses[0]
    assert "after 3 attempts (last: status 503: busy)" in down.responses[0]


def test_a_search_that_times_out_is_reported(tokenizer: Any) -> None:
    replies = {"q": ["<search> x </search>", "<answer> y </answer>"]}
    with socket.socket() as listener:  # accepts connections into its backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with RemoteRetriever(url, timeout=0.2, retries=0) as remote:
            result = run_rollouts(
                scripted(tokenizer, replies), remote, tokenize_prompts(tokenizer, ["q"])
            )
    assert result.stats[0].search_failures == 1 and result.stats[0].finished
    assert "(last: timed out)" in result.responses[0]
    assert "The search engine failed (RetrievalError: " in result.responses[0]


def test_every_search_of_a_turn_goes_in_one_call(tokenizer: Any) -> None:
    questions = [f"q{i}" for i in range(6)]
    replies = {q: [f"<search> about {q} </search>", "<answer> a </answer>"] for q in questions}
    replies["q3"] = ["<answer> early </answer>"]
    retriever = FakeRetriever()
    result = run_rollouts(
        scripted(tokenizer, replies), retriever, tokenize_prompts(tokenizer, questions)
    )
    assert retriever.calls == [[f"about {q}" for q in questions if q != "q3"]]
    assert result.metrics()["searches"] == pytest.approx(5 / 6)
    assert all(s.finished for s in result.stats)


def test_rollout_config_checks() -> None:
    for bad in ({"max_turns": -1}, {"max_obs_length": 0}, {"max_length": 0}, {"topk": 0}):
        with pytest.raises(ValueError):
            RolloutConfig(**bad)  # type: ignore[arg-type]


def test_tiny_model_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        '{"id": "1", "contents": "\\"Riverton\\"\\nRiverton was founded by Alice Marlow."}\n'
        '{"id": "2", "contents": "\\"Hamlet\\"\\nA play by Shakespeare."}\n'
    )
    retriever = Retriever.build(corpus, tmp_path / "index")
    engine = HFEngine.from_pretrained(tiny_model_dir)
    prompts = tokenize_prompts(engine.tokenizer, ["who founded Riverton", "who wrote Hamlet"] * 2)
    config = RolloutConfig(max_turns=2, max_response_length=16, seed=0)
    result = run_rollouts(engine, retriever, prompts, config)
    batch = result.batch
    assert batch.input_ids.shape[0] == 4
    assert batch.loss_mask.shape == (4, batch.response_len)
    response_mask = batch.attention_mask[:, batch.prompt_len :]
    for i, (stats, traj) in enumerate(zip(result.stats, result.trajectories, strict=True)):
        assert 1 <= stats.turns <= 3
        assert sum(len(s.ids) for s in traj.segments) == int(response_mask[i].sum())
        generated = sum(len(s.ids) for s in traj.segments if s.generated)
        assert int(batch.loss_mask[i].sum()) == generated
    assert result.generate_seconds > 0
    assert all(
        t.startswith("<|im_start|>user\nAnswer the given question.") for t in result.transcripts
    )


def test_logprobs_are_under_the_distribution_sampled_from(tiny_model_dir: Path) -> None:
    """Generation.logprobs: after temperature, top-k and top-p (as vLLM's
    processed_logprobs). With top-k 1 the distribution has one token: log-prob 0."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.rollout import HFEngine, SamplingConfig

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = HFEngine(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), tok)
    prompts = [tok("who founded Riverton?")["input_ids"]]
    one = engine.generate(prompts, SamplingConfig(max_tokens=8, seed=1, top_k=1, stop=()))[0]
    assert np.all(one.logprobs == 0)
    full = engine.generate(prompts, SamplingConfig(max_tokens=8, seed=1, stop=()))[0]
    assert np.all(full.logprobs < 0)
