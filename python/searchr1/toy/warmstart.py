"""The warm start of the toy kit: a deliberately imperfect curriculum, then SFT.

A tiny model made from nothing and fine-tuned on a few hundred demonstrations learns
them by heart and reads nothing. The warm start therefore has three parts besides the
demonstrations of the world itself (:func:`demonstrations`: half search and answer
right, half guess without searching, so that RL has something to fix):

- copy pre-training (:func:`~searchr1.toy.copying.copy_pretrain`), which grows the
  attention that copies a string;
- drills in writing names it has never written (:func:`name_drills`);
- the demonstrations of other worlds of the same shape (:func:`reading_demonstrations`),
  whose facts never come back, so that it learns to read a passage rather than one
  world's facts.

:func:`warm_start` runs whichever of these a :class:`WarmStartConfig` asks for; the
demo, ``searchr1 init-model`` and ``searchr1 sft`` all go through it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from searchr1.packing import Trajectory
from searchr1.rollout.loop import SearchBackend
from searchr1.rollout.prompt import Passage, format_documents, information
from searchr1.rollout.protocol import PROTOCOLS
from searchr1.sft import Demonstration, SFTConfig, progress_bar, sft, to_trajectories
from searchr1.toy.copying import CopyConfig, copy_pretrain
from searchr1.toy.models import PROTOCOL_TEXT
from searchr1.toy.world import (
    BIRTH_YEARS,
    OCCUPATIONS,
    ORG_AGE,
    ORG_KINDS,
    RELATIONS,
    SPLITS,
    TOWN_YEARS,
    TWO_HOP,
    Hop,
    Split,
    ToyQuestion,
    World,
    article,
    build_world,
    write_world,
)

__all__ = [
    "WarmStartConfig",
    "WarmStartReport",
    "demonstrations",
    "name_drills",
    "reading_demonstrations",
    "reading_world",
    "stage",
    "warm_start",
    "warm_start_model",
    "warm_start_trajectories",
]


@dataclass(frozen=True)
class WarmStartConfig:
    """What the warm start does: copy pre-training, then SFT on demonstrations."""

    copy_steps: int = field(
        default=1200,
        metadata={
            "help": "copy pre-training steps at most; it stops once the model copies (0: none)"
        },
    )
    sft_steps: int = field(default=600, metadata={"help": "SFT steps (0: no SFT)"})
    sft_lr: float = field(default=3e-3, metadata={"help": "SFT learning rate"})
    sft_batch_size: int = field(default=32, metadata={"help": "trajectories per SFT step"})
    search_fraction: float = field(
        default=0.5, metadata={"help": "share of the demonstrations that search"}
    )
    drills: int = field(
        default=1000, metadata={"help": "name-copying drills added to the demonstrations"}
    )
    reading_worlds: int = field(
        default=1,
        metadata={
            "help": "other toy worlds whose demonstrations join the warm start, to teach "
            "reading a passage rather than facts by heart"
        },
    )
    topk: int = field(default=1, metadata={"help": "documents per search in demonstrations"})
    protocol: str = field(
        default="search_r1",
        metadata={
            "help": "turn protocol of the demonstrations: search_r1 or tool_call "
            "(train with the same rollout.protocol)"
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the copy strings, of which demonstrations search, of "
            "the drills and of the shuffling"
        },
    )

    def __post_init__(self) -> None:
        for name in ("copy_steps", "sft_steps", "drills", "reading_worlds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.search_fraction <= 1.0:
            raise ValueError(f"search_fraction must be in [0, 1], got {self.search_fraction}")
        if self.topk < 1 or self.sft_batch_size < 1:
            raise ValueError("topk and sft_batch_size must be >= 1")
        if self.sft_lr <= 0:
            raise ValueError(f"sft_lr must be > 0, got {self.sft_lr}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


@dataclass
class WarmStartReport:
    """What a warm start did."""

    #: (loss, copy accuracy) per copy pre-training step.
    copy_history: list[tuple[float, float]] = field(default_factory=list)
    #: The loss per SFT step.
    sft_losses: list[float] = field(default_factory=list)
    #: Demonstrations of this world and the reading worlds (drills aside).
    demonstrations: int = 0
    #: Those of them that search.
    searching: int = 0
    drills: int = 0
    #: Parameters of the model, and the size of its vocabulary.
    parameters: int = 0
    vocabulary: int = 0


def stage(log: Callable[[str], None] | None, name: str) -> Callable[..., None]:
    """Logs ``== name`` now; the returned ``done(*notes)`` logs each note, then how long
    the stage took. ``log`` None: nothing is logged."""
    started = time.perf_counter()
    say = log or (lambda _: None)
    say(f"== {name}")

    def done(*notes: str) -> None:
        for note in notes:
            say(f"   {note}")
        say(f"   {name}: {time.perf_counter() - started:.1f} s")

    return done


def warm_start(
    model: Any,
    tokenizer: Any,
    config: WarmStartConfig,
    world: World | None = None,
    retriever: SearchBackend | None = None,
    log: Callable[[str], None] | None = None,
) -> WarmStartReport:
    """Trains ``model`` in place: copy pre-training (``config.copy_steps``), then SFT on
    the demonstrations of ``world`` searched with ``retriever`` (``config.sft_steps``;
    both needed then), with a progress bar each; ``log`` gets a line per stage."""
    report = WarmStartReport()
    if config.copy_steps:
        done = stage(log, f"copy pre-training, up to {config.copy_steps} steps")
        with progress_bar(config.copy_steps, "copy", "accuracy") as on_step:
            report.copy_history = copy_pretrain(
                model,
                tokenizer,
                CopyConfig(steps=config.copy_steps, seed=config.seed),
                on_step=on_step,
            )
        first, last = report.copy_history[0][1], report.copy_history[-1][1]
        done(f"{len(report.copy_history)} steps; copy accuracy {first:.2f} -> {last:.2f}")
    if not config.sft_steps:
        return report
    if world is None or retriever is None:
        raise ValueError("SFT needs a world and a retriever of its corpus")
    done = stage(log, f"warm start: SFT, {config.sft_steps} steps")
    trajectories = warm_start_trajectories(
        world,
        retriever,
        tokenizer,
        search_fraction=config.search_fraction,
        drills=config.drills,
        seed=config.seed,
        top_k=config.topk,
        reading_worlds=config.reading_worlds,
        protocol=config.protocol,
    )
    report.drills = config.drills
    report.demonstrations = len(trajectories) - config.drills
    # Searching demonstrations are those with an observation; drills have none.
    report.searching = sum(any(not seg.generated for seg in t.segments) for t in trajectories)
    with progress_bar(config.sft_steps, "sft", "loss") as on_step:
        report.sft_losses = sft(
            model,
            trajectories,
            SFTConfig(
                steps=config.sft_steps,
                batch_size=config.sft_batch_size,
                lr=config.sft_lr,
                seed=config.seed,
            ),
            pad_id=int(tokenizer.pad_token_id),
            on_step=on_step,
        )
    done(f"loss {report.sft_losses[0]:.3f} -> {report.sft_losses[-1]:.3f}")
    return report


def _guess_candidates(world: World, answer_kind: str, relation: str) -> list[str]:
    if answer_kind in ("person", "town", "organisation"):
        return [e.name for e in world.of_kind(answer_kind)]
    if answer_kind == "occupation":
        return list(OCCUPATIONS)
    low, high = TOWN_YEARS if relation == "town_founded" else BIRTH_YEARS
    if relation == "founded":
        low, high = BIRTH_YEARS[0] + ORG_AGE[0], BIRTH_YEARS[1] + ORG_AGE[1]
    return [str(y) for y in range(low, high + 1)]


def _statement(hop: Hop) -> str:
    """The fact of ``hop`` as a sentence."""
    return RELATIONS[hop.relation].statement.format(s=hop.entity, v=hop.value, a=article(hop.value))


def warm_start_model(
    model_dir: str | Path,
    out: str | Path,
    config: WarmStartConfig,
    world: World | None = None,
    retriever: SearchBackend | None = None,
    log: Callable[[str], None] | None = None,
) -> WarmStartReport:
    """:func:`warm_start` on the model saved in ``model_dir``; the result (model and
    tokenizer) is saved to ``out``, which may be ``model_dir`` itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    n_params = sum(p.numel() for p in model.parameters())
    if log is not None:
        log(f"   {model_dir}: {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    report = warm_start(model, tokenizer, config, world, retriever, log)
    report.parameters, report.vocabulary = n_params, model.config.vocab_size
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return report


def demonstrations(
    world: World,
    split: Split,
    retriever: SearchBackend,
    search_fraction: float = 0.5,
    seed: int = 0,
    top_k: int = 3,
) -> list[Demonstration]:
    """Imperfect warm-start demonstrations, one per question of ``split``, in order.

    A ``search_fraction`` of them (picked at random) search and answer right: each hop
    thinks, searches for the hop's entity and relation, gets the observation a rollout
    would inject (``retriever``'s top ``top_k`` hits, as Search-R1 formats them; a
    piece with ``generated=False``), and states what it read. Two-hop questions search
    twice. The rest answer at once, without searching, with a wrong guess of the right
    kind (another town, person, year...), so that RL has something to fix.

    A searching demonstration whose query misses the passage it needs searches again
    for the bare name; if that misses too, the question gets a guess instead (with the
    BM25 retriever over the world's corpus this does not happen).
    Observations are not truncated: keep ``top_k`` small enough for ``max_obs_length``.
    """
    if not 0.0 <= search_fraction <= 1.0:
        raise ValueError(f"search_fraction must be in [0, 1], got {search_fraction}")
    questions = world.split(split)
    rng = random.Random(seed)
    searching = set(rng.sample(range(len(questions)), round(search_fraction * len(questions))))

    # observations[i]: one observation per hop of question i (all hops found), else absent.
    observations: dict[int, list[str]] = {i: [] for i in sorted(searching)}
    for depth in range(2):
        wanted = [
            (i, questions[i].hops[depth])
            for i in observations
            if len(questions[i].hops) > depth and len(observations[i]) == depth
        ]
        queries = [_query(hop) for _, hop in wanted]
        hits = _search(retriever, queries, top_k)
        missed = [j for j, (_, hop) in enumerate(wanted) if not _found(world, hop, hits[j])]
        if missed:
            again = _search(retriever, [wanted[j][1].entity for j in missed], top_k)
            for j, found in zip(missed, again, strict=True):
                hits[j] = found
        for j, (i, hop) in enumerate(wanted):
            if _found(world, hop, hits[j]):
                observations[i].append(information(format_documents(hits[j])))
            else:
                del observations[i]

    return [
        _searching(q, observations[i]) if i in observations else _guessing(world, q, rng)
        for i, q in enumerate(questions)
    ]


def name_drills(tokenizer: Any, n: int, seed: int = 0) -> list[Demonstration]:
    """``n`` drills in copying a name from the question, for the warm start.

    Each asks a question of a random relation about an invented name and is answered
    by ``<think>I remember that NAME`` and no more (so no fact, and no end: train
    them with ``to_trajectories(..., eos=False)``). Names are put together from the
    tokenizer's own capitalised word tokens, the pieces of every name in the world,
    so every name token is written in training, as the held-out entities' names must
    be in searches. Tiny models fine-tuned on the demonstrations alone write a name
    they trained on instead, with no word in common, in most searches for new ones.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pieces = _name_pieces(tokenizer)
    if n and not pieces:
        raise ValueError("the tokenizer has no capitalised word tokens to make names of")
    rng = random.Random(seed)
    make = {
        "person": lambda: f"{rng.choice(pieces)} {rng.choice(pieces)}",
        "town": lambda: rng.choice(pieces),
        "organisation": lambda: f"{rng.choice(pieces)} {rng.choice(ORG_KINDS)}",
    }
    drills = []
    for _ in range(n):
        relation = RELATIONS[rng.choice(sorted(RELATIONS))]
        name = make[relation.subject]()
        drills.append(
            Demonstration(
                relation.question.format(s=name), [(f"<think>I remember that {name}", True)]
            )
        )
    return drills


def reading_world(world: World, i: int) -> World:
    """The ``i``-th other world that :func:`reading_demonstrations` reads: ``world``'s
    config with a seed far from its own."""
    return build_world(replace(world.config, seed=world.config.seed + 1_000_003 * (i + 1)))


def reading_demonstrations(
    world: World,
    n_worlds: int = 1,
    search_fraction: float = 0.5,
    seed: int = 0,
    top_k: int = 1,
) -> list[Demonstration]:
    """:func:`demonstrations` for every question (train and test) of ``n_worlds`` other
    worlds of ``world``'s shape, each searched with a BM25 index of its own.

    A tiny model fine-tuned on the demonstrations of one world learns its facts by
    heart rather than reading them off the passage it found; nothing can be learnt by
    heart from worlds it never meets again, only how to read (docs/demo.md). Questions
    that name an entity of ``world``, or answer with one, are left out, so that no
    demonstration contradicts it. The same ``search_fraction`` of them search.
    """
    import tempfile

    from searchr1.retrieval import Retriever

    if n_worlds < 0:
        raise ValueError(f"n_worlds must be >= 0, got {n_worlds}")
    names = {e.name for e in world.entities}
    out: list[Demonstration] = []
    for i in range(n_worlds):
        other = reading_world(world, i)
        with tempfile.TemporaryDirectory(prefix="searchr1-reading-") as tmp:
            corpus = write_world(other, tmp)["corpus"]
            # One thread is plenty for a corpus this small.
            retriever = Retriever.build(corpus, Path(tmp) / "index", threads=1, progress=False)
            for split in SPLITS:
                questions = other.split(split)
                demos = demonstrations(
                    other, split, retriever, search_fraction, seed=seed + i + 1, top_k=top_k
                )
                out += [
                    demo
                    for q, demo in zip(questions, demos, strict=True)
                    if not names & {q.answer, *(hop.entity for hop in q.hops)}
                ]
    return out


def warm_start_trajectories(
    world: World,
    retriever: SearchBackend,
    tokenizer: Any,
    search_fraction: float = 0.5,
    drills: int = 1000,
    seed: int = 0,
    top_k: int = 1,
    reading_worlds: int = 1,
    protocol: str = "search_r1",
) -> list[Trajectory]:
    """The warm start's SFT data (the demo's and ``searchr1 sft``'s): one of
    :func:`demonstrations` per training question, those of ``reading_worlds`` other
    worlds (:func:`reading_demonstrations`), then ``drills`` :func:`name_drills`, in
    the turn ``protocol`` the model will roll out in."""
    demos = demonstrations(world, "train", retriever, search_fraction, seed=seed, top_k=top_k)
    demos += reading_demonstrations(world, reading_worlds, search_fraction, seed, top_k)
    trajectories = to_trajectories(tokenizer, demos, protocol=protocol)
    return trajectories + to_trajectories(
        tokenizer, name_drills(tokenizer, drills, seed), eos=False, protocol=protocol
    )


def _name_pieces(tokenizer: Any) -> list[str]:
    """The vocabulary's capitalised words of 3+ letters (byte-level BPE: "Ġ" is the
    space before a word) that are not words of the templates or the prompt."""
    template_text = [*PROTOCOL_TEXT, *TWO_HOP.values(), *ORG_KINDS, "It Its"]  # + passages
    for relation in RELATIONS.values():
        template_text += [relation.question, relation.wanted, relation.statement]
    template_words = set(re.findall(r"[A-Z][a-z]+", " ".join(template_text)))
    words = (re.fullmatch(r"\u0120([A-Z][a-z]{2,})", token) for token in tokenizer.get_vocab())
    return sorted({w[1] for w in words if w} - template_words)


def _query(hop: Hop) -> str:
    """What a sensible searcher types to find ``hop``'s fact: the name and the relation."""
    return f"{hop.entity} {RELATIONS[hop.relation].query}"


