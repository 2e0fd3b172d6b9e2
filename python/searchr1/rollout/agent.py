"""The asynchronous agent loop: every trajectory runs its own turns, with no turn barrier.

Each trajectory is a coroutine: generate until a stop, EOS or a limit -> parse the action
-> search -> inject the observation -> generate again, without waiting for the others.
Two batchers sit between the trajectories and the slow resources:

- :class:`ContinuousBatcher` feeds an engine that batches continuously
  (:meth:`HFEngine.serve <searchr1.rollout.HFEngine.serve>`): a request joins the
  running batch at the next token step and comes back the step it stops.
  :class:`EngineBatcher` does the next best with any other engine: it gives the engine
  every request that is waiting each time it is free, so trajectories back from a
  search join the next call instead of waiting for the slowest of their turn.
  Either way the engine runs on a worker thread.
- :class:`SearchBatcher` gathers queries of the trajectories in flight into one
  backend call (at most ``rollout.search_batch_size`` queries, waiting at most
  ``rollout.search_wait_ms`` for others to join), and answers identical queries once:
  those in flight share one search, those answered recently come from a cache.

The rules of a turn (budgets, truncation, what counts as a search) are those of
:class:`~searchr1.rollout.loop.TrajectoryState`, shared with the lockstep loop: with
greedy decoding and a deterministic retriever both loops build the same trajectories.
A failing search fails the turns of its own call (the search-failed observation), never
the batch. An engine error ends the rollout with that error, after the call in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from searchr1.rollout.engine import Engine, Generation, Request, SamplingConfig
from searchr1.rollout.loop import (
    RolloutConfig,
    RolloutResult,
    SearchBackend,
    TrajectoryState,
    _search,
    finish_rollouts,
)
from searchr1.rollout.protocol import TurnProtocol, make_protocol

__all__ = ["ContinuousBatcher", "EngineBatcher", "SearchBatcher", "run_agent_rollouts"]


@dataclass
class _Request:
    prompt: npt.NDArray[np.int64]
    sampling: SamplingConfig
    future: asyncio.Future[Generation]


class EngineBatcher:
    """Hands a batch ``Engine`` every waiting request whenever it is free.

    Requests that differ only in ``max_tokens`` and ``seed`` share a call: it runs to the
    largest ``max_tokens`` and each result is cut to its own (a stop found past it is
    not a stop: the request ran out of tokens first). Each request's seed goes to the
    engine with it, so a seeded request draws what it would in any other call.
    """

    def __init__(self, engine: Engine, max_batch: int | None = None) -> None:
        self.engine = engine
        self.max_batch = max_batch
        # Engines written before per-request seeds take two arguments.
        self._takes_seeds = "seeds" in inspect.signature(engine.generate).parameters
        self._waiting: list[_Request] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        #: Seconds the engine was busy, and the size of each call.
        self.busy_seconds = 0.0
        self.batch_sizes: list[int] = []

    async def generate(self, prompt: npt.NDArray[np.int64], sampling: SamplingConfig) -> Generation:
        """What the engine generates after ``prompt``, once it gets to it."""
        future: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(prompt, sampling, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if not self._busy and self._waiting:
            self._busy = True
            # The call is put together when the task first runs, after every coroutine
            # woken with this one has had its turn to ask.
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _take(self) -> list[_Request]:
        """The waiting requests that can share a call with the oldest one."""
        key = _shared(self._waiting[0].sampling)
        batch = [r for r in self._waiting if _shared(r.sampling) == key]
        if self.max_batch is not None:
            batch = batch[: self.max_batch]
        taken = {id(r) for r in batch}
        self._waiting = [r for r in self._waiting if id(r) not in taken]
        return batch

    async def _run(self) -> None:
        batch = [r for r in self._take() if not r.future.cancelled()]
        try:
            if batch:
                sampling = replace(
                    batch[0].sampling, max_tokens=max(r.sampling.max_tokens for r in batch)
                )
                started = time.perf_counter()
                seeds = [r.sampling.seed for r in batch if r.sampling.seed is not None]
                extra = {"seeds": seeds} if self._takes_seeds and len(seeds) == len(batch) else {}
                generations = await asyncio.to_thread(
                    self.engine.generate, [r.prompt for r in batch], sampling, **extra
                )
                self.busy_seconds += time.perf_counter() - started
                self.batch_sizes.append(len(batch))
                for request, generation in zip(batch, generations, strict=True):
                    if not request.future.done():
                        request.future.set_result(_cut(generation, request.sampling.max_tokens))
        except BaseException as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy = False
            self._kick()


class ContinuousBatcher:
    """Feeds an engine that batches continuously (``engine.serve``, as
    :meth:`HFEngine.serve <searchr1.rollout.HFEngine.serve>`): requests join its running
    batch as they come, and each comes back as soon as it stops."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Condition()
        self._queue: list[Request] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._futures: dict[int, asyncio.Future[Generation]] = {}
        self.busy_seconds = 0.0
        self.batch_sizes: list[int] = []

    async def generate(self, prompt: npt.NDArray[np.int64], sampling: SamplingConfig) -> Generation:
        """What the engine generates after ``prompt``."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._loop = loop
            self._task = loop.create_task(self._serve())
        future: asyncio.Future[Generation] = loop.create_future()
        request = Request(prompt, sampling)
        self._futures[id(request)] = future
        with self._lock:
            self._queue.append(request)
            self._lock.notify()
        return await future

    async def _serve(self) -> None:
        before = self.engine.serve_seconds
        try:
            await asyncio.to_thread(self.engine.serve, self)
        except BaseException as exc:
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(exc)
            raise
        finally:
            self.busy_seconds = self.engine.serve_seconds - before

    async def close(self) -> None:
        """Lets the engine's loop end, and waits for it."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._task is not None:
            await self._task

    # The engine's side (its worker thread): RequestSource.
    def take(self, block: bool) -> list[Request] | None:
        """The requests that arrived; None once closed with nothing left."""
        with self._lock:
            while block and not self._queue and not self._closed:
                self._lock.wait()
            if self._closed and not self._queue and block:
                return None
            taken, self._queue = self._queue, []
        if taken:
            self.batch_sizes.append(len(taken))
        return taken

    def deliver(self, request: Request, generation: Generation) -> None:
        """Hands a finished generation back to the event loop."""
        future = self._futures.pop(id(request))
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_settle, future, generation)


