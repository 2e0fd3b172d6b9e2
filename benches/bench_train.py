"""Where a training step's time goes: rollout, retrieval, forward, update, weight sync.

Runs GRPO steps of the trainer on the small world and model of bench_rollout (a tiny
Qwen2 that has learnt the Search-R1 format), on the CPU, and prints the mean time of
each phase per step; then the rollout phase of the lockstep loop against the async one
(``rollout.mode``), their steps taken in turn, on bench_rollout's model with varied
turns (part 3 there). With a CUDA GPU at hand it also times a step of a randomly
initialised Qwen2.5-0.5B-shaped model in bf16 (HF engine; no weights download).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_rollout import trained_model, varied_model, world
from common import machine, report
from searchr1 import Retriever
from searchr1.config import TrainConfig
from searchr1.rl.trainer import Trainer

PHASES = ("time/rollout", "time/retrieval", "time/forward_old", "time/update", "time/sync")


def config_for(
    model: Path,
    tmp: Path,
    batch: int,
    group: int,
    max_response: int,
    device: str,
    mode: str = "async",
    max_turns: int = 2,
) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "model": {"path": str(model), "device": device},
            "data": {"train_files": [str(tmp / "train.jsonl")]},
            "retrieval": {"index": str(tmp / "index")},
            "rollout": {
                "max_turns": max_turns,
                "max_response_length": max_response,
                "topk": 3,
                "mode": mode,
            },
            "rl": {
                "algorithm": "grpo",
                "batch_size": batch,
                "group_size": group,
                "mini_batch_size": 0,
                "micro_batch_size": 16,
                "actor_lr": 1e-5,
                "warmup_ratio": 0.0,
            },
            "run": {"output_dir": str(tmp / "run"), "total_steps": 100, "progress": False},
        }
    )


def time_steps(trainer: Trainer, steps: int) -> dict[str, float]:
    """Mean seconds per phase over ``steps`` steps (after one warm-up step)."""
    return time_in_turn({"": trainer}, steps)[""]


def time_in_turn(trainers: dict[str, Trainer], steps: int) -> dict[str, dict[str, float]]:
    """:func:`time_steps` for several trainers, their steps taken in turn (so that a
    change in the machine's load falls on all of them)."""
    for trainer in trainers.values():
        trainer.step()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in trainers}
    for _ in range(steps):
        for name, trainer in trainers.items():
            rows[name].append(trainer.step())
    return {name: _means(r) for name, r in rows.items()}


def _means(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = (*PHASES, "time/step", "searches", "response_length")
    return {key: statistics.mean(r[key] for r in rows) for key in keys}


def breakdown(title: str, t: dict[str, float]) -> None:
    # Retrieval runs inside the rollout: show the rollout without it.
    gen = t["time/rollout"] - t["time/retrieval"]
    parts = [
        ("generation", gen),
        ("retrieval", t["time/retrieval"]),
        ("old/ref log-probs", t["time/forward_old"]),
        ("forward/backward + optimizer", t["time/update"]),
        ("weight sync", t["time/sync"]),
    ]
    total = t["time/step"]
    rows = [(name, f"{sec:7.3f} s  {sec / total:6.1%}") for name, sec in parts]
    rows.append(
        (
            "step",
            f"{total:7.3f} s  (searches/question {t['searches']:.2f}, "
            f"response {t['response_length']:.0f} tokens)",
        )
    )
    report(title, rows)


def qwen05_shaped(tmp: Path) -> Path:
    """A random model with Qwen2.5-0.5B's shape, saved with a tokenizer of our own."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from searchr1.toy.models import train_tokenizer

    tok = train_tokenizer([json.dumps(x) for x in world()[1]], vocab_size=4096)
    config = Qwen2Config(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    out = tmp / "qwen0.5b-shaped"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after a warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="responses per prompt")
    parser.add_argument("--train-steps", type=int, default=300, help="bench_rollout's model")
    parser.add_argument(
        "--varied-steps", type=int, default=400, help="bench_rollout's varied model (part 3)"
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    corpus, qa = world()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
        retriever = Retriever.build(tmp / "corpus.jsonl", tmp / "index")
        rows = [{"question": q, "golden_answers": [a]} for q, a in qa]
        (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        model = trained_model(retriever, qa, args.train_steps)
        trainer = Trainer(config_for(model, tmp, args.batch, args.group, 200, "cpu"))
        results["toy_cpu"] = t = time_steps(trainer, args.steps)
        breakdown(
            f"GRPO step on the CPU, tiny model, {args.batch} prompts x {args.group} "
            f"(mean of {args.steps}) - {machine()}",
            t,
        )
        # The rollout phase in both loops, on bench_rollout's varied turns (1-4
        # searches, thoughts of 10-250 words): one trainer per loop, the same seeds.
        varied = varied_model(retriever, qa, args.varied_steps)
        trainers = {}
        for mode in ("lockstep", "async"):
            config = config_for(varied, tmp, args.batch, args.group, 500, "cpu", mode, 4)
            config = replace(config, run=replace(config.run, output_dir=str(tmp / mode)))
            trainers[mode] = Trainer(config)
        rows = []
        for mode, t in time_in_turn(trainers, args.steps).items():
            results[f"rollout_{mode}"] = t
            rows.append(
                (
                    f"{mode}: rollout / step",
                    f"{t['time/rollout']:.2f} s / {t['time/step']:.2f} s "
                    f"({t['searches']:.2f} searches/question, "
                    f"{t['response_length']:.0f} response tokens)",
                )
            )
        lock, agent = results["rollout_lockstep"], results["rollout_async"]
        rows.append(
            ("async speed-up, rollout", f"{lock['time/rollout'] / agent['time/rollout']:.2f}x")
        )
        rows.append(("async speed-up, step", f"{lock['time/step'] / agent['time/step']:.2f}x"))
        report(
            f"GRPO step's rollout phase: lockstep vs async (HFEngine, {args.batch} prompts x "
            f"{args.group}, up to 4 searches and 500 tokens a turn, mean of {args.steps}) "
            f"- {machine()}",
            rows,
        )
        if torch.cuda.is_available():
            big = qwen05_shaped(tmp)
            trainer = Trainer(config_for(big, tmp, args.batch, args.group, 200, "cuda"))
            results["qwen0.5b_cuda"] = t = time_steps(trainer, args.steps)
            breakdown(
                f"GRPO step, Qwen2.5-0.5B-shaped random model, bf16 autocast on "
                f"{torch.cuda.get_device_name()}",
                t,
            )
        else:
            print("\n(no CUDA GPU here: the Qwen2.5-0.5B-shaped step is not timed)")
    return results


if __name__ == "__main__":
    main()
