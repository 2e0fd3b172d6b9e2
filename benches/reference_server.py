"""A retrieval server built the way Search-R1's is, for `bench_server.py` to compare with.

Search-R1's `search_r1/search/retrieval_server.py`: FastAPI with a pydantic request
model and a plain (sync) endpoint, which FastAPI runs on its thread pool, on uvicorn.
For BM25 it searches the queries of a request one at a time (pyserini's
`LuceneSearcher.search`) and returns `{"title", "text", "contents"}` documents; for dense
retrieval it encodes each request's queries (in batches of 512) and searches a faiss
flat index. Here the same structure runs on one of these engines:

- `lucene`: Search-R1's own, pyserini's `LuceneSearcher` over a Lucene index built by
  `lucene.build` (`--lucene-index`), one query per `search` call, each hit's contents
  read back from the raw row the index stores. Where Lucene cannot run (no Java, no
  pyserini: see `lucene.unavailable`), this says why and serves `bm25s` instead;
- `searchr1`: our BM25 index, searched with one query per `Retriever.search` call;
- `bm25s`: bm25s (k1 0.9, b 0.4, Lucene's formula), one query per `retrieve` call;
- `dense`: the index's encoder on each request's queries, then faiss `IndexFlatIP`
  over the index's vectors (Search-R1's dense path).

Run: `python benches/reference_server.py --engine searchr1 --index DIR --port 8001`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class QueryRequest(BaseModel):
    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


class Engine(Protocol):
    """What the endpoint calls: a batch of queries -> (documents, scores) per query."""

    def batch_search(
        self, queries: list[str], k: int
    ) -> tuple[list[list[Any]], list[list[float]]]: ...


def _document(contents: str) -> dict[str, str]:
    """A document as Search-R1's BM25 retriever returns it."""
    return {
        "title": contents.split("\n")[0].strip('"'),
        "text": "\n".join(contents.split("\n")[1:]),
        "contents": contents,
    }


class OursOneByOne:
    def __init__(self, index: Path) -> None:
        from searchr1 import Retriever

        self.retriever = Retriever.open(index)

    def batch_search(self, queries: list[str], k: int) -> tuple[list[list[Any]], list[list[float]]]:
        results, scores = [], []
        for query in queries:  # as BM25Retriever._batch_search: one query at a time
            hits = self.retriever.search([query], k=k)[0]
            results.append([_document(h.contents) for h in hits])
            scores.append([h.score for h in hits])
        return results, scores


class LuceneOneByOne:
    """pyserini's LuceneSearcher with Anserini's default BM25 (k1 0.9, b 0.4), as
    Search-R1's BM25Retriever runs it: one `search` per query, then each hit's stored
    raw row parsed for its contents."""

    def __init__(self, index: Path) -> None:
        # Imports torch, transformers, faiss and onnxruntime too, as Search-R1's does.
        from pyserini.search.lucene import LuceneSearcher

        self.searcher = LuceneSearcher(str(index))

    def batch_search(self, queries: list[str], k: int) -> tuple[list[list[Any]], list[list[float]]]:
        results, scores = [], []
        for query in queries:
            hits = self.searcher.search(query, k)
            rows = [json.loads(self.searcher.doc(hit.docid).raw()) for hit in hits]
            results.append([_document(row["contents"]) for row in rows])
            scores.append([hit.score for hit in hits])
        return results, scores


class Bm25sOneByOne:
    def __init__(self, corpus: Path) -> None:
        import bm25s
        import Stemmer

        self.contents = []
        with corpus.open() as f:
            for line in f:
                self.contents.append(json.loads(line)["contents"])
        self.stemmer = Stemmer.Stemmer("english")
        tokens = bm25s.tokenize(
            self.contents, stopwords="en", stemmer=self.stemmer, show_progress=False
        )
        self.model = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self.model.index(tokens, show_progress=False)
        self.bm25s = bm25s

    def batch_search(self, queries: list[str], k: int) -> tuple[list[list[Any]], list[list[float]]]:
        results, scores = [], []
        for query in queries:
            tokens = self.bm25s.tokenize(
                [query], stopwords="en", stemmer=self.stemmer, show_progress=False
            )
            docs, doc_scores = self.model.retrieve(tokens, k=k, show_progress=False)
            results.append([_document(self.contents[d]) for d in docs[0].tolist()])
            scores.append(doc_scores[0].tolist())
        return results, scores