def _searching(question: ToyQuestion, observations: Sequence[str]) -> Demonstration:
    """Think, search, read (once per hop), then answer right.

    Each turn thinks one short thought (what is needed first, then what was read), so
    that a turn stays within the toy config's 48 tokens even with long invented names.
    """
    first = question.hops[0]
    thought = "I need " + RELATIONS[first.relation].wanted.format(s=first.entity) + "."
    pieces: list[tuple[str, bool]] = []
    for hop, observation in zip(question.hops, observations, strict=True):
        turn = f"<think>{thought}</think>\n<search> {_query(hop)} </search>"
        pieces += [(turn, True), (observation, False)]
        thought = _statement(hop)
    pieces.append((f"<think>{thought}</think>\n<answer> {question.answer} </answer>", True))
    return Demonstration(question.question, pieces)


def _guessing(world: World, question: ToyQuestion, rng: random.Random) -> Demonstration:
    """Answer at once with a wrong guess of the right kind (a town for a town...)."""
    last = question.hops[-1]
    kind = RELATIONS[last.relation].answer
    guess = rng.choice(
        [c for c in _guess_candidates(world, kind, last.relation) if c != question.answer]
    )
    if len(question.hops) == 1:
        belief = "I remember that " + _statement(Hop(last.entity, last.relation, guess))
    else:
        belief = f"I think the answer is {guess}."
    turn = f"<think>{belief}</think>\n<answer> {guess} </answer>"
    return Demonstration(question.question, [(turn, True)])


def _search(retriever: SearchBackend, queries: list[str], k: int) -> list[list[Passage]]:
    if not queries:
        return []
    return [list(hits) for hits in retriever.search(queries, k)]


def _found(world: World, hop: Hop, hits: Sequence[Passage]) -> bool:
    """Whether the passage stating ``hop``'s fact is among ``hits``."""
    contents = world.entity(hop.entity).contents
    return any(hit.contents == contents for hit in hits)
