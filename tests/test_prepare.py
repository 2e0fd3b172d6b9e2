"""`searchr1 prepare`: FlashRAG and Search-R1 QA files into rows that load_qa reads."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from searchr1.cli import main
from searchr1.data import load_qa
from searchr1.data.prepare import convert_row, prepare, read_rows
from searchr1.errors import InputError
from searchr1.rollout.prompt import PROMPT_TEMPLATE, build_prompt, normalize_question

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def search_r1_row(
    question: str, answers: list[str], index: int, source: str = "nq", split: str = "train"
) -> dict[str, Any]:
    """A row as Search-R1's scripts/data_process/nq_search.py writes it (FlashRAG's
    columns kept, its own added)."""
    question = question.strip()
    if not question.endswith("?"):
        question += "?"
    return {
        "id": f"{split}_{index}",
        "question": question,
        "golden_answers": answers,
        "data_source": source,
        "prompt": [{"role": "user", "content": build_prompt(question)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
        "extra_info": {"split": split, "index": index},
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


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hide pyarrow (installed for the tests) as if it were not: None in sys.modules makes
    # its import raise ModuleNotFoundError.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    src = tmp_path / "train.parquet"
    src.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=rf"^{re.escape(str(src))}: .*pip install pyarrow"):
        prepare(src, tmp_path / "out.jsonl")
    result = CliRunner().invoke(main, ["prepare", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "pip install pyarrow" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]


def test_parquet_as_search_r1_writes_it(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    rows = [search_r1_row(f"question {i}", [f"answer {i}"], i) for i in range(5)]
    parquet.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    out = tmp_path / "out.jsonl"
    assert prepare(tmp_path / "train.parquet", out, limit=3).written == 3
    assert [q.golden_answers for q in load_qa(out)] == [("answer 0",), ("answer 1",), ("answer 2",)]


# Search-R1's parquet files (scripts/data_process/nq_search.py there: FlashRAG's rows
# through datasets' map, then to_parquet). Their own columns, as the Hub shows them.
SEARCH_R1_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")

# NQ test questions as FlashRAG ships them (from shared/data/nq_sample.jsonl): non-ASCII
# text, several answers, no-break spaces inside an answer.
NQ = [
    {
        "id": "test_0",
        "question": "who got the first nobel prize in physics",
        "golden_answers": ["Wilhelm Conrad R\u00f6ntgen"],
    },
    {
        "id": "test_2",
        "question": "which mode is used for short wave broadcast service",
        "golden_answers": ["Olivia", "MFSK"],
    },
    {
        "id": "test_7",
        "question": "when is the next scandal episode coming out",
        "golden_answers": ["February\u00a01,\u00a02018"],
    },
    {
        "id": "test_12",
        "question": "how many episodes are there in dragon ball z",
        "golden_answers": ["291 episodes", "291"],
    },
]


def search_r1_parquet_rows(
    flashrag: list[dict[str, Any]], split: str, source: str = "nq", own_only: bool = True
) -> list[dict[str, Any]]:
    """FlashRAG's rows as nq_search.py turns them into Search-R1's (index = row number);
    ``own_only`` keeps only Search-R1's own columns, so the question has to come from the
    prompt, the answers from reward_model and the id from extra_info."""
    rows = []
    for index, r in enumerate(flashrag):
        row = search_r1_row(r["question"], r["golden_answers"], index, source, split)
        row["id"] = r["id"]
        rows.append({k: row[k] for k in SEARCH_R1_COLUMNS} if own_only else row)
    return rows


def write_parquet(path: Path, rows: list[dict[str, Any]], **options: Any) -> Path:
    """``rows`` in a parquet file typed as Search-R1's (nested structs and lists, the
    struct fields in the Hub's order); FlashRAG's columns too when any row has them,
    null where a row lacks one."""
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    answers = pa.list_(pa.string())
    fields = []
    if any("question" in r or "golden_answers" in r for r in rows):
        fields += [("id", pa.string()), ("question", pa.string()), ("golden_answers", answers)]
    fields += [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        (
            "reward_model",
            pa.struct([("ground_truth", pa.struct([("target", answers)])), ("style", pa.string())]),
        ),
        ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string())])),
    ]
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    parquet.write_table(table, path, **options)
    return path


def test_parquet_in_search_r1_layout(tmp_path: Path) -> None:
    """nq_search.py's test.parquet, only its own columns: what prepare makes of it."""
    parquet = pytest.importorskip("pyarrow.parquet")
    src = write_parquet(tmp_path / "test.parquet", search_r1_parquet_rows(NQ, "test"))
    schema = parquet.read_schema(src)
    assert schema.names == list(SEARCH_R1_COLUMNS)
    assert str(schema.field("reward_model").type) == (
        "struct<ground_truth: struct<target: list<element: string>>, style: string>"
    )
    where, first = next(read_rows(src))
    assert where == f"{src} row 1"
    assert first == {
        "data_source": "nq",
        "prompt": [
            {"content": PROMPT_TEMPLATE.format(question=NQ[0]["question"] + "?"), "role": "user"}
        ],
        "ability": "fact-reasoning",
        "reward_model": {"ground_truth": {"target": NQ[0]["golden_answers"]}, "style": "rule"},
        "extra_info": {"index": 0, "split": "test"},
    }
    assert first["prompt"][0]["content"].endswith(f"Question: {NQ[0]['question']}?\n")

    out = tmp_path / "out.jsonl"
    report = prepare(src, out)
    assert (report.read, report.written, report.duplicates, report.renamed_ids) == (4, 4, 0, 0)
    expected = [
        {
            "id": f"test_{i}",
            "question": r["question"] + "?",
            "golden_answers": r["golden_answers"],
            "data_source": "nq",
        }
        for i, r in enumerate(NQ)
    ]
    assert read_jsonl(out) == expected
    # Non-ASCII text is written as it is, not escaped.
    assert "R\u00f6ntgen" in out.read_text(encoding="utf-8")
    # load_qa reads the parquet itself the same way.
    as_read = [(q.id, q.question, q.golden_answers, q.data_source) for q in load_qa(src)]
    assert as_read == [(q.id, q.question, q.golden_answers, q.data_source) for q in load_qa(out)]


