"""The searchr1 command line."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

import searchr1
from searchr1.cli import main


def test_version_and_help() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"searchr1, version {searchr1.__version__}"
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "parse-action" in result.output and "Search-R1" in result.output


def test_parse_action_command() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["parse-action", "<think>x</think><search> a b </search>"])
    assert (result.exit_code, result.output) == (0, "search\ta b\n")
    result = runner.invoke(main, ["parse-action"], input="nothing here")
    assert (result.exit_code, result.output) == (0, "invalid\n"), result.exception


def test_module_entry_point() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "searchr1", "--version"], capture_output=True, text=True, check=True
    )
    assert searchr1.__version__ in done.stdout
