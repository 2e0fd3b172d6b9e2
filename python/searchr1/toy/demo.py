"""The embedded default, end to end on a CPU: a toy world where only search finds the
answer, a tiny model, a deliberately imperfect warm start, then RL.

world -> BM25 index -> tiny Qwen2 model -> copy pre-training -> SFT (half the
demonstrations search, half guess; those of another world too, to teach reading; plus
name-copying drills) -> evaluation -> GRPO -> evaluation -> a before/after table and a
plot.
Every stage writes into one directory, so each result can be inspected (and reused
by the other commands: ``searchr1 search``, ``eval``, ``infer``, ``train --resume``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from searchr1.config import TrainConfig
from searchr1.toy.models import TinyModelConfig, init_model
from searchr1.toy.warmstart import WarmStartConfig, stage, warm_start_model

__all__ = [
    "SFT_MARKER",
    "TOY_CONFIG",
    "DemoConfig",
    "Prepared",
    "comparison",
    "prepare",
    "quick",
    "reopen",
    "run_demo",
    "train_config",
]


#: The demo's RL settings: the toy config shipped with the package (configs/toy.yaml).
TOY_CONFIG = Path(__file__).with_name("toy.yaml")
#: The file in ``sft-model/`` that holds the warm start's settings (written last).
SFT_MARKER = "demo-sft.json"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds; how it trains with RL comes from ``train_config``."""

    out: str = field(default="runs/toy", metadata={"help": "directory for everything"})
    seed: int = field(
        default=0, metadata={"help": "seed of the world, the warm start and training"}
    )
    people: int = field(default=300, metadata={"help": "people in the world"})
    towns: int = field(default=80, metadata={"help": "towns in the world"})
    orgs: int = field(default=100, metadata={"help": "organisations in the world"})
    two_hop_fraction: float = field(default=0.0, metadata={"help": "share of 2-hop questions"})
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    warm_start: WarmStartConfig = field(
        default_factory=WarmStartConfig,
        metadata={"help": "its seed is the demo's, its topk the train config's rollout.topk"},
    )
    train_config: str = field(
        default=str(TOY_CONFIG), metadata={"help": "the RL run config (YAML)"}
    )
    train_overrides: tuple[str, ...] = field(
        default=(), metadata={"help": "section.field=value changes to the RL run config"}
    )


def train_config(config: DemoConfig, paths: dict[str, Path]) -> TrainConfig:
    """The RL run of the demo: ``config.train_config`` with the demo's own paths and
    seed, and no validation during training (the demo evaluates before and after),
    then ``config.train_overrides``."""
    out = Path(config.out)
    raw = TrainConfig.from_yaml(config.train_config).to_dict()
    raw["model"]["path"] = str(out / "sft-model")
    raw["data"].update(train_files=[str(paths["train"])], val_files=[str(paths["test"])])
    raw["retrieval"]["index"] = str(out / "index")
    raw["run"].update(output_dir=str(out / "grpo"), seed=config.seed, eval_every=0)
    return TrainConfig.from_dict(raw, config.train_config).override(config.train_overrides)


@dataclass
class Prepared:
    """What :func:`prepare` built under ``config.out``: the world, its index and the
    models RL starts from."""

    config: DemoConfig
    #: The world's files: ``corpus``, ``train`` and ``test`` (``write_world``'s paths).
    paths: dict[str, Path]
    retriever: Any
    #: The RL run of the demo (``train_config``).
    rl_config: TrainConfig
    #: The model before SFT: copy pre-trained (``copy-model/``), or the random one
    #: (``init-model/``) when the warm start has no copy pre-training.
    base_dir: Path
    #: The warm-started model (``sft-model/``).
    sft_dir: Path


def prepare(config: DemoConfig, log: Callable[[str], None] = print) -> Prepared:
    """The stages before RL: world -> BM25 index -> tiny model -> copy pre-training ->
    SFT. A warm start saved with the same settings is reused (``sft-model/demo-sft.json``
    holds them), so a re-run, or another run on the same world (``searchr1 study``),
    pays for it once."""
    import torch

    from searchr1.retrieval import Retriever
    from searchr1.toy.world import WorldConfig, build_world, write_world

    torch.manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    done = stage(log, "world")
    world = build_world(
        WorldConfig(
            seed=config.seed,
            n_people=config.people,
            n_towns=config.towns,
            n_orgs=config.orgs,
            two_hop_fraction=config.two_hop_fraction,
        )
    )
    paths = write_world(world, out / "world")
    log(f"   {world!r}")
    done()
    rl_config = train_config(config, paths)
    warm = replace(config.warm_start, seed=config.seed, topk=rl_config.rollout.topk)

    done = stage(log, "BM25 index")
    shutil.rmtree(out / "index", ignore_errors=True)  # the demo's own: rebuilt (< 1 s)
    # One thread is plenty for a corpus this small (tied hits rank by corpus row
    # whatever the thread count).
    retriever = Retriever.build(paths["corpus"], out / "index", threads=1)
    done()

    init_dir, base_dir, sft_dir = _model_dirs(config)
    sft_key = json.dumps(_sft_key(config, warm), sort_keys=True)
    marker = sft_dir / SFT_MARKER
    if marker.exists() and marker.read_text() == sft_key and (base_dir / "config.json").exists():
        # The warm start of these very settings is there already (a re-run, or a run
        # that stopped during RL): reuse it.
        log(f"== warm start: reusing {sft_dir} (same settings)")
    else:
        done = stage(log, "tiny model")
        init_model(init_dir, world.texts(), config.model)
        done()
        # Copy pre-training and SFT in two calls, the copy-pretrained model saved
        # between them (the study trains it without SFT): the same weights as one call.
        if warm.copy_steps:
            warm_start_model(init_dir, base_dir, replace(warm, sft_steps=0), log=log)
        warm_start_model(base_dir, sft_dir, replace(warm, copy_steps=0), world, retriever, log=log)
        marker.write_text(sft_key)
    return Prepared(config, paths, retriever, rl_config, base_dir, sft_dir)


