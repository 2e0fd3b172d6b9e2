"""Convert question-answer sets into the JSONL rows :func:`searchr1.data.load_qa` reads.

Inputs are FlashRAG's and Search-R1's files:

- JSONL (plain or ``.gz``) or a JSON array of rows ``{"id", "question",
  "golden_answers"}`` (FlashRAG's ``RUC-NLPIR/FlashRAG_datasets``);
- Search-R1's training parquet (``scripts/data_process/*.py`` there), whose rows
  also carry ``data_source``, ``prompt`` (the chat messages, with the question after
  ``Question: ``), ``reward_model: {"ground_truth": {"target": [...]}}`` and
  ``extra_info: {"split", "index"}``; the same rows given as JSONL work too. Reading
  parquet needs pyarrow.

Each row becomes ``{"id", "question", "golden_answers", "data_source"}``. The answers
come from ``golden_answers`` (or ``answers``, ``answer``), else from the nested
``reward_model.ground_truth.target``; the question from ``question``, else from the
prompt. A row that cannot be converted stops everything with the file, the row and
what was wrong; nothing is written then.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import re
from collections.abc import Generator, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from searchr1.errors import InputError

__all__ = ["PrepareReport", "convert_row", "prepare", "read_rows"]

#: Where Search-R1's prompt puts the question (the prompt ends "Question: {question}\n").
_QUESTION_MARK = "Question:"
_ANSWER_KEYS = ("golden_answers", "answers", "answer")


@dataclass(frozen=True)
class PrepareReport:
    """What :func:`prepare` did: rows read and written, duplicates dropped, ids renamed."""

    read: int
    written: int
    duplicates: int
    renamed_ids: int
    out: Path


def read_rows(path: str | Path) -> Generator[tuple[str, Any], None, None]:
    """Each row of ``path`` with where it is (``file:line`` or ``file row N``).

    ``.parquet`` files need pyarrow; ``.json`` files hold one JSON array of rows (or are
    JSONL); anything else is read as JSONL (gzip-compressed when it ends in ``.gz``).
    """
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
    elif path.suffix == ".json" and _starts_with_bracket(path):
        with path.open(encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON array of rows")
        for n, row in enumerate(rows, start=1):
            yield f"{path} row {n}", row
    else:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{line_no}: not valid JSON: {exc.msg}") from exc
                yield f"{path}:{line_no}", row


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _starts_with_bracket(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _parquet_rows(path: Path) -> Generator[tuple[str, Any], None, None]:
    try:
        parquet = importlib.import_module("pyarrow.parquet")
    except ModuleNotFoundError as exc:
        raise InputError(
            f"{path}: reading parquet needs pyarrow, which is not installed "
            "(pip install pyarrow), or convert the file to JSONL first"
        ) from exc
    lib = importlib.import_module("pyarrow.lib")
    n = 0
    try:
        with parquet.ParquetFile(path) as reader:
            for batch in reader.iter_batches(batch_size=4096):
                for row in batch.to_pylist():
                    n += 1
                    yield f"{path} row {n}", row
    except lib.ArrowException as exc:  # not parquet, truncated, or a bad page
        raise InputError(f"{path}: not a readable parquet file ({exc})") from exc


def convert_row(
    row: Any, where: str, default_source: str, data_source: str | None = None
) -> dict[str, Any]:
    """One input row as ``{"id", "question", "golden_answers", "data_source"}``.

    ``data_source`` overrides the row's own; without either, ``default_source`` (the
    file's name) is used. An id is the row's ``id``, else ``{split}_{index}`` from
    Search-R1's ``extra_info``, else empty (then :func:`prepare` numbers it).
    Raises :class:`InputError` naming ``where`` when the row has no usable question
    or answers.
    """
    if not isinstance(row, Mapping):
        raise InputError(f"{where}: expected an object (a row), got {type(row).__name__}")
    question = _question(row, where)
    answers = _answers(row, where)
    source = data_source or row.get("data_source") or default_source
    if not isinstance(source, str):
        raise InputError(f"{where}: 'data_source' must be a string, got {source!r}")
    return {
        "id": _row_id(row, where),
        "question": question,
        "golden_answers": answers,
        "data_source": source,
    }


def _question(row: Mapping[str, Any], where: str) -> str:
    question = row.get("question")
    if question is None and "prompt" in row:
        question = _question_from_prompt(row["prompt"], where)
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where}: 'question' must be a non-empty string, got {question!r}")
    return question.strip()


def _question_from_prompt(prompt: Any, where: str) -> str:
    """The question in Search-R1's prompt: the text after the last ``Question:`` of the
    user message (``prompt`` is a list of chat messages or the text itself)."""
    if isinstance(prompt, list):
        messages = [m for m in prompt if isinstance(m, Mapping)]
        users = [m for m in messages if m.get("role") == "user"] or messages
        texts = [m.get("content") for m in users]
        prompt = next((t for t in reversed(texts) if isinstance(t, str)), None)
    if not isinstance(prompt, str):
        raise InputError(f"{where}: no 'question', and 'prompt' holds no user message text")
    _, mark, question = prompt.rpartition(_QUESTION_MARK)
    if not mark:
        raise InputError(f"{where}: no 'question', and the prompt has no {_QUESTION_MARK!r}")
    return question.strip()


def _answers(row: Mapping[str, Any], where: str) -> list[str]:
    key = next((k for k in _ANSWER_KEYS if row.get(k) is not None), None)
    if key is not None:
        value, name = row[key], key
    else:
        value, name = _nested_target(row), "reward_model.ground_truth.target"
        if value is None:
            raise InputError(
                f"{where}: no answers: expected 'golden_answers' (or 'answers', 'answer') "
                "or Search-R1's 'reward_model': {'ground_truth': {'target': [...]}}"
            )
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InputError(f"{where}: {name!r} must be a string or a list of strings")
    answers = []
    for answer in value:
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise InputError(f"{where}: {name!r} holds {answer!r}, not a string")
        text = str(answer).strip()
        if text and text not in answers:
            answers.append(text)
    if not answers:
        raise InputError(f"{where}: {name!r} holds no non-empty answer")
    return answers


def _nested_target(row: Mapping[str, Any]) -> Any:
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, Mapping):
        return None
    truth = reward_model.get("ground_truth")
    if isinstance(truth, Mapping):
        return truth.get("target")
    return truth


def _row_id(row: Mapping[str, Any], where: str) -> str:
    value = row.get("id")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InputError(f"{where}: 'id' must be a string or an integer, got {value!r}")
        return str(value)
    extra = row.get("extra_info")
    if isinstance(extra, Mapping) and extra.get("index") is not None:
        split = extra.get("split")
        return f"{split}_{extra['index']}" if split else str(extra["index"])
    return ""


def _question_key(question: str) -> str:
    """Questions that differ only in case, spacing or a final ``?`` are duplicates."""
    return re.sub(r"\s+", " ", question.lower()).strip().rstrip("?").rstrip()


def _source_name(path: Path) -> str:
    """``nq.jsonl.gz`` -> ``nq``: the file's name without its suffixes."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name or path.name


