"""Where a training step's time goes: rollout, retrieval, forward, update, weight sync.

Runs GRPO steps of the trainer on the small world and model of bench_rollout (a tiny
Qwen2 that has learnt the Search-R1 format), on the CPU, and prints the mean time of
each phase per step. With a CUDA GPU at hand it also times a step of a randomly
initialised Qwen2.5-0.5B-shaped model in bf16 (HF engine; no weights download).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_rollout import trained_model, world
from common import machine, report
from searchr1 import Retriever
from searchr1.config import TrainConfig
from searchr1.rl.trainer import Trainer

PHASES = ("time/rollout", "time/retrieval", "time/forward_old", "time/update", "time/sync")


def config_for(
    model: Path, tmp: Path, batch: int, group: int, max_response: int, device: str
) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "model": {"path": str(model), "device": device},
            "data": {"train_files": [str(tmp / "train.jsonl")]},
            "retrieval": {"index": str(tmp / "index")},
            "rollout": {"max_turns": 2, "max_response_length": max_response, "topk": 3},
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
    trainer.step()
    rows = [trainer.step() for _ in range(steps)]
    out = {key: statistics.mean(r[key] for r in rows) for key in (*PHASES, "time/step")}
    out["searches"] = statistics.mean(r["searches"] for r in rows)
    out["response_length"] = statistics.mean(r["response_length"] for r in rows)
    return out


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
