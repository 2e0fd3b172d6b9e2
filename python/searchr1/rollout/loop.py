"""The multi-turn rollout loop: generate, act, search, observe; then pack.

The turn protocol (``rollout.protocol``, see :mod:`searchr1.rollout.protocol`) says
where a turn stops, what its action is and what text follows it. Each turn generates
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
from searchr1.rollout.engine import Engine, SamplingConfig
from searchr1.rollout.prompt import SEARCH_FAILED, Passage, format_documents
from searchr1.rollout.protocol import PROTOCOLS, make_protocol

__all__ = [
    "RolloutConfig",
    "RolloutResult",
    "SearchBackend",
    "TrajectoryStats",
    "run_rollouts",
    "tokenize_prompts",
]


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
    seed: int | None = field(default=None, metadata={"help": "sampling seed (per turn: +turn)"})
    protocol: str = field(
        default="search_r1",
        metadata={
            "help": "how the model searches: search_r1 (Search-R1's <search> tags) or "
            "tool_call (a function call in the chat template's own format)"
        },
    )

    def __post_init__(self) -> None:
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
    #: Seconds spent generating and searching.
    generate_seconds: float = 0.0
    search_seconds: float = 0.0

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


def run_rollouts(
    engine: Engine,
    retriever: SearchBackend | None,
    prompts: Sequence[Sequence[int] | npt.NDArray[np.int64]],
    config: RolloutConfig | None = None,
) -> RolloutResult:
    """Rolls out every prompt (token ids, see :func:`tokenize_prompts`) to the end.

    ``retriever`` may be None when no search is wanted: every search then fails
    (as with a retriever that is down) and says so in its observation.
    """
    config = config or RolloutConfig()
    tokenizer = engine.tokenizer
    protocol = make_protocol(config.protocol, tokenizer)
    n = len(prompts)
    prompt_ids = [np.asarray(p, dtype=np.int64) for p in prompts]
    trajectories = [Trajectory(p, []) for p in prompt_ids]
    stats = [TrajectoryStats() for _ in range(n)]
    lengths = np.array([len(p) for p in prompt_ids], dtype=np.int64)
    running = [i for i in range(n)]
    generate_seconds = search_seconds = 0.0

    for turn in range(config.max_turns + 1):
        last_turn = turn == config.max_turns
        budget = config.max_length - lengths
        for i in [i for i in running if budget[i] <= 0]:
            stats[i].truncated = True
        running = [i for i in running if budget[i] > 0]
        if not running:
            break
        max_tokens = int(min(config.max_response_length, budget[running].max()))
        contexts = [_context(trajectories[i]) for i in running]
        started = time.perf_counter()
        generations = engine.generate(contexts, config.sampling(max_tokens, turn, protocol.stops))
        generate_seconds += time.perf_counter() - started

        new_ids = []
        for i, gen in zip(running, generations, strict=True):
            ids, lps = gen.token_ids, gen.logprobs
            if len(ids) > budget[i]:
                ids, lps = ids[: budget[i]], lps[: budget[i]]
                stats[i].truncated = True
            trajectories[i].segments.append(Segment(ids, True, lps))
            lengths[i] += len(ids)
            stats[i].turns += 1
            new_ids.append(ids)
        texts = tokenizer.batch_decode(new_ids, skip_special_tokens=protocol.skip_special_tokens)
        actions = [protocol.parse(t) for t in texts]
        turn_text = dict(zip(running, texts, strict=True))

        searching = [
            i for i, a in zip(running, actions, strict=True) if a.kind == "search" and not last_turn
        ]
        documents: dict[int, str] = {}
        if searching:
            started = time.perf_counter()
            by_row = dict(zip(running, actions, strict=True))
            queries = [by_row[i].content or "" for i in searching]
            docs, failed = _search(retriever, queries, config.topk)
            search_seconds += time.perf_counter() - started
            documents = dict(zip(searching, docs, strict=True))
            if failed:
                for i in searching:
                    stats[i].search_failures += 1

        observations: dict[int, str] = {}
        for i, action in zip(running, actions, strict=True):
            if action.kind == "answer":
                stats[i].valid_actions += 1
                stats[i].finished = True
                stats[i].answer = action.content
            elif action.kind == "search":
                stats[i].valid_actions += 1
                if not last_turn:
                    stats[i].searches += 1
                    observations[i] = protocol.documents(turn_text[i], documents[i])
            else:
                stats[i].invalid_actions += 1
                if not last_turn:
                    observations[i] = protocol.invalid(turn_text[i], action)
        if last_turn:
            break
        running = [i for i in running if not stats[i].finished and not stats[i].truncated]
        order = [i for i in running if i in observations]
        if order:
            encoded = tokenizer([observations[i] for i in order], add_special_tokens=False)[
                "input_ids"
            ]
            for i, ids in zip(order, encoded, strict=True):
                room = int(config.max_length - lengths[i])
                cut = min(config.max_obs_length, room)
                if len(ids) > room:
                    stats[i].truncated = True
                obs = np.asarray(ids[:cut], dtype=np.int64)
                trajectories[i].segments.append(Segment(obs, False))
                lengths[i] += len(obs)

    pad = tokenizer.pad_token_id
    batch = pack(trajectories, pad_id=int(pad if pad is not None else 0))
    responses = tokenizer.batch_decode(
        [_response(t) for t in trajectories], skip_special_tokens=True
    )
    transcripts = tokenizer.batch_decode(
        [_context(t) for t in trajectories], skip_special_tokens=False
    )
    return RolloutResult(
        batch, trajectories, stats, responses, transcripts, generate_seconds, search_seconds
    )


def _response(trajectory: Trajectory) -> npt.NDArray[np.int64]:
    parts = [np.asarray(s.ids, dtype=np.int64) for s in trajectory.segments]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _context(trajectory: Trajectory) -> npt.NDArray[np.int64]:
    return np.concatenate(
        [np.asarray(trajectory.prompt_ids, dtype=np.int64), _response(trajectory)]
    )
