"""A deterministic engine that emits scripted text: for tests of anything built on rollouts.

The script sees the decoded context of each sequence (prompt and response so far) and
returns what the "model" says next, as text or token ids. The engine then applies the
token budget and cuts at the first stop string exactly as the real engines do, so
text that runs past ``</search>`` is cut there, and a stop that ends inside a token
gets the same treatment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from searchr1.rollout.engine import Generation, SamplingConfig, StopHandler, eos_token_ids

__all__ = ["ScriptedEngine"]

#: A script: decoded context in, the next turn out (text, or token ids).
Script = Callable[[str], "str | Sequence[int]"]


class ScriptedEngine:
    """Emits ``script(context)`` for each prompt (see the module docstring).

    Text is tokenized with ``tokenizer``; end it with the tokenizer's EOS token text to
    emit EOS. Every emitted token gets log-prob ``logprob``.
    """

    def __init__(self, tokenizer: Any, script: Script, logprob: float = -1.0) -> None:
        self._tokenizer = tokenizer
        self.script = script
        self.logprob = logprob
        self.stops = StopHandler(tokenizer)
        self.calls: list[int] = []  # batch size of each generate call
        self.tokens_generated = 0

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the script's text goes through."""
        return self._tokenizer

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """A script has no weights: nothing to load."""

    def shares_weights(self, model: Any) -> bool:
        """A script says the same whatever the weights: nothing to sync."""
        return True

    def sleep(self) -> None:
        """Nothing to free."""

    def wake(self) -> None:
        """Nothing to take back."""

    def generate(
        self,
        prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """Runs the script on each decoded prompt; cuts at the budget and the stops (a
        script draws nothing: ``seeds`` change nothing)."""
        self.calls.append(len(prompts))
        contexts = self._tokenizer.batch_decode(
            [list(map(int, p)) for p in prompts], skip_special_tokens=False
        )
        eos_ids = eos_token_ids(self._tokenizer.eos_token_id)
        out = []
        for context in contexts:
            said = self.script(context)
            if isinstance(said, str):
                said = self._tokenizer.encode(said, add_special_tokens=False)
            ids = np.asarray(said, dtype=np.int64)
            lps = np.full(len(ids), self.logprob, dtype=np.float32)
            out.append(self.stops.finish(ids, lps, sampling, eos_ids))
        self.tokens_generated += sum(len(g.token_ids) for g in out)
        return out
