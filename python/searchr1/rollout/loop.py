"""The multi-turn rollout loop: generate, act, search, observe; then pack.

The turn protocol (``rollout.protocol``, see :mod:`searchr1.rollout.protocol`) says
where a turn stops, what its action is and what text follows it. ``rollout.mode`` picks
the loop: ``async`` (the default, :mod:`searchr1.rollout.agent`) runs each trajectory's
turns on its own; ``lockstep``, here, is Search-R1's. Each lockstep turn generates
for every running trajectory in one engine call, parses each turn's action, sends every
search of the turn to the retriever in one batched call, and appends the observation as
an injected segment (no loss); a search that fails (after RemoteRetriever's own
retries) says so in its observation. After ``max_turns`` turns, one last turn is
generated in which a search returns nothing. The result is the packed batch plus what a
trainer logs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from searchr1.packing import PackedBatch, Segment, Trajectory, pack
from searchr1.rollout.engine import Engine, Generation, SamplingConfig
from searchr1.rollout.prompt import SEARCH_FAILED, Passage, format_documents
from searchr1.rollout.protocol import PROTOCOLS, make_protocol
from searchr1.tags import Action

__all__ = [
    "RolloutConfig",
    "RolloutResult",
    "SearchBackend",
    "TrajectoryState",
    "TrajectoryStats",
    "finish_rollouts",
    "run_rollouts",
    "tokenize_prompts",
]


#: The rollout loops ``rollout.mode`` names.
MODES = ("lockstep", "async")


class SearchBackend(Protocol):
    """What the loop needs of a retriever: ``Retriever`` and ``RemoteRetriever`` fit."""

    def search(self, queries: list[str], k: int = ...) -> Sequence[Sequence[Passage]]: ...


@dataclass(frozen=True)
class RolloutConfig:
    """The rollout settings (Search-R1's defaults)."""

    max_turns: int = field(
        default=4, metadata={"help": "turns that may search; one more follows without search"}
    )
    max_response_length: int = field(default=500, metadata={"help": "new tokens per turn"})
    max_obs_length: int = field(default=500, metadata={"help": "observation tokens, at most"})
    max_length: int = field(
        default=4096, metadata={"help": "prompt plus all response tokens, at most"}
    )
    topk: int = field(default=3, metadata={"help": "documents per search"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling; 1 is off"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling; 0 is off"})
    seed: int | None = field(
        default=None,
        metadata={
            "help": "sampling seed: lockstep seeds each turn (+turn), async each "
            "trajectory (see agent.py); train sets it every step from run.seed"
        },
    )
    mode: str = field(
        default="async",
        metadata={
            "help": "lockstep (every turn waits for the whole batch, as Search-R1) or "
            "async (each trajectory runs its own turns; searches micro-batched)"
        },
    )
    search_batch_size: int = field(
        default=512, metadata={"help": "async: queries per search call, at most"}
    )
    search_wait_ms: float = field(
        default=5.0, metadata={"help": "async: how long a search waits for others to join"}
    )
    protocol: str = field(
        default="search_r1",
        metadata={
            "help": "how the model searches: search_r1 (Search-R1's <search> tags) or "
            "tool_call (a function call in the chat template's own format)"
        },
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.search_batch_size < 1 or self.search_wait_ms < 0:
            raise ValueError("search_batch_size must be >= 1 and search_wait_ms >= 0")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        for name in ("max_response_length", "max_obs_length", "max_length", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turns < 0:
            raise ValueError(f"max_turns must be >= 0, got {self.max_turns}")

    @property
    def max_sampled_tokens(self) -> int:
        """The most tokens a trajectory's model turns can hold together."""
        return min((self.max_turns + 1) * self.max_response_length, self.max_length)

    def sampling(self, max_tokens: int, turn: int, stop: tuple[str, ...]) -> SamplingConfig:
        """The engine settings of one turn, ending at the protocol's ``stop`` strings."""
        return SamplingConfig(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=None if self.seed is None else self.seed + turn,
            stop=stop,
        )


@dataclass
class TrajectoryStats:
    """What happened in one trajectory."""

    turns: int = 0
    searches: int = 0
    valid_actions: int = 0
    invalid_actions: int = 0
    search_failures: int = 0
    #: The trajectory ended with an answer.
    finished: bool = False
    #: It ran into ``max_length`` (its last turn or observation was cut).
    truncated: bool = False
    answer: str | None = None


@dataclass
class RolloutResult:
    """The packed batch of a rollout and what to log about it.

    ``responses[i]``: the decoded response of trajectory ``i`` (turns and observations,
    special tokens skipped), which rewards read. ``transcripts[i]``: the prompt and
    response decoded with special tokens, for logs.
    """

    batch: PackedBatch
    trajectories: list[Trajectory]
    stats: list[TrajectoryStats]
    responses: list[str]
    transcripts: list[str]
    #: Seconds spent generating and searching (the async loop overlaps them).
    generate_seconds: float = 0.0
    search_seconds: float = 0.0
    #: What the loop itself reports (the async loop: engine busy share, search batches).
    loop_metrics: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Means over trajectories (turns, searches, valid actions, finished...)."""
        n = max(len(self.stats), 1)
        out: dict[str, float] = {}
        for key in ("turns", "searches", "valid_actions", "invalid_actions", "search_failures"):
            out[key] = sum(getattr(s, key) for s in self.stats) / n
        out["finished"] = sum(s.finished for s in self.stats) / n
        out["truncated"] = sum(s.truncated for s in self.stats) / n
        out["response_length"] = (
            float(self.batch.attention_mask[:, self.batch.prompt_len :].sum()) / n
        )
        out["generate_seconds"] = self.generate_seconds
        out["search_seconds"] = self.search_seconds
        out.update(self.loop_metrics)
        return out


def tokenize_prompts(
    tokenizer: Any, questions: Sequence[str], protocol: str = "search_r1"
) -> list[npt.NDArray[np.int64]]:
    """The prompt of each question as token ids: Search-R1's (through the chat template
    when there is one), or with the search tool declared for ``protocol="tool_call"``."""
    turns = make_protocol(protocol, tokenizer)
    texts = [turns.prompt(q) for q in questions]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in encoded]


def _search(retriever: SearchBackend | None, queries: list[str], k: int) -> tuple[list[str], bool]:
    """The documents text of each query, and whether the search failed.

    One call per turn, not retried here: RemoteRetriever retries what is transient
    (under its own timeout), and an in-process Retriever has nothing transient to
    retry. A failure becomes the observation text instead of ending the rollout.
    """
    if retriever is None:
        error = "no retriever was given"
    else:
        try:
            results = retriever.search(queries, k)
        except Exception as exc:  # whatever the backend raises is reported, not raised
            error = f"{type(exc).__name__}: {exc}"
        else:
            if len(results) == len(queries):
                return [format_documents(hits) for hits in results], False
            error = f"ValueError: {len(results)} results for {len(queries)} queries"
    return [SEARCH_FAILED.format(error=error)] * len(queries), True


class TrajectoryState:
    """One trajectory in progress: its segments, stats and length, and the rules of a
    turn that both loops follow (lockstep here, asynchronous in
    :mod:`searchr1.rollout.agent`), so that they build the same trajectories."""

    def __init__(self, prompt: npt.NDArray[np.int64], config: RolloutConfig) -> None:
        self.trajectory = Trajectory(prompt, [])
        self.stats = TrajectoryStats()
        self.length = len(prompt)
        self.config = config

    @property
    def budget(self) -> int:
        """Tokens the next turn may add before ``max_length``."""
        return self.config.max_length - self.length

    def context(self) -> npt.NDArray[np.int64]:
        """The prompt and response so far: what the engine continues."""
        return _context(self.trajectory)

    def start_turn(self) -> int:
        """The token budget of the next turn; 0 (and marked truncated) when none is left."""
        if self.budget <= 0:
            self.stats.truncated = True
            return 0
        return min(self.config.max_response_length, self.budget)

    def add_turn(self, generation: Generation) -> npt.NDArray[np.int64]:
        """Appends what the engine generated (cut to the budget); the ids kept."""
        budget = self.budget
        ids, lps = generation.token_ids, generation.logprobs
        if len(ids) > budget or (len(ids) == budget and generation.finish_reason == "length"):
            # It ran into max_length: the turn was (or would have been) cut there.
            ids, lps = ids[:budget], lps[:budget]
            self.stats.truncated = True
        self.trajectory.segments.append(Segment(ids, True, lps))
        self.length += len(ids)
        self.stats.turns += 1
        return ids

    def act(self, action: Action, last_turn: bool) -> Action | None:
        """Counts the turn's action; returns it when an observation must follow (a
        search, or an invalid action), None when the trajectory ends here."""
        stats = self.stats
        if action.kind == "answer":
            stats.valid_actions += 1
            stats.finished = True
            stats.answer = action.content
            return None
        if action.kind == "search":
            stats.valid_actions += 1
        else:
            stats.invalid_actions += 1
        if last_turn or stats.truncated:
            return None
        if action.kind == "search":
            stats.searches += 1
        return action

    def observe(self, ids: Sequence[int]) -> None:
        """Appends an observation (no loss), cut to ``max_obs_length`` and the room left."""
        room = self.budget
        if len(ids) > room:
            self.stats.truncated = True
        kept = np.asarray(ids[: min(self.config.max_obs_length, room)], dtype=np.int64)
        if len(kept):
            self.trajectory.segments.append(Segment(kept, False))
            self.length += len(kept)


def run_rollouts(
    engine: Engine,
    retriever: SearchBackend | None,
    prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
    config: RolloutConfig | None = None,
    first_index: int = 0,
) -> RolloutResult:
    """Rolls out every prompt (token ids, see :func:`tokenize_prompts`) to the end.

    ``retriever`` may be None when no search is wanted: every search then fails
    (as with a retriever that is down) and says so in its observation.
    ``config.mode`` picks the loop: ``lockstep`` (below) or ``async``
    (:func:`searchr1.rollout.agent.run_agent_rollouts`). ``first_index``: where
    ``prompts`` start in the whole batch when this process rolls out a share of it;
    the async loop seeds each trajectory by its index in the whole batch, so that the
    shares of several ranks draw what one process would.
    """
    config = config or RolloutConfig()
    if config.mode == "async":
        from searchr1.rollout.agent import run_agent_rollouts

        return run_agent_rollouts(engine, retriever, prompts, config, first_index)
    tokenizer = engine.tokenizer
    protocol = make_protocol(config.protocol, tokenizer)
    states = [TrajectoryState(np.asarray(p, dtype=np.int64), config) for p in prompts]
    running = list(range(len(states)))
    generate_seconds = search_seconds = 0.0

    for turn in range(config.max_turns + 1):
        last_turn = turn == config.max_turns
        budgets = {i: states[i].start_turn() for i in running}
        running = [i for i in running if budgets[i] > 0]
        if not running:
            break
        # One call for the whole turn: as many tokens as the roomiest row may take.
        max_tokens = max(budgets[i] for i in running)
        started = time.perf_counter()
        generations = engine.generate(
            [states[i].context() for i in running],
            config.sampling(max_tokens, turn, protocol.stops),
        )
        generate_seconds += time.perf_counter() - started
        new_ids = [states[i].add_turn(g) for i, g in zip(running, generations, strict=True)]
        texts = tokenizer.batch_decode(new_ids, skip_special_tokens=protocol.skip_special_tokens)
        pending: dict[int, tuple[str, Action]] = {}
        for i, text in zip(running, texts, strict=True):
            action = states[i].act(protocol.parse(text), last_turn)
            if action is not None:
                pending[i] = (text, action)

        searching = [i for i, (_, action) in pending.items() if action.kind == "search"]
        documents: dict[int, str] = {}
        if searching:
            started = time.perf_counter()
            queries = [pending[i][1].content or "" for i in searching]
            docs, failed = _search(retriever, queries, config.topk)
            search_seconds += time.perf_counter() - started
            documents = dict(zip(searching, docs, strict=True))
            for i in searching if failed else ():
                states[i].stats.search_failures += 1

        running = list(pending)
        if running:
            observations = [
                protocol.documents(text, documents[i])
                if i in documents
                else protocol.invalid(text, action)
                for i, (text, action) in pending.items()
            ]
            encoded = tokenizer(observations, add_special_tokens=False)["input_ids"]
            for i, ids in zip(running, encoded, strict=True):
                states[i].observe(ids)

    return finish_rollouts(tokenizer, states, generate_seconds, search_seconds)


def finish_rollouts(
    tokenizer: Any,
    states: Sequence[TrajectoryState],
    generate_seconds: float = 0.0,
    search_seconds: float = 0.0,
    loop_metrics: dict[str, float] | None = None,
) -> RolloutResult:
    """Packs finished trajectories and decodes what rewards and logs read."""
    trajectories = [s.trajectory for s in states]
    pad = tokenizer.pad_token_id
    batch = pack(trajectories, pad_id=int(pad if pad is not None else 0))
    responses = tokenizer.batch_decode(
        [_response(t) for t in trajectories], skip_special_tokens=True
    )
    transcripts = tokenizer.batch_decode(
        [_context(t) for t in trajectories], skip_special_tokens=False
    )
    return RolloutResult(
        batch,
        trajectories,
        [s.stats for s in states],
        responses,
        transcripts,
        generate_seconds,
        search_seconds,
        dict(loop_metrics or {}),
    )


def _response(trajectory: Trajectory) -> npt.NDArray[np.int64]:
    parts = [np.asarray(s.ids, dtype=np.int64) for s in trajectory.segments]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _context(trajectory: Trajectory) -> npt.NDArray[np.int64]:
    return np.concatenate(
        [np.asarray(trajectory.prompt_ids, dtype=np.int64), _response(trajectory)]
    )
