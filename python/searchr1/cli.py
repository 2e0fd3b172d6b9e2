"""The ``searchr1`` command line. Subcommands join the :data:`main` group."""

from __future__ import annotations

import sys

import click

from searchr1 import __version__


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


if __name__ == "__main__":
    main()