def prepare(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    data_source: str | None = None,
    limit: int | None = None,
    dedupe: bool = False,
) -> PrepareReport:
    """Converts every row of ``inputs`` (in order) and writes them to the JSONL ``out``.

    ``data_source`` overrides each row's (default: the row's own, else the file's name
    such as ``nq`` for ``nq.jsonl``). ``limit``: write at most this many rows (reading
    stops there). ``dedupe``: drop a row whose question (case, spacing and a final
    ``?`` aside) was seen before. Ids are kept, made unique: a repeated id (FlashRAG
    numbers each dataset from ``train_0``) gets its data source prefixed, then a
    counter if needed; a row without one gets ``{data source}_{n}``.

    ``out`` is replaced only when everything converted: a bad row raises
    :class:`InputError` and leaves no output behind.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if not paths:
        raise InputError("no input files")
    if limit is not None and limit < 0:
        raise InputError(f"limit must be >= 0, got {limit}")
    for path in paths:
        if path.exists() and out.exists() and path.samefile(out):
            raise InputError(f"{out}: the output would overwrite an input")

    read = written = duplicates = renamed = 0
    seen_questions: set[str] = set()
    seen_ids: set[str] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            for path in paths:
                if limit is not None and written >= limit:
                    break
                with closing(read_rows(path)) as rows:
                    for where, raw in rows:
                        read += 1
                        row = convert_row(raw, where, _source_name(path), data_source)
                        if dedupe:
                            key = _question_key(row["question"])
                            if key in seen_questions:
                                duplicates += 1
                                continue
                            seen_questions.add(key)
                        row["id"], was_renamed = _unique_id(row, written, seen_ids)
                        renamed += was_renamed
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                        written += 1
                        if limit is not None and written >= limit:
                            break
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return PrepareReport(read, written, duplicates, renamed, out)


def _unique_id(row: Mapping[str, Any], n: int, seen: set[str]) -> tuple[str, bool]:
    """The row's id if new, else a new one (see :func:`prepare`), and whether it changed."""
    given = row["id"]
    candidate = given or f"{row['data_source']}_{n}"
    if candidate in seen and given:
        candidate = f"{row['data_source']}_{given}"
    base, k = candidate, 2
    while candidate in seen:
        candidate, k = f"{base}_{k}", k + 1
    seen.add(candidate)
    return candidate, bool(given) and candidate != given
