"""Exact dense search as torch matrix products over f16 copies of an index's vectors.

On a GPU this is the fast way to search a large flat index exactly: 21M x 768 vectors
are 32 GB as f16, which fit on one 80 GB GPU, and a batch of queries against all of
them is a few large GEMMs. When one device cannot hold the vectors they are split into shards
over several, each searched where it lies.

Candidates are chosen by f16 products (f16 queries and vectors, f32 sums); the best
``2k + 16`` of each query are then re-scored in float64 against the stored vectors
with the float32 query, so hits and scores are those of the Rust core's exact search
(to the order of float32 sums), as long as the f16 rounding (on 768-d unit vectors,
score errors of 1e-5 on average and 5e-5 at most) does not push a true top-``k``
passage below that depth.
torch is imported only when a search is made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from searchr1.errors import InputError
from searchr1.retrieval.store import Passages, StoredVectors

if TYPE_CHECKING:
    import torch

__all__ = ["TorchSearch", "plan_shards"]

logger = logging.getLogger("searchr1.retrieval")

#: Bytes of f32 scores one product may make (queries x rows of a block).
SCORE_BYTES = 256 << 20
#: Most rows in one product, which bounds the f32 copy a CPU multiplies (768 MiB at
#: 768 dimensions) and costs a GPU nothing (80 products over 21M rows).
MAX_BLOCK_ROWS = 1 << 18
#: Most queries searched at once; a larger batch is searched in parts.
MAX_QUERIES = 4096
#: Rows copied to a device at once while loading (64 MiB of float32).
LOAD_BYTES = 64 << 20
#: Device memory left free for the query encoder, score blocks and cuBLAS's workspace:
#: this much, plus 5% of the device.
HEADROOM_BYTES = 2 << 30


def depth(k: int, rows: int) -> int:
    """Candidates re-scored exactly per query for a top ``k``."""
    return min(rows, 2 * k + 16)


def plan_shards(rows: int, dim: int, device: str) -> list[tuple[str, int, int]]:
    """Where the f16 copy of ``rows`` vectors goes: ``(device, first row, end row)``
    per shard. ``"cuda"`` uses as few of the visible GPUs as hold the vectors in equal
    shards (all of them when needed); a list (``"cuda:0,cuda:1"``) splits them equally
    over the devices listed; one device (``"cuda:1"``, ``"cpu"``) holds them whole.
    Raises :class:`~searchr1.errors.InputError` when they do not fit on "cuda"."""
    import torch

    if device != "cuda":
        try:
            names = [str(torch.device(name.strip())) for name in device.split(",")]
        except RuntimeError as e:
            raise InputError(f"dense search: {device!r} is not a torch device: {e}") from e
        return _split(rows, names)
    count = torch.cuda.device_count()
    if count == 0:
        raise InputError("dense search on cuda: no CUDA device is visible")
    room = []
    for i in range(count):
        free, total = torch.cuda.mem_get_info(i)
        room.append(free - HEADROOM_BYTES - total // 20)
    need = rows * dim * 2
    for shards in range(1, count + 1):
        per = -(-rows // shards)
        if all(per * dim * 2 <= room[i] for i in range(shards)):
            return _split(rows, [f"cuda:{i}" for i in range(shards)])
    raise InputError(
        f"dense search on cuda: the vectors need {need / 2**30:.1f} GiB as f16, but the "
        f"{count} visible GPU(s) have {sum(max(r, 0) for r in room) / 2**30:.1f} GiB free "
        "beyond the room kept for the encoder and scores; search on the CPU instead"
    )


def _split(rows: int, devices: list[str]) -> list[tuple[str, int, int]]:
    """``rows`` in equal shards over ``devices``, as ``(device, first row, end row)``."""
    per = -(-rows // len(devices))
    bounds = [(i * per, min(rows, (i + 1) * per)) for i in range(len(devices))]
    return [(name, a, b) for name, (a, b) in zip(devices, bounds, strict=True) if a < b]


class TorchSearch:
    """Exact inner-product search over ``vectors`` held as f16 on ``device``: "cuda"
    (sharded over GPUs as :func:`plan_shards` decides), "cuda:N", a list such as
    "cuda:0,cuda:1", or "cpu" (which serves tests: the Rust core is the fast path on a
    CPU)."""

    def __init__(self, vectors: StoredVectors, passages: Passages, device: str) -> None:
        self.vectors = vectors
        #: The index's passages, by row.
        self.passages = passages
        self.shards: list[tuple[int, torch.Tensor]] = []
        for name, start, end in plan_shards(vectors.rows, vectors.dim, device):
            self.shards.append((start, self._load(name, start, end)))
        logger.info(
            "dense vectors on %s: %d rows of %d as f16 (%.1f GiB)",
            ", ".join(str(t.device) for _, t in self.shards),
            vectors.rows,
            vectors.dim,
            vectors.rows * vectors.dim * 2 / 2**30,
        )

    @classmethod
    def open(cls, path: Path, manifest: dict[str, Any], device: str | None) -> TorchSearch:
        """The torch search of the index ``path`` on ``device`` (default: "cuda" when
        a GPU is visible, else "cpu")."""
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(StoredVectors(path, manifest), Passages(path), device)

    def _load(self, device: str, start: int, end: int) -> torch.Tensor:
        import torch

        shard = torch.empty((end - start, self.vectors.dim), dtype=torch.float16, device=device)
        step = max(1, LOAD_BYTES // (4 * self.vectors.dim))
        for a in range(start, end, step):
            b = min(end, a + step)
            block = torch.from_numpy(self.vectors.read(a, b)).to(torch.float16)
            shard[a - start : b - start].copy_(block)
        return shard

    def search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The best ``k`` rows per query (float32 ``[n, dim]``), best first, ties to
        the lower row: ``(rows int64 [n, k'], scores float32 [n, k'])`` with
        ``k' = min(k, rows)``."""
        n = len(queries)
        k = min(k, self.vectors.rows)
        if n == 0 or k == 0:
            return np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
        wanted = depth(k, self.vectors.rows)
        parts = [
            self._rescore(part, self._candidates(part, wanted), k)
            for part in np.array_split(queries, -(-n // MAX_QUERIES))
        ]
        return np.concatenate([r for r, _ in parts]), np.concatenate([s for _, s in parts])

    def _candidates(self, queries: npt.NDArray[np.float32], wanted: int) -> npt.NDArray[np.int64]:
        """The ``wanted`` best rows per query by f16 products, ``[n, wanted]``."""
        import torch

        found_scores, found_rows = [], []
        for start, shard in self.shards:
            scores, rows = _shard_top(queries, shard, wanted)
            found_scores.append(scores.cpu())
            found_rows.append(rows.cpu() + start)
        scores = torch.cat(found_scores, dim=1)
        rows = torch.cat(found_rows, dim=1)
        best = scores.topk(wanted, dim=1).indices
        return rows.gather(1, best).numpy()

    def _rescore(
        self, queries: npt.NDArray[np.float32], rows: npt.NDArray[np.int64], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        stored = self.vectors.take(rows).astype(np.float64)
        exact = np.einsum("nwd,nd->nw", stored, queries.astype(np.float64)).astype(np.float32)
        order = np.lexsort((rows, -exact), axis=-1)[:, :k]
        return np.take_along_axis(rows, order, 1), np.take_along_axis(exact, order, 1)


def _shard_top(
    queries: npt.NDArray[np.float32], shard: torch.Tensor, wanted: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``min(wanted, shard rows)`` rows of ``shard`` per query by f16 products:
    ``(scores, rows within the shard)``, both ``[n, ...]`` on the shard's device."""
    import torch

    q = torch.from_numpy(queries).to(shard.device, torch.float16)
    block = min(MAX_BLOCK_ROWS, max(4096, SCORE_BYTES // (4 * len(queries))))
    keep = min(wanted, len(shard))
    scores, rows = [], []
    with torch.inference_mode():
        for a in range(0, len(shard), block):
            products = _products(q, shard[a : a + block])
            top = products.topk(min(keep, products.shape[1]), dim=1)
            scores.append(top.values)
            rows.append(top.indices + a)
        all_scores, all_rows = torch.cat(scores, dim=1), torch.cat(rows, dim=1)
        best = all_scores.topk(keep, dim=1).indices
        return all_scores.gather(1, best), all_rows.gather(1, best)


def _products(q: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``q @ block.T`` from f16 operands with f32 sums, as float32 ``[n, rows]``."""
    import torch

    if q.device.type == "cuda":
        try:
            # cuBLAS multiplies f16 into f32 outputs: no rounding of the scores to f16.
            return torch.mm(q, block.T, out_dtype=torch.float32)
        except TypeError:
            # torch < 2.8 has no out_dtype: f16 scores, which only choose the candidates.
            return (q @ block.T).float()
    # The CPU has no f16 -> f32 product; widening first gives the same sums.
    return q.float() @ block.float().T
