"""A toy world where only search finds the answer: invented people, towns and
organisations, a passage about each, and questions about them.

Every name is made of invented syllables drawn from a seed, so no pretrained model
can know the answers, and answers are drawn from many candidates (dozens of towns,
people and organisations, centuries of years), so they cannot be guessed either. A
question is answerable from the corpus alone:

- single-hop ("In which town was Belor Vantis born?"): the answer is stated in the
  passage of the entity the question names;
- two-hop ("In which town is the organisation that Belor Vantis worked for
  headquartered?"): the first passage names a bridge entity, whose own passage states
  the answer and does not mention the question's subject, so it takes two searches.

Each fact is stated in exactly one passage (that of its subject), so a search for an
entity's name finds everything there is to know about it. Questions are split into
train and test by their subject entity: test questions ask about entities no training
question asks about. :mod:`searchr1.toy.warmstart` writes the warm start's
demonstrations of a world.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from searchr1.errors import InputError
from searchr1.toy.relations import (
    BIRTH_YEARS,
    FLAG_COLOURS,
    NAME_CODAS,
    NAME_ONSETS,
    NAME_VOWELS,
    OCCUPATIONS,
    ORG_AGE,
    ORG_KINDS,
    RELATIONS,
    TOWN_ENDINGS,
    TOWN_YEARS,
    TRADES,
    TWO_HOP,
    Relation,
)

__all__ = [
    "BIRTH_YEARS",
    "OCCUPATIONS",
    "ORG_AGE",
    "ORG_KINDS",
    "RELATIONS",
    "SPLITS",
    "TOWN_YEARS",
    "TWO_HOP",
    "Entity",
    "Hop",
    "Relation",
    "Split",
    "ToyQuestion",
    "World",
    "WorldConfig",
    "article",
    "build_world",
    "read_world",
    "world_paths",
    "write_world",
]

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class WorldConfig:
    """The size and the seed of a toy world (defaults: a corpus of 480 passages and
    about 960 questions, small enough to index and train on a CPU)."""

    seed: int = field(default=0, metadata={"help": "seed of everything: names, facts, splits"})
    n_people: int = field(default=300, metadata={"help": "people (>= organisations)"})
    n_towns: int = field(default=80, metadata={"help": "towns (>= 2)"})
    n_orgs: int = field(default=100, metadata={"help": "organisations (>= 1)"})
    questions_per_entity: int = field(
        default=2, metadata={"help": "questions asked about each entity, at most"}
    )
    two_hop_fraction: float = field(
        default=0.3, metadata={"help": "chance that a question is two-hop"}
    )
    test_fraction: float = field(
        default=0.25, metadata={"help": "share of the entities whose questions are test ones"}
    )

    def __post_init__(self) -> None:
        if self.n_towns < 2 or self.n_orgs < 1:
            raise ValueError("a world needs at least 2 towns and 1 organisation")
        if self.n_people < max(self.n_orgs, 2):
            raise ValueError(
                f"n_people ({self.n_people}) must be >= n_orgs ({self.n_orgs}) and >= 2: "
                "each organisation has its own founder"
            )
        if self.questions_per_entity < 1:
            raise ValueError("questions_per_entity must be >= 1")
        for name in ("two_hop_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class Entity:
    """A person, town or organisation: its facts (relation -> value, values as text)
    and the passage that states them."""

    name: str
    kind: str
    facts: Mapping[str, str] = field(hash=False)
    text: str

    @property
    def contents(self) -> str:
        """The passage in Search-R1's corpus form: ``"Title"\\ntext``."""
        return f'"{self.name}"\n{self.text}'


@dataclass(frozen=True)
class Hop:
    """One step of a question: ``relation`` of ``entity`` is ``value``; the fact is
    stated in ``entity``'s passage."""

    entity: str
    relation: str
    value: str


@dataclass(frozen=True)
class ToyQuestion:
    """A question, its answer, and the chain of facts that leads there."""

    id: str
    question: str
    answer: str
    split: Split
    hops: tuple[Hop, ...]

    @property
    def subject(self) -> str:
        """The entity the question names."""
        return self.hops[0].entity

    def row(self) -> dict[str, Any]:
        """The question as a QA row: FlashRAG's fields, ``data_source`` ("toy-1hop" or
        "toy-2hop"), and ``hops``, ``entities`` (subject, then bridge) and ``relation``."""
        return {
            "id": self.id,
            "question": self.question,
            "golden_answers": [self.answer],
            "data_source": f"toy-{len(self.hops)}hop",
            "hops": len(self.hops),
            "entities": [hop.entity for hop in self.hops],
            "relation": ".".join(hop.relation for hop in self.hops),
        }