class DenseFlat:
    """Encode the request's queries, then faiss IndexFlatIP (Search-R1's dense path)."""

    def __init__(
        self, index: Path, corpus: Path, vectors: Path, dtype: str, batch_size: int = 512
    ) -> None:
        import faiss
        import numpy as np
        import torch
        from transformers import AutoModel, AutoTokenizer

        from searchr1 import Retriever
        from searchr1.retrieval.encoder import EncoderConfig

        # The model the index records, loaded as Search-R1's `load_model` does (a plain
        # AutoModel; not our Encoder, whose linears run on packed oneDNN weights on a
        # CPU), its weights in `dtype` (Search-R1: `model.half()`), on the GPU if any.
        self.config = EncoderConfig(**Retriever.open(index).manifest["dense"]["encoder"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.model)
        model = AutoModel.from_pretrained(self.config.model, dtype=getattr(torch, dtype))
        self.model = model.to(self.device).eval()
        data = np.load(vectors)
        self.index = faiss.IndexFlatIP(data.shape[1])
        self.index.add(data)
        self.corpus = []  # Search-R1 loads the corpus with `datasets`; a list here
        with corpus.open() as f:
            for line in f:
                self.corpus.append(json.loads(line))
        self.batch_size = batch_size

    def encode(self, queries: list[str]) -> Any:
        """Search-R1's ``Encoder.encode``: the batch padded to its longest query, the
        model, the pooling the index records, L2 normalisation (the index's model and
        settings; searchr1's own encoder sorts by length instead, which this leaves
        out)."""
        import torch

        config = self.config
        with torch.no_grad():
            inputs = self.tokenizer(
                [config.query_prefix + q for q in queries],
                max_length=config.max_length,
                padding=True,
                truncation=True,
                return_tensors="pt",
            ).to(self.device)  # Search-R1: `inputs = {k: v.cuda() ...}`
            hidden = self.model(**inputs).last_hidden_state
            if config.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
            # Search-R1 casts its fp16 vectors to float32 for faiss; so here.
            return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()

    def batch_search(self, queries: list[str], k: int) -> tuple[list[list[Any]], list[list[float]]]:
        results: list[list[Any]] = []
        scores: list[list[float]] = []
        for start in range(0, len(queries), self.batch_size):
            emb = self.encode(queries[start : start + self.batch_size])
            batch_scores, batch_ids = self.index.search(emb, k)
            for ids, row_scores in zip(batch_ids.tolist(), batch_scores.tolist(), strict=True):
                results.append([self.corpus[i] for i in ids])
                scores.append(row_scores)
        return results, scores


def make_app(engine: Engine, default_topk: int) -> FastAPI:
    app = FastAPI()

    @app.post("/retrieve")
    def retrieve_endpoint(request: QueryRequest) -> dict[str, Any]:
        topk = request.topk or default_topk
        results, scores = engine.batch_search(request.queries, topk)
        resp = []
        for i, single_result in enumerate(results):
            if request.return_scores:
                resp.append(
                    [
                        {"document": doc, "score": score}
                        for doc, score in zip(single_result, scores[i], strict=True)
                    ]
                )
            else:
                resp.append(single_result)
        return {"result": resp}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["lucene", "searchr1", "bm25s", "dense"], required=True)
    ap.add_argument("--index", type=Path, required=True, help="searchr1 index directory")
    ap.add_argument("--lucene-index", type=Path, help="Lucene index directory (lucene)")
    ap.add_argument(
        "--corpus", type=Path, help="JSONL corpus (bm25s and dense read it; lucene's fallback)"
    )
    ap.add_argument("--vectors", type=Path, help=".npy passage vectors (dense)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--dtype", default="float32", help="what the dense encoder computes in")
    args = ap.parse_args()
    engine: Engine
    if args.engine == "lucene":
        import lucene

        reason = lucene.searcher_unavailable()
        if reason is None and args.lucene_index is None:
            reason = "no --lucene-index given"
        if reason is None:
            engine = LuceneOneByOne(args.lucene_index)
        else:
            print(f"Lucene unavailable ({reason}): serving bm25s instead", file=sys.stderr)
            engine = Bm25sOneByOne(args.corpus)
    elif args.engine == "searchr1":
        engine = OursOneByOne(args.index)
    elif args.engine == "bm25s":
        engine = Bm25sOneByOne(args.corpus)
    else:
        engine = DenseFlat(args.index, args.corpus, args.vectors, args.dtype)
    uvicorn.run(make_app(engine, args.topk), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