def reopen(config: DemoConfig) -> Prepared:
    """What :func:`prepare` built under ``config.out``, opened as it stands: nothing is
    rebuilt or written, so processes can share one prepared world."""
    from searchr1.retrieval import Retriever
    from searchr1.toy.world import world_paths

    out = Path(config.out)
    paths = world_paths(out / "world")
    _, base_dir, sft_dir = _model_dirs(config)
    if not (sft_dir / SFT_MARKER).exists():
        raise FileNotFoundError(f"{out} holds no prepared world (run prepare first)")
    rl_config = train_config(config, paths)
    return Prepared(config, paths, Retriever.open(out / "index"), rl_config, base_dir, sft_dir)


def _model_dirs(config: DemoConfig) -> tuple[Path, Path, Path]:
    """The models :func:`prepare` makes under ``config.out``: the random one, the one
    SFT starts from (copy pre-trained, or the random one without copy pre-training),
    and the warm start."""
    out = Path(config.out)
    init_dir = out / "init-model"
    base_dir = out / "copy-model" if config.warm_start.copy_steps else init_dir
    return init_dir, base_dir, out / "sft-model"


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs every stage; returns the before/after metrics (also in ``out/demo.json``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.data import load_qa
    from searchr1.evaluate import evaluate
    from searchr1.rl.trainer import train
    from searchr1.rollout import HFEngine

    started = time.perf_counter()
    out = Path(config.out)
    prepared = prepare(config, log)
    rl_config, retriever, sft_dir = prepared.rl_config, prepared.retriever, prepared.sft_dir
    tok = AutoTokenizer.from_pretrained(sft_dir, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(str(sft_dir), local_files_only=True)

    test = load_qa([prepared.paths["test"]])[: rl_config.data.val_size]

    done = stage(log, f"evaluate the warm start on {len(test)} held-out questions")
    model.eval()
    before = evaluate(HFEngine(model, tok), retriever, test, rl_config.rollout)
    log(before.table())
    done()

    done = stage(log, f"GRPO, {rl_config.run.total_steps} steps")
    last = train(rl_config)
    done()

    done = stage(log, "evaluate after RL")
    rl_model: Any = AutoModelForCausalLM.from_pretrained(str(last / "actor"), local_files_only=True)
    rl_model.eval()
    after = evaluate(HFEngine(rl_model, tok), retriever, test, rl_config.rollout)
    log(after.table())
    done()

    summary = {
        "before": before.metrics,
        "after": after.metrics,
        "minutes": (time.perf_counter() - started) / 60,
        "config": asdict(config),
        "train_config": rl_config.to_dict(),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    log("\n" + comparison(before.metrics, after.metrics))
    plot = _plot(out / "grpo" / "metrics.jsonl", out / "training.png")
    if plot is not None:
        log(f"plot: {plot}")
    log(f"total: {summary['minutes']:.1f} min; everything is in {out}/")
    return summary


def _sft_key(config: DemoConfig, warm: WarmStartConfig) -> dict[str, Any]:
    """What the warm start depends on: a saved one with the same key is reused."""
    world = ("seed", "people", "towns", "orgs", "two_hop_fraction")
    return {
        **{k: getattr(config, k) for k in world},
        "warm_start": asdict(warm),
        "model": asdict(config.model),
    }


def comparison(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> str:
    """The before/after table (overall row of each)."""
    b = before.get("all") or next(iter(before.values()))
    a = after.get("all") or next(iter(after.values()))
    rows = [
        ("EM", "em"),
        ("F1", "f1"),
        ("search rate", "search_rate"),
        ("searches per question", "searches"),
        ("turns", "turns"),
        ("valid-action rate", "valid_rate"),
    ]
    lines = [f"{'held-out test':<24}{'after SFT':>12}{'after RL':>12}{'change':>10}"]
    for label, key in rows:
        lines.append(f"{label:<24}{b[key]:>12.3f}{a[key]:>12.3f}{a[key] - b[key]:>+10.3f}")
    return "\n".join(lines)


def _plot(metrics: Path, png: Path) -> Path | None:
    """Reward, EM and searches per question over the GRPO steps, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("reward", "reward"), ("em", "EM"), ("searches", "searches / question")):
        ax.plot(steps, [r[key] for r in rows], label=label)
    ax.set_xlabel("GRPO step")
    ax.set_title("searchr1 demo: the toy world")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def quick(config: DemoConfig) -> DemoConfig:
    """A shortened demo (about 2.5 minutes on 2 cores): a world of 100 entities, half
    the warm-start steps and no copy pre-training, drills or reading worlds, 16 GRPO
    steps. Enough for RL to teach searching (the learning test in tests/test_demo.py),
    not for held-out EM to rise: that takes the copy pre-training and the drills."""
    return replace(
        config,
        people=60,
        towns=20,
        orgs=20,
        warm_start=replace(
            config.warm_start, copy_steps=0, sft_steps=300, drills=0, reading_worlds=0
        ),
        train_overrides=(*config.train_overrides, "run.total_steps=16"),
    )
