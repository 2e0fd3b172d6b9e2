"""Packing multi-turn rollouts into the batch arrays a trainer consumes.

A :class:`Trajectory` is a prompt plus ordered :class:`Segment` s of response tokens,
each either sampled by the model (``generated=True``: it gets loss) or injected by the
environment (retrieved documents, the invalid-action message: never any loss).
:func:`pack` builds the arrays in Rust, in parallel, with the GIL released, and hands
them to numpy without copying. Token ids are best given as ``int64`` numpy arrays
(borrowed in place); lists work too (copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from searchr1._core import pack_trajectories

if TYPE_CHECKING:
    import torch

__all__ = ["PackedBatch", "Segment", "Trajectory", "pack"]

IdArray = npt.NDArray[np.int64]


@dataclass
class Segment:
    """A run of response tokens from one source.

    ``ids``: token ids, shape ``[n]``. ``generated``: sampled by the model (True) or
    injected by the environment (False). ``logprobs``: the sampling policy's log-prob of
    each token, shape ``[n]``, when the engine reported them.
    """

    ids: Sequence[int] | IdArray
    generated: bool
    logprobs: Sequence[float] | npt.NDArray[np.float32] | None = None


@dataclass
class Trajectory:
    """A prompt (token ids) and the response segments that followed it, in order."""

    prompt_ids: Sequence[int] | IdArray
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class PackedBatch:
    """A packed batch. ``B`` trajectories, ``P`` prompt and ``R`` response columns.

    - ``input_ids``, ``attention_mask``, ``position_ids``: int64 ``[B, P + R]``; prompts
      left-padded into the first ``P`` columns, responses right-padded after them;
      positions count real tokens from 0 and are 0 on padding.
    - ``loss_mask``: float32 ``[B, R]``, 1 on tokens the model sampled, 0 on injected
      tokens and padding. ``old_logprobs``: float32 ``[B, R]``, 0 where unknown.
    - ``last_index``: int64 ``[B]``, response column of the last token the policy
      sampled (the last with ``loss_mask`` 1; -1: none), where the outcome reward goes.
    - ``truncated``: bool ``[B]``, whether the response was cut to ``R`` tokens.
    """

    input_ids: IdArray
    attention_mask: IdArray
    position_ids: IdArray
    loss_mask: npt.NDArray[np.float32]
    old_logprobs: npt.NDArray[np.float32]
    last_index: IdArray
    truncated: npt.NDArray[np.bool_]
    prompt_len: int
    response_len: int

    @property
    def responses(self) -> IdArray:
        """The response columns of ``input_ids``: int64 ``[B, R]`` (a view)."""
        return self.input_ids[:, self.prompt_len :]

    def to_torch(self, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """The arrays as torch tensors (sharing memory on the CPU)."""
        import torch

        arrays = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "loss_mask": self.loss_mask,
            "old_logprobs": self.old_logprobs,
            "last_index": self.last_index,
            "truncated": self.truncated,
        }
        return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def pack(
    trajectories: Sequence[Trajectory] | Sequence[Any],
    max_prompt_len: int | None = None,
    max_response_len: int | None = None,
    pad_id: int = 0,
) -> PackedBatch:
    """Packs ``trajectories`` into a :class:`PackedBatch`.

    ``max_prompt_len`` / ``max_response_len``: the columns ``P`` and ``R``; the longest
    of the batch when None. A prompt longer than ``P`` raises :class:`PackError`; a
    response longer than ``R`` keeps its first ``R`` tokens and is flagged ``truncated``.
    Masks come from the segment flags, never from comparing ids with ``pad_id``.
    Any objects with the attributes of :class:`Trajectory` and :class:`Segment` work.
    """
    out = pack_trajectories(trajectories, max_prompt_len, max_response_len, pad_id)
    return PackedBatch(**out)
