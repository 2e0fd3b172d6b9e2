"""The searchr1 command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_index_options_left_out_take_the_core_defaults(tmp_path: Path) -> None:
    """`searchr1 index` passes only what it was given; the rest is the Rust core's
    default, which its help shows from _core.DEFAULTS."""
    import json

    from searchr1._core import DEFAULTS

    corpus = tmp_path / "c.jsonl"
    rows = [{"id": "1", "contents": '"A"\nthe cats ran'}, {"id": "2", "contents": '"B"\ndogs'}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()
    for name, args, expected in (
        ("plain", [], {k: DEFAULTS[k] for k in ("k1", "b", "stem", "stopwords")}),  # type: ignore[literal-required]
        ("given", ["--k1", "1.2", "--no-stem"], {"k1": 1.2, "b": DEFAULTS["b"], "stem": False}),
    ):
        out = tmp_path / name
        result = runner.invoke(main, ["index", "--corpus", str(corpus), "--out", str(out), *args])
        assert result.exit_code == 0, result.output
        bm25 = json.loads((out / "manifest.json").read_text())["bm25"]
        assert {k: bm25[k] for k in expected} == expected
    shown = runner.invoke(main, ["index", "--help"]).output
    assert f"[default: {DEFAULTS['k1']}]" in shown and "[default: --stem]" in shown
