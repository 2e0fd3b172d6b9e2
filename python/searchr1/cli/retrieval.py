"""The retrieval commands: index, search, serve, and parse-action."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from searchr1.cli._common import EXISTING_FILE, FC, dir_option, field_option, user_errors
from searchr1.retrieval.encoder import DTYPES as ENCODER_DTYPES
from searchr1.retrieval.index import MODES, VECTOR_DTYPES
from searchr1.retrieval.server import LOG_LEVELS


@click.command("parse-action")
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


def _core_option(name: str, *decls: str, help: str, **kwargs: Any) -> Callable[[FC], FC]:
    """An option of ``index`` left None unless given, so that the Rust core's default
    (shown from ``_core.DEFAULTS``) applies."""
    from searchr1._core import DEFAULTS

    shown = DEFAULTS[name]  # type: ignore[literal-required]
    if isinstance(shown, bool):
        shown = decls[0].split("/")[0 if shown else 1]
    return click.option(*decls, name, default=None, help=f"{help} [default: {shown}]", **kwargs)


@click.command("index")
@click.option(
    "--corpus",
    required=True,
    type=EXISTING_FILE,
    help='JSONL corpus (plain or .gz): {"id", "contents"} or {"id", "title", "text"} rows.',
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New index directory: absent or empty (or an index to replace, with --overwrite).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace --out when it holds a searchr1 index or the leftover of an interrupted "
    "build; any other non-empty directory is refused.",
)
@click.option("--bm25/--no-bm25", default=True, show_default=True, help="Build the BM25 index.")
@click.option(
    "--dense-model",
    type=click.Path(path_type=Path),
    help="transformers model directory (recorded by its absolute path), or the name of a "
    "model in the local Hugging Face cache: also build dense vectors (e.g. e5-base-v2). "
    "Nothing is downloaded. With --import-faiss: the model that made the imported "
    "vectors, which queries will be encoded with (it need not be at hand to import) "
    "[default there: intfloat/e5-base-v2, with its 'query: ' prefix and mean pooling].",
)
@click.option(
    "--import-faiss",
    type=EXISTING_FILE,
    metavar="FILE",
    help="Take the dense vectors from this faiss index file instead of encoding the "
    "passages (Search-R1's e5_Flat.index, say): an IndexFlatIP, an IndexFlatL2, or the "
    "vectors an IndexHNSWFlat stores (its graph is not read). Vector i must be passage i "
    "of --corpus; the counts, dimensions, type and length of the file are checked before "
    "anything is built. The file is streamed, never held in memory. Dense search ranks by "
    "inner product: an IndexFlatL2 must hold vectors of one length (normalised ones), "
    "whose inner products rank as their L2 distances do; otherwise the import stops "
    "rather than change the rankings. Hit scores are inner products, not distances.",
)
@_core_option(
    "dtype",
    "--dtype",
    type=click.Choice(VECTOR_DTYPES),
    help="How dense vectors are stored: f16 halves the size, i8 (a scale per row) "
    "quarters it; exact search then scores the stored, rounded values.",
)
@click.option("--hnsw", is_flag=True, help="Also build an HNSW graph for fast approximate search.")
@_core_option(
    "hnsw_dtype",
    "--hnsw-dtype",
    type=click.Choice(VECTOR_DTYPES),
    help="How the HNSW graph (usearch's) stores its copy of the vectors; the walk's best "
    "candidates are re-scored exactly against the stored vectors. i8 is a quarter of "
    "f32's memory to walk.",
)
@click.option("--batch-size", default=64, show_default=True, help="Passages encoded at once.")
@click.option(
    "--device",
    help="Encoder device (cpu, cuda) [default: cuda when present; under torchrun, each "
    "rank's cuda:LOCAL_RANK].",
)
@click.option(
    "--encoder-dtype",
    type=click.Choice(ENCODER_DTYPES),
    help="What the passage encoder computes in [default: bfloat16 on a GPU, float32 on a CPU].",
)
@click.option(
    "--devices",
    metavar="LIST",
    help="Encode on several devices at once, one process each: cuda:0,cuda:1 (or 4 for "
    "the first four GPUs; cpu,cpu works too). Under torchrun there is no need: each rank "
    "encodes a share on its own GPU. Ranks write shards into OUT.shards/, which are "
    "committed into the index in corpus order at the end; after a crash the same command "
    "encodes only the shards that are missing. The progress bar shows the rate and the "
    "time left over all ranks.",
)
@_core_option("k1", "--k1", type=float, help="BM25 term-frequency saturation.")
@_core_option("b", "--b", type=float, help="BM25 length normalisation.")
@_core_option("stem", "--stem/--no-stem", help="Porter2 stemming.")
@_core_option("stopwords", "--stopwords/--no-stopwords", help="Drop English stop words.")
@click.option("--threads", type=click.IntRange(1, 8), help="Indexing threads [default: all cores].")
@_core_option("memory_mb", "--memory-mb", type=click.IntRange(16), help="Indexing memory.")
@click.option(
    "--skip-bad", is_flag=True, help="Skip (and count) malformed lines instead of stopping."
)
@click.option(
    "--preflight/--no-preflight",
    default=True,
    show_default=True,
    help="Print the disk and memory the build will need (estimated from the corpus's "
    "size, the vectors' and the graph's) and refuse to start when the disk of --out "
    "has less room free.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no preflight line.")
def index_cmd(corpus: Path, out: Path, quiet: bool, preflight: bool, **options: Any) -> None:
    """Build a BM25 (and optionally dense) index of a passage corpus.

    The corpus is streamed, never held in memory whole. A malformed line stops the build
    with the file, line number and problem (or is skipped with --skip-bad); a repeated id
    is always an error, and so is a corpus with no passages. Ids are strings (whole
    numbers are read as their text). Scores follow Lucene's BM25 with pyserini's
    defaults; equal scores rank in corpus order. With --dense-model, passages are also
    encoded (mean or CLS pooling, e5 prefixes when the model is an e5) and searched
    exactly by inner product, or through an HNSW graph with --hnsw. With --import-faiss
    the vectors come from a faiss index instead (see docs/wikipedia.md for Search-R1's
    wiki-18 corpus and e5 index).

    The manifest, written after each stage with checksums of the files, says whether
    the build finished: an index killed mid-build does not open, and --overwrite
    rebuilds it. Ctrl-C stops a build promptly and removes what it wrote.
    `searchr1 verify` checks every byte of an index later. Before it starts, the build
    prints the disk and memory it will need, and stops when the disk lacks the room.

    \b
    Example:
      searchr1 index --corpus wiki-18.jsonl.gz --out indexes/wiki-18
      searchr1 index --corpus wiki-18.jsonl.gz --out indexes/wiki-18-e5 \\
        --dense-model models/e5-base-v2 --dtype f16 --hnsw
      searchr1 index --corpus wiki-18.jsonl --out indexes/wiki-18-e5 \\
        --import-faiss e5_Flat.index --dense-model models/e5-base-v2 --dtype f16
    """
    from searchr1.retrieval import Retriever

    if preflight:
        _preflight(corpus, out, quiet, options)
    started = time.perf_counter()
    with user_errors():
        retriever = Retriever.build(
            corpus, out, progress=not quiet and sys.stderr.isatty(), **options
        )
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 reports for all
    info = retriever.manifest["corpus"]
    seconds = time.perf_counter() - started
    skipped = f", {info['skipped_lines']} bad lines skipped" if info["skipped_lines"] else ""
    click.echo(
        f"indexed {info['passages']} passages into {out} in {seconds:.1f}s "
        f"({info['passages'] / max(seconds, 1e-9):.0f}/s){skipped}"
    )


def _preflight(corpus: Path, out: Path, quiet: bool, options: dict[str, Any]) -> None:
    """Prints what `index` will need (on standard error, rank 0 only) and stops it,
    before anything is written, when the disk lacks the room."""
    from searchr1.retrieval import preflight

    names = ["bm25", "dense_model", "import_faiss", "dtype", "hnsw", "hnsw_dtype"]
    names += ["memory_mb", "devices", "overwrite"]
    with user_errors():
        report = preflight.check(corpus, out, **{k: options[k] for k in names})
    if not quiet and os.environ.get("RANK", "0") == "0":
        click.echo(report.line(), err=True)
    if not report.fits:
        raise click.ClickException(report.refusal())


@click.command("search")
@dir_option("--index", "index_dir", "Index directory built by `searchr1 index`.")
@click.option(
    "-k", "k", default=3, show_default=True, type=click.IntRange(0), help="Hits per query."
)
@click.option(
    "--mode",
    default="bm25",
    show_default=True,
    type=click.Choice(MODES),
    help="BM25, dense (inner product; through the HNSW graph when the index has one, "
    "unless --exact), or hybrid (reciprocal rank fusion).",
)
@click.option(
    "--device",
    help="Device of the query encoder for dense and hybrid search. A CUDA device "
    "(cuda, cuda:1, or a list such as cuda:0,cuda:1) also searches the vectors there, "
    "exactly, as f16 matmuls ('cuda' spreads them over as many GPUs as they need).",
)
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

    with user_errors():
        retriever = Retriever.open(index_dir, device=device, encoder_dtype=encoder_dtype)
        results = retriever.search(list(queries), k=k, mode=mode, exact=exact)
    if as_json:
        from searchr1.retrieval.wire import to_document

        body = {"result": [[to_document(h) for h in row] for row in results]}
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
    from searchr1.retrieval.server import ServerConfig

    return field_option(ServerConfig, name, *decls, **kwargs)


@click.command("serve")
@_serve_option(
    "index",
    "index_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@_serve_option("host")
@_serve_option("port", type=click.IntRange(0, 65535))
@_serve_option("topk", type=click.IntRange(1))
@_serve_option("mode", type=click.Choice(MODES))
@_serve_option("device")
@_serve_option("encoder_dtype", type=click.Choice(ENCODER_DTYPES))
@_serve_option("exact", is_flag=True)
@_serve_option("max_topk", type=click.IntRange(1))
@_serve_option("max_queries", type=click.IntRange(1))
@_serve_option("max_hits", type=click.IntRange(1))
@_serve_option("max_query_chars", type=click.IntRange(1))
@_serve_option("max_body_bytes", type=click.IntRange(1))
@_serve_option("max_response_bytes", type=click.IntRange(1))
@_serve_option("body_timeout_s", type=click.FloatRange(0, min_open=True))
@_serve_option("header_timeout_s", type=click.FloatRange(0, min_open=True))
@_serve_option("idle_timeout_s", type=click.FloatRange(0, min_open=True))
@_serve_option("max_connections", type=click.IntRange(1))
@_serve_option(
    "allowed_hosts", "--allowed-host", multiple=True, default=(), show_default=False, metavar="NAME"
)
@_serve_option("max_batch", type=click.IntRange(1))
@_serve_option("max_wait_ms", type=click.FloatRange(0, 10_000))
@_serve_option("allow_empty_queries", is_flag=True)
@_serve_option("shutdown_timeout_s", type=click.IntRange(1))
@_serve_option("log_level", type=click.Choice(LOG_LEVELS))
def serve_cmd(index_dir: Path, **options: Any) -> None:
    """Serve an index over HTTP with Search-R1's API (POST /retrieve).

    Requests are {"queries": [...], "topk": 3, "return_scores": true}; the answer is
    {"result": [[{"document": {"id", "contents"}, "score"}, ...] per query]}, so
    Search-R1's trainer can use it as its search_url (http://HOST:PORT/retrieve).
    GET /health says what is served; GET /metrics is Prometheus text.

    Queries of concurrent requests are searched together in micro-batches (up to
    --max-batch queries, waiting at most --max-wait-ms for more). Bad requests get a
    4xx with {"error": "..."}: each request's work is bounded (--max-queries,
    --max-hits, --max-query-chars, --max-response-bytes), and slow or idle connections
    are closed (--header-timeout-s, --idle-timeout-s, --max-connections). Only
    application/json bodies are read. SIGTERM stops it gracefully (exit status 0).

    \b
    Example:
      searchr1 serve --index indexes/wiki-18 --port 8000
      curl -s localhost:8000/retrieve -H 'Content-Type: application/json' \\
        -d '{"queries": ["who wrote dune"], "topk": 3}'
    """
    from searchr1.retrieval.server import ServerConfig, serve

    with user_errors():
        serve(ServerConfig(index=index_dir, **options))


@click.command("verify")
@click.argument(
    "index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
def verify_cmd(index_dir: Path) -> None:
    """Check every file of INDEX against the checksums its build recorded.

    Opening an index (search, serve) checks each file's size and its first and last
    4 KiB only; this reads every byte, which takes a while for a large index. Exit
    status 0 when the index is intact; 1, naming each damaged file, when it is not, or
    when its build was interrupted. Rebuild a damaged index with
    `searchr1 index --overwrite`.

    \b
    Example:
      searchr1 verify indexes/wiki-18
    """
    from searchr1.retrieval.index import verify

    with user_errors():
        report = verify(index_dir)
    if report.problems:
        lines = "\n".join(f"  {p}" for p in report.problems)
        raise click.ClickException(
            f"{index_dir} is damaged:\n{lines}\nRebuild it with `searchr1 index --overwrite`."
        )
    if not report.recorded:
        click.echo(
            f"{index_dir}: opens, but records no checksums (built by an older searchr1); "
            "rebuild it to have them"
        )
        return
    click.echo(f"{index_dir}: intact ({report.files} files, {report.bytes:,} bytes checked)")


COMMANDS = (parse_action_cmd, index_cmd, search_cmd, serve_cmd)
