"""Rollouts: exact stopping vs Search-R1's post-hoc truncation, and HFEngine vs generate.

1. The same multi-turn rollouts (same model, prompts, retriever, greedy decoding) with
   the engine stopping exactly at ``</search>`` / ``</answer>``, and the way Search-R1
   does it: each turn decodes to the per-turn cap (or EOS), then the text is cut after
   the first ``</search>`` (else ``</answer>``) and re-tokenized
   (search_r1/llm_agent/generation.py, ``_postprocess_responses``). Reported: tokens
   decoded, rows computed per step, wall time.
2. HFEngine against ``model.generate`` on the same batch: pure decoding (no stop
   strings), and with the stop strings (``generate(stop_strings=...)``).
3. The lockstep loop against the asynchronous one (``rollout.mode``) on the same
   prompts, sampled (temperature 1), with the search behind a real ``searchr1 serve``
   process over HTTP. A second tiny model is trained for this on transcripts whose
   turns vary as real ones do: 1-4 searches per question, thoughts of 10-250 words.
   Reported: wall time, tokens generated per second, the engine's busy share, search
   calls and their sizes.

The model is a tiny Qwen2 trained here for a few hundred steps on whole Search-R1
transcripts of a toy world (documents included, as a pretrained LM has seen text of
that shape), so that, like a real model, it goes on writing an imagined
``<information>`` block when nothing stops it at ``</search>``. It is cached in
``~/.cache/searchr1/bench``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, report
from searchr1 import Retriever
from searchr1.rollout import (
    HFEngine,
    RolloutConfig,
    SamplingConfig,
    format_documents,
    information,
    run_rollouts,
    tokenize_prompts,
)
from searchr1.rollout.engine import Generation
from searchr1.sft import Demonstration, SFTConfig, sft, to_trajectories
from searchr1.toy.models import TinyModelConfig, init_model

CACHE = Path.home() / ".cache" / "searchr1" / "bench"
FIRST = ["Ada", "Bruno", "Cleo", "Dario", "Edda", "Fritz", "Gaia", "Hugo", "Ines", "Jonas"]
LAST = ["Marlow", "Quist", "Ferro", "Lindqvist", "Osei", "Varga", "Nakamura", "Duval"]
TOWNS = [
    f"{a}{b}"
    for a in ("River", "Stone", "Oak", "Frost", "Amber")
    for b in ("ton", "ford", "haven", "mere")
]


def world(seed: int = 0) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
    """A corpus of founding facts and (question, answer) pairs."""
    rng = random.Random(seed)
    corpus, qa = [], []
    for i, town in enumerate(TOWNS):
        founder = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        year = rng.randint(1700, 1950)
        text = f"{town} is a town on the river. It was founded by {founder} in {year}."
        corpus.append({"id": str(i), "contents": f'"{town}"\n{text}'})
        qa.append((f"who founded {town}", founder))
    return corpus, qa


def demonstrations(retriever: Retriever, qa: Sequence[tuple[str, str]]) -> list[Demonstration]:
    """Whole transcripts: think, search, the documents, think, answer."""
    demos = []
    for question, answer in qa:
        town = question.rsplit(" ", 1)[1]
        hits = retriever.search([question], k=3)[0]
        demos.append(
            Demonstration(
                question,
                [
                    (f"<think> I need to find who founded {town}. </think>\n", True),
                    (f"<search> {question} </search>", True),
                    (information(format_documents(hits)), True),
                    (f"<think> The documents say {answer} founded {town}. </think>\n", True),
                    (f"<answer> {answer} </answer>", True),
                ],
            )
        )
    return demos


def trained_model(retriever: Retriever, qa: Sequence[tuple[str, str]], steps: int) -> Path:
    """A tiny model trained on :func:`demonstrations` (cached)."""
    return cached_model(
        f"rollout-model-v1-{steps}",
        lambda: ([json.dumps(q) for q in qa], demonstrations(retriever, qa)),
        SFTConfig(steps=steps, batch_size=16),
    )


def cached_model(
    name: str,
    data: Callable[[], tuple[list[str], list[Demonstration]]],
    config: SFTConfig,
) -> Path:
    """``CACHE/name``: a tiny Qwen2 whose tokenizer learns ``data()``'s texts, fine-tuned
    on its demonstrations; made on first use."""
    out = CACHE / name
    if (out / "config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts, demos = data()
    shape = TinyModelConfig(vocab_size=1024, hidden_size=128, num_layers=2, num_heads=2)
    path = init_model(out.with_suffix(".tmp"), texts, shape)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    losses = sft(model, to_trajectories(tok, demos), config)
    print(f"  trained {name}: loss {losses[0]:.2f} -> {losses[-1]:.3f}", file=sys.stderr)
    model.save_pretrained(path)
    path.rename(out)
    return out


class PostHocEngine:
    """Search-R1's way: decode to the cap or EOS, cut the text at the first tag, re-tokenize."""

    def __init__(self, inner: HFEngine) -> None:
        self.inner = inner

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    def generate(self, prompts: Sequence[Any], sampling: SamplingConfig) -> list[Generation]:
        free = SamplingConfig(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            seed=sampling.seed,
            stop=(),
        )
        out = []
        texts = self.tokenizer.batch_decode(
            [g.token_ids for g in self.inner.generate(prompts, free)], skip_special_tokens=True
        )
        for text in texts:
            if "</search>" in text:
                text = text.split("</search>")[0] + "</search>"
            elif "</answer>" in text:
                text = text.split("</answer>")[0] + "</answer>"
            ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)
            out.append(Generation(ids, np.zeros(len(ids), dtype=np.float32), "stop"))
        return out


