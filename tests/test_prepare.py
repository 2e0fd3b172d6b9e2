"""`searchr1 prepare`: FlashRAG and Search-R1 QA files into rows that load_qa reads."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from searchr1.cli import main
from searchr1.data import load_qa
from searchr1.data.prepare import convert_row, prepare, read_rows
from searchr1.errors import InputError
from searchr1.rollout.prompt import build_prompt

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def search_r1_row(
    question: str, answers: list[str], index: int, source: str = "nq"
) -> dict[str, Any]:
    """A row as Search-R1's scripts/data_process/nq_search.py writes it (FlashRAG's
    columns kept, its own added)."""
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return {
        "id": f"train_{index}",
        "question": question,
        "golden_answers": answers,
        "data_source": source,
        "prompt": [{"role": "user", "content": build_prompt(question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {"split": "train", "index": index},
    }


FLASHRAG = [
    {"id": "train_0", "question": "who wrote dune", "golden_answers": ["Frank Herbert"]},
    {"id": "train_1", "question": "capital of peru", "golden_answers": ["Lima", "Lima, Peru"]},
]


def test_flashrag_rows_load_unchanged(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "nq.jsonl", FLASHRAG)
    report = prepare(src, tmp_path / "out.jsonl")
    assert (report.read, report.written, report.duplicates, report.renamed_ids) == (2, 2, 0, 0)
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {**FLASHRAG[0], "data_source": "nq"},
        {**FLASHRAG[1], "data_source": "nq"},
    ]
    loaded = load_qa(tmp_path / "out.jsonl")
    assert loaded[1].golden_answers == ("Lima", "Lima, Peru") and loaded[1].data_source == "nq"


def test_search_r1_layout_keeps_its_data_source(tmp_path: Path) -> None:
    rows = [search_r1_row("who wrote dune", ["Frank Herbert"], 0)]
    rows.append(search_r1_row("which river flows through Bonn", ["Rhine"], 1, "hotpotqa"))
    out = tmp_path / "out.jsonl"
    prepare(write_jsonl(tmp_path / "train.jsonl", rows), out)
    assert read_jsonl(out) == [
        {
            "id": "train_0",
            "question": "who wrote dune?",
            "golden_answers": ["Frank Herbert"],
            "data_source": "nq",
        },
        {
            "id": "train_1",
            "question": "which river flows through Bonn?",
            "golden_answers": ["Rhine"],
            "data_source": "hotpotqa",
        },
    ]


def test_search_r1_nested_fields_alone_are_enough(tmp_path: Path) -> None:
    """Only Search-R1's own columns: the question from the prompt, the answers from
    reward_model.ground_truth.target, the id from extra_info."""
    full = search_r1_row("  who wrote dune ", ["Frank Herbert", "Herbert"], 7)
    nested = {k: full[k] for k in ("data_source", "prompt", "reward_model", "extra_info")}
    row = convert_row(nested, "x:1", "fallback")
    assert row == {
        "id": "train_7",
        "question": "who wrote dune?",
        "golden_answers": ["Frank Herbert", "Herbert"],
        "data_source": "nq",
    }
    # A prompt given as plain text, an answer given as one string, no id at all.
    text_prompt = {
        "prompt": build_prompt("capital of peru"),
        "reward_model": {"ground_truth": "Lima"},
    }
    assert convert_row(text_prompt, "x:2", "fallback") == {
        "id": "",
        "question": "capital of peru?",
        "golden_answers": ["Lima"],
        "data_source": "fallback",
    }
    # load_qa reads such rows as they are; a row without an id is named by its place.
    src = write_jsonl(tmp_path / "searchr1.jsonl", [nested, text_prompt])
    assert [(q.id, q.question, q.golden_answers, q.data_source) for q in load_qa(src)] == [
        ("train_7", "who wrote dune?", ("Frank Herbert", "Herbert"), "nq"),
        (f"{src}:2", "capital of peru?", ("Lima",), "searchr1"),
    ]


def test_answers_are_cleaned(tmp_path: Path) -> None:
    row = convert_row({"question": "q", "golden_answers": [" a ", "a", "", 1912]}, "x:1", "s")
    assert row["golden_answers"] == ["a", "1912"]
    assert convert_row({"question": "q", "answer": 3}, "x:1", "s")["golden_answers"] == ["3"]
    assert convert_row({"question": "q", "answers": ["b"]}, "x:1", "s")["golden_answers"] == ["b"]


def test_override_limit_and_dedupe(tmp_path: Path) -> None:
    rows = [
        {"question": "Who wrote Dune?", "golden_answers": ["Frank Herbert"]},
        {"question": "who  wrote dune", "golden_answers": ["Herbert"]},
        {"question": "capital of peru", "golden_answers": ["Lima"]},
        {"question": "capital of chile", "golden_answers": ["Santiago"]},
    ]
    src = write_jsonl(tmp_path / "mixed.jsonl", rows)
    out = tmp_path / "out.jsonl"
    report = prepare(src, out, data_source="mine", dedupe=True, limit=2)
    assert (report.read, report.written, report.duplicates) == (3, 2, 1)
    got = read_jsonl(out)
    assert [r["question"] for r in got] == ["Who wrote Dune?", "capital of peru"]
    assert {r["data_source"] for r in got} == {"mine"}
    # Rows without ids are numbered in the output.
    assert [r["id"] for r in got] == ["mine_0", "mine_1"]
    assert prepare(src, out).written == 4


def test_repeated_ids_across_files_get_their_source(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "nq.jsonl", FLASHRAG)
    b = write_jsonl(tmp_path / "hotpotqa.jsonl", [{**FLASHRAG[0], "question": "other"}] * 3)
    report = prepare([a, b], tmp_path / "out.jsonl")
    ids = [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")]
    assert ids == [
        "train_0",
        "train_1",
        "hotpotqa_train_0",
        "hotpotqa_train_0_2",
        "hotpotqa_train_0_3",
    ]
    assert report.renamed_ids == 3


def test_gzip_and_json_array_inputs(tmp_path: Path) -> None:
    gz = tmp_path / "nq.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in FLASHRAG)
    array = tmp_path / "triviaqa.json"
    array.write_text(json.dumps(FLASHRAG, indent=1))
    out = tmp_path / "out.jsonl"
    prepare([gz, array], out)
    got = read_jsonl(out)
    assert [r["data_source"] for r in got] == ["nq", "nq", "triviaqa", "triviaqa"]
    assert [where for where, _ in read_rows(array)] == [f"{array} row 1", f"{array} row 2"]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected an object"),
        ('{"golden_answers": ["x"]}', "'question' must be a non-empty string"),
        ('{"question": "  ", "golden_answers": ["x"]}', "'question' must be a non-empty string"),
        ('{"question": "q"}', "no answers"),
        ('{"question": "q", "golden_answers": []}', "holds no non-empty answer"),
        ('{"question": "q", "golden_answers": [["nested"]]}', "not a string"),
        ('{"question": "q", "golden_answers": {"a": 1}}', "a string or a list of strings"),
        ('{"question": "q", "golden_answers": ["x"], "id": [1]}', "'id' must be"),
        ('{"prompt": "no marker here", "golden_answers": ["x"]}', "no 'Question:'"),
        ('{"prompt": [{"role": "user"}], "golden_answers": ["x"]}', "no user message text"),
        ('{"question": "q", "golden_answers": ["x"], "data_source": 3}', "'data_source'"),
    ],
)
def test_a_bad_row_names_file_and_line_and_writes_nothing(
    tmp_path: Path, line: str, problem: str
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(FLASHRAG[0]) + "\n\n" + line + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("old contents\n")
    with pytest.raises(InputError, match=f"^{src}:3: .*{problem}"):
        prepare(src, out)
    assert out.read_text() == "old contents\n"
    with pytest.raises(InputError, match=f"^{src}:3: .*{problem}"):
        load_qa(src)  # eval reads rows the same way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "out.jsonl"]


def test_inputs_are_checked(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "nq.jsonl", FLASHRAG)
    with pytest.raises(InputError, match="overwrite an input"):
        prepare(src, src)
    with pytest.raises(InputError, match="no input files"):
        prepare([], tmp_path / "out.jsonl")
    bad_array = tmp_path / "bad.json"
    bad_array.write_text('[{"question": "q",\n "golden_answers": ["x"]},\n oops]')
    with pytest.raises(InputError, match=f"^{bad_array}:3: not valid JSON"):
        prepare(bad_array, tmp_path / "out.jsonl")


@pytest.mark.skipif(HAS_PYARROW, reason="pyarrow is installed")
def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    src = tmp_path / "train.parquet"
    src.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r"pip install pyarrow"):
        prepare(src, tmp_path / "out.jsonl")
    result = CliRunner().invoke(main, ["prepare", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "pip install pyarrow" in result.output


def test_parquet_as_search_r1_writes_it(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rows = [search_r1_row(f"question {i}", [f"answer {i}"], i) for i in range(5)]
    parquet.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    out = tmp_path / "out.jsonl"
    assert prepare(tmp_path / "train.parquet", out, limit=3).written == 3
    assert [q.golden_answers for q in load_qa(out)] == [("answer 0",), ("answer 1",), ("answer 2",)]


def test_prepare_command(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "nq.jsonl", [*FLASHRAG, FLASHRAG[0]])
    b = write_jsonl(tmp_path / "hq.jsonl", [search_r1_row("who wrote dune", ["Herbert"], 0)])
    out = tmp_path / "data" / "train.jsonl"
    result = CliRunner().invoke(main, ["prepare", str(a), str(b), "--out", str(out), "--dedupe"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 2 of 4 rows read to {out} (2 duplicate questions dropped)\n"
    assert [q.id for q in load_qa(out)] == ["train_0", "train_1"]

    result = CliRunner().invoke(
        main, ["prepare", str(a), "--out", str(out), "--limit", "1", "--data-source", "x"]
    )
    assert result.exit_code == 0 and result.stdout.startswith("wrote 1 of 1 rows")
    assert load_qa(out)[0].data_source == "x"

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q"}])
    result = CliRunner().invoke(main, ["prepare", str(bad), "--out", str(out)])
    assert result.exit_code == 1 and f"{bad}:1" in result.output and "no answers" in result.output
    result = CliRunner().invoke(main, ["prepare", "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout
