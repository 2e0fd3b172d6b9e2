"""An index's stored vectors and passages, read from Python (numpy memory maps).

The Rust core writes and searches both; the torch search path (:mod:`torch_search`)
reads them here: the vectors to copy onto a device and to re-score candidates against,
and the passages of the rows it finds. The layouts, as the core writes them
(``rust/core/src/dense.rs`` and ``docstore.rs``):

- ``dense/vectors.bin``: one row per passage, little-endian: ``dim`` f32 or f16
  values, or for i8 an f32 scale then ``dim`` i8 codes (the values are code x scale).
- ``passages.bin``: each passage as ``id \\0 contents`` (UTF-8), back to back;
  ``passages.idx``: ``rows + 1`` u64 offsets into it.

Opening a :class:`~searchr1.retrieval.Retriever` has already checked these files'
sizes and ends against the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from searchr1.errors import IndexFormatError

__all__ = ["Passages", "StoredVectors"]


class StoredVectors:
    """The dense vectors of the index ``path`` (whose manifest is ``manifest``), mapped
    read-only; every read returns the stored values as float32, exactly as the core
    scores them."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        dense = manifest.get("dense")
        if not dense:
            raise IndexFormatError(f"{path} has no dense vectors")
        self.path = path / "dense" / "vectors.bin"
        self.dim: int = dense["dim"]
        self.rows: int = dense["rows"]
        self.dtype: str = dense["dtype"]
        if self.dtype == "i8":
            row = np.dtype([("scale", "<f4"), ("codes", "i1", (self.dim,))])
            self._map = np.memmap(self.path, dtype=row, mode="r", shape=(self.rows,))
        else:
            value = {"f32": "<f4", "f16": "<f2"}[self.dtype]
            self._map = np.memmap(self.path, dtype=value, mode="r", shape=(self.rows, self.dim))

    def read(self, start: int, end: int) -> npt.NDArray[np.float32]:
        """Rows ``start`` to ``end`` (excluded), ``[end - start, dim]``."""
        return self._values(self._map[start:end])

    def take(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The rows numbered in ``rows`` (any shape ``S``), ``[*S, dim]``."""
        flat = self._values(self._map[rows.reshape(-1)])
        return flat.reshape(*rows.shape, self.dim)

    def _values(self, stored: Any) -> npt.NDArray[np.float32]:
        if self.dtype == "i8":
            codes = stored["codes"].astype(np.float32)
            return np.asarray(codes * stored["scale"][:, None], dtype=np.float32)
        return np.array(stored, dtype=np.float32)


class Passages:
    """Row number -> ``(id, contents)`` of the index ``path``, mapped read-only."""

    def __init__(self, path: Path) -> None:
        self._offsets = np.memmap(path / "passages.idx", dtype="<u8", mode="r")
        self._data = np.memmap(path / "passages.bin", dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> tuple[str, str]:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        pid, _, contents = bytes(self._data[start:end]).partition(b"\0")
        return pid.decode(), contents.decode()
