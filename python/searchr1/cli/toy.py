"""The toy kit's commands: world, init-model, sft, demo, and study."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from searchr1.cli._common import (
    EXISTING_FILE,
    FC,
    dir_option,
    field_option,
    overrides_option,
    usage_errors,
    user_errors,
)
from searchr1.rollout.protocol import PROTOCOLS
from searchr1.toy.models import TinyModelConfig
from searchr1.toy.study import ARMS
from searchr1.toy.warmstart import WarmStartConfig
from searchr1.toy.world import WorldConfig


def _warm_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    return field_option(WarmStartConfig, name, *decls, **kwargs)


def _out_option(help: str) -> Callable[[FC], FC]:
    return click.option(
        "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help=help
    )


def _refuse_to_overwrite(out: Path, overwrite: bool) -> None:
    if (out / "config.json").exists() and not overwrite:
        raise click.UsageError(f"{out} already holds a model; pass --overwrite to replace it")


@click.command("world")
@_out_option("Directory to write the world into (made if needed; its files are replaced).")
@field_option(WorldConfig, "seed", type=int)
@field_option(WorldConfig, "n_people", "--people", type=click.IntRange(2))
@field_option(WorldConfig, "n_towns", "--towns", type=click.IntRange(2))
@field_option(WorldConfig, "n_orgs", "--orgs", type=click.IntRange(1))
@field_option(WorldConfig, "questions_per_entity", type=click.IntRange(1))
@field_option(WorldConfig, "two_hop_fraction", type=click.FloatRange(0, 1))
@field_option(WorldConfig, "test_fraction", type=click.FloatRange(0, 1))
def world_cmd(out: Path, **options: Any) -> None:
    """Write a toy world: invented people, towns and organisations, a passage about
    each, and questions that only a search of those passages can answer.

    Writes OUT/corpus.jsonl (Search-R1 corpus rows), OUT/train.jsonl and OUT/test.jsonl
    (QA rows; test questions ask about entities no training question asks about, and
    some take two searches) and OUT/world.json (the settings). The same seed gives
    the same world.

    \b
    Example:
      searchr1 world --out runs/toy/world --seed 0
      searchr1 index --corpus runs/toy/world/corpus.jsonl --out runs/toy/index
    """
    from searchr1.toy.world import build_world, write_world

    with usage_errors():
        config = WorldConfig(**options)
    world = build_world(config)
    with user_errors():
        paths = write_world(world, out)
    train, test = world.split("train"), world.split("test")
    two_hop = sum(len(q.hops) == 2 for q in world.all_questions)
    click.echo(
        f"wrote a toy world to {out}: {len(world.entities)} passages "
        f"({paths['corpus'].name}), {len(train)} train and {len(test)} test questions "
        f"({two_hop} of them two-hop)"
    )


@click.command("init-model")
@_out_option("Directory to save the model and tokenizer in.")
@dir_option(
    "--world",
    "world_dir",
    "Train the tokenizer on a toy world's passages and questions (`searchr1 world`).",
    required=False,
)
@click.option(
    "--text",
    "text_files",
    multiple=True,
    type=EXISTING_FILE,
    help="Train the tokenizer on this file (repeatable): JSONL rows' text fields, or lines.",
)
@field_option(TinyModelConfig, "vocab_size", type=click.IntRange(300))
@field_option(TinyModelConfig, "hidden_size", type=click.IntRange(1))
@click.option("--intermediate-size", type=click.IntRange(1), help="MLP width [default: 3x hidden].")
@field_option(TinyModelConfig, "num_layers", "--layers", type=click.IntRange(1))
@field_option(TinyModelConfig, "num_heads", "--heads", type=click.IntRange(1))
@field_option(TinyModelConfig, "num_kv_heads", "--kv-heads", type=click.IntRange(1))
@field_option(TinyModelConfig, "seed", type=int)
@_warm_option(
    "copy_steps",
    default=0,
    type=click.IntRange(0),
    help="Then pre-train it up to this many steps to copy random token strings, stopping "
    "once it copies (the demo allows 1200: fine-tuning then generalises to names it never "
    "wrote).",
)
@click.option("--overwrite", is_flag=True, help="Replace a model already saved in --out.")
def init_model_cmd(
    out: Path,
    world_dir: Path | None,
    text_files: tuple[Path, ...],
    intermediate_size: int | None,
    copy_steps: int,
    overwrite: bool,
    **shape: Any,
) -> None:
    """Make a tiny random Qwen2 model and a BPE tokenizer trained on your text.

    No model hub needed: the tokenizer (byte-level BPE with ChatML tokens, as Qwen2's)
    learns the given text plus Search-R1's prompt and tags; the weights are random.
    The directory loads like any transformers checkpoint (HF engine, vLLM, trainer).
    Give the text with --world and/or --text. For vLLM on the CPU keep
    hidden-size / heads >= 32.

    \b
    Example:
      searchr1 world --out runs/toy/world
      searchr1 init-model --out runs/toy/init-model --world runs/toy/world
    """
    from searchr1.toy.models import init_model, read_texts
    from searchr1.toy.warmstart import warm_start_model

    if world_dir is None and not text_files:
        raise click.UsageError("give the text to train the tokenizer on: --world and/or --text")
    _refuse_to_overwrite(out, overwrite)
    with usage_errors():
        config = TinyModelConfig(
            intermediate_size=intermediate_size or 3 * shape["hidden_size"], **shape
        )
        warm = WarmStartConfig(copy_steps=copy_steps, sft_steps=0, seed=config.seed)
    files = list(text_files)
    if world_dir is not None:
        files += [world_dir / f"{name}.jsonl" for name in ("corpus", "train", "test")]
    with user_errors():
        init_model(out, read_texts(files), config)
        report = warm_start_model(out, out, warm)
    what = "Qwen2 model"
    if report.copy_history:
        steps, accuracy = len(report.copy_history), report.copy_history[-1][1]
        what += f" pre-trained to copy ({steps} steps, accuracy {accuracy:.2f})"
    click.echo(
        f"saved a {what} with {report.parameters:,} parameters "
        f"(vocabulary {report.vocabulary}) to {out}"
    )


@click.command("sft")
@dir_option("--model", "model_dir", "Model to start from (e.g. `searchr1 init-model`'s).")
@dir_option(
    "--world",
    "world_dir",
    "Toy world whose training questions are demonstrated (`searchr1 world`).",
)
@dir_option(
    "--index",
    "index_dir",
    "Index of the world's corpus: searching demonstrations show what it returns.",
)
@_out_option("Directory to save the fine-tuned model in.")
@_warm_option("sft_steps", "--steps", type=click.IntRange(1))
@_warm_option("sft_lr", "--lr", type=click.FloatRange(0, min_open=True))
@_warm_option("sft_batch_size", "--batch-size", type=click.IntRange(1))
@_warm_option("search_fraction", type=click.FloatRange(0, 1))
@_warm_option("drills", type=click.IntRange(0))
@_warm_option("reading_worlds", type=click.IntRange(0))
@_warm_option("topk", type=click.IntRange(1))
@_warm_option("protocol", type=click.Choice(PROTOCOLS))
@_warm_option("seed", type=int)
@click.option("--overwrite", is_flag=True, help="Replace a model already saved in --out.")
def sft_cmd(
    model_dir: Path, world_dir: Path, index_dir: Path, out: Path, overwrite: bool, **options: Any
) -> None:
    """Warm-start a model by supervised fine-tuning on a toy world's demonstrations.

    One demonstration per training question: a --search-fraction of them think,
    search, read what the index returns and answer right; the rest answer at once
    with a wrong guess, so that RL has something to fix. --drills more teach the
    model to write new names ("<think>I remember that NAME"), and the demonstrations
    of --reading-worlds other worlds (of the same shape, never seen again) teach it to
    read what it finds rather than learn this world's facts. The loss is on the
    model's own tokens only: retrieved documents are masked, as in RL. With
    --protocol tool_call the demonstrations call the search tool in the chat
    template's format; train the result with `--set rollout.protocol=tool_call`.

    \b
    Example:
      searchr1 init-model --world runs/toy/world --out runs/toy/init-model --copy-steps 1200
      searchr1 sft --model runs/toy/init-model --world runs/toy/world \\
          --index runs/toy/index --out runs/toy/sft-model
    """
    from searchr1.retrieval import Retriever
    from searchr1.toy.warmstart import warm_start_model
    from searchr1.toy.world import read_world

    _refuse_to_overwrite(out, overwrite)
    with usage_errors():
        config = WarmStartConfig(copy_steps=0, **options)
    with user_errors():
        world, retriever = read_world(world_dir), Retriever.open(index_dir)
        report = warm_start_model(model_dir, out, config, world, retriever)
    losses = report.sft_losses
    click.echo(
        f"fine-tuned on {report.demonstrations} demonstrations ({report.searching} "
        f"searching) of this world and {config.reading_worlds} other(s), and "
        f"{report.drills} drills, loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {out}"
    )


@click.command("demo")
@click.option("--out", default="runs/toy", show_default=True, help="Directory for everything.")
@click.option("--seed", default=0, show_default=True, help="Seed of the world and the training.")
@click.option(
    "--quick",
    is_flag=True,
    help="A shortened run: 100 entities, no copy pre-training, drills or reading worlds, "
    "300 SFT and 16 GRPO steps; RL raises the search rate, not yet EM.",
)
@_warm_option("copy_steps", default=None, type=click.IntRange(0))
@_warm_option("sft_steps", default=None, type=click.IntRange(1))
@_warm_option("drills", default=None, type=click.IntRange(0))
@_warm_option("reading_worlds", default=None, type=click.IntRange(0))
@click.option(
    "--rl-steps", type=click.IntRange(1), help="GRPO steps [default: configs/toy.yaml's]."
)
@click.option(
    "--two-hop",
    "two_hop",
    type=click.FloatRange(0, 1),
    help="Share of 2-hop questions (two searches each) [default: 0].",
)
@overrides_option("Change one field of the RL run config (configs/toy.yaml; repeatable).")
def demo_cmd(
    out: str,
    seed: int,
    quick: bool,
    rl_steps: int | None,
    two_hop: float | None,
    overrides: tuple[str, ...],
    **warm: Any,
) -> None:
    """Run the embedded default end to end on the CPU.

    Builds a toy world whose answers only search can find, indexes it, makes a tiny
    Qwen2 model, pre-trains it to copy random token strings, warm-starts it by SFT on
    demonstrations of which only half search (this world's and another's, plus drills
    in writing new names), then trains it with GRPO as configs/toy.yaml says, and
    prints the before/after table (EM, search rate, turns, valid actions) on held-out
    questions, with a plot of the training curves.
    Everything lands in --out; a re-run with the same settings reuses the warm start.
    The warm-start options default to those of `searchr1 sft`, and --copy-steps to
    1200 (init-model's is 0).
    """
    from searchr1.toy import demo

    config = demo.DemoConfig(out=out, seed=seed)
    if quick:
        config = demo.quick(config)
    given = {k: v for k, v in warm.items() if v is not None}
    config = replace(
        config,
        warm_start=replace(config.warm_start, **given),
        train_overrides=(
            *config.train_overrides,
            *overrides,
            *([f"run.total_steps={rl_steps}"] if rl_steps else []),
        ),
    )
    if two_hop is not None:
        config = replace(config, two_hop_fraction=two_hop)
    with user_errors(), usage_errors():
        demo.run_demo(config, log=click.echo)


@click.command("study")
@click.option("--out", default="runs/study", show_default=True, help="Directory for everything.")
@click.option(
    "--seed",
    "seeds",
    multiple=True,
    type=int,
    help="A seed: its own world and warm start, shared by every arm (repeatable) [default: 0 1 2].",
)
@click.option(
    "--arm",
    "arms",
    multiple=True,
    type=click.Choice(tuple(ARMS)),
    help="An arm to run (repeatable) [default: all].",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run of about 1.5 minutes: the first seed, a small world, a short warm "
    "start, 4 RL steps per arm, 40 held-out questions.",
)
@click.option(
    "--rl-steps", type=click.IntRange(1), help="RL steps per arm [default: configs/toy.yaml's]."
)
@click.option(
    "--eval-every",
    type=click.IntRange(0),
    help="Held-out EM every N RL steps, for the plot (0: never) [default: 20; --quick: 4].",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Arms run at once, each in a process of its own with the cores shared out.",
)
@overrides_option("Change one field of every RL arm's run config (configs/toy.yaml; repeatable).")
def study_cmd(
    out: str,
    seeds: tuple[int, ...],
    arms: tuple[str, ...],
    quick: bool,
    rl_steps: int | None,
    eval_every: int | None,
    jobs: int,
    overrides: tuple[str, ...],
) -> None:
    """The Search-R1 paper's comparisons, reproduced on the toy world.

    Per seed, one world and warm start (the demo's, built once) and these arms, each
    scored on the held-out questions: direct (no retrieval), RAG (the question's
    passages in the prompt; top-k as search, and top-3), the warm start with search,
    and four RL runs: Search-R1 (GRPO with the retrieved-token mask), GRPO without the
    mask, PPO with the mask, and GRPO from the copy-pretrained model without the warm
    start. Writes the table (study.md), every number (study.json) and the training
    curves (training.png) to --out; a re-run reuses every arm already done with the
    same settings. The full study (3 seeds, 120 steps) takes about three hours on 2
    cores (docs/study.md).
    """
    from searchr1.toy import study

    with usage_errors():
        config = study.StudyConfig(out=out)
        if quick:
            config = study.quick(config)
        config = replace(
            config,
            seeds=seeds or config.seeds,
            arms=arms or config.arms,
            eval_every=config.eval_every if eval_every is None else eval_every,
            jobs=jobs,
            demo=replace(
                config.demo,
                train_overrides=(
                    *config.demo.train_overrides,
                    *overrides,
                    *([f"run.total_steps={rl_steps}"] if rl_steps else []),
                ),
            ),
        )
    if quick and len(config.seeds) > 1:
        raise click.UsageError("--quick runs one seed: give at most one --seed")
    with user_errors(), usage_errors():
        study.run_study(config, log=click.echo)


COMMANDS = (world_cmd, init_model_cmd, sft_cmd, demo_cmd, study_cmd)