class World:
    """The entities of a toy world, their passages and the questions about them."""

    def __init__(
        self, config: WorldConfig, entities: Sequence[Entity], questions: Sequence[ToyQuestion]
    ) -> None:
        self.config = config
        self.entities = tuple(entities)
        self.all_questions = tuple(questions)
        self._by_name = {e.name: e for e in self.entities}

    def entity(self, name: str) -> Entity:
        """The entity called ``name`` (KeyError if there is none)."""
        return self._by_name[name]

    def of_kind(self, kind: str) -> list[Entity]:
        """Every entity of ``kind`` ("person", "town" or "organisation"), in order."""
        return [e for e in self.entities if e.kind == kind]

    def corpus(self) -> list[dict[str, str]]:
        """One passage per entity, as Search-R1 corpus rows ``{"id", "contents"}``."""
        return [{"id": str(i), "contents": e.contents} for i, e in enumerate(self.entities)]

    def split(self, split: Split) -> list[ToyQuestion]:
        """The questions of ``split`` ("train" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return [q for q in self.all_questions if q.split == split]

    def questions(self, split: Split) -> list[dict[str, Any]]:
        """The questions of ``split`` as QA rows (see :meth:`ToyQuestion.row`)."""
        return [q.row() for q in self.split(split)]

    def texts(self) -> Iterator[str]:
        """Every passage and question: the text to train a tokenizer on."""
        for e in self.entities:
            yield e.contents
        for q in self.all_questions:
            yield q.question

    def __repr__(self) -> str:
        kinds = Counter(e.kind for e in self.entities)
        counts = ", ".join(f"{n} {kind}s" for kind, n in kinds.items())
        return f"World(seed={self.config.seed}, {counts}, {len(self.all_questions)} questions)"


class _Names:
    """Invented words, never the same twice (case-insensitively) within a world."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int], ending: str = "") -> str:
        rng = self.rng
        for _ in range(1000):
            n = rng.randint(*syllables)
            parts = [
                rng.choice(NAME_ONSETS) + rng.choice(NAME_VOWELS) + rng.choice(NAME_CODAS)
                for _ in range(n)
            ]
            word = ("".join(parts) + ending).capitalize()
            if len(word) >= 4 and word.lower() not in self.used:
                self.used.add(word.lower())
                return word
        # About a million two-syllable words: not reached below ~100k entities.
        raise RuntimeError("ran out of fresh names; make a smaller world")

    def person(self) -> str:
        return f"{self.word((2, 2))} {self.word((2, 2))}"

    def town(self) -> str:
        ending = self.rng.choice(TOWN_ENDINGS) if self.rng.random() < 0.5 else ""
        return self.word((2, 2) if not ending else (1, 2), ending)

    def organisation(self) -> str:
        return f"{self.word((2, 2))} {self.rng.choice(ORG_KINDS)}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def build_world(config: WorldConfig | None = None) -> World:
    """The toy world of ``config`` (the same config gives the same world, byte for byte)."""
    config = config or WorldConfig()
    # Each stage has its own random stream, so that asking other questions (or a
    # different number) leaves the names and facts of a seed unchanged.
    names = _Names(random.Random(f"{config.seed}/names"))
    rng = random.Random(f"{config.seed}/facts")
    people = [names.person() for _ in range(config.n_people)]
    towns = [names.town() for _ in range(config.n_towns)]
    orgs = [names.organisation() for _ in range(config.n_orgs)]

    birth_year = {p: rng.randint(*BIRTH_YEARS) for p in people}
    birth_town = {p: rng.choice(towns) for p in people}
    occupation = {p: rng.choice(OCCUPATIONS) for p in people}
    founder = dict(zip(orgs, rng.sample(people, len(orgs)), strict=True))
    founded = {o: birth_year[founder[o]] + rng.randint(*ORG_AGE) for o in orgs}
    headquarters = {o: rng.choice(towns) for o in orgs}
    founded_by = {p: o for o, p in founder.items()}
    employer = {}
    for p in people:
        # Nobody works for what they founded (but with one organisation someone must).
        choices = [o for o in orgs if o != founded_by.get(p)]
        employer[p] = rng.choice(choices) if choices else orgs[0]
    paired = rng.sample(towns, len(towns) - len(towns) % 2)
    twin = {}
    for a, b in zip(paired[::2], paired[1::2], strict=True):
        twin[a], twin[b] = b, a

    entities = []
    for p in people:
        facts = {
            "birth_town": birth_town[p],
            "birth_year": str(birth_year[p]),
            "occupation": occupation[p],
            "employer": employer[p],
        }
        text = (
            f"{p} was {article(occupation[p])} {occupation[p]} born in {birth_town[p]} "
            f"in {birth_year[p]}. {p} worked for {employer[p]}."
        )
        entities.append(Entity(p, "person", facts, text))
    for o in orgs:
        trade, kind = rng.choice(TRADES), o.rsplit(" ", 1)[1].lower()
        facts = {"founder": founder[o], "founded": str(founded[o]), "headquarters": headquarters[o]}
        text = (
            f"{o} is {article(trade)} {trade} {kind} founded in {founded[o]} by {founder[o]}. "
            f"It is headquartered in {headquarters[o]}."
        )
        entities.append(Entity(o, "organisation", facts, text))
    for t in towns:
        year = rng.randint(*TOWN_YEARS)
        population = round(rng.randint(800, 400_000), -2)
        facts = {"town_founded": str(year)}
        text = (
            f"{t} is a town founded in {year}, with about {population:,} inhabitants. "
            f"Its flag is {rng.choice(FLAG_COLOURS)}."
        )
        if t in twin:
            facts["twin"] = twin[t]
            text += f" {t} is twinned with {twin[t]}."
        entities.append(Entity(t, "town", facts, text))
    return World(config, entities, _ask(config, entities))