def rollout_side(
    engine: HFEngine, wrapped: Any, retriever: Retriever, prompts: list[Any], config: RolloutConfig
) -> dict[str, Any]:
    engine.tokens_sampled = engine.row_steps = 0
    start = time.perf_counter()
    result = run_rollouts(wrapped, retriever, prompts, config)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": engine.tokens_sampled,
        "row_steps": engine.row_steps,
        "responses": result.responses,
        "metrics": result.metrics(),
    }


FILLER = [
    "the",
    "river",
    "town",
    "records",
    "say",
    "that",
    "a",
    "founder",
    "came",
    "with",
    "families",
    "and",
    "built",
    "mills",
    "bridges",
    "roads",
    "and",
    "a",
    "church",
    "near",
    "the",
    "water",
    "before",
    "the",
    "railway",
    "reached",
    "the",
    "valley",
]


def varied_demonstrations(
    retriever: Retriever, qa: Sequence[tuple[str, str]], per_question: int, seed: int = 0
) -> list[Demonstration]:
    """Transcripts with 1-4 searches each and thoughts of 10-250 words (log-uniform)."""
    rng = random.Random(seed)

    def thought() -> str:
        n = int(math.exp(rng.uniform(math.log(10), math.log(250))))
        return " ".join(rng.choice(FILLER) for _ in range(n))

    demos = []
    for question, answer in qa:
        town = question.rsplit(" ", 1)[1]
        queries = [question, f"{town} founder", f"{town} history", f"{answer} {town}"]
        for _ in range(per_question):
            pieces: list[tuple[str, bool]] = []
            for query in queries[: rng.randint(1, 4)]:
                hits = retriever.search([query], k=3)[0]
                pieces.append((f"<think> {thought()} </think>\n<search> {query} </search>", True))
                pieces.append((information(format_documents(hits)), False))
            pieces.append((f"<think> {thought()} </think>\n<answer> {answer} </answer>", True))
            demos.append(Demonstration(question, pieces))
    return demos


def varied_model(retriever: Retriever, qa: Sequence[tuple[str, str]], steps: int) -> Path:
    """A tiny model trained on :func:`varied_demonstrations` (cached)."""

    def data() -> tuple[list[str], list[Demonstration]]:
        demos = varied_demonstrations(retriever, qa, per_question=8)
        return [p for d in demos for p, _ in d.pieces], demos

    return cached_model(f"rollout-varied-v1-{steps}", data, SFTConfig(steps=steps, batch_size=8))


