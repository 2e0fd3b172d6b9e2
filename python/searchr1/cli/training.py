"""The training commands: train, eval, infer, and prepare."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from searchr1.cli._common import (
    EXISTING_FILE,
    FC,
    dir_option,
    field_option,
    overrides_option,
    user_errors,
)
from searchr1.retrieval.index import MODES
from searchr1.rollout.loop import RolloutConfig
from searchr1.rollout.protocol import PROTOCOLS


def _rollout_options(func: FC) -> FC:
    """Options shared by eval and infer: the model, the retriever, the rollout limits."""
    options = [
        dir_option(
            "--model",
            "model_dir",
            "Model directory (transformers format; a checkpoint's actor/ works).",
        ),
        dir_option("--index", "index_dir", "Index directory to search in-process.", False),
        click.option(
            "--url", help="Or a retrieval server (searchr1 serve), e.g. http://127.0.0.1:8000."
        ),
        click.option(
            "--mode",
            type=click.Choice(MODES),
            default=MODES[0],
            show_default=True,
            help="Search mode of an in-process index.",
        ),
        field_option(RolloutConfig, "topk", "-k", "--topk"),
        field_option(RolloutConfig, "max_turns"),
        field_option(RolloutConfig, "max_response_length"),
        field_option(RolloutConfig, "protocol", type=click.Choice(PROTOCOLS)),
        click.option("--device", help="cpu or cuda [default: cuda when present]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _rollout_setup(options: dict[str, Any]) -> tuple[Any, Any, RolloutConfig]:
    """The engine, retriever and (greedy) rollout config the shared options describe."""
    from searchr1.retrieval.backend import open_backend
    from searchr1.rollout import HFEngine

    if options["index_dir"] and options["url"]:
        raise click.UsageError("give --index or --url, not both")
    if not options["index_dir"] and not options["url"]:
        raise click.UsageError("give --index DIR or --url URL for the searches")
    retriever = open_backend(
        options["index_dir"], options["url"], mode=options["mode"], device=options["device"]
    )
    engine = HFEngine.from_pretrained(options["model_dir"], device=options["device"])
    config = RolloutConfig(
        max_turns=options["max_turns"],
        max_response_length=options["max_response_length"],
        topk=options["topk"],
        temperature=0.0,
        protocol=options["protocol"],
    )
    return engine, retriever, config


@click.command("eval")
@_rollout_options
@click.option(
    "--data",
    "data_files",
    required=True,
    multiple=True,
    type=EXISTING_FILE,
    help="QA file(s): JSONL rows with question and golden_answers (repeatable).",
)
@click.option("--limit", type=click.IntRange(1), help="Evaluate at most N questions per file.")
@click.option("--batch-size", default=64, show_default=True, help="Questions rolled out at once.")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the metrics and every answer as JSON here.",
)
def eval_cmd(
    data_files: tuple[Path, ...],
    limit: int | None,
    batch_size: int,
    out_path: Path | None,
    **options: Any,
) -> None:
    """Evaluate a model with search on QA sets: EM and F1 per data source.

    Rolls out every question greedily with Search-R1's prompt and protocol, and scores
    the last <answer> against the golden answers. Also reports how often the model
    searched, its turns, and the share of turns with a valid action.

    \b
    Example:
      searchr1 eval --model runs/toy/grpo/checkpoints/step_000120/actor \\
          --index runs/toy/index --data runs/toy/world/test.jsonl --max-turns 2
    """
    from searchr1.data import load_qa
    from searchr1.evaluate import evaluate

    with user_errors():
        examples = []
        for path in data_files:
            rows = load_qa([path])
            examples += rows[:limit] if limit else rows
        engine, retriever, config = _rollout_setup(options)
        report = evaluate(engine, retriever, examples, config, batch_size=batch_size)
    click.echo(report.table())
    if out_path is not None:
        out_path.write_text(
            json.dumps({"metrics": report.metrics, "records": report.records}, indent=2) + "\n"
        )
        click.echo(f"wrote {out_path}")


@click.command("infer")
@_rollout_options
@click.argument("question")
def infer_cmd(question: str, **options: Any) -> None:
    """Answer QUESTION with search, printing the whole reasoning trace.

    Searches are shown in yellow, retrieved documents dimmed, the answer in green.

    \b
    Example:
      searchr1 infer --model runs/toy/sft-model --index runs/toy/index \\
          "In which town was Varo Kessin born?"
    """
    from searchr1.rollout import run_rollouts, tokenize_prompts

    with user_errors():
        engine, retriever, config = _rollout_setup(options)
        prompts = tokenize_prompts(engine.tokenizer, [question], config.protocol)
        result = run_rollouts(engine, retriever, prompts, config)
    styles: dict[str, dict[str, Any]] = {
        "search": {"fg": "yellow", "bold": True},
        "information": {"dim": True},
        "answer": {"fg": "green", "bold": True},
        "think": {"fg": "cyan"},
        "tool_call": {"fg": "yellow", "bold": True},
        "tool_response": {"dim": True},
    }
    tags = "|".join(styles)
    pattern = re.compile(rf"(<({tags})>.*?</\2>)", re.DOTALL)
    for piece in pattern.split(result.responses[0]):
        match = re.match(rf"<({tags})>", piece)
        if match:
            click.echo(click.style(piece, **styles[match.group(1)]), nl=False)
        elif piece not in styles:
            click.echo(piece, nl=False)
    stats = result.stats[0]
    click.echo(f"\n\n[{stats.turns} turns, {stats.searches} searches, answer: {stats.answer!r}]")


@click.command("train")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=EXISTING_FILE,
    help="Run config (YAML; see configs/).",
)
@overrides_option("Change one field of the config (repeatable), e.g. --set rl.kl_coef=0.01.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the newest checkpoint in run.output_dir, exactly where it stopped.",
)
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
def train_cmd(
    config_path: Path, overrides: tuple[str, ...], resume: bool, print_config: bool
) -> None:
    """Train a policy with RL to reason and search (PPO, GRPO, RLOO, REINFORCE++).

    Each step rolls out questions with search, scores the answers, and updates the
    policy on the tokens it generated (retrieved tokens are masked). Metrics go to
    OUTPUT_DIR/metrics.jsonl (and TensorBoard when installed, wandb when
    run.wandb_project is set); checkpoints to OUTPUT_DIR/checkpoints/step_NNNNNN, each
    with a loadable model in actor/.

    The advantage estimator is rl.algorithm (grpo, ppo, rloo, reinforce++); the
    policy loss is rl.policy_loss (ppo, gspo, cispo), clipped by rl.clip and
    rl.clip_high; token losses add up as rl.loss_agg says (token-mean,
    seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm); DAPO's
    dynamic sampling and overlong shaping are rl.dynamic_sampling and
    rl.overlong_buffer. rollout.protocol=tool_call has an instruct model call
    the search tool in its chat template's own format instead of Search-R1's
    <search> tags; each trajectory runs its own turns (rollout.mode=async, the
    default) unless rollout.mode=lockstep makes every turn wait for the whole
    batch, as Search-R1 does. See configs/README.md; --print-config shows
    every field.

    \b
    Examples:
      searchr1 train --config configs/toy.yaml
      searchr1 train --config configs/qwen2.5-3b-grpo.yaml --set run.total_steps=200
      searchr1 train --config configs/toy.yaml --set rl.policy_loss=gspo
      searchr1 train --config configs/qwen2.5-3b-grpo.yaml --set rollout.protocol=tool_call
      searchr1 train --config configs/toy.yaml --resume
    """
    from searchr1.config import TrainConfig

    try:
        config = TrainConfig.from_yaml(config_path, overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--config/--set") from exc
    if print_config:
        click.echo(config.to_yaml(), nl=False)
        return
    from searchr1.rl.trainer import train

    with user_errors():
        last = train(config, resume=resume)
    click.echo(f"done: the last checkpoint is {last}")


@click.command("prepare")
@click.argument("inputs", nargs=-1, required=True, type=EXISTING_FILE)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSONL file to write (replaced once every row has converted).",
)
@click.option(
    "--data-source",
    metavar="NAME",
    help="Dataset name for every row [default: the row's data_source, else the file name].",
)
@click.option("--limit", type=click.IntRange(1), help="Write at most N rows (in input order).")
@click.option(
    "--dedupe", is_flag=True, help="Drop rows whose question repeats (case and spacing aside)."
)
def prepare_cmd(
    inputs: tuple[Path, ...], out: Path, data_source: str | None, limit: int | None, dedupe: bool
) -> None:
    """Convert FlashRAG / Search-R1 question-answer files into training JSONL.

    Each INPUT is JSONL (plain or .gz), a JSON array, or Search-R1's parquet (needs
    pyarrow). Rows may be FlashRAG's {"id", "question", "golden_answers"} or
    Search-R1's, with the answers in reward_model.ground_truth.target and the
    question in the prompt. The output rows are {"id", "question", "golden_answers",
    "data_source"}, ready for `searchr1 train` (data.train_files). Repeated ids get
    the data source prefixed. A bad row stops with its file and row.

    \b
    Examples:
      searchr1 prepare nq-train.jsonl hotpotqa-train.jsonl --out data/train.jsonl --dedupe
      searchr1 prepare search-r1/train.parquet --out data/train.jsonl --limit 1000
    """
    from searchr1.data.prepare import prepare

    with user_errors():
        report = prepare(inputs, out, data_source=data_source, limit=limit, dedupe=dedupe)
    notes = []
    if report.duplicates:
        notes.append(f"{report.duplicates} duplicate questions dropped")
    if report.renamed_ids:
        notes.append(f"{report.renamed_ids} repeated ids renamed")
    extra = f" ({', '.join(notes)})" if notes else ""
    click.echo(f"wrote {report.written} of {report.read} rows read to {out}{extra}")


COMMANDS = (train_cmd, eval_cmd, infer_cmd, prepare_cmd)