def _settle(future: asyncio.Future[Generation], generation: Generation) -> None:
    if not future.done():
        future.set_result(generation)


def _shared(sampling: SamplingConfig) -> SamplingConfig:
    """What requests must agree on to share an engine call."""
    return replace(sampling, max_tokens=1, seed=None)


def _cut(generation: Generation, max_tokens: int) -> Generation:
    """``generation`` as a request for ``max_tokens`` tokens would have got it."""
    if len(generation.token_ids) <= max_tokens:
        return generation
    return Generation(generation.token_ids[:max_tokens], generation.logprobs[:max_tokens], "length")


class SearchBatcher:
    """Micro-batches and de-duplicates the searches of trajectories in flight.

    ``search(query)`` returns the documents text (or the search-failed text) and
    whether the search failed. Failed searches are not cached.
    """

    def __init__(
        self,
        retriever: SearchBackend | None,
        k: int,
        max_batch: int = 512,
        wait_ms: float = 5.0,
        cache_size: int = 4096,
        max_calls: int = 4,
    ) -> None:
        self.retriever, self.k = retriever, k
        self.max_batch, self.wait_s = max_batch, wait_ms / 1000
        self.cache: OrderedDict[str, str] = OrderedDict()
        self.cache_size = cache_size
        self._inflight: dict[str, asyncio.Future[tuple[str, bool]]] = {}
        self._queued: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._calls = asyncio.Semaphore(max_calls)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Queries answered from the cache or a search in flight, and those searched.
        self.hits = 0
        self.misses = 0
        self.batch_sizes: list[int] = []
        self.seconds = 0.0

    async def search(self, query: str) -> tuple[str, bool]:
        """The documents for ``query``, and whether the search failed."""
        if query in self.cache:
            self.hits += 1
            self.cache.move_to_end(query)
            return self.cache[query], False
        if query in self._inflight:
            self.hits += 1
            return await asyncio.shield(self._inflight[query])
        self.misses += 1
        future: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._inflight[query] = future
        self._queued.append(query)
        if len(self._queued) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s, self._flush)
        return await asyncio.shield(future)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queued:
            batch, self._queued = self._queued[: self.max_batch], self._queued[self.max_batch :]
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, queries: list[str]) -> None:
        async with self._calls:
            started = time.perf_counter()
            try:
                docs, failed = await asyncio.to_thread(_search, self.retriever, queries, self.k)
            except BaseException as exc:  # cancelled: the waiting trajectories learn of it
                for query in queries:
                    future = self._inflight.pop(query)
                    if not future.done():
                        future.set_exception(exc)
                raise
            self.seconds += time.perf_counter() - started
        self.batch_sizes.append(len(queries))
        for query, text in zip(queries, docs, strict=True):
            if not failed:
                self.cache[query] = text
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            future = self._inflight.pop(query)
            if not future.done():
                future.set_result((text, failed))


@dataclass
class _Loop:
    """What every trajectory coroutine of one rollout shares."""

    config: RolloutConfig
    tokenizer: Any
    protocol: TurnProtocol
    engine: EngineBatcher | ContinuousBatcher
    search: SearchBatcher
    states: list[TrajectoryState] = field(default_factory=list)
    #: The index of ``states[0]`` in the whole batch (for the seeds).
    first_index: int = 0


async def _trajectory(loop: _Loop, index: int, state: TrajectoryState) -> None:
    """One trajectory's turns, to its end; the rules are :class:`TrajectoryState`'s.

    Each turn has a seed of its own (from ``rollout.seed``, the trajectory's index in
    the whole batch and the turn), so that a seeded rollout draws the same whatever the
    timing, and whatever share of the batch this process rolls out."""
    config, protocol, tokenizer = loop.config, loop.protocol, loop.tokenizer
    for turn in range(config.max_turns + 1):
        max_tokens = state.start_turn()
        if max_tokens == 0:
            return
        sampling = config.sampling(max_tokens, turn, protocol.stops)
        if config.seed is not None:
            seed = (config.seed * 1_000_003 + index) * (config.max_turns + 1) + turn
            sampling = replace(sampling, seed=seed % (1 << 62))
        ids = state.add_turn(await loop.engine.generate(state.context(), sampling))
        text = tokenizer.decode(ids, skip_special_tokens=protocol.skip_special_tokens)
        action = state.act(protocol.parse(text), turn == config.max_turns)
        if action is None:
            return
        if action.kind == "search":
            documents, failed = await loop.search.search(action.content or "")
            state.stats.search_failures += int(failed)
            observation = protocol.documents(text, documents)
        else:
            observation = protocol.invalid(text, action)
        state.observe(tokenizer(observation, add_special_tokens=False)["input_ids"])


async def _rollouts(loop: _Loop) -> None:
    try:
        async with asyncio.TaskGroup() as group:
            for index, state in enumerate(loop.states, start=loop.first_index):
                group.create_task(_trajectory(loop, index, state))
    except BaseExceptionGroup as errors:
        # The first failure is the one to report (the others are its consequences).
        raise errors.exceptions[0] from None
    finally:
        if isinstance(loop.engine, ContinuousBatcher):
            await loop.engine.close()


def run_agent_rollouts(
    engine: Engine,
    retriever: SearchBackend | None,
    prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
    config: RolloutConfig | None = None,
    first_index: int = 0,
) -> RolloutResult:
    """:func:`~searchr1.rollout.run_rollouts` without a turn barrier (module docstring).

    Runs its own event loop (on a thread of its own when the caller is inside one).
    """
    config = config or RolloutConfig()
    tokenizer = engine.tokenizer
    loop = _Loop(
        config,
        tokenizer,
        make_protocol(config.protocol, tokenizer),
        ContinuousBatcher(engine) if hasattr(engine, "serve") else EngineBatcher(engine),
        SearchBatcher(retriever, config.topk, config.search_batch_size, config.search_wait_ms),
        [TrajectoryState(np.asarray(p, dtype=np.int64), config) for p in prompts],
        first_index,
    )
    started = time.perf_counter()
    _run_coroutine(_rollouts, loop)
    wall = time.perf_counter() - started
    engine_calls, searches = loop.engine.batch_sizes, loop.search
    metrics = {
        "async/engine_busy": loop.engine.busy_seconds / wall if wall > 0 else 0.0,
        "async/engine_calls": float(len(engine_calls)),
        "async/engine_batch": float(np.mean(engine_calls)) if engine_calls else 0.0,
        "async/search_calls": float(len(searches.batch_sizes)),
        "async/search_batch": float(np.mean(searches.batch_sizes)) if searches.batch_sizes else 0.0,
        "async/search_dedup": searches.hits / max(searches.hits + searches.misses, 1),
        "async/wall_seconds": wall,
    }
    return finish_rollouts(
        tokenizer, loop.states, loop.engine.busy_seconds, searches.seconds, metrics
    )


def _run_coroutine(main: Any, *args: Any) -> None:
    """``asyncio.run(main(*args))``, on a new thread when this one runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main(*args))
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main(*args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="searchr1-agent-loop")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