class CountingRetriever:
    """Passes searches on; records the size of each call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def search(self, queries: list[str], k: int = 3) -> Any:
        self.calls.append(len(queries))
        return self.inner.search(queries, k)


def count_steps(engine: Any) -> Callable[[], int]:
    """The engine's decoding steps so far: HFEngine counts its own; vLLM's engine
    steps are counted here."""
    if isinstance(engine, HFEngine):
        return lambda: engine.steps
    core = engine.llm.llm_engine
    if not hasattr(core, "steps_counted"):
        step = core.step

        def counted() -> Any:
            core.steps_counted += 1
            return step()

        core.steps_counted, core.step = 0, counted
    return lambda: int(core.steps_counted)


def loop_side(
    engine: Any, retriever: Any, prompts: list[Any], config: RolloutConfig
) -> dict[str, Any]:
    counting = CountingRetriever(retriever)
    steps = count_steps(engine)
    first = steps()
    start = time.perf_counter()
    result = run_rollouts(engine, counting, prompts, config)
    wall = time.perf_counter() - start
    metrics = result.metrics()
    busy = metrics.get("async/engine_busy", metrics["generate_seconds"] / wall)
    turns = [len(s.ids) for t in result.trajectories for s in t.segments if s.generated]
    return {
        "seconds": wall,
        "steps": steps() - first,
        "tokens": sum(turns),
        "busy": busy,
        "search_calls": counting.calls,
        "searches": metrics["searches"],
        "turn_tokens": (min(turns), statistics.median(turns), max(turns)),
    }


def async_part(
    retriever: Retriever, index: Path, qa: Sequence[tuple[str, str]], args: Any
) -> dict[str, Any]:
    """Part 3: lockstep vs async on the same prompts, search over HTTP."""
    from bench_server import _start, free_port, stop
    from searchr1.retrieval.client import RemoteRetriever

    model = varied_model(retriever, qa, args.varied_steps)
    if args.engine == "vllm":
        from searchr1.rollout.vllm import VLLMEngine

        engine: Any = VLLMEngine(model, dtype="float32", max_model_len=4096, enforce_eager=True)
    else:
        engine = HFEngine.from_pretrained(model)
    questions = [qa[i % len(qa)][0] for i in range(args.prompts // 4) for _ in range(4)]
    prompts = tokenize_prompts(engine.tokenizer, questions)
    config = RolloutConfig(
        max_turns=4, max_response_length=args.max_response, max_length=4096, seed=0
    )
    port = free_port()
    cmd = [sys.executable, "-m", "searchr1", "serve", "--index", str(index)]
    with tempfile.TemporaryDirectory() as tmp:
        server = _start([*cmd, "--port", str(port)], port, 1, Path(tmp) / "server.log")
        try:
            remote = RemoteRetriever(f"http://127.0.0.1:{port}")
            # Both loops are called from a worker thread. vLLM's CPU backend binds the
            # OpenMP threads of the thread that made the engine to cores: called from
            # there, the lockstep loop ran up to 10x slower while other work shared the
            # cores, and the async loop (whose engine runs on a thread of its own) did
            # not; that would measure the binding, not the loops.
            pool = ThreadPoolExecutor(1)
            timings = timed_in_turn(
                {
                    mode: (
                        lambda mode=mode: pool.submit(
                            loop_side, engine, remote, prompts, replace(config, mode=mode)
                        ).result()
                    )
                    for mode in ("lockstep", "async")
                },
                args.repeats,
            )
            pool.shutdown()
        finally:
            stop(server)
    sides = {mode: result | {"seconds": sec} for mode, (sec, result) in timings.items()}
    rows = []
    for mode, side in sides.items():
        calls = side["search_calls"]
        low, mid, high = side["turn_tokens"]
        rows += [
            (f"{mode}: wall", f"{side['seconds']:.2f} s"),
            (f"{mode}: tokens/s", f"{side['tokens'] / side['seconds']:,.0f} ({side['tokens']:,})"),
            (f"{mode}: engine busy", f"{side['busy']:.0%}"),
            (
                f"{mode}: decoding steps",
                f"{side['steps']:,} ({side['seconds'] / side['steps'] * 1000:.1f} ms each)",
            ),
            (
                f"{mode}: search calls",
                f"{len(calls)}, {statistics.mean(calls):.1f} queries each (max {max(calls)})",
            ),
            (
                f"{mode}: searches/question, turn tokens",
                f"{side['searches']:.2f}, {low}/{mid}/{high}",
            ),
        ]
    lock, agent = sides["lockstep"], sides["async"]
    rows.append(("async speed-up (wall)", f"{lock['seconds'] / agent['seconds']:.2f}x"))
    rate = (agent["tokens"] / agent["seconds"]) / (lock["tokens"] / lock["seconds"])
    rows.append(("async speed-up (tokens/s)", f"{rate:.2f}x"))
    report(
        f"Rollouts on {type(engine).__name__}: lockstep vs async ({len(prompts)} prompts, "
        "sampled, up to "
        f"{args.max_response} tokens a turn, search over HTTP) - {machine()}",
        rows,
    )
    return {mode: {k: v for k, v in s.items()} for mode, s in sides.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=32, help="trajectories per rollout")
    parser.add_argument(
        "--max-response", type=int, default=500, help="tokens per turn (Search-R1: 500)"
    )
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--decode-tokens", type=int, default=128, help="new tokens in part 2")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of each side, in turn (median)"
    )
    parser.add_argument("--varied-steps", type=int, default=400, help="part 3's model")
    parser.add_argument(
        "--parts", default="1,2,3", help="which parts to run, e.g. 3 for lockstep vs async"
    )
    parser.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="part 3's engine (vllm: run with the vLLM environment's python)",
    )
    args = parser.parse_args(argv)
    parts = {int(p) for p in args.parts.split(",")}
    torch.manual_seed(0)
    results: dict[str, Any] = {}

    corpus, qa = world()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in corpus))
        retriever = Retriever.build(path, Path(tmp) / "index")
        if 3 in parts:
            results["async"] = async_part(retriever, Path(tmp) / "index", qa, args)
        if not parts & {1, 2}:
            return results
        model_dir = trained_model(retriever, qa, args.train_steps)
        engine = HFEngine.from_pretrained(model_dir)
        questions = [qa[i % len(qa)][0] for i in range(args.prompts)]
        prompts = tokenize_prompts(engine.tokenizer, questions)
        config = RolloutConfig(max_response_length=args.max_response, temperature=0)

        # Each side a warm-up, then `repeats` timed runs in turn; the median time counts
        # (the decoding is greedy, so every run decodes the same tokens).
        timings = timed_in_turn(
            {
                "exact": lambda: rollout_side(engine, engine, retriever, prompts, config),
                "posthoc": lambda: rollout_side(
                    engine, PostHocEngine(engine), retriever, prompts, config
                ),
            },
            args.repeats,
        )
        exact, posthoc = (result | {"seconds": sec} for sec, result in timings.values())
        same = sum(a == b for a, b in zip(exact["responses"], posthoc["responses"], strict=True))
        for side, r in (("exact", exact), ("posthoc", posthoc)):
            results[side] = {k: r[k] for k in ("seconds", "tokens", "row_steps")}
        report(
            f"Rollouts: exact stopping vs Search-R1's post-hoc cut ({args.prompts} prompts, "
            f"greedy, {args.max_response} tokens per turn) - {machine()}",
            [
                ("tokens decoded, exact", f"{exact['tokens']:,}"),
                ("tokens decoded, post-hoc", f"{posthoc['tokens']:,}"),
                (
                    "decode saved",
                    f"{1 - exact['tokens'] / posthoc['tokens']:.1%} of the tokens, "
                    f"{1 - exact['row_steps'] / posthoc['row_steps']:.1%} of the row-steps",
                ),
                ("wall, exact", f"{exact['seconds']:.2f} s"),
                ("wall, post-hoc", f"{posthoc['seconds']:.2f} s"),
                ("speed-up", f"{posthoc['seconds'] / exact['seconds']:.2f}x"),
                ("same responses", f"{same}/{len(prompts)}"),
                (
                    "searches per question",
                    f"{exact['metrics']['searches']:.2f} vs {posthoc['metrics']['searches']:.2f}",
                ),
            ],
        )

        # Part 2: decoding speed against model.generate on the same batch.
        n_new = args.decode_tokens

        rows = []
        for label, stops in (
            ("no stop strings", ()),
            ("stop at </search>, </answer>", ("</search>", "</answer>")),
        ):
            side = decode_side(engine, prompts, n_new, stops, args.repeats)
            results[f"decode {label}"] = side
            for who in ("HFEngine", "model.generate"):
                tokens, seconds = side[who]
                rate = f"{tokens / seconds:,.0f} tokens/s ({tokens:,} tokens, {seconds:.2f} s)"
                rows.append((f"{label}: {who}", rate))
            ratio = side["model.generate"][1] / side["HFEngine"][1]
            rows.append((f"{label}: wall ratio", f"{ratio:.2f}x"))
        title = f"HFEngine vs model.generate ({args.prompts} prompts, greedy, <= {n_new} tokens)"
        report(title, rows)
    return results


def timed_in_turn(fns: dict[str, Any], repeats: int) -> dict[str, tuple[float, Any]]:
    """Each of ``fns`` called once to warm up, then ``repeats`` times in turn: the median
    seconds of each, and its last result (in the order of ``fns``)."""
    last = {name: fn() for name, fn in fns.items()}
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            last[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(seconds[name]), last[name]) for name in fns}


def decode_side(
    engine: HFEngine, prompts: list[Any], n_new: int, stops: tuple[str, ...], repeats: int
) -> dict[str, tuple[int, float]]:
    """(tokens, median seconds) of HFEngine and of model.generate on the same batch."""
    tok = engine.tokenizer
    batch = tok.pad(
        {"input_ids": [p.tolist() for p in prompts]}, return_tensors="pt", padding_side="left"
    )
    sampling = SamplingConfig(max_tokens=n_new, temperature=0, stop=stops)
    kwargs: dict[str, Any] = {"max_new_tokens": n_new, "do_sample": False}
    kwargs["pad_token_id"] = tok.pad_token_id
    if stops:
        kwargs.update(stop_strings=list(stops), tokenizer=tok)
    timings = timed_in_turn(
        {
            "ours": lambda: engine.generate(prompts, sampling),
            "ref": lambda: engine.model.generate(**batch, **kwargs),
        },
        repeats,
    )
    (ours_s, ours), (ref_s, ref) = timings["ours"], timings["ref"]
    new = ref[:, batch["input_ids"].shape[1] :]
    return {
        "HFEngine": (sum(len(g.token_ids) for g in ours), ours_s),
        "model.generate": (int((new != tok.pad_token_id).sum()), ref_s),
    }


if __name__ == "__main__":
    main()
