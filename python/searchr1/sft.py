"""Supervised fine-tuning on demonstration trajectories, with observations masked.

A demonstration is a question and the turns of its response, each a piece of text that
the model says (``generated=True``: trained on) or the environment injects (retrieved
documents, the invalid-action message: never trained on). They are tokenized segment
by segment and packed with :func:`searchr1.pack`, so the loss mask is the one RL uses.
Demonstrations are written in Search-R1's tags; :func:`to_trajectories` rewrites them
for another turn protocol (``tool_call``) the way a rollout in it would read.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from searchr1.packing import Segment, Trajectory, pack
from searchr1.rollout.prompt import INVALID_ACTION
from searchr1.rollout.protocol import TurnProtocol, make_protocol
from searchr1.tags import Action

__all__ = [
    "Demonstration",
    "SFTConfig",
    "in_protocol",
    "optimizer_with_schedule",
    "progress_bar",
    "sft",
    "to_trajectories",
]


@dataclass(frozen=True)
class Demonstration:
    """A question and its response as ``(text, generated)`` pieces, in order."""

    question: str
    pieces: Sequence[tuple[str, bool]]


@dataclass(frozen=True)
class SFTConfig:
    """Settings of a fine-tuning run."""

    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "trajectories per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps, then cosine"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "shuffling seed"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def to_trajectories(
    tokenizer: Any,
    demonstrations: Sequence[Demonstration],
    eos: bool = True,
    protocol: str = "search_r1",
) -> list[Trajectory]:
    """Tokenizes each demonstration segment by segment (prompt through the chat
    template); ``eos``: end each response with the tokenizer's EOS token (trained on).
    ``protocol``: the turn protocol (``rollout.protocol``) the model will roll out in."""
    turns = make_protocol(protocol, tokenizer)
    out = []
    for demo in demonstrations:
        prompt = tokenizer(turns.prompt(demo.question), add_special_tokens=False)
        segments = [
            Segment(
                np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64),
                generated,
            )
            for text, generated in in_protocol(demo.pieces, turns)
            if text
        ]
        if eos and tokenizer.eos_token_id is not None:
            segments.append(Segment(np.asarray([tokenizer.eos_token_id], np.int64), True))
        out.append(Trajectory(np.asarray(prompt["input_ids"], np.int64), segments))
    return out


_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_INFORMATION = re.compile(r"\n\n<information>(.*)</information>\n\n", re.DOTALL)


def in_protocol(
    pieces: Sequence[tuple[str, bool]], protocol: TurnProtocol
) -> list[tuple[str, bool]]:
    """Search-R1-tagged pieces as ``protocol`` writes them: each ``<search>`` becomes its
    call, each ``<information>`` its documents message, the invalid-action text its own.

    Raises ``ValueError`` for an injected piece that is neither of those.
    """
    if protocol.name == "search_r1":
        return list(pieces)
    out, said = [], ""
    for text, generated in pieces:
        if generated:
            said = _SEARCH.sub(lambda m: protocol.call(m.group(1).strip()), text)
            out.append((said, True))
        elif documents := _INFORMATION.fullmatch(text):
            out.append((protocol.documents(said, documents.group(1)), False))
        elif text == INVALID_ACTION:
            out.append((protocol.invalid(said, Action("invalid", None)), False))
        else:
            raise ValueError(
                f"cannot write an injected piece in the {protocol.name} protocol: it is "
                f"neither <information> nor the invalid-action text: {text[:60]!r}"
            )
    return out


def sft(
    model: Any,
    trajectories: Sequence[Trajectory],
    config: SFTConfig | None = None,
    pad_id: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Fine-tunes ``model`` in place on ``trajectories``; the loss per step.

    The loss is the mean next-token cross-entropy over response tokens whose loss mask
    is 1 (the model's own words); prompts, observations and padding add nothing.
    """
    import torch

    config = config or SFTConfig()
    device = next(model.parameters()).device
    optimizer, scheduler = optimizer_with_schedule(
        model, config.lr, config.weight_decay, config.warmup, config.steps
    )
    rng = random.Random(config.seed)
    order: list[int] = []
    losses = []
    model.train()
    for step in range(config.steps):
        if len(order) < config.batch_size:
            fresh = list(range(len(trajectories)))
            rng.shuffle(fresh)
            order += fresh
        picked, order = order[: config.batch_size], order[config.batch_size :]
        batch = pack([trajectories[i] for i in picked], pad_id=pad_id).to_torch(device)
        response_len = batch["loss_mask"].shape[1]
        # Logits at column t predict the token at t + 1: only the response's are needed.
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=response_len + 1,
        ).logits
        predicted = logits[:, :-1].float()
        targets = batch["input_ids"][:, -response_len:]
        nll = torch.nn.functional.cross_entropy(
            predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), reduction="none"
        ).view_as(targets)
        mask = batch["loss_mask"]
        loss = (nll * mask).sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def optimizer_with_schedule(
    model: Any, lr: float, weight_decay: float, warmup: int, steps: int
) -> tuple[Any, Any]:
    """AdamW with ``warmup`` linear warm-up steps, then a cosine decay to 0 at ``steps``."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@contextmanager
def progress_bar(total: int, desc: str, what: str) -> Iterator[Callable[..., None]]:
    """``with progress_bar(total, desc, what) as on_step``: an ``on_step(step, *values)``
    for :func:`sft` or :func:`copy_pretrain` that draws a progress bar of ``total`` steps
    showing the last value as ``what``; the bar is closed on leaving the block, also
    when training stops early or fails."""
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc) as bar:

        def on_step(step: int, *values: float) -> None:
            bar.update(1)
            bar.set_postfix({what: f"{values[-1]:.3f}"})

        yield on_step