@pytest.mark.parametrize("layout", ["own columns", "with FlashRAG's columns", "mixed"])
def test_parquet_rows_are_the_jsonl_rows(tmp_path: Path, layout: str) -> None:
    """The same rows as parquet and as JSONL come out identical."""
    rows = search_r1_parquet_rows(NQ, "train", own_only=layout == "own columns")
    if layout == "mixed":
        # Rows with and without FlashRAG's columns in one file: parquet has nulls where
        # JSONL has no key, which must change nothing.
        full = search_r1_parquet_rows(NQ, "train", own_only=False)
        rows = [full[i] if i % 2 else rows[i] for i in range(len(rows))]
    # Answers to clean (spaces, a repeat, an empty one), from golden_answers or, with
    # only Search-R1's columns, from reward_model; no question or id but the prompt's.
    last = search_r1_row("  Who wrote Dune ", [" Frank Herbert ", "Frank Herbert", ""], 9)
    last.update(id=None, question=None, data_source="hotpotqa")
    if layout == "own columns":
        last = {k: last[k] for k in SEARCH_R1_COLUMNS}
    rows.append(last)
    parquet_src = write_parquet(tmp_path / "train.parquet", rows)
    jsonl_src = write_jsonl(tmp_path / "train.jsonl", rows)
    for options in ({}, {"dedupe": True, "limit": 3}, {"data_source": "mine"}):
        from_parquet = prepare(parquet_src, tmp_path / "a.jsonl", **options)
        from_jsonl = prepare(jsonl_src, tmp_path / "b.jsonl", **options)
        assert from_parquet.written == from_jsonl.written > 0
        assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # Spot-check the last (converted, no override) row.
    prepare(parquet_src, tmp_path / "a.jsonl")
    assert read_jsonl(tmp_path / "a.jsonl")[-1] == {
        "id": "train_9",
        "question": "Who wrote Dune?",
        "golden_answers": ["Frank Herbert"],
        "data_source": "hotpotqa",
    }


