"""The ``searchr1`` command line: a click group whose commands live by concern in
:mod:`~searchr1.cli.retrieval`, :mod:`~searchr1.cli.training` and
:mod:`~searchr1.cli.toy`. Each command parses its options, calls the library and
prints what it did."""

from __future__ import annotations

import click

from searchr1 import __version__
from searchr1.cli import retrieval, toy, training


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="searchr1")
def main() -> None:
    """searchr1: train language models with RL to reason and search (Search-R1).

    Ships its own fast retriever (BM25 + dense, in Rust). Run `searchr1 COMMAND --help`
    for the options of each command.
    """


for command in (*retrieval.COMMANDS, retrieval.verify_cmd, *training.COMMANDS, *toy.COMMANDS):
    main.add_command(command)

__all__ = ["main"]
