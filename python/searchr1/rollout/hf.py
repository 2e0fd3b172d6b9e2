"""The transformers engine: batched sampling with a KV cache, on the CPU or a GPU.

Each step samples one token for every running sequence and passes the new tokens of
the whole batch to the Rust :class:`~searchr1.TokenStopChecker` in one call. A
sequence that stops leaves the batch: once an eighth of the rows have finished, the
KV cache and masks are compacted to the running rows, so finished rows stop costing
compute.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from searchr1.hub import local_model
from searchr1.rollout.engine import (
    FinishReason,
    Generation,
    Request,
    RequestSource,
    SamplingConfig,
    StopHandler,
    eos_token_ids,
)

if TYPE_CHECKING:
    import torch

__all__ = ["HFEngine"]

_RUNNING, _STOP, _EOS = 0, 1, 2
#: serve(): requests wait to join the batch until they are a quarter of its rows, or
#: for this many steps at most.
ADMIT_SHARE, ADMIT_AFTER_STEPS = 4, 16


class HFEngine:
    """Generates with a transformers causal LM (see the module docstring).

    ``model`` may be the very module the trainer updates: the engine then always
    samples from the current weights. ``max_batch_size`` splits large batches.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int | None = None) -> None:
        self.model = model
        self._tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        vocab_size = model.get_output_embeddings().weight.shape[0]
        self.stops = StopHandler(tokenizer, vocab_size)
        self.eos_token_ids = eos_token_ids(
            getattr(getattr(model, "generation_config", None), "eos_token_id", None),
            getattr(tokenizer, "eos_token_id", None),
        )
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_ids or [0])[0])
        #: Running totals: tokens sampled for running rows, rows computed per step (the
        #: compute spent, finished rows not yet dropped included), and decoding steps.
        self.tokens_sampled = 0
        self.row_steps = 0
        self.steps = 0
        #: Seconds :meth:`serve` spent running the model.
        self.serve_seconds = 0.0

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_batch_size: int | None = None,
    ) -> HFEngine:
        """Loads a model directory (or a model in the local Hugging Face cache; nothing is
        downloaded); ``dtype``: ``auto`` (bf16 on CUDA, else f32) or a name."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        path = local_model(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # transformers' annotations of this classmethod confuse mypy: go through Any.
        auto: Any = AutoModelForCausalLM
        model = auto.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
        model.to(device).eval()
        return cls(model, tokenizer, max_batch_size=max_batch_size)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer."""
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        device: torch.device = next(self.model.parameters()).device
        return device

    def shares_weights(self, model: Any) -> bool:
        """Whether ``model`` is the module this engine generates from."""
        return model is self.model

    def sleep(self) -> None:
        """Nothing to free: the model is the trainer's (or a copy it keeps in sync)."""

    def wake(self) -> None:
        """Nothing to take back."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies named tensors (a state dict's items) into the model in place."""
        import torch

        # The state dict names tied weights (an LM head sharing the embedding) twice.
        params = self.model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:
                    raise KeyError(f"the engine's model has no parameter {name!r}")
                params[name].copy_(tensor)

    def generate(
        self,
        prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One :class:`Generation` per prompt; see :class:`~searchr1.rollout.Engine`.

        ``seeds``: one per prompt, so that each row draws what it would alone (else the
        batch draws from one generator seeded with ``sampling.seed``).
        """
        size = self.max_batch_size or max(len(prompts), 1)
        out: list[Generation] = []
        for start in range(0, len(prompts), size):
            part = None if seeds is None else seeds[start : start + size]
            out.extend(self._generate(prompts[start : start + size], sampling, part))
        return out

    def _generate(
        self,
        prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None,
    ) -> list[Generation]:
        import torch

        n = len(prompts)
        if n == 0:
            return []
        device = self.device
        checker = self.stops.checker(sampling.stop)
        checker.reset(n)
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=device).manual_seed(sampling.seed)
        eos = torch.tensor(self.eos_token_ids, dtype=torch.int64)
        row_seeds = None
        if seeds is not None:
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} seeds for {n} prompts")
            row_seeds = torch.tensor(list(seeds), dtype=torch.int64, device=device)

        max_tokens = sampling.max_tokens
        out_ids = np.zeros((n, max_tokens), dtype=np.int64)
        out_lps = np.zeros((n, max_tokens), dtype=np.float32)
        out_len = np.zeros(n, dtype=np.int64)
        status = np.full(n, _RUNNING, dtype=np.int8)
        keep_bytes = np.zeros(n, dtype=np.int64)
        rows = np.arange(n)  # original index of each row of the running batch

        cache, attention, positions, logits = self._prefill(prompts)
        with torch.inference_mode():
            for step in range(max_tokens):
                if row_seeds is not None:
                    seeds_now = row_seeds[torch.from_numpy(rows).to(device)]
                    steps_now = torch.full_like(seeds_now, step)
                    tokens, logprobs = _sample(logits, sampling, None, seeds_now, steps_now)
                else:
                    tokens, logprobs = _sample(logits, sampling, generator)
                tok = tokens.cpu().numpy()
                live = status[rows] == _RUNNING
                live_rows = rows[live]
                self.row_steps += len(rows)
                self.tokens_sampled += len(live_rows)
                self.steps += 1
                out_ids[live_rows, step] = tok[live]
                out_lps[live_rows, step] = logprobs.cpu().numpy()[live]
                out_len[live_rows] = step + 1
                kept = checker.step(tok[live], live_rows)
                stopped = kept >= 0
                status[live_rows[stopped]] = _STOP
                keep_bytes[live_rows[stopped]] = kept[stopped]
                ended = torch.isin(torch.from_numpy(tok[live]), eos).numpy() & ~stopped
                status[live_rows[ended]] = _EOS
                running = status[rows] == _RUNNING
                if not running.any() or step + 1 == max_tokens:
                    break
                if (~running).sum() * 8 >= len(rows):
                    keep = torch.from_numpy(np.flatnonzero(running)).to(device)
                    cache.batch_select_indices(keep)
                    attention, positions, tokens = attention[keep], positions[keep], tokens[keep]
                    rows = rows[running]
                attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
                positions = positions + 1
                logits = self.model(
                    input_ids=tokens[:, None],
                    attention_mask=attention,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                ).logits[:, -1]

        return [
            self._result(
                out_ids[i, : out_len[i]].copy(),
                out_lps[i, : out_len[i]].copy(),
                int(status[i]),
                checker.stopped(i) if status[i] == _STOP else None,
                int(keep_bytes[i]),
                sampling,
            )
            for i in range(n)
        ]

    def _prefill(
        self, prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]]
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the model over left-padded ``prompts``: their KV cache, attention mask
        ``[n, W]``, last positions ``[n, 1]`` and next-token logits ``[n, V]``."""
        import torch
        from transformers import DynamicCache

        lengths = [len(p) for p in prompts]
        if min(lengths) == 0:
            raise ValueError(f"prompt {lengths.index(0)} is empty")
        width = max(lengths)
        ids = np.full((len(prompts), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = np.asarray(p, dtype=np.int64)
            mask[i, width - len(p) :] = 1
        attention = torch.from_numpy(mask).to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(ids).to(self.device),
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        return cache, attention, positions[:, -1:], logits

    def _result(
        self,
        token_ids: npt.NDArray[np.int64],
        lps: npt.NDArray[np.float32],
        status: int,
        which: int | None,
        keep_bytes: int,
        sampling: SamplingConfig,
    ) -> Generation:
        """The generation of a finished row (cut at its stop string, if any)."""
        if status == _STOP:
            token_ids, lps = self.stops.cut(token_ids, lps, len(token_ids) - 1, keep_bytes)
            stop = sampling.stop[which] if which is not None else None
            return Generation(token_ids, lps, "stop", stop)
        reason: FinishReason = "eos" if status == _EOS else "length"
        return Generation(token_ids, lps, reason)

    def serve(self, requests: RequestSource) -> None:
        """Continuous batching: generates for requests as they come, until ``requests``
        is closed and nothing runs.

        Every step samples one token for each running row; a row that stops is handed
        back at once (``requests.deliver``) and leaves the batch, and requests that
        arrived meanwhile are prefilled and join it, their KV cache left-padded to the
        batch's width. All requests must share their sampling settings but
        ``max_tokens`` and ``seed``. Each row draws from noise of its own seed (a random
        one when the request has none), so a seeded request samples what it would alone,
        whichever requests share the batch.
        """
        batch = _Batch(self)
        shared: SamplingConfig | None = None
        waiting: list[Request] = []
        waited = 0  # steps the oldest waiting request has waited
        while True:
            new = requests.take(block=not batch.rows and not waiting)
            if new is None:
                return
            for request in new:
                key = replace(request.sampling, max_tokens=1, seed=None)
                shared = shared or key
                if key != shared:
                    raise ValueError("requests of one session must share their sampling")
            waiting += new
            started = time.perf_counter()
            # A prefill stops the batch for a step: gather arrivals into fewer, larger
            # ones, unless the batch is small or someone has waited long enough.
            if waiting and (
                len(waiting) * ADMIT_SHARE >= len(batch.rows) or waited >= ADMIT_AFTER_STEPS
            ):
                batch.admit(waiting)
                waiting, waited = [], 0
            elif waiting:
                waited += 1
            finished = batch.step(shared) if batch.rows and shared else []
            self.serve_seconds += time.perf_counter() - started
            for request, generation in finished:
                requests.deliver(request, generation)


def _sample(
    logits: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    seeds: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples one token per row: ``[n, V]`` logits in; ``[n]`` ids and log-probs out.

    The log-prob is under the distribution sampled from: temperature-scaled, then
    restricted by top-k and top-p (greedy: the model's own distribution). With
    ``seeds`` and ``steps`` (int64 ``[n]``), row ``i`` draws from noise that is a
    function of ``(seeds[i], steps[i])`` alone (see :func:`_row_noise`), so what a row
    samples does not depend on the other rows of its batch; else from ``generator``.
    """
    import torch

    logits = logits.float()
    if sampling.temperature == 0:
        tokens = logits.argmax(dim=-1)
        logprobs = torch.log_softmax(logits, dim=-1)
        return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]
    scaled = logits / sampling.temperature
    logprobs = torch.log_softmax(scaled, dim=-1)
    filtered = scaled
    if sampling.top_k > 0 and sampling.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, sampling.top_k, dim=-1).values[:, -1:]
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(filtered, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; keep the first.
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= sampling.top_p
        drop[:, 0] = False
        filtered = filtered.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if seeds is not None and steps is not None:
        # Gumbel-max: the argmax of logits plus Gumbel noise is a draw from their softmax.
        gumbel = -torch.log(-torch.log(_row_noise(seeds, steps, filtered.shape[-1])))
        tokens = (filtered + gumbel.to(filtered.dtype)).argmax(dim=-1)
    else:
        probs = torch.softmax(filtered, dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
    if filtered is not scaled:  # top-k or top-p removed tokens: renormalised log-probs
        logprobs = torch.log_softmax(filtered, dim=-1)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


# SplitMix64's constants, as signed int64 (torch's integer products wrap around).
_GOLDEN, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def _row_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), ``[n, vocab]`` float64: SplitMix64 of a counter unique to
    each (seed, step, token), computed where the logits are."""
    import torch

    def shift(z: torch.Tensor, k: int) -> torch.Tensor:  # logical, not arithmetic
        return (z >> k) & ((1 << (64 - k)) - 1)

    tokens = torch.arange(vocab, dtype=torch.int64, device=seeds.device)
    z = ((seeds * 1_000_003 + steps)[:, None] * vocab + tokens) * _GOLDEN
    z = (z ^ shift(z, 30)) * _MIX1
    z = (z ^ shift(z, 27)) * _MIX2
    z = z ^ shift(z, 31)
    return (shift(z, 11).double() + 0.5) / float(1 << 53)


@dataclass
class _Row:
    request: Request
    slot: int
    seed: int
    ids: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)


class _Batch:
    """The running rows of :meth:`HFEngine.serve`: their KV cache, masks, positions and
    the logits of their next token."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.attention: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.slots = 0
        self.checker: Any = None

    def admit(self, requests: Sequence[Request]) -> None:
        """Prefills ``requests`` and appends them to the running rows."""
        import torch

        engine = self.engine
        if self.checker is None:
            # A slot per request, never reused: the checker cannot reset one row.
            self.checker = engine.stops.checker(requests[0].sampling.stop)
            self.checker.reset(1 << 16)
        cache, attention, positions, logits = engine._prefill([r.prompt for r in requests])
        if self.slots + len(requests) > self.checker.batch_size:
            raise RuntimeError("too many requests in one session for the stop checker")
        rows = [
            _Row(r, self.slots + i, _random_seed() if r.sampling.seed is None else r.sampling.seed)
            for i, r in enumerate(requests)
        ]
        self.slots += len(requests)
        if not self.rows:
            self.cache, self.attention, self.logits = cache, attention, logits
            self.positions = positions
        else:
            assert self.attention is not None and self.positions is not None
            assert self.logits is not None
            old, new = self.attention.shape[1], attention.shape[1]
            _merge_caches(self.cache, cache, max(new - old, 0), max(old - new, 0))
            self.attention = torch.cat(
                [_pad_left(self.attention, new - old), _pad_left(attention, old - new)]
            )
            self.positions = torch.cat([self.positions, positions])
            self.logits = torch.cat([self.logits, logits])
        self.rows += rows

    def step(self, sampling: SamplingConfig) -> list[tuple[Request, Generation]]:
        """Samples every row's next token; returns the rows that finished (dropped from
        the batch) and runs the model for the others."""
        import torch

        engine = self.engine
        assert self.logits is not None and self.attention is not None
        assert self.positions is not None
        seeds = torch.tensor([row.seed for row in self.rows], device=engine.device)
        steps = torch.tensor([len(row.ids) for row in self.rows], device=engine.device)
        tokens, logprobs = _sample(self.logits, sampling, None, seeds, steps)
        tok, lp = tokens.cpu().numpy(), logprobs.cpu().numpy()
        slots = np.asarray([row.slot for row in self.rows], dtype=np.int64)
        kept = self.checker.step(tok, slots)
        eos = np.isin(tok, np.asarray(engine.eos_token_ids, dtype=np.int64))
        engine.row_steps += len(self.rows)
        engine.tokens_sampled += len(self.rows)
        engine.steps += 1
        finished, running = [], []
        for i, row in enumerate(self.rows):
            row.ids.append(int(tok[i]))
            row.lps.append(float(lp[i]))
            status = _STOP if kept[i] >= 0 else _EOS if eos[i] else _RUNNING
            if status == _RUNNING and len(row.ids) < row.request.sampling.max_tokens:
                running.append(i)
                continue
            generation = engine._result(
                np.asarray(row.ids, dtype=np.int64),
                np.asarray(row.lps, dtype=np.float32),
                status,
                self.checker.stopped(row.slot) if status == _STOP else None,
                int(kept[i]),
                row.request.sampling,
            )
            finished.append((row.request, generation))
        if len(running) < len(self.rows):
            keep = torch.tensor(running, dtype=torch.int64, device=engine.device)
            if running:
                self.cache.batch_select_indices(keep)
            self.attention, self.positions = self.attention[keep], self.positions[keep]
            tokens = tokens[keep]
            self.rows = [self.rows[i] for i in running]
        if not self.rows:
            self.cache = self.attention = self.positions = self.logits = None
            return finished
        self.attention = torch.cat(
            [self.attention, self.attention.new_ones((len(self.rows), 1))], dim=1
        )
        self.positions = self.positions + 1
        with torch.inference_mode():
            self.logits = engine.model(
                input_ids=tokens[:, None],
                attention_mask=self.attention,
                position_ids=self.positions,
                past_key_values=self.cache,
                use_cache=True,
            ).logits[:, -1]
        return finished


def _random_seed() -> int:
    import torch

    return int(torch.randint(0, 1 << 62, (1,)).item())


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` [B, W] with ``width`` zero columns in front (none if ``width`` <= 0)."""
    import torch

    if width <= 0:
        return tensor
    return torch.cat([tensor.new_zeros((tensor.shape[0], width)), tensor], dim=1)


def _merge_caches(cache: Any, new: Any, pad_old: int, pad_new: int) -> None:
    """Appends ``new``'s rows to ``cache``, left-padding each along the sequence so
    that both have the same width (the padded positions are masked out)."""
    import torch

    for layer, other in zip(cache.layers, new.layers, strict=True):
        for name in ("keys", "values"):
            a, b = getattr(layer, name), getattr(other, name)
            a = torch.nn.functional.pad(a, (0, 0, pad_old, 0)) if pad_old else a
            b = torch.nn.functional.pad(b, (0, 0, pad_new, 0)) if pad_new else b
            setattr(layer, name, torch.cat([a, b]))
