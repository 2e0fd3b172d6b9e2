"""Encoding a corpus on several devices: each rank encodes its share into shard files,
then one process commits them, in corpus order, as the index's dense vectors.

Ranks are the processes of a ``torchrun`` job (one per GPU), or processes started
here, one per device of ``devices``. The corpus is cut into shards of a fixed number
of rows, dealt round-robin to the ranks; a finished shard is a ``.npy`` file in
``OUT.shards/`` (written whole, then renamed into place), so a crashed run started
again with the same settings encodes only the shards that are missing. Passages go
to the encoder in the groups the one-process build uses (``16 x batch_size`` rows,
each encoded in batches sorted by length), so the vectors are those of one process.
The shard directory is removed once the index is committed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from searchr1 import _core
from searchr1.errors import InputError, SearchR1Error
from searchr1.retrieval.encoder import EncoderConfig
from searchr1.retrieval.faiss_import import count_lines

__all__ = [
    "EncodeJob",
    "Parallel",
    "Shards",
    "parse_devices",
    "shard_dir",
    "start",
    "torchrun_rank",
]

#: Passages the encoder gets at once, in batch sizes: the one-process build's groups.
GROUP_BATCHES = 16
#: The largest shard, in rows: 200 MB of 768-d float32, a few minutes of one GPU.
MAX_SHARD_ROWS = 65536
#: A corpus is cut into at least this many shards (fewer when it has fewer groups).
MIN_SHARDS = 64
#: How long a rank waits at a barrier for the others (encoding a share takes hours).
BARRIER_TIMEOUT = timedelta(days=2)
#: How often rank 0's progress bar counts the other ranks' finished shards.
PROGRESS_SECONDS = 10.0


def shard_dir(out: Path) -> Path:
    """Where the shards of the index ``out`` are kept until it is committed."""
    return out.with_name(out.name + ".shards")


def torchrun_rank() -> tuple[int, int, int] | None:
    """``(rank, world size, local rank)`` inside a ``torchrun`` job, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def parse_devices(devices: str | Sequence[str]) -> list[str]:
    """``"4"`` (cuda:0 to cuda:3), ``"cuda:0,cuda:2"``, ``"cpu,cpu"`` or a list."""
    if isinstance(devices, str):
        text = devices.strip()
        if text.isdigit():
            return [f"cuda:{i}" for i in range(int(text))]
        devices = [d.strip() for d in text.split(",")]
    found = [d for d in devices if d]
    if not found:
        raise InputError("devices: name at least one device (e.g. cuda:0,cuda:1, or 2)")
    return found


