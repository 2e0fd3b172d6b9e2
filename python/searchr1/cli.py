"""The ``searchr1`` command line. Subcommands join the :data:`main` group."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING
from pathlib import Path
from typing import Any, TypeVar

import click

from searchr1 import __version__
from searchr1.errors import SearchR1Error
from searchr1.retrieval.encoder import DTYPES as ENCODER_DTYPES

FC = TypeVar("FC", bound=Callable[..., Any])


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turns searchr1's own errors (and missing files) into a one-line message, exit 1."""
    try:
        yield
    except (SearchR1Error, OSError) as e:
        raise click.ClickException(str(e)) from e


def _dir_option(flag: str, dest: str, help: str, required: bool = True) -> Callable[[FC], FC]:
    """An option naming a directory that must exist."""
    return click.option(
        flag,
        dest,
        required=required,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help=help,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="searchr1")
def main() -> None:
    """searchr1: train language models with RL to reason and search (Search-R1).

    Ships its own fast retriever (BM25 + dense, in Rust). Run `searchr1 COMMAND --help`
    for the options of each command.
    """


@main.command("parse-action")
@click.argument("text", required=False)
def parse_action_cmd(text: str | None) -> None:
    """Print the action Search-R1 would read from TEXT (or standard input).

    Shows the kind (search, answer or invalid) and the stripped content, exactly as a
    rollout parses a model's turn: the first <search>…</search> or <answer>…</answer>.
    """
    from searchr1.tags import parse_action

    if text is None:
        text = sys.stdin.read()
    action = parse_action(text)
    click.echo(action.kind if action.content is None else f"{action.kind}\t{action.content}")


