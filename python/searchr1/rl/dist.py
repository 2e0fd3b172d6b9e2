"""Data parallelism under ``torchrun``: each rank rolls out its share of the batch.

Every rank holds the same weights, whole or (FSDP2, see :mod:`searchr1.rl.fsdp`) as
shards. A step's prompts are split evenly across ranks; advantages are computed on the
gathered batch (so GRPO groups, whitening and the like see exactly what one process
would); gradients are summed across ranks (:meth:`Dist.sum_grads`, or FSDP's
reduce-scatter) with each micro-batch weighted by its share of the global tokens, so a
step equals the one-process step on the same batch. NCCL on CUDA, gloo on the CPU.
Without ``torchrun`` (``WORLD_SIZE`` unset) every function here is a no-op; a
one-rank ``torchrun`` job still joins its process group, so FSDP2 can run there too.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined: bool = False  # in a torchrun job's process group (one rank included)

    @classmethod
    def init(cls, device: str) -> Dist:
        """Joins the ``torchrun`` job if there is one (``device``: cpu or cuda)."""
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            return cls()
        world = int(os.environ["WORLD_SIZE"])
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if device.startswith("cuda"):
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(rank, world, local, joined=True)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes checkpoints."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's rows of ``n`` (``n`` must divide evenly)."""
        if n % self.world:
            raise ValueError(f"{n} rows do not split evenly over {self.world} ranks")
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums ``tensor`` over ranks in place; returns it."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over ranks (one all-reduce for the whole dict)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._device())
        return dict(zip(keys, self.sum_(t).tolist(), strict=True))

    def max_int(self, value: int) -> int:
        """The largest ``value`` over ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on all) concatenated along dim 0, in rank order."""
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sums gradients over ranks (one flat all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def barrier(self) -> None:
        """Waits for every rank."""
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leaves the job."""
        if self.joined and dist.is_initialized():
            # Leave together: a rank that tears its group down while another still
            # finishes (a checkpoint's last writes) can abort in gloo's threads at exit.
            if self.world > 1:
                dist.barrier()
            dist.destroy_process_group()

    def _device(self) -> torch.device:
        backend = dist.get_backend() if dist.is_initialized() else "gloo"
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")
