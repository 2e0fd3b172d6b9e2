"""The study: the Search-R1 paper's comparisons, reproduced on the toy world.

Per seed, one world, one index and one warm start, built once by the demo's
:func:`~searchr1.toy.demo.prepare` and shared by every arm; each arm is then scored on
the world's held-out questions (greedy, as ``searchr1 eval`` scores):

- ``direct``: the warm-started model answers in one turn, without searching;
- ``rag``: the question is the query, its top passages are put in the prompt (as the
  observation text a search would have brought), then one answer turn; ``rag`` takes
  as many passages as the search arms get (``rollout.topk``), ``rag-top3`` three, as
  the paper's RAG baseline;
- ``warm-start``: the warm-started model with search, before RL;
- ``grpo``: Search-R1, GRPO with the retrieved-token mask (the demo's RL run);
- ``grpo-nomask``: the same without the mask (``rl.state_masking=false``);
- ``ppo``: PPO with the mask (Search-R1's PPO recipe on the toy config: one response
  per question and as many trajectories per step as GRPO, the critic's learning rate
  ten times the actor's, the KL as a reward penalty);
- ``grpo-base``: GRPO from the copy-pretrained model, without the SFT warm start.

Everything lands in ``out``: ``seed{N}/`` holds that seed's world, index and models
(the demo's layout), a directory per arm (its ``result.json`` and, for RL arms, the
run), and ``out`` itself the table (``study.md``), every number (``study.json``) and
the training curves (``training.png``). An arm whose ``result.json`` was written with
the same settings is reused, so an interrupted study goes on where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from searchr1.config import RLConfig, TrainConfig
from searchr1.data import QAExample
from searchr1.rollout.loop import RolloutConfig, SearchBackend
from searchr1.toy.demo import SFT_MARKER, DemoConfig, Prepared, prepare
from searchr1.toy.demo import quick as quick_demo
from searchr1.toy.warmstart import stage

__all__ = [
    "ARMS",
    "Arm",
    "StudyConfig",
    "evaluate_arm",
    "markdown_table",
    "quick",
    "run_study",
    "summarize_arms",
]


def _no_overrides(rl: RLConfig) -> tuple[str, ...]:
    return ()


def _ppo(rl: RLConfig) -> tuple[str, ...]:
    """Search-R1's PPO recipe on the toy config: one response per question and the
    same trajectories per step as GRPO's groups, the critic's learning rate ten times
    the actor's, the KL (k1) as a per-token reward penalty."""
    return (
        "rl.algorithm=ppo",
        "rl.group_size=1",
        f"rl.batch_size={rl.batch_size * rl.group_size}",
        f"rl.critic_lr={10 * rl.actor_lr}",
        "rl.kl_in_reward=true",
        "rl.kl_estimator=k1",
    )


@dataclass(frozen=True)
class Arm:
    """One arm of the study."""

    name: str
    label: str
    #: ``direct``: one turn, no search; ``rag``: passages in the prompt, one turn;
    #: ``search``: rollouts with search, no training; ``rl``: trained, then ``search``.
    kind: str
    #: The model it starts from: ``sft`` (the warm start) or ``base`` (copy-pretrained).
    start: str = "sft"
    #: ``rag``: passages in the prompt [default: the search arms' ``rollout.topk``].
    topk: int | None = None
    #: ``rl``: changes to the demo's RL config, given its RL settings.
    overrides: Callable[[RLConfig], tuple[str, ...]] = _no_overrides


#: The arms by name, in the order of the table.
ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("direct", "direct (no retrieval)", "direct"),
        Arm("rag", "RAG (top-k of search)", "rag"),
        Arm("rag-top3", "RAG, top-3", "rag", topk=3),
        Arm("warm-start", "warm start, search, no RL", "search"),
        Arm("grpo", "Search-R1 (GRPO, mask)", "rl"),
        Arm(
            "grpo-nomask",
            "GRPO, no mask",
            "rl",
            overrides=lambda rl: ("rl.state_masking=false",),
        ),
        Arm("ppo", "PPO, mask", "rl", overrides=_ppo),
        Arm("grpo-base", "GRPO from copy-pretrained (no SFT)", "rl", start="base"),
    )
}


