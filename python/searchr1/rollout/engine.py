"""What a rollout engine is: token ids in; new token ids, log-probs and why it stopped, out.

Both engines (:class:`~searchr1.rollout.HFEngine` on transformers,
:class:`~searchr1.rollout.VLLMEngine` on vLLM) stop each sequence exactly at the end of
the first stop string (``</search>``, ``</answer>``) or at an end-of-sequence token.
The stop string is kept and nothing after it: when it ends inside a token (a byte-level
BPE vocabulary may have ``">\\n\\n"``), that last token is replaced by the tokenization
of its bytes up to the end of the stop, which is the text Search-R1 trains on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from searchr1.tags import SEARCH_R1_STOPS, TokenStopChecker, vocab_bytes

if TYPE_CHECKING:
    import torch

__all__ = [
    "Engine",
    "FinishReason",
    "Generation",
    "Request",
    "RequestSource",
    "SamplingConfig",
    "StopHandler",
    "eos_token_ids",
]

#: ``"stop"``: a stop string ended the turn; ``"eos"``: an end-of-sequence token;
#: ``"length"``: the token budget ran out.
FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """How an engine samples one turn."""

    max_tokens: int = field(default=500, metadata={"help": "new tokens at most"})
    temperature: float = field(default=1.0, metadata={"help": "0 samples greedily"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; 1 is off"})
    top_k: int = field(default=0, metadata={"help": "keep the k likeliest tokens; 0 is off"})
    seed: int | None = field(default=None, metadata={"help": "seed of this call's sampling"})
    stop: tuple[str, ...] = field(
        default=SEARCH_R1_STOPS, metadata={"help": "strings that end the turn (kept)"}
    )

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


@dataclass(frozen=True)
class Generation:
    """What an engine generated after one prompt.

    ``token_ids``: int64 ``[n]``. ``logprobs``: float32 ``[n]``, the log-probability of
    each token under the distribution it was sampled from: the logits divided by the
    temperature, then restricted by top-k and top-p (vLLM's ``processed_logprobs``);
    with temperature 0, under the model's own distribution. 0 for tokens the engine
    re-tokenized after a stop inside a token. (A trainer recomputes its old log-probs
    from the model; these are what the engine saw.)
    ``stop``: the stop string that ended it, when ``finish_reason`` is ``"stop"``.
    """

    token_ids: npt.NDArray[np.int64]
    logprobs: npt.NDArray[np.float32]
    finish_reason: FinishReason
    stop: str | None = None


def eos_token_ids(*values: Any) -> list[int]:
    """The distinct end-of-sequence ids among ``values``: each an id, a list of ids (a
    generation config often has several) or None."""
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return sorted(ids)


@runtime_checkable
class Engine(Protocol):
    """Generates for a batch of tokenized prompts; see the module docstring.

    Besides generating, an engine takes new weights from a trainer: :meth:`load_weights`
    unless :meth:`shares_weights` says it generates from the trained module itself;
    :meth:`sleep` frees its accelerator memory while the trainer updates, :meth:`wake`
    takes it back (both no-ops where there is nothing to free).
    """

    @property
    def tokenizer(self) -> Any:
        """The transformers tokenizer of the model."""
        ...

    def generate(
        self,
        prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One :class:`Generation` per prompt, in order. ``seeds``: one per prompt, so
        that each draws what it would in any other batch (else ``sampling.seed`` seeds
        the call)."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Takes named tensors (a state dict's items, full weights) into the model."""
        ...

    def shares_weights(self, model: Any) -> bool:
        """Whether the engine generates from ``model``'s own parameters, so that an
        update of ``model`` reaches it without :meth:`load_weights`."""
        ...

    def sleep(self) -> None:
        """Frees accelerator memory until :meth:`wake` (the trainer's turn)."""
        ...

    def wake(self) -> None:
        """Takes back what :meth:`sleep` freed; a no-op when awake."""
        ...


class StopHandler:
    """Cuts generations at stop strings for one tokenizer; shared by the engines.

    Holds the vocabulary as bytes and one :class:`TokenStopChecker` per set of stop
    strings (built on first use).
    """

    def __init__(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab_bytes(tokenizer)
        if vocab_size is not None and vocab_size > len(self.vocab):
            # Padded embedding rows: ids a model may sample but the tokenizer lacks.
            self.vocab.extend([b""] * (vocab_size - len(self.vocab)))
        self._checkers: dict[tuple[str, ...], TokenStopChecker] = {}

    def checker(self, stops: tuple[str, ...]) -> TokenStopChecker:
        """The checker for ``stops``."""
        if stops not in self._checkers:
            self._checkers[stops] = TokenStopChecker(self.vocab, list(stops))
        return self._checkers[stops]

    def cut(
        self,
        token_ids: npt.NDArray[np.int64],
        logprobs: npt.NDArray[np.float32],
        token: int,
        keep: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The tokens up to the end of a stop that ends ``keep`` bytes into ``token``.

        When the stop ends inside the token, the token is replaced by the tokenization
        of its first ``keep`` bytes (with log-prob 0: the engine did not sample those).
        If those bytes are not valid UTF-8 on their own, the whole token is kept.
        """
        last = int(token_ids[token])
        whole = self.vocab[last] if last < len(self.vocab) else b""
        if keep >= len(whole):
            return token_ids[: token + 1], logprobs[: token + 1]
        try:
            text = whole[:keep].decode("utf-8")
        except UnicodeDecodeError:
            return token_ids[: token + 1], logprobs[: token + 1]
        tail = np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)
        ids = np.concatenate([token_ids[:token], tail])
        lps = np.concatenate([logprobs[:token], np.zeros(len(tail), dtype=np.float32)])
        return ids, lps

    def finish(
        self,
        token_ids: npt.NDArray[np.int64],
        logprobs: npt.NDArray[np.float32],
        sampling: SamplingConfig,
        eos_ids: Sequence[int],
    ) -> Generation:
        """A whole generated sequence cut at its first stop string or EOS, and the budget."""
        ids, lps = token_ids[: sampling.max_tokens], logprobs[: sampling.max_tokens]
        match = self.checker(sampling.stop).find([ids])[0] if sampling.stop else None
        eos_at = np.flatnonzero(np.isin(ids, np.asarray(eos_ids, dtype=np.int64)))
        if match is not None and (len(eos_at) == 0 or match[0] < eos_at[0]):
            token, keep, which = match
            ids, lps = self.cut(ids, lps, token, keep)
            return Generation(ids, lps, "stop", sampling.stop[which])
        if len(eos_at):
            end = int(eos_at[0]) + 1
            return Generation(ids[:end], lps[:end], "eos")
        return Generation(ids, lps, "length")


@dataclass(eq=False)
class Request:
    """One generation asked of an engine's ``serve`` (continuous batching: HFEngine,
    VLLMEngine); ``tag`` is the caller's."""

    prompt: npt.NDArray[np.int64]
    sampling: SamplingConfig
    tag: Any = None


class RequestSource(Protocol):
    """Where an engine's ``serve`` takes requests from and hands results to."""

    def take(self, block: bool) -> list[Request] | None:
        """The requests that arrived (waiting for one if ``block``); None once closed
        with nothing left."""
        ...

    def deliver(self, request: Request, generation: Generation) -> None:
        """Takes a finished request's generation."""
        ...