def test_parquet_several_files(tmp_path: Path) -> None:
    """Search-R1's nq_hotpotqa_train layout: a train file mixing data sources, a test
    file, and another dataset's train file numbered from train_0 again; a JSONL file
    among them. Rows stay in order; repeated ids get their data source."""
    mixed = search_r1_parquet_rows(NQ[:2], "train")
    mixed.append(search_r1_row("which river flows through Bonn", ["Rhine"], 2, "hotpotqa"))
    mixed[2] = {k: mixed[2][k] for k in SEARCH_R1_COLUMNS}
    train = write_parquet(tmp_path / "train.parquet", mixed)
    test = write_parquet(tmp_path / "test.parquet", search_r1_parquet_rows(NQ[2:], "test"))
    trivia = write_parquet(
        tmp_path / "triviaqa.parquet",
        search_r1_parquet_rows(FLASHRAG, "train", source="triviaqa", own_only=False),
    )
    extra = write_jsonl(tmp_path / "extra.jsonl", [{"question": "capital of chile", "answer": 1}])
    out = tmp_path / "out.jsonl"
    report = prepare([train, extra, test, trivia], out)
    assert (report.read, report.written, report.renamed_ids) == (8, 8, 2)
    got = [(r["id"], r["question"], r["data_source"]) for r in read_jsonl(out)]
    assert got == [
        ("train_0", "who got the first nobel prize in physics?", "nq"),
        ("train_1", "which mode is used for short wave broadcast service?", "nq"),
        ("train_2", "which river flows through Bonn?", "hotpotqa"),
        ("extra_3", "capital of chile", "extra"),
        ("test_0", "when is the next scandal episode coming out?", "nq"),
        ("test_1", "how many episodes are there in dragon ball z?", "nq"),
        ("triviaqa_train_0", "who wrote dune?", "triviaqa"),
        ("triviaqa_train_1", "capital of peru?", "triviaqa"),
    ]
    assert read_jsonl(out)[-1]["golden_answers"] == ["Lima", "Lima, Peru"]

    # Dedupe across files (the same question in two parquet files), and the command.
    again = write_parquet(tmp_path / "again.parquet", search_r1_parquet_rows(NQ[:1], "dev"))
    result = CliRunner().invoke(
        main, ["prepare", str(train), str(again), "--out", str(out), "--dedupe"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 3 of 4 rows read to {out} (1 duplicate questions dropped)\n"
    assert [q.id for q in load_qa(out)] == ["train_0", "train_1", "train_2"]


NO_ANSWER = "no answers"
EMPTY_TARGET = "'reward_model.ground_truth.target' holds no non-empty answer"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"reward_model": None}, NO_ANSWER),
        ({"reward_model": {"ground_truth": None, "style": "rule"}}, NO_ANSWER),
        ({"reward_model": {"ground_truth": {"target": None}, "style": "rule"}}, NO_ANSWER),
        ({"reward_model": {"ground_truth": {"target": []}, "style": "rule"}}, EMPTY_TARGET),
        ({"reward_model": {"ground_truth": {"target": [" ", ""]}}}, EMPTY_TARGET),
        ({"prompt": None}, "no user message text"),
        ({"prompt": []}, "no user message text"),
        ({"prompt": [{"content": "no marker here", "role": "user"}]}, "no 'Question:'"),
        ({"prompt": [{"content": "Question: ", "role": "user"}]}, "non-empty string"),
    ],
)
def test_a_bad_parquet_row_names_file_and_row(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    """The bad row is the 6th of the second file, in its third row group, and it is
    named so; nothing is written."""
    good = write_parquet(tmp_path / "good.parquet", search_r1_parquet_rows(NQ, "train"))
    rows = search_r1_parquet_rows(NQ + FLASHRAG + FLASHRAG, "test")
    rows[5] = {**rows[5], **change}
    bad = write_parquet(tmp_path / "bad.parquet", rows, row_group_size=2)
    assert pytest.importorskip("pyarrow.parquet").ParquetFile(bad).num_row_groups == 4
    out = tmp_path / "out.jsonl"
    out.write_text("old contents\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(bad))} row 6: .*{re.escape(problem)}"):
        prepare([good, bad], out)
    assert out.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.parquet",
        "good.parquet",
        "out.jsonl",
    ]
    with pytest.raises(InputError, match=rf"^{re.escape(str(bad))} row 6: "):
        load_qa(bad)
    result = CliRunner().invoke(main, ["prepare", str(good), str(bad), "--out", str(out)])
    assert result.exit_code == 1 and f"{bad} row 6: " in result.output
    assert out.read_text() == "old contents\n"


def test_parquet_rows_are_numbered_across_batches(tmp_path: Path) -> None:
    """pyarrow hands the rows over in batches (of 4,096): the numbering runs on."""
    flashrag = [{"id": f"x{i}", "question": f"q{i}", "golden_answers": ["a"]} for i in range(4100)]
    rows = search_r1_parquet_rows(flashrag, "train")
    src = write_parquet(tmp_path / "train.parquet", rows, row_group_size=1000)
    assert prepare(src, tmp_path / "out.jsonl").written == 4100
    assert read_jsonl(tmp_path / "out.jsonl")[-1]["id"] == "train_4099"
    rows[4098]["reward_model"] = None
    write_parquet(src, rows, row_group_size=1000)
    with pytest.raises(InputError, match=rf"^{re.escape(str(src))} row 4099: no answers"):
        prepare(src, tmp_path / "out.jsonl")


def test_a_file_that_is_not_parquet_is_an_input_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    src = tmp_path / "train.parquet"
    src.write_bytes(b"PAR1")
    with pytest.raises(InputError, match=rf"^{re.escape(str(src))}"):
        prepare(src, tmp_path / "out.jsonl")


@pytest.mark.skipif(not (SHARED / "nq_sample.jsonl").exists(), reason="shared/data absent")
def test_parquet_of_the_nq_sample(tmp_path: Path) -> None:
    """The whole real NQ sample through nq_search.py's layout and back."""
    sample = read_jsonl(SHARED / "nq_sample.jsonl")
    src = write_parquet(tmp_path / "test.parquet", search_r1_parquet_rows(sample, "test"))
    out = tmp_path / "out.jsonl"
    assert prepare(src, out).written == len(sample) > 0
    assert read_jsonl(out) == [
        {
            "id": f"test_{i}",
            "question": normalize_question(r["question"]),
            "golden_answers": r["golden_answers"],
            "data_source": "nq",
        }
        for i, r in enumerate(sample)
    ]
    # The sample's own ids are test_0, test_1, ... as extra_info's are.
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in sample]


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
