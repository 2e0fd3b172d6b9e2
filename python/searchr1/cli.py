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

FC = TypeVar("FC", bound=Callable[..., Any])


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turns searchr1's own errors (and missing files) into a one-line message, exit 1."""
    try:
        yield
    except (SearchR1Error, OSError) as e:
        raise click.ClickException(str(e)) from e


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
    type=click.Choice(["f32", "f16"]),
    help="How dense vectors are stored.",
)
@click.option("--hnsw", is_flag=True, help="Also build an HNSW graph for fast approximate search.")
@click.option(
    "--hnsw-dtype",
    default="f16",
    show_default=True,
    type=click.Choice(["f32", "f16", "i8"]),
    help="How the HNSW graph stores its vectors.",
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
@click.option(
    "--index",
    "index_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Index directory built by `searchr1 index`.",
)
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
        retriever = Retriever.open(index_dir, device=device)
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


if __name__ == "__main__":
    main()
