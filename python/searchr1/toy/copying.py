"""Copy pre-training: gives a tiny model made from nothing a copy mechanism first.

A model made from nothing and fine-tuned on a few hundred demonstrations learns them
by heart: it writes names it trained on where it should copy a new name from the
question or a passage. Copying random strings over the whole vocabulary first grows
the attention that copies and trains every token's embedding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from searchr1.sft import optimizer_with_schedule

__all__ = ["CopyConfig", "copy_pretrain"]


@dataclass(frozen=True)
class CopyConfig:
    """Settings of copy pre-training (see :func:`copy_pretrain`)."""

    steps: int = field(
        default=1200, metadata={"help": "optimizer steps at most (the schedule's length)"}
    )
    batch_size: int = field(default=64, metadata={"help": "strings per step"})
    min_length: int = field(default=4, metadata={"help": "shortest string, in tokens"})
    max_length: int = field(default=24, metadata={"help": "longest string, in tokens"})
    # 1.5e-3 forms the copy in more seeds within the budget than 3e-3, and training on
    # long after it has formed costs RL gain, hence stop_accuracy (docs/demo.md).
    lr: float = field(default=1.5e-3, metadata={"help": "peak learning rate (AdamW)"})
    stop_accuracy: float = field(
        default=0.9,
        metadata={
            "help": "stop once the copy accuracy, averaged over the last 20 steps, reaches "
            "this (above 1: never; run all steps)"
        },
    )
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps, then cosine"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "seed of the strings"})

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.stop_accuracy <= 0:
            raise ValueError(f"stop_accuracy must be > 0, got {self.stop_accuracy}")


_COPY_WINDOW = 20


def copy_pretrain(
    model: Any,
    tokenizer: Any,
    config: CopyConfig | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> list[tuple[float, float]]:
    """Trains ``model`` in place to copy: each example is a string of random tokens
    of the vocabulary (special tokens aside), a newline, and the same string again,
    with the loss on the copy only. Returns (loss, copy accuracy) per step.

    A model made from nothing and fine-tuned on a few hundred demonstrations learns
    them by heart: it writes names it trained on where it should copy a new name
    from the question or a passage, and the output embeddings of tokens it never
    wrote stay random. Copying random strings over the whole vocabulary first grows
    the attention that copies (an induction head, after about 600 steps for the
    demo's model, or later by seed) and trains every token's embedding. It stops
    early once the accuracy of the last 20 steps averages ``config.stop_accuracy``;
    ``on_step(step, loss, accuracy)``.
    """
    import torch

    config = config or CopyConfig()
    device = next(model.parameters()).device
    special = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(len(tokenizer)) if i not in special], device=device)
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(newline) != 1:
        raise ValueError(f"the tokenizer must encode a newline as one token, got {newline}")
    separator = torch.full((config.batch_size, 1), newline[0], device=device)
    optimizer, scheduler = optimizer_with_schedule(
        model, config.lr, 0.0, config.warmup, config.steps
    )
    generator = torch.Generator().manual_seed(config.seed)
    history = []
    model.train()
    for step in range(config.steps):
        length = int(
            torch.randint(config.min_length, config.max_length + 1, (1,), generator=generator)
        )
        picks = torch.randint(len(pool), (config.batch_size, length), generator=generator)
        strings = pool[picks.to(device)]
        # Logits at column t predict the token at t + 1: those of columns length ..
        # 2 * length - 1 predict the copy.
        logits = (
            model(
                input_ids=torch.cat([strings, separator, strings], dim=1), logits_to_keep=length + 1
            )
            .logits[:, :-1]
            .float()
        )
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), strings.reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        accuracy = (logits.argmax(-1) == strings).float().mean().item()
        history.append((loss.item(), accuracy))
        if on_step is not None:
            on_step(step, *history[-1])
        recent = [a for _, a in history[-_COPY_WINDOW:]]
        if len(recent) == _COPY_WINDOW and sum(recent) / len(recent) >= config.stop_accuracy:
            break
    model.eval()
    return history