@main.command("index")
@click.option(
    "--corpus",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSONL corpus (plain or .gz): {"id", "contents"} or {"id", "title", "text"} rows.',
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New index directory (must not exist or be empty).",
)
@click.option("--bm25/--no-bm25", default=True, show_default=True, help="Build the BM25 index.")
@click.option(
    "--dense-model",
    type=click.Path(path_type=Path),
    help="transformers model directory: also build dense vectors (e.g. e5-base-v2).",
)
@click.option(
    "--dtype",
    default="f32",
    show_default=True,
    type=click.Choice(["f32", "f16", "i8"]),
    help="How dense vectors are stored: f16 halves the size, i8 (a scale per row) "
    "quarters it; exact search then scores the stored, rounded values.",
)
@click.option("--hnsw", is_flag=True, help="Also build an HNSW graph for fast approximate search.")
@click.option(
    "--hnsw-dtype",
    default="i8",
    show_default=True,
    type=click.Choice(["f32", "f16", "i8"]),
    help="The vectors the HNSW walk reads: the stored ones when alike, else a copy in "
    "this dtype whose candidates are re-scored exactly against the stored vectors. i8 "
    "is a quarter of f32's memory to walk, scored in integers (1.09-1.62x faiss HNSW's "
    "queries/s at recall 0.95 on 2 cores; benches/README.md).",
)
@click.option("--batch-size", default=64, show_default=True, help="Passages encoded at once.")
@click.option("--device", help="Encoder device (cpu, cuda) [default: cuda when present].")
@click.option("--k1", default=0.9, show_default=True, help="BM25 term-frequency saturation.")
@click.option("--b", "b", default=0.4, show_default=True, help="BM25 length normalisation.")
@click.option("--stem/--no-stem", default=True, show_default=True, help="Porter2 stemming.")
@click.option(
    "--stopwords/--no-stopwords", default=True, show_default=True, help="Drop English stop words."
)
@click.option("--threads", type=click.IntRange(1, 8), help="Indexing threads [default: all cores].")
@click.option(
    "--memory-mb", default=512, show_default=True, type=click.IntRange(16), help="Indexing memory."
)
@click.option(
    "--skip-bad", is_flag=True, help="Skip (and count) malformed lines instead of stopping."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def index_cmd(
    corpus: Path,
    out: Path,
    bm25: bool,
    dense_model: Path | None,
    dtype: str,
    hnsw: bool,
    hnsw_dtype: str,
    batch_size: int,
    device: str | None,
    k1: float,
    b: float,
    stem: bool,
    stopwords: bool,
    threads: int | None,
    memory_mb: int,
    skip_bad: bool,
    quiet: bool,
) -> None:
    """Build a BM25 (and optionally dense) index of a passage corpus.

    The corpus is streamed, never held in memory whole. A malformed line stops the build
    with the file, line number and problem (or is skipped with --skip-bad); a repeated id
    is always an error. Scores follow Lucene's BM25 with pyserini's defaults.
    With --dense-model, passages are also encoded (mean or CLS pooling, e5 prefixes
    when the model is an e5) and searched exactly by inner product, or through an
    HNSW graph with --hnsw.

    \b
    Example:
      searchr1 index --corpus wiki-18.jsonl.gz --out indexes/wiki-18
      searchr1 index --corpus wiki-18.jsonl.gz --out indexes/wiki-18-e5 \\
        --dense-model models/e5-base-v2 --dtype f16 --hnsw
    """
    from searchr1.retrieval import Retriever

    started = time.perf_counter()
    with _user_errors():
        retriever = Retriever.build(
            corpus,
            out,
            bm25=bm25,
            dense_model=dense_model,
            dtype=dtype,
            hnsw=hnsw,
            hnsw_dtype=hnsw_dtype,
            batch_size=batch_size,
            device=device,
            k1=k1,
            b=b,
            stem=stem,
            stopwords=stopwords,
            threads=threads,
            memory_mb=memory_mb,
            skip_bad=skip_bad,
            progress=not quiet and sys.stderr.isatty(),
        )
    info = retriever.manifest["corpus"]
    seconds = time.perf_counter() - started
    skipped = f", {info['skipped_lines']} bad lines skipped" if info["skipped_lines"] else ""
    click.echo(
        f"indexed {info['passages']} passages into {out} in {seconds:.1f}s "
        f"({info['passages'] / max(seconds, 1e-9):.0f}/s){skipped}"
    )


@main.command("search")
@_dir_option("--index", "index_dir", "Index directory built by `searchr1 index`.")
@click.option(
    "-k", "k", default=3, show_default=True, type=click.IntRange(0), help="Hits per query."
)
@click.option(
    "--mode",
    default="bm25",
    show_default=True,
    type=click.Choice(["bm25", "dense", "hybrid"]),
    help="BM25, dense (exact inner product), or hybrid (reciprocal rank fusion).",
)
@click.option("--device", help="Encoder device for dense and hybrid search.")
@click.option(
    "--encoder-dtype",
    type=click.Choice(ENCODER_DTYPES),
    help="What the query encoder computes in [default: bfloat16 on a GPU, float32 on a CPU].",
)
@click.option("--exact", is_flag=True, help="Dense search over every vector, not the HNSW graph.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print Search-R1's /retrieve response format."
)
@click.argument("queries", nargs=-1, required=True)
def search_cmd(
    index_dir: Path,
    k: int,
    mode: str,
    device: str | None,
    encoder_dtype: str | None,
    exact: bool,
    as_json: bool,
    queries: tuple[str, ...],
) -> None:
    """Search an index for each QUERY and print the best passages.

    \b
    Example:
      searchr1 search --index indexes/wiki-18 -k 3 "who wrote dune" "capital of peru"
    """
    from searchr1.retrieval import Retriever

    with _user_errors():
        retriever = Retriever.open(index_dir, device=device, encoder_dtype=encoder_dtype)
        results = retriever.search(list(queries), k=k, mode=mode, exact=exact)
    if as_json:
        body = {"result": [[h.to_search_r1() for h in row] for row in results]}
        click.echo(json.dumps(body, ensure_ascii=False))
        return
    style: Callable[..., str] = click.style
    for query, hits in zip(queries, results, strict=True):
        click.echo(style(f"# {query}", bold=True))
        if not hits:
            click.echo("  (no match)")
        for rank, hit in enumerate(hits, 1):
            click.echo(f"  {rank}. [{hit.score:.3f}] {style(hit.title, fg='cyan')} (id {hit.id})")
            text = hit.text.replace("\n", " ")
            click.echo(f"     {text[:200]}{'…' if len(text) > 200 else ''}")


def _serve_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    """A `serve` option whose help text and default are those of the ServerConfig field."""
    from searchr1.retrieval.server import ServerConfig

    spec = ServerConfig.__dataclass_fields__[name]
    if spec.default is not MISSING and spec.default is not None and "default" not in kwargs:
        kwargs.update(default=spec.default, show_default=True)
    return click.option(f"--{name.replace('_', '-')}", *decls, help=spec.metadata["help"], **kwargs)


@main.command("serve")
@_serve_option(
    "index",
    "index_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@_serve_option("host")
@_serve_option("port", type=click.IntRange(0, 65535))
@_serve_option("topk", type=click.IntRange(1))
@_serve_option("mode", type=click.Choice(["bm25", "dense", "hybrid"]))
@_serve_option("device")
@_serve_option("encoder_dtype", type=click.Choice(ENCODER_DTYPES))
@_serve_option("exact", is_flag=True)
@_serve_option("max_topk", type=click.IntRange(1))
@_serve_option("max_queries", type=click.IntRange(1))
@_serve_option("max_body_bytes", type=click.IntRange(1))
@_serve_option("body_timeout_s", type=click.FloatRange(0, min_open=True))
@_serve_option("max_batch", type=click.IntRange(1))
@_serve_option("max_wait_ms", type=click.FloatRange(0, 10_000))
@_serve_option("allow_empty_queries", is_flag=True)
@_serve_option("shutdown_timeout_s", type=click.IntRange(1))
@_serve_option("log_level", type=click.Choice(["debug", "info", "warning", "error"]))
def serve_cmd(index_dir: Path, **options: Any) -> None:
    """Serve an index over HTTP with Search-R1's API (POST /retrieve).

    Requests are {"queries": [...], "topk": 3, "return_scores": true}; the answer is
    {"result": [[{"document": {"id", "contents"}, "score"}, ...] per query]}, so
    Search-R1's trainer can use it as its search_url (http://HOST:PORT/retrieve).
    GET /health says what is served; GET /metrics is Prometheus text.

    Queries of concurrent requests are searched together in micro-batches (up to
    --max-batch queries, waiting at most --max-wait-ms for more). Bad requests get a
    4xx with {"error": "..."}. SIGTERM stops it gracefully (exit status 0).

    \b
    Example:
      searchr1 serve --index indexes/wiki-18 --port 8000
      curl -s localhost:8000/retrieve -d '{"queries": ["who wrote dune"], "topk": 3}'
    """
    from searchr1.retrieval.server import ServerConfig, serve

    with _user_errors():
        serve(ServerConfig(index=index_dir, **options))


def _rollout_options(func: FC) -> FC:
    """Options shared by eval and infer: the retriever and the rollout limits."""
    options = [
        _dir_option(
            "--model",
            "model_dir",
            "Model directory (transformers format; a checkpoint's actor/ works).",
        ),
        _dir_option(
            "--index", "index_dir", "Index directory to search in-process.", required=False
        ),
        click.option(
            "--url", help="Or a retrieval server (searchr1 serve), e.g. http://127.0.0.1:8000."
        ),
        click.option(
            "--mode",
            type=click.Choice(["bm25", "dense", "hybrid"]),
            default="bm25",
            show_default=True,
        ),
        click.option("-k", "--topk", default=3, show_default=True, help="Documents per search."),
        click.option("--max-turns", default=4, show_default=True, help="Turns that may search."),
        click.option(
            "--max-response-length", default=500, show_default=True, help="Tokens per turn."
        ),
        click.option("--device", help="cpu or cuda [default: cuda when present]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _rollout_setup(options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The engine, retriever and rollout config the shared options describe."""
    from searchr1.rollout import HFEngine, RolloutConfig

    if options["index_dir"] and options["url"]:
        raise click.UsageError("give --index or --url, not both")
    if not options["index_dir"] and not options["url"]:
        raise click.UsageError("give --index DIR or --url URL for the searches")
    retriever: Any
    if options["url"]:
        from searchr1.retrieval.client import RemoteRetriever

        retriever = RemoteRetriever(options["url"])
    else:
        from searchr1.retrieval import Retriever

        retriever = Retriever.open(
            options["index_dir"], device=options["device"], mode=options["mode"]
        )
    engine = HFEngine.from_pretrained(options["model_dir"], device=options["device"])
    config = RolloutConfig(
        max_turns=options["max_turns"],
        max_response_length=options["max_response_length"],
        topk=options["topk"],
        temperature=0.0,
    )
    return engine, retriever, config


@main.command("eval")
@_rollout_options
@click.option(
    "--data",
    "data_files",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
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
      searchr1 eval --model runs/toy/grpo/checkpoints/step_000040/actor \\
          --index runs/toy/index --data runs/toy/world/test.jsonl --max-turns 2
    """
    from searchr1.data import load_qa
    from searchr1.evaluate import evaluate

    with _user_errors():
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


@main.command("infer")
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
    import re

    from searchr1.rollout import run_rollouts, tokenize_prompts

    with _user_errors():
        engine, retriever, config = _rollout_setup(options)
        prompts = tokenize_prompts(engine.tokenizer, [question])
        result = run_rollouts(engine, retriever, prompts, config)
    styles: dict[str, dict[str, Any]] = {
        "search": {"fg": "yellow", "bold": True},
        "information": {"dim": True},
        "answer": {"fg": "green", "bold": True},
        "think": {"fg": "cyan"},
    }
    pattern = re.compile(r"(<(search|information|answer|think)>.*?</\2>)", re.DOTALL)
    for piece in pattern.split(result.responses[0]):
        match = re.match(r"<(search|information|answer|think)>", piece)
        if match:
            click.echo(click.style(piece, **styles[match.group(1)]), nl=False)
        elif piece not in styles:
            click.echo(piece, nl=False)
    stats = result.stats[0]
    click.echo(f"\n\n[{stats.turns} turns, {stats.searches} searches, answer: {stats.answer!r}]")


@main.command("demo")
@click.option("--out", default="runs/toy", show_default=True, help="Directory for everything.")
@click.option("--seed", default=0, show_default=True, help="Seed of the world and the training.")
@click.option(
    "--quick",
    is_flag=True,
    help="A shortened run (about 2.5 min): 100 entities, no copy pre-training, drills or "
    "reading worlds, 300 SFT and 16 GRPO steps; RL raises the search rate, not yet EM.",
)
@click.option(
    "--copy-steps",
    type=click.IntRange(0),
    help="Copy pre-training steps at most before the warm start; it stops once the model "
    "copies (0: none) [default: 1200].",
)
@click.option("--sft-steps", type=click.IntRange(1), help="Warm-start steps [default: 600].")
@click.option(
    "--drills",
    type=click.IntRange(0),
    help="Name-copying drills added to the warm start's demonstrations [default: 1000].",
)
@click.option(
    "--reading-worlds",
    type=click.IntRange(0),
    help="Other toy worlds whose demonstrations join the warm start's, so that the model "
    "learns to read what it finds rather than this world's facts [default: 1].",
)
@click.option("--rl-steps", type=click.IntRange(1), help="GRPO steps [default: 120].")
@click.option(
    "--two-hop",
    "two_hop",
    type=click.FloatRange(0, 1),
    help="Share of 2-hop questions (two searches each) [default: 0].",
)
def demo_cmd(
    out: str,
    seed: int,
    quick: bool,
    copy_steps: int | None,
    sft_steps: int | None,
    drills: int | None,
    reading_worlds: int | None,
    rl_steps: int | None,
    two_hop: float | None,
) -> None:
    """Run the embedded default end to end on the CPU (16-19 minutes on 2 cores).

    Builds a toy world whose answers only search can find, indexes it, makes a tiny
    Qwen2 model, pre-trains it to copy random token strings, warm-starts it by SFT on
    demonstrations of which only half search (this world's and another's, plus drills
    in writing new names), then trains it with GRPO, and prints the before/after table
    (EM, search rate, turns, valid actions) on held-out questions, with a plot of the
    training curves.
    Everything lands in --out; a re-run with the same settings reuses the warm start.
    """
    from dataclasses import replace

    from searchr1.demo import DemoConfig, run_demo
    from searchr1.demo import quick as shorten

    config = DemoConfig(out=out, seed=seed)
    if quick:
        config = shorten(config)
    given: dict[str, Any] = {
        "copy_steps": copy_steps,
        "sft_steps": sft_steps,
        "drills": drills,
        "reading_worlds": reading_worlds,
        "rl_steps": rl_steps,
        "two_hop_fraction": two_hop,
    }
    config = replace(config, **{k: v for k, v in given.items() if v is not None})
    with _user_errors():
        run_demo(config, log=click.echo)


@main.command("train")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run config (YAML; see configs/).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.FIELD=VALUE",
    help="Change one field of the config (repeatable), e.g. --set rl.kl_coef=0.01.",
)
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
    OUTPUT_DIR/metrics.jsonl (and TensorBoard or wandb when installed); checkpoints
    to OUTPUT_DIR/checkpoints/step_N, each with a loadable model in actor/.

    \b
    Examples:
      searchr1 train --config configs/toy.yaml
      searchr1 train --config configs/qwen2.5-3b-grpo.yaml --set run.total_steps=200
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

    with _user_errors():
        last = train(config, resume=resume)
    click.echo(f"done: the last checkpoint is {last}")


def _field_option(config: Any, name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    """An option for field ``name`` of the dataclass ``config``, with its help text and
    default; ``decls``: the flags (the value goes to the parameter ``name``)."""
    spec = config.__dataclass_fields__[name]
    kwargs.setdefault("help", spec.metadata["help"])
    return click.option(*decls, name, default=spec.default, show_default=True, **kwargs)


def _world_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    from searchr1.data.toyworld import WorldConfig

    return _field_option(WorldConfig, name, *decls, **kwargs)


def _demo_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    from searchr1.demo import DemoConfig

    return _field_option(DemoConfig, name, *decls, **kwargs)


def _sft_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    from searchr1.sft import SFTConfig

    return _field_option(SFTConfig, name, *decls, **kwargs)


@main.command("world")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the world into (made if needed; its files are replaced).",
)
@_world_option("seed", "--seed", type=int)
@_world_option("n_people", "--people", type=click.IntRange(2))
@_world_option("n_towns", "--towns", type=click.IntRange(2))
@_world_option("n_orgs", "--orgs", type=click.IntRange(1))
@_world_option("questions_per_entity", "--questions-per-entity", type=click.IntRange(1))
@_world_option("two_hop_fraction", "--two-hop-fraction", type=click.FloatRange(0, 1))
@_world_option("test_fraction", "--test-fraction", type=click.FloatRange(0, 1))
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
    from searchr1.data.toyworld import WorldConfig, build_world, write_world

    try:
        config = WorldConfig(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    world = build_world(config)
    with _user_errors():
        paths = write_world(world, out)
    train, test = world.split("train"), world.split("test")
    two_hop = sum(len(q.hops) == 2 for q in world.all_questions)
    click.echo(
        f"wrote a toy world to {out}: {len(world.entities)} passages "
        f"({paths['corpus'].name}), {len(train)} train and {len(test)} test questions "
        f"({two_hop} of them two-hop)"
    )


@main.command("prepare")
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
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

    with _user_errors():
        report = prepare(inputs, out, data_source=data_source, limit=limit, dedupe=dedupe)
    notes = []
    if report.duplicates:
        notes.append(f"{report.duplicates} duplicate questions dropped")
    if report.renamed_ids:
        notes.append(f"{report.renamed_ids} repeated ids renamed")
    extra = f" ({', '.join(notes)})" if notes else ""
    click.echo(f"wrote {report.written} of {report.read} rows read to {out}{extra}")


def _model_option(name: str, *decls: str, **kwargs: Any) -> Callable[[FC], FC]:
    from searchr1.models import TinyModelConfig

    return _field_option(TinyModelConfig, name, *decls, **kwargs)


#: The fields of a JSONL row whose text a tokenizer learns (QA rows and corpus rows).
TEXT_FIELDS = ("question", "contents", "title", "text")


def _texts_of(path: Path) -> Iterator[str]:
    """The text in ``path``: the string fields (question, contents, title, text) of
    each JSONL row for a ``.jsonl`` file, else each non-empty line."""
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                yield line.rstrip("\n")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"{path}:{line_no}: not valid JSON: {exc.msg}") from exc
            if isinstance(row, dict):
                yield from (row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str))


@main.command("init-model")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to save the model and tokenizer in.",
)
@_dir_option(
    "--world",
    "world_dir",
    "Train the tokenizer on a toy world's passages and questions (`searchr1 world`).",
    required=False,
)
@click.option(
    "--text",
    "text_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Train the tokenizer on this file (repeatable): JSONL rows' text fields, or lines.",
)
@_model_option("vocab_size", "--vocab-size", type=click.IntRange(300))
@_model_option("hidden_size", "--hidden-size", type=click.IntRange(1))
@click.option("--intermediate-size", type=click.IntRange(1), help="MLP width [default: 3x hidden].")
@_model_option("num_layers", "--layers", type=click.IntRange(1))
@_model_option("num_heads", "--heads", type=click.IntRange(1))
@click.option(
    "--kv-heads", type=click.IntRange(1), help="Key/value heads (GQA) [default: --heads]."
)
@_model_option("seed", "--seed", type=int)
@click.option(
    "--copy-steps",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Then pre-train it up to this many steps to copy random token strings, stopping "
    "once it copies (the demo allows 1200: fine-tuning then generalises to names it never "
    "wrote).",
)
@click.option("--overwrite", is_flag=True, help="Replace a model already saved in --out.")
def init_model_cmd(
    out: Path,
    world_dir: Path | None,
    text_files: tuple[Path, ...],
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int | None,
    num_layers: int,
    num_heads: int,
    kv_heads: int | None,
    seed: int,
    copy_steps: int,
    overwrite: bool,
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
    from searchr1.models import TinyModelConfig, init_model

    if world_dir is None and not text_files:
        raise click.UsageError("give the text to train the tokenizer on: --world and/or --text")
    if (out / "config.json").exists() and not overwrite:
        raise click.UsageError(f"{out} already holds a model; pass --overwrite to replace it")
    try:
        config = TinyModelConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 3 * hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=kv_heads,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    files = list(text_files)
    if world_dir is not None:
        files += [world_dir / f"{name}.jsonl" for name in ("corpus", "train", "test")]
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    with _user_errors():
        texts = [text for path in files for text in _texts_of(path)]
        init_model(out, texts, config)

    model = AutoModelForCausalLM.from_pretrained(str(out))
    what = "Qwen2 model"
    if copy_steps:
        from transformers import AutoTokenizer

        from searchr1.sft import CopyConfig, copy_pretrain, progress_bar

        with progress_bar(copy_steps, "copy", "accuracy") as on_step:
            history = copy_pretrain(
                model,
                AutoTokenizer.from_pretrained(out),
                CopyConfig(steps=copy_steps, seed=seed),
                on_step=on_step,
            )
        model.save_pretrained(out)
        what += f" pre-trained to copy ({len(history)} steps, accuracy {history[-1][1]:.2f})"
    click.echo(
        f"saved a {what} with {model.num_parameters():,} parameters "
        f"(vocabulary {model.config.vocab_size}) to {out}"
    )


@main.command("sft")
@_dir_option("--model", "model_dir", "Model to start from (e.g. `searchr1 init-model`'s).")
@_dir_option(
    "--world",
    "world_dir",
    "Toy world whose training questions are demonstrated (`searchr1 world`).",
)
@_dir_option(
    "--index",
    "index_dir",
    "Index of the world's corpus: searching demonstrations show what it returns.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to save the fine-tuned model in.",
)
@_sft_option("steps", "--steps", type=click.IntRange(1))
@_sft_option("lr", "--lr", type=click.FloatRange(0, min_open=True))
@_sft_option("batch_size", "--batch-size", type=click.IntRange(1))
@_demo_option("search_fraction", "--search-fraction", type=click.FloatRange(0, 1))
@_demo_option("drills", "--drills", type=click.IntRange(0))
@_demo_option("reading_worlds", "--reading-worlds", type=click.IntRange(0))
@_demo_option("topk", "--topk", type=click.IntRange(1))
@_demo_option(
    "seed",
    "--seed",
    type=int,
    help="Seed of which demonstrations search, of the drills and of the shuffling.",
)
@click.option("--overwrite", is_flag=True, help="Replace a model already saved in --out.")
def sft_cmd(
    model_dir: Path,
    world_dir: Path,
    index_dir: Path,
    out: Path,
    steps: int,
    lr: float,
    batch_size: int,
    search_fraction: float,
    drills: int,
    reading_worlds: int,
    topk: int,
    seed: int,
    overwrite: bool,
) -> None:
    """Warm-start a model by supervised fine-tuning on a toy world's demonstrations.

    One demonstration per training question: a --search-fraction of them think,
    search, read what the index returns and answer right; the rest answer at once
    with a wrong guess, so that RL has something to fix. --drills more teach the
    model to write new names ("<think>I remember that NAME"), and the demonstrations
    of --reading-worlds other worlds (of the same shape, never seen again) teach it to
    read what it finds rather than learn this world's facts. The loss is on the
    model's own tokens only: retrieved documents are masked, as in RL.

    \b
    Example:
      searchr1 init-model --world runs/toy/world --out runs/toy/init-model --copy-steps 1200
      searchr1 sft --model runs/toy/init-model --world runs/toy/world \\
          --index runs/toy/index --out runs/toy/sft-model
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchr1.data.toyworld import read_world, warm_start_trajectories
    from searchr1.retrieval import Retriever
    from searchr1.sft import SFTConfig, progress_bar, sft

    if (out / "config.json").exists() and not overwrite:
        raise click.UsageError(f"{out} already holds a model; pass --overwrite to replace it")
    with _user_errors():
        world = read_world(world_dir)
        retriever = Retriever.open(index_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
        trajectories = warm_start_trajectories(
            world,
            retriever,
            tokenizer,
            search_fraction,
            drills,
            seed=seed,
            top_k=topk,
            reading_worlds=reading_worlds,
        )
        with progress_bar(steps, "sft", "loss") as on_step:
            losses = sft(
                model,
                trajectories,
                SFTConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed),
                pad_id=int(tokenizer.pad_token_id),
                on_step=on_step,
            )
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    # Searching demonstrations are those with an observation; drills have none.
    searching = sum(any(not seg.generated for seg in t.segments) for t in trajectories)
    click.echo(
        f"fine-tuned on {len(trajectories) - drills} demonstrations ({searching} searching) "
        f"of this world and {reading_worlds} other(s), and {drills} drills, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {out}"
    )


if __name__ == "__main__":
    main()