@dataclass(frozen=True)
class StudyConfig:
    """What the study runs: the seeds, the arms, and per seed the demo's world, model,
    warm start and RL settings (``demo``; its ``out`` and ``seed`` are set per seed)."""

    out: str = field(default="runs/study", metadata={"help": "directory for everything"})
    seeds: tuple[int, ...] = field(
        default=(0, 1, 2), metadata={"help": "seeds: each its own world and warm start"}
    )
    arms: tuple[str, ...] = field(default=tuple(ARMS), metadata={"help": "arms to run"})
    eval_every: int = field(
        default=20,
        metadata={"help": "RL arms: held-out EM every N steps, for the plot (0: never)"},
    )
    jobs: int = field(
        default=1,
        metadata={"help": "arms run at once, each in a process of its own (cores / jobs threads)"},
    )
    demo: DemoConfig = field(default_factory=DemoConfig)

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be given, each once, got {self.seeds}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(
                f"arms must be known names, each once, got {list(self.arms)}; "
                f"known: {', '.join(ARMS)}"
            )
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")

    def seed_config(self, seed: int) -> DemoConfig:
        """The demo settings of one seed: its own directory, its own world."""
        return replace(self.demo, out=str(Path(self.out) / f"seed{seed}"), seed=seed)


def quick(config: StudyConfig) -> StudyConfig:
    """A smoke run (about 1.5 minutes on 2 cores): the first seed, the shortened demo's
    world, a short warm start, 4 RL steps of 4 questions per arm, 40 held-out
    questions. Every arm runs and yields numbers; none of them means much."""
    shortened = quick_demo(config.demo)
    return replace(
        config,
        seeds=config.seeds[:1],
        eval_every=4,
        demo=replace(
            shortened,
            warm_start=replace(shortened.warm_start, copy_steps=20, sft_steps=60),
            train_overrides=(
                *shortened.train_overrides,
                "run.total_steps=4",
                "rl.batch_size=4",
                "data.val_size=40",
            ),
        ),
    )


