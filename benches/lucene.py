"""Lucene, the BM25 that Search-R1 runs: Anserini's indexer and searcher through pyserini.

Search-R1 builds its BM25 index with `python -m pyserini.index.lucene --collection
JsonCollection --generator DefaultLuceneDocumentGenerator` (Anserini's default English
analyzer: Lucene's English stop words, then the Porter stemmer) and serves it with
pyserini's `LuceneSearcher` (BM25, k1 0.9 / b 0.4). Here the same Java classes run
in-process through pyjnius, as pyserini runs them: `build` calls Anserini's
`IndexCollection` as `pyserini.index.lucene` does, and `LuceneBatch` is
`io.anserini.search.SimpleSearcher`, the object a `LuceneSearcher` wraps (reached
through `pyserini.pyclass`, which puts pyserini's Anserini jar on the classpath without
importing `pyserini.search`, whose import also loads torch, transformers, faiss and
onnxruntime: a searcher's peak RSS is then Lucene's own).

The JVM starts in the process at the first call and stays until it exits, so run each
side in a process of its own (`common.run_side`): its peak RSS is then the JVM's plus
Python's. `python benches/lucene.py build CORPUS OUT` builds an index in such a process
and prints its figures as JSON.

Needs Java 11 or later (`java` on PATH, or JAVA_HOME) and the packages of
constraints-lucene.txt (`make bench` installs them): `unavailable()` says which is
missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Anserini 0.22.1 is built for Java 11.
MIN_JAVA = 11


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def unavailable() -> str | None:
    """None when Lucene can run here, else a one-line reason (no Java, too old a Java,
    pyserini or pyjnius not installed). Starts no JVM in this process."""
    java = _java()
    if java is None:
        return (
            "no Java (java on PATH or JAVA_HOME); Debian: apt-get install openjdk-17-jdk-headless"
        )
    try:
        shown = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{java} -version failed: {e}"
    found = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    major = 0 if found is None else int(found[1])
    if major == 1 and found is not None and found[2]:
        major = int(found[2])  # "1.8.0" is Java 8
    if major < MIN_JAVA:
        return f"Java {major or '?'} at {java}; Anserini needs Java {MIN_JAVA} or later"
    for module in ("pyserini", "jnius"):
        if importlib.util.find_spec(module) is None:
            return (
                f"{module} is not installed (`make bench` installs constraints-lucene.txt: "
                "pyserini --no-deps with pyjnius)"
            )
    spec = importlib.util.find_spec("pyserini")
    assert spec is not None and spec.origin is not None
    jars = Path(spec.origin).parent / "resources" / "jars"
    if not any(jars.glob("anserini-*-fatjar.jar")):
        return f"no Anserini jar in {jars}"
    return None


#: What importing pyserini's `LuceneSearcher` (`pyserini.search.lucene`) imports beyond
#: pyserini and pyjnius: the test environment holds the last five, constraints-lucene.txt
#: the first two.
SEARCHER_MODULES = ("pandas", "onnxruntime", "torch", "transformers", "faiss", "sklearn", "scipy")


def searcher_unavailable() -> str | None:
    """As `unavailable`, for pyserini's own `LuceneSearcher` (what Search-R1's server
    imports), whose import needs more packages than `LuceneBatch`."""
    reason = unavailable()
    if reason is not None:
        return reason
    missing = [m for m in SEARCHER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"pyserini.search.lucene imports {', '.join(missing)}, not installed"
    return None


def _autoclass(name: str) -> Any:
    """A Java class of Anserini's jar (the first call starts the JVM)."""
    from pyserini.pyclass import autoclass

    return autoclass(name)


def build(corpus_jsonl: Path, out_dir: Path, threads: int = 2) -> float:
    """Indexes a Search-R1-format JSONL corpus ({"id", "contents"} rows) into the new
    Lucene index `out_dir`, as Search-R1 does with pyserini: JsonCollection,
    DefaultLuceneDocumentGenerator (stop words dropped, Porter stemming), `threads`
    indexing threads, and -storeRaw, so that a search returns the passage's id and
    its contents (Search-R1's server reads them from the index). Returns the seconds
    taken, the conversion included (JsonCollection reads a directory of files: a
    temporary one holding a symbolic link to the corpus, no copy), and the JVM's start
    when this is the process's first call into Java."""
    corpus_jsonl = Path(corpus_jsonl).resolve()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lucene-input-") as collection:
        os.symlink(corpus_jsonl, Path(collection) / "corpus.jsonl")
        indexer = _autoclass("io.anserini.index.IndexCollection")
        indexer.main(
            [
                "-collection", "JsonCollection",
                "-input", collection,
                "-index", str(out_dir),
                "-generator", "DefaultLuceneDocumentGenerator",
                "-threads", str(threads),
                "-storeRaw",
            ]
        )  # fmt: skip
    return time.perf_counter() - start


class LuceneBatch:
    """A Lucene index searched with BM25 (`k1`, `b`) the way pyserini's LuceneSearcher
    searches it: `search` is its `batch_search` on `threads` threads, `search_one` its
    `search`. Both return passage ids, best first."""

    def __init__(self, index_dir: Path, k1: float = 0.9, b: float = 0.4, threads: int = 2) -> None:
        self._searcher = _autoclass("io.anserini.search.SimpleSearcher")(str(index_dir))
        self._searcher.set_bm25(float(k1), float(b))
        self._list = _autoclass("java.util.ArrayList")
        self.threads = threads

    def __len__(self) -> int:
        return int(self._searcher.get_total_num_docs())

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        texts, qids = self._list(), self._list()
        for i, query in enumerate(queries):
            texts.add(query)
            qids.add(str(i))
        found = self._searcher.batch_search(texts, qids, int(k), int(self.threads))
        by_qid = {e.getKey(): e.getValue() for e in found.entrySet().toArray()}
        return [[hit.docid for hit in by_qid.get(str(i), [])] for i in range(len(queries))]

    def search_one(self, query: str, k: int) -> list[str]:
        return [hit.docid for hit in self._searcher.search(query, int(k))]

    def contents(self, docid: str) -> str:
        """The stored contents of passage `docid` (the index keeps the raw JSON row)."""
        raw: str = self._searcher.doc(docid).get("raw")
        return str(json.loads(raw)["contents"])


def _peak_rss_mb() -> float:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import peak_rss_mb

    return peak_rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="index CORPUS into OUT; print JSON figures last")
    cmd.add_argument("corpus", type=Path)
    cmd.add_argument("out", type=Path)
    cmd.add_argument("--threads", type=int, default=2)
    sub.add_parser("check", help="print why Lucene cannot run here (exit 1), or nothing")
    args = ap.parse_args()
    reason = unavailable()
    if args.command == "check" or reason is not None:
        if reason is not None:
            print(f"Lucene unavailable: {reason}", file=sys.stderr)
        sys.exit(0 if reason is None else 1)
    seconds = build(args.corpus, args.out, args.threads)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({"build_s": seconds, "index_bytes": size, "rss_mb": _peak_rss_mb()}))


if __name__ == "__main__":
    main()