def _ask(config: WorldConfig, entities: Sequence[Entity]) -> list[ToyQuestion]:
    """Up to ``questions_per_entity`` questions about each entity, split by entity."""
    rng = random.Random(f"{config.seed}/questions")
    by_name = {e.name: e for e in entities}
    split_of: dict[str, Split] = {}
    for kind in ("person", "organisation", "town"):
        names = [e.name for e in entities if e.kind == kind]
        rng.shuffle(names)
        n_test = round(config.test_fraction * len(names))
        split_of.update(dict.fromkeys(names[:n_test], "test"))
        split_of.update(dict.fromkeys(names[n_test:], "train"))

    asked: list[tuple[Split, str, str, tuple[Hop, ...]]] = []
    for e in entities:
        one_hop: list[tuple[str, tuple[Hop, ...]]] = [
            (RELATIONS[r].question.format(s=e.name), (Hop(e.name, r, e.facts[r]),))
            for r in RELATIONS
            if r in e.facts
        ]
        two_hop: list[tuple[str, tuple[Hop, ...]]] = []
        for (first, second), template in TWO_HOP.items():
            bridge = by_name.get(e.facts.get(first, ""))
            if bridge is None or second not in bridge.facts:
                continue
            answer = bridge.facts[second]
            # Only a question that the first passage alone cannot answer by chance.
            if answer in e.text or e.name in bridge.text:
                continue
            chain = (Hop(e.name, first, bridge.name), Hop(bridge.name, second, answer))
            two_hop.append((template.format(s=e.name), chain))
        for _ in range(config.questions_per_entity):
            pool = two_hop if two_hop and rng.random() < config.two_hop_fraction else one_hop
            pool = pool or two_hop
            if not pool:
                break
            question, hops = pool.pop(rng.randrange(len(pool)))
            asked.append((split_of[e.name], question, hops[-1].value, hops))

    out = []
    for split in SPLITS:
        rows = [a for a in asked if a[0] == split]
        rng.shuffle(rows)
        for i, (_, question, answer, hops) in enumerate(rows):
            out.append(ToyQuestion(f"toy-{split}-{i:05d}", question, answer, split, hops))
    return out


def world_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where :func:`write_world` puts a world's files: ``corpus``, ``train``, ``test``
    and ``manifest``."""
    out = Path(out_dir)
    paths = {name: out / f"{name}.jsonl" for name in ("corpus", "train", "test")}
    paths["manifest"] = out / "world.json"
    return paths


def write_world(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Writes ``corpus.jsonl``, ``train.jsonl``, ``test.jsonl`` and ``world.json`` (the
    config and the counts) into ``out_dir`` (made if needed); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = world_paths(out)
    tables: dict[str, list[dict[str, Any]]] = {
        "corpus": list(world.corpus()),
        "train": world.questions("train"),
        "test": world.questions("test"),
    }
    for name, rows in tables.items():
        with paths[name].open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = {
        "what": "a searchr1 toy world: invented entities, one passage each, QA split by entity",
        "config": asdict(world.config),
        "counts": {
            "passages": len(tables["corpus"]),
            **Counter(e.kind for e in world.entities),
            "train_questions": len(tables["train"]),
            "test_questions": len(tables["test"]),
            "two_hop_questions": sum(len(q.hops) == 2 for q in world.all_questions),
        },
        "files": {name: paths[name].name for name in tables},
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return paths


def read_world(world_dir: str | Path) -> World:
    """The world that :func:`write_world` wrote into ``world_dir``, rebuilt from the
    settings in its ``world.json`` (the same seed builds the same world)."""
    path = Path(world_dir) / "world.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        settings = manifest["config"]
        config = WorldConfig(**settings)
    except FileNotFoundError:
        raise InputError(
            f"{path}: not found; is {world_dir} a toy world (`searchr1 world`)?"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: not a toy world's settings ({exc})") from exc
    world = build_world(config)
    # The world is rebuilt, not read: check it is the one whose questions are there.
    train = path.with_name("train.jsonl")
    questions = world.questions("train")
    if train.exists() and questions:
        with train.open(encoding="utf-8") as f:
            first = f.readline().strip()
        if first != json.dumps(questions[0], ensure_ascii=False):
            raise InputError(
                f"{train}:1: not the first question of the world {path.name} describes "
                "(edited, or written by another version of searchr1?)"
            )
    return world