@dataclass(frozen=True)
class EncodeJob:
    """What every rank must agree on; recorded in the shard directory, so that shards
    of a run with other settings are never mixed in."""

    corpus: str
    corpus_bytes: int
    corpus_mtime_ns: int
    #: Non-blank lines of the corpus: its passages, unless some are malformed.
    lines: int
    encoder: dict[str, Any]
    encoder_dtype: str | None
    batch_size: int
    skip_bad: bool
    group_rows: int
    shard_rows: int
    #: "f16" when the index stores f16 (halving the shards, losing nothing), else "f32".
    store: str

    @classmethod
    def plan(
        cls,
        corpus: Path,
        encoder: EncoderConfig,
        encoder_dtype: str | None,
        batch_size: int,
        skip_bad: bool,
        dtype: str | None,
    ) -> EncodeJob:
        """The job for ``corpus``; shards are whole groups, at least :data:`MIN_SHARDS`
        of them when the corpus is large enough, at most :data:`MAX_SHARD_ROWS` rows."""
        stat = corpus.stat()
        group = batch_size * GROUP_BATCHES
        lines = count_lines(corpus)
        groups = -(-lines // group)
        per_shard = max(1, min(MAX_SHARD_ROWS // group, -(-groups // MIN_SHARDS)))
        return cls(
            corpus=str(corpus.resolve()),
            corpus_bytes=stat.st_size,
            corpus_mtime_ns=stat.st_mtime_ns,
            lines=lines,
            encoder=asdict(encoder),
            encoder_dtype=encoder_dtype,
            batch_size=batch_size,
            skip_bad=skip_bad,
            group_rows=group,
            shard_rows=per_shard * group,
            store="f16" if dtype == "f16" else "f32",
        )


class Shards:
    """The shard directory ``work`` of ``job``."""

    PLAN = "plan.json"

    def __init__(self, work: Path, job: EncodeJob) -> None:
        self.work = work
        self.job = job

    def prepare(self) -> None:
        """Creates the directory, or keeps the shards of an earlier run of the same job
        (removing those of a job with other settings)."""
        self.work.mkdir(parents=True, exist_ok=True)
        plan = self.work / self.PLAN
        wanted = json.dumps(asdict(self.job), sort_keys=True)
        if plan.is_file() and plan.read_text() == wanted:
            return
        for stale in self.work.glob("*.npy"):
            stale.unlink()
        _write_atomically(plan, wanted.encode())

    def finished(self) -> dict[int, Path]:
        """First row -> file of each finished shard."""
        return {int(p.stem): p for p in self.work.glob("[0-9]*.npy")}

    def rows_done(self) -> int:
        return sum(_rows(p) for p in self.finished().values())

    def encode(self, rank: int, world: int, device: str, progress: bool = False) -> int:
        """Encodes the shards dealt to ``rank`` of ``world`` that are not finished, on
        ``device``; returns the rows this call encoded. Rank 0 draws the progress of
        all ranks (from the shards they finished) when ``progress``."""
        from searchr1.retrieval.encoder import Encoder

        job = self.job
        done = self.finished()
        encoder = Encoder(
            EncoderConfig(**job.encoder),
            device=device,
            dtype=job.encoder_dtype,
            batch_size=job.batch_size,
        )
        bar = _Progress(self, progress and rank == 0)
        current, encoded = -1, 0
        parts: list[npt.NDArray[np.float32]] = []
        batches = _core.CorpusBatches(Path(job.corpus), job.group_rows, job.skip_bad)
        for g, batch in enumerate(batches):
            shard = g * job.group_rows // job.shard_rows
            if shard != current:
                self._save(current, parts)
                current, parts = shard, []
            if shard % world != rank or shard * job.shard_rows in done:
                continue
            parts.append(encoder.encode([contents for _, contents in batch], kind="passage"))
            encoded += len(batch)
            bar.show(sum(len(p) for p in parts))
        self._save(current, parts)
        bar.close()
        return encoded

    def _save(self, shard: int, parts: list[npt.NDArray[np.float32]]) -> None:
        if not parts:
            return
        vectors = np.concatenate(parts).astype(np.float16 if self.job.store == "f16" else "<f4")
        path = self.work / f"{shard * self.job.shard_rows:012d}.npy"
        with (self.work / f".{path.name}.tmp").open("wb") as f:
            np.save(f, vectors)
            f.flush()
            os.fsync(f.fileno())
        os.replace(f.name, path)

    def commit(self, builder: _core.IndexBuilder, out: Path, dtype: str | None) -> int:
        """Writes the shards, in corpus order, as the dense vectors of ``builder``'s
        index ``out``; checks that they cover its passages exactly. Returns the rows."""
        passages = json.loads(builder.manifest)["corpus"]["passages"]
        shards = sorted(self.finished().items())
        if not shards:
            raise InputError(f"{self.work}: no shards to commit")
        row = 0
        for start, path in shards:
            if start != row:
                raise InputError(
                    f"{self.work}: no shard holds rows {row} to {start - 1}: "
                    "encode again to finish them"
                )
            row += _rows(path)
        if row != passages:
            raise InputError(
                f"{self.work}: the shards hold {row} vectors but the corpus has {passages} "
                "passages (did it change while encoding?)"
            )
        dim = int(np.load(shards[0][1], mmap_mode="r").shape[1])
        writer = _core.DenseWriter(out / "dense", dim, dtype)
        for _, path in shards:
            vectors = np.load(path, mmap_mode="r")
            for a in range(0, len(vectors), MAX_SHARD_ROWS):
                writer.add(np.asarray(vectors[a : a + MAX_SHARD_ROWS], dtype=np.float32))
        builder.add_dense(dim, dtype, writer.finish(), EncoderConfig(**self.job.encoder).to_json())
        return row

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


class _Progress:
    """Rank 0's bar over all ranks' rows: its own as it goes, the others' as their
    shards appear; tqdm shows the rate and the time left."""

    def __init__(self, shards: Shards, show: bool) -> None:
        self.shards = shards
        self.bar: Any = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(
                total=shards.job.lines,
                initial=shards.rows_done(),
                desc="encoding",
                unit="passage",
                file=sys.stderr,
            )
        self.counted = time.monotonic()

    def show(self, pending: int) -> None:
        """Rows of the shard in hand: ``pending``; others' counted every few seconds."""
        if self.bar is None or time.monotonic() - self.counted < PROGRESS_SECONDS:
            return
        self.counted = time.monotonic()
        self.bar.update(self.shards.rows_done() + pending - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.shards.rows_done() - self.bar.n)
            self.bar.close()


@dataclass(frozen=True)
class Parallel:
    """An encoding done by several ranks; ``rank`` is None when this process started
    them (one per device), else its ``torchrun`` rank. Rank 0 (or the starter) commits."""

    shards: Shards
    rank: int | None

    @property
    def commits(self) -> bool:
        return self.rank in (None, 0)

    def committed(self) -> None:
        """After the commit: the shards go, and the other ranks are let through."""
        self.shards.remove()
        if self.rank is not None:
            torchrun_barrier()

    def wait_for_commit(self) -> None:
        torchrun_barrier()


def start(
    corpus: Path,
    out: Path,
    encoder: EncoderConfig,
    *,
    encoder_dtype: str | None,
    batch_size: int,
    skip_bad: bool,
    dtype: str | None,
    device: str | None,
    devices: str | Sequence[str] | None,
    progress: bool,
    overwrite: bool,
) -> Parallel | None:
    """Encodes the corpus on several ranks when this is a ``torchrun`` job or
    ``devices`` are given (returning once every rank has finished); None otherwise,
    for the one-process build."""
    ranks = torchrun_rank()
    if ranks is None and devices is None:
        return None
    if ranks is not None and devices is not None:
        raise InputError(
            "devices is for one process that starts its own ranks; under torchrun each "
            "rank encodes on its own device (--device, default: cuda:LOCAL_RANK)"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        # The commit would refuse it, but only after hours of encoding.
        raise InputError(f"{out} is not empty: give overwrite=True (--overwrite) to replace it")
    job = EncodeJob.plan(corpus, encoder, encoder_dtype, batch_size, skip_bad, dtype)
    shards = Shards(shard_dir(out), job)
    if ranks is None:
        assert devices is not None
        shards.prepare()
        encode_on_devices(shards, parse_devices(devices), progress)
        return Parallel(shards, None)
    rank, world, local = ranks
    if rank == 0:
        shards.prepare()
    torchrun_barrier()
    shards.encode(rank, world, _rank_device(device, local), progress)
    torchrun_barrier()
    return Parallel(shards, rank)


def _rank_device(device: str | None, local_rank: int) -> str:
    """A torchrun rank's device: ``device`` as given, but "cuda" (or nothing, with a
    GPU) is the GPU of the rank's local number."""
    import torch

    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return device or "cpu"


def encode_on_devices(shards: Shards, devices: list[str], progress: bool) -> None:
    """Encodes every shard, one process per device (the first shows the progress)."""
    import torch.multiprocessing as mp

    # torch.multiprocessing re-exports these without declaring them to type checkers.
    spawn: Any = mp.spawn  # type: ignore[attr-defined]
    raised: type[Exception] = mp.ProcessRaisedException  # type: ignore[attr-defined]
    try:
        spawn(_device_worker, args=(shards, devices, progress), nprocs=len(devices))
    except raised as e:
        # The child's traceback ends with its exception's type and message.
        last = [line for line in str(e).splitlines() if line.strip()][-1]
        raise SearchR1Error(f"encoding on {', '.join(devices)} failed: {last}") from e


def _device_worker(rank: int, shards: Shards, devices: list[str], progress: bool) -> None:
    if devices[rank] == "cpu":
        import torch

        # Ranks on the CPU share its cores rather than each taking them all.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices.count("cpu")))
    shards.encode(rank, len(devices), devices[rank], progress)


def torchrun_barrier() -> None:
    """Waits for every rank of the ``torchrun`` job (joining its gloo group once)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    dist.barrier()


def _rows(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").shape[0])


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