def run_study(config: StudyConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every arm on every seed; writes ``study.json``, ``study.md`` and
    ``training.png`` into ``config.out`` and returns what ``study.json`` holds."""
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    prepare_minutes: dict[int, float] = {}
    for seed in config.seeds:
        log(f"=== seed {seed}")
        began = time.perf_counter()
        prepared = prepare(config.seed_config(seed), log)
        prepare_minutes[seed] = (time.perf_counter() - began) / 60
        if config.jobs > 1:
            results[seed] = _run_arms_at_once(config, seed, log)
        else:
            results[seed] = {
                name: _run_arm(prepared, ARMS[name], config.eval_every, log) for name in config.arms
            }
    summary = summarize_arms(results)
    rl_steps = prepared.rl_config.run.total_steps
    report = {
        "config": _plain(asdict(config)),
        "rl_steps": rl_steps,
        "held_out_questions": _held_out(prepared),
        "summary": summary,
        "seeds": {str(seed): arms for seed, arms in results.items()},
        "prepare_minutes": {str(seed): m for seed, m in prepare_minutes.items()},
        "minutes": (time.perf_counter() - started) / 60,
    }
    (out / "study.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_table(summary, config.seeds)
    (out / "study.md").write_text(
        f"# searchr1 study: seeds {', '.join(map(str, config.seeds))}, "
        f"{rl_steps} RL steps, {report['held_out_questions']} held-out questions\n\n"
        f"{table}\n"
    )
    log("\n" + table)
    plot = _plot(out, config.seeds, [n for n in config.arms if ARMS[n].kind == "rl"])
    if plot is not None:
        log(f"plot: {plot}")
    log(f"total: {report['minutes']:.1f} min; everything is in {out}/")
    return report


def _run_arms_at_once(
    config: StudyConfig, seed: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """The arms of one prepared seed, ``config.jobs`` at a time, each in a process of
    its own with a share of the cores."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, len(os.sched_getaffinity(0)) // config.jobs)
    # The RL arms first: the last to start should be a short one.
    order = sorted(config.arms, key=lambda name: ARMS[name].kind != "rl")
    log(f"== {len(order)} arms, {config.jobs} at a time, {threads} thread(s) each")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(config.jobs, mp_context=context) as pool:
        futures = {name: pool.submit(_arm_job, config, seed, name, threads) for name in order}
        done = {name: futures[name].result() for name in order}
    for name in order:
        log(f"[{name}] em {done[name]['em']:.3f} ({done[name]['minutes']:.1f} min)")
    return {name: done[name] for name in config.arms}


def _arm_job(config: StudyConfig, seed: int, name: str, threads: int) -> dict[str, Any]:
    """One arm in a worker process; it logs to stderr as it goes, its lines marked."""
    import torch

    from searchr1.toy.demo import reopen

    torch.set_num_threads(threads)

    def log(line: str) -> None:
        print(f"[{name}] {line}", file=sys.stderr, flush=True)

    return _run_arm(reopen(config.seed_config(seed)), ARMS[name], config.eval_every, log)


def _held_out(prepared: Prepared) -> int:
    from searchr1.data import load_qa

    return len(load_qa([prepared.paths["test"]])[: prepared.rl_config.data.val_size])


def _plain(value: Any) -> Any:
    """``asdict`` output made JSON-safe (tuples as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _arm_config(prepared: Prepared, arm: Arm, eval_every: int) -> TrainConfig:
    """The demo's RL run with the arm's changes, in the arm's own directory."""
    base = prepared.rl_config
    model = prepared.base_dir if arm.start == "base" else prepared.sft_dir
    return base.override(
        (
            *arm.overrides(base.rl),
            f"model.path={model}",
            f"run.output_dir={Path(prepared.config.out) / arm.name}",
            "run.save_every=0",
            "run.keep_checkpoints=1",
            f"run.eval_every={eval_every}",
        )
    )


def _run_arm(
    prepared: Prepared, arm: Arm, eval_every: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """The arm's held-out metrics (trained first if it is an RL arm), from its
    ``result.json`` when that was written with the same settings."""
    from searchr1.data import load_qa
    from searchr1.rl.trainer import train

    rl_config = _arm_config(prepared, arm, eval_every)
    arm_dir = Path(rl_config.run.output_dir)
    key = {
        "arm": arm.name,
        "warm_start": (prepared.sft_dir / SFT_MARKER).read_text(),
        "rollout": asdict(rl_config.rollout),
        "val_size": rl_config.data.val_size,
        "topk": arm.topk,
        "train": rl_config.to_dict() if arm.kind == "rl" else None,
    }
    saved = arm_dir / "result.json"
    if saved.exists():
        result: dict[str, Any] = json.loads(saved.read_text())
        if result.get("key") == _plain(key):
            log(f"== {arm.name}: reusing {saved} (same settings)")
            return dict(result["metrics"], minutes=result["minutes"])

    started = time.perf_counter()
    model_dir = prepared.base_dir if arm.start == "base" else prepared.sft_dir
    if arm.kind == "rl":
        shutil.rmtree(arm_dir, ignore_errors=True)
        done = stage(log, f"{arm.name}: {arm.label}, {rl_config.run.total_steps} steps")
        model_dir = train(rl_config) / "actor"
        done()
    test = load_qa([prepared.paths["test"]])[: rl_config.data.val_size]
    done = stage(log, f"{arm.name}: evaluate on {len(test)} held-out questions")
    metrics = _evaluate_model(model_dir, prepared.sft_dir, prepared.retriever, test, arm, rl_config)
    done(
        "  ".join(
            f"{k} {metrics[k]:.3f}"
            for k in ("em", "search_rate", "searches", "valid_rate", "response_length")
        )
    )
    minutes = (time.perf_counter() - started) / 60
    arm_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(
        json.dumps({"key": _plain(key), "metrics": metrics, "minutes": minutes}, indent=2) + "\n"
    )
    return dict(metrics, minutes=minutes)


def _evaluate_model(
    model_dir: Path,
    tokenizer_dir: Path,
    retriever: SearchBackend,
    examples: Sequence[QAExample],
    arm: Arm,
    config: TrainConfig,
) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.rollout import HFEngine

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    mode = "search" if arm.kind == "rl" else arm.kind
    return evaluate_arm(HFEngine(model, tok), retriever, examples, config.rollout, mode, arm.topk)


def evaluate_arm(
    engine: Any,
    retriever: SearchBackend,
    examples: Sequence[QAExample],
    rollout: RolloutConfig,
    mode: str = "search",
    topk: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Greedy rollouts of ``examples``, scored as :func:`searchr1.evaluate.evaluate`
    scores them (the overall row), plus ``response_length`` (tokens after the prompt,
    retrieved ones included, as the trainer logs it) and ``generated_length`` (the
    model's own tokens).

    ``mode``: ``search`` (the rollout as configured), ``direct`` (one turn, in which a
    search returns nothing) or ``rag`` (the question's top ``topk`` passages, default
    ``rollout.topk``, follow the prompt as the observation of a search would, then one
    turn; Search-R1's protocol only).
    """
    from searchr1.evaluate import summarize
    from searchr1.rollout import format_documents, information, run_rollouts, tokenize_prompts

    if mode not in ("search", "direct", "rag"):
        raise ValueError(f"mode must be search, direct or rag, got {mode!r}")
    config = replace(rollout, temperature=0.0, seed=None)
    tokenizer = engine.tokenizer
    questions = [e.question for e in examples]
    prompts = tokenize_prompts(tokenizer, questions, config.protocol)
    if mode != "search":
        config = replace(config, max_turns=0)
    if mode == "rag":
        if config.protocol != "search_r1":
            raise ValueError(f"the rag arm writes Search-R1's observation, not {config.protocol}")
        hits = retriever.search(questions, topk or config.topk)
        passages = [information(format_documents(h)) for h in hits]
        ids = tokenizer(passages, add_special_tokens=False)["input_ids"]
        prompts = [
            np.concatenate([p, np.asarray(i, dtype=np.int64)])
            for p, i in zip(prompts, ids, strict=True)
        ]
    responses: list[str] = []
    stats: list[Any] = []
    response_tokens = generated_tokens = 0.0
    for start in range(0, len(examples), batch_size):
        result = run_rollouts(engine, retriever, prompts[start : start + batch_size], config)
        responses += result.responses
        stats += result.stats
        batch = result.batch
        response_tokens += float(batch.attention_mask[:, batch.prompt_len :].sum())
        generated_tokens += float(batch.loss_mask.sum())
    metrics = summarize(responses, examples, stats).metrics
    overall = dict(metrics.get("all") or next(iter(metrics.values())))
    n = max(len(examples), 1)
    overall.update(response_length=response_tokens / n, generated_length=generated_tokens / n)
    return overall


#: The columns of the table: (metric, heading), each the mean over the seeds.
COLUMNS = (
    ("search_rate", "search rate"),
    ("searches", "searches / question"),
    ("valid_rate", "valid-action rate"),
    ("response_length", "response length (tokens)"),
    ("minutes", "minutes"),
)


def summarize_arms(
    results: dict[int, dict[str, dict[str, Any]]],
) -> dict[str, dict[str, Any]]:
    """Per arm, over the seeds: every metric's mean, and EM's min, max and value per seed."""
    arms = list(dict.fromkeys(a for per_seed in results.values() for a in per_seed))
    summary: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = {seed: per_seed[arm] for seed, per_seed in results.items() if arm in per_seed}
        keys = [k for k, v in next(iter(rows.values())).items() if isinstance(v, int | float)]
        entry: dict[str, Any] = {k: float(np.mean([r[k] for r in rows.values()])) for k in keys}
        ems = [r["em"] for r in rows.values()]
        entry.update(
            em_min=float(min(ems)),
            em_max=float(max(ems)),
            em_per_seed={str(seed): r["em"] for seed, r in rows.items()},
            seeds=len(rows),
        )
        summary[arm] = entry
    return summary


def markdown_table(summary: dict[str, dict[str, Any]], seeds: Sequence[int]) -> str:
    """The study's table: a row per arm; EM's mean, range and value per seed, then the
    means over the seeds of :data:`COLUMNS`."""
    head = ["arm", "EM (mean)", "EM (range)", f"EM per seed ({', '.join(map(str, seeds))})"]
    head += [heading for _, heading in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for arm, m in summary.items():
        per_seed = ", ".join(f"{m['em_per_seed'][str(s)]:.3f}" for s in seeds)
        cells = [ARMS[arm].label if arm in ARMS else arm, f"{m['em']:.3f}"]
        cells += [f"{m['em_min']:.3f} to {m['em_max']:.3f}", per_seed]
        cells += [
            f"{m[key]:.1f}" if key in ("response_length", "minutes") else f"{m[key]:.3f}"
            for key, _ in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The training curves: (metrics.jsonl key, panel title).
CURVES = (
    ("reward", "batch reward (EM)"),
    ("val/em", "held-out EM"),
    ("response_length", "response length (tokens)"),
    ("searches", "searches per question"),
)


def _plot(out: Path, seeds: Sequence[int], arms: Sequence[str]) -> Path | None:
    """The RL arms' training curves, one line per arm: the mean over the seeds (batch
    metrics smoothed over a window of a twentieth of the run) and its range, shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not arms:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for (key, title), ax in zip(CURVES, axes.flat, strict=True):
        for arm in arms:
            runs = []
            for seed in seeds:
                path = out / f"seed{seed}" / arm / "metrics.jsonl"
                if not path.exists():
                    continue
                rows = [json.loads(line) for line in path.read_text().splitlines() if line]
                runs.append({int(r["step"]): r[key] for r in rows if key in r})
            steps = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
            if not steps:
                continue
            values = np.array([[r[s] for s in steps] for r in runs])
            if key != "val/em":
                window = max(1, len(steps) // 20)
                kernel = np.ones(window) / window
                values = np.array([np.convolve(v, kernel, mode="valid") for v in values])
                steps = steps[window - 1 :]
            line = ax.plot(steps, values.mean(0), label=ARMS[arm].label, marker=None)
            if key == "val/em":
                line[0].set_marker("o")
            if len(runs) > 1:
                ax.fill_between(
                    steps, values.min(0), values.max(0), color=line[0].get_color(), alpha=0.15
                )
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("RL step")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"searchr1 study: the toy world, seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    png = out / "training.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
