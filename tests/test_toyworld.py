"""The toy world: invented, deterministic, answerable only by search, split by entity."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from searchr1.cli import main
from searchr1.data import load_qa
from searchr1.errors import InputError
from searchr1.retrieval import Hit, Retriever
from searchr1.rollout.prompt import format_documents, information
from searchr1.sft import Demonstration
from searchr1.tags import parse_action
from searchr1.toy.warmstart import (
    demonstrations,
    name_drills,
    reading_demonstrations,
    reading_world,
)
from searchr1.toy.world import (
    OCCUPATIONS,
    RELATIONS,
    Hop,
    World,
    WorldConfig,
    build_world,
    read_world,
    write_world,
)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture(scope="module")
def retriever(world: World, tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    paths = write_world(world, tmp_path_factory.mktemp("world"))
    return Retriever.build(paths["corpus"], paths["corpus"].parent / "index")


def test_default_world_is_sized_for_a_cpu_demo(world: World) -> None:
    kinds = Counter(e.kind for e in world.entities)
    assert kinds == {"person": 300, "organisation": 100, "town": 80}
    assert 300 <= len(world.corpus()) <= 2000
    train, test = world.questions("train"), world.questions("test")
    assert 200 <= len(train) <= 1500 and 100 <= len(test) <= 500
    assert 0.15 < sum(q["hops"] == 2 for q in train + test) / len(train + test) < 0.45
    assert {q["data_source"] for q in train + test} == {"toy-1hop", "toy-2hop"}


def test_a_seed_gives_the_same_world_and_another_seed_another() -> None:
    a, b = build_world(WorldConfig(seed=7)), build_world(WorldConfig(seed=7))
    assert a.corpus() == b.corpus()
    assert a.questions("train") == b.questions("train")
    assert a.questions("test") == b.questions("test")
    other = build_world(WorldConfig(seed=8))
    names_a = {e.name for e in a.entities}
    names_other = {e.name for e in other.entities}
    assert len(names_a & names_other) < 5
    assert a.corpus() != other.corpus()


def test_other_questions_leave_the_names_and_facts_alone() -> None:
    base = build_world(WorldConfig(seed=3))
    more = build_world(WorldConfig(seed=3, questions_per_entity=3, two_hop_fraction=0.9))
    assert base.corpus() == more.corpus()
    assert base.questions("train") != more.questions("train")


def test_names_are_invented_and_unique(world: World) -> None:
    names = [e.name.lower() for e in world.entities]
    assert len(set(names)) == len(names)
    # Even single words are never shared (an organisation's kind, "Guild" etc., aside):
    # a search for one name cannot match another entity's name.
    words = [w for e in world.entities for w in e.name.split()[: 2 if e.kind == "person" else 1]]
    assert len({w.lower() for w in words}) == len(words)
    common = {"the", "and", "town", "born", "was", "guild", "paris", "london"}
    assert not {w.lower() for w in words} & common
    assert all(re.fullmatch(r"[A-Z][a-z]{3,}", w) for w in words)


def test_every_fact_of_an_entity_is_stated_in_its_passage(world: World) -> None:
    for e in world.entities:
        for value in e.facts.values():
            assert value in e.text, (e.name, value)
        assert e.contents == f'"{e.name}"\n{e.text}'
    rows = world.corpus()
    assert len({r["id"] for r in rows}) == len(rows)


def test_single_hop_answers_are_in_the_subjects_passage(world: World) -> None:
    single = [q for q in world.all_questions if len(q.hops) == 1]
    assert len(single) > 300
    for q in single:
        (hop,) = q.hops
        assert q.answer == hop.value == world.entity(q.subject).facts[hop.relation]
        assert q.answer in world.entity(q.subject).text
        assert q.subject in q.question


def test_two_hop_questions_chain_through_a_bridge(world: World) -> None:
    double = [q for q in world.all_questions if len(q.hops) == 2]
    assert len(double) > 100
    for q in double:
        first, second = q.hops
        subject, bridge = world.entity(first.entity), world.entity(second.entity)
        assert subject.facts[first.relation] == first.value == bridge.name
        assert bridge.facts[second.relation] == second.value == q.answer
        # The question names the subject, never the bridge; the subject's passage names
        # the bridge but not the answer; the bridge's passage states the answer but
        # never mentions the subject: one search cannot do.
        assert subject.name in q.question and bridge.name not in q.question
        assert bridge.name in subject.text and q.answer not in subject.text
        assert q.answer in bridge.text and subject.name not in bridge.text
        assert q.row()["entities"] == [subject.name, bridge.name]
    assert len({q.row()["relation"] for q in double}) >= 8


def test_train_and_test_ask_about_different_entities(world: World) -> None:
    train = {q.subject for q in world.split("train")}
    test = {q.subject for q in world.split("test")}
    assert train and test and not train & test
    share = len(test) / (len(train) + len(test))
    assert 0.2 < share < 0.3  # test_fraction 0.25
    ids = [q["id"] for split in ("train", "test") for q in world.questions(split)]
    assert len(set(ids)) == len(ids)
    with pytest.raises(ValueError, match="split"):
        world.questions("dev")  # type: ignore[arg-type]


def test_answers_cannot_be_guessed(world: World) -> None:
    answers = Counter(q.answer for q in world.all_questions)
    ((_, top),) = answers.most_common(1)
    assert top / len(world.all_questions) < 0.1
    assert len(answers) > 200
    # Within each kind of question, too: no answer of a relation covers 10% of them.
    by_relation: dict[str, Counter[str]] = {}
    for q in world.all_questions:
        by_relation.setdefault(q.hops[-1].relation, Counter())[q.answer] += 1
    for relation, counts in by_relation.items():
        if counts.total() >= 30:
            assert counts.most_common(1)[0][1] / counts.total() < 0.1, relation


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**32),
    people=st.integers(2, 40),
    towns=st.integers(2, 15),
    orgs=st.integers(1, 10),
    two_hop=st.floats(0, 1),
)
def test_invariants_hold_for_any_small_world(
    seed: int, people: int, towns: int, orgs: int, two_hop: float
) -> None:
    orgs = min(orgs, people)
    config = WorldConfig(seed, people, towns, orgs, two_hop_fraction=two_hop)
    world = build_world(config)
    names = [e.name.lower() for e in world.entities]
    assert len(set(names)) == len(names) == people + towns + orgs
    train = {q.subject for q in world.split("train")}
    assert not train & {q.subject for q in world.split("test")}
    for q in world.all_questions:
        assert q.answer in world.entity(q.hops[-1].entity).text
        for hop in q.hops:
            assert world.entity(hop.entity).facts[hop.relation] == hop.value
    per_subject = Counter(q.subject for q in world.all_questions)
    assert max(per_subject.values(), default=0) <= config.questions_per_entity


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_towns": 1}, "2 towns"),
        ({"n_orgs": 0}, "organisation"),
        ({"n_people": 5, "n_orgs": 6}, "founder"),
        ({"questions_per_entity": 0}, "questions_per_entity"),
        ({"two_hop_fraction": 1.5}, "two_hop_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
    ],
)
def test_config_is_checked(kwargs: dict[str, int | float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kwargs)  # type: ignore[arg-type]


def test_write_world_round_trips(world: World, tmp_path: Path) -> None:
    paths = write_world(world, tmp_path / "w")
    assert sorted(paths) == ["corpus", "manifest", "test", "train"]
    corpus = [json.loads(line) for line in paths["corpus"].read_text().splitlines()]
    assert corpus == world.corpus()
    train = load_qa(paths["train"])
    assert [q.question for q in train] == [q["question"] for q in world.questions("train")]
    assert {q.data_source for q in train} == {"toy-1hop", "toy-2hop"}
    assert len(load_qa(paths["test"])) == len(world.split("test"))
    manifest = json.loads(paths["manifest"].read_text())
    assert WorldConfig(**manifest["config"]) == world.config
    assert manifest["counts"]["passages"] == len(corpus)


def test_bm25_finds_the_subject_of_a_question(world: World, retriever: Retriever) -> None:
    single = [q for q in world.all_questions if len(q.hops) == 1]
    for queries in ([q.subject for q in single], [q.question for q in single]):
        results = retriever.search(queries, k=3)
        found = [
            world.entity(q.subject).contents in {h.contents for h in hits}
            for q, hits in zip(single, results, strict=True)
        ]
        assert sum(found) / len(found) >= 0.9


def observations(demo: Demonstration) -> list[str]:
    return [text for text, generated in demo.pieces if not generated]


def test_demonstrations_search_and_answer_or_guess(world: World, retriever: Retriever) -> None:
    questions = world.split("train")
    demos = demonstrations(world, "train", retriever, search_fraction=0.5, seed=1, top_k=2)
    assert [d.question for d in demos] == [q.question for q in questions]
    searched = 0
    for q, demo in zip(questions, demos, strict=True):
        said = [text for text, generated in demo.pieces if generated]
        assert all(text.startswith("<think>") for text in said)
        actions = [parse_action(text) for text in said]
        assert [a.kind for a in actions[:-1]] == ["search"] * (len(said) - 1)
        assert actions[-1].kind == "answer"
        seen = observations(demo)
        if seen:
            searched += 1
            # One search per hop; each observation is exactly what the rollout loop
            # injects for that query, and it holds the passage the hop needs.
            assert len(seen) == len(q.hops) and actions[-1].content == q.answer
            queries = [a.content or "" for a in actions[:-1]]
            hits = retriever.search(queries, k=2)
            for hop, query, found, text in zip(q.hops, queries, hits, seen, strict=True):
                assert hop.entity in query
                assert text == information(format_documents(found))
                assert world.entity(hop.entity).contents in {h.contents for h in found}
            flags = [generated for _, generated in demo.pieces]
            assert flags == [*[True, False] * len(q.hops), True]
        else:
            assert len(said) == 1 and actions[0].content != q.answer
            assert "<search>" not in said[0]
    assert abs(searched / len(demos) - 0.5) < 0.02
    two_hop_searches = [d for d in demos if len(observations(d)) == 2]
    assert len(two_hop_searches) > 30


def test_guesses_are_of_the_right_kind(world: World, retriever: Retriever) -> None:
    demos = demonstrations(world, "test", retriever, search_fraction=0.0)
    kinds = {e.name: e.kind for e in world.entities}
    for q, demo in zip(world.split("test"), demos, strict=True):
        guess = parse_action(demo.pieces[0][0]).content or ""
        kind = RELATIONS[q.hops[-1].relation].answer
        if kind == "year":
            assert guess.isdigit() and len(guess) in (3, 4)
        elif kind == "occupation":
            assert guess in OCCUPATIONS
        else:
            assert kinds.get(guess) == kind
        assert guess != q.answer


def test_search_fraction_and_seed(world: World, retriever: Retriever) -> None:
    every = demonstrations(world, "test", retriever, search_fraction=1.0)
    assert all(observations(d) for d in every)
    a = demonstrations(world, "test", retriever, search_fraction=0.3, seed=5)
    assert a == demonstrations(world, "test", retriever, search_fraction=0.3, seed=5)
    assert a != demonstrations(world, "test", retriever, search_fraction=0.3, seed=6)
    with pytest.raises(ValueError, match="search_fraction"):
        demonstrations(world, "test", retriever, search_fraction=2.0)


def test_reading_demonstrations_come_from_other_worlds(world: World) -> None:
    names = {e.name for e in world.entities}
    demos = reading_demonstrations(world, 1, search_fraction=0.5, seed=2)
    assert demos == reading_demonstrations(world, 1, search_fraction=0.5, seed=2)
    # All questions of one other world of the same shape, but those naming this one's.
    assert 0.9 * len(world.all_questions) <= len(demos) <= len(world.all_questions)
    assert not {d.question for d in demos} & {q.question for q in world.all_questions}
    searching = [d for d in demos if observations(d)]
    assert abs(len(searching) / len(demos) - 0.5) < 0.05
    for demo in searching:
        # What a search found there is a passage of the other world, not of this one.
        titles = re.findall(r'\(Title: "([^"]+)"\)', "".join(observations(demo)))
        assert titles and not names & set(titles)
    two = reading_demonstrations(world, 2, search_fraction=0.5, seed=2)
    assert two[: len(demos)] == demos and len(two) > 1.8 * len(demos)
    assert reading_demonstrations(world, 0) == []
    with pytest.raises(ValueError, match="n_worlds"):
        reading_demonstrations(world, -1)


def test_reading_demonstrations_leave_out_questions_about_the_world() -> None:
    config = WorldConfig(seed=4, n_people=20, n_towns=6, n_orgs=5)
    small = build_world(config)
    assert reading_demonstrations(small, 1)
    other = reading_world(small, 0)
    assert other.config == replace(config, seed=other.config.seed) and other.config.seed != 4
    # A world whose entities are those of the other world it would read: every
    # question names one of them, so none is left.
    assert reading_demonstrations(World(config, other.entities, ()), 1) == []


class NameOnly:
    """A retriever that finds a passage only when the query is exactly its title."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.queries: list[str] = []

    def search(self, queries: list[str], k: int = 3) -> Sequence[Sequence[Hit]]:
        self.queries += queries
        by_name = {e.name: e for e in self.world.entities}
        return [[Hit("0", 1.0, by_name[q].contents)] if q in by_name else [] for q in queries]


def test_a_missed_search_is_retried_with_the_name_then_given_up() -> None:
    world = build_world(WorldConfig(n_people=20, n_towns=6, n_orgs=5))
    fake = NameOnly(world)
    demos = demonstrations(world, "train", fake, search_fraction=1.0)
    # Every first query (name + relation) misses; the bare name then finds it.
    assert all(observations(d) for d in demos)
    assert any(q in {e.name for e in world.entities} for q in fake.queries)

    # A retriever that finds nothing: every question becomes a guess.
    class Nothing:
        def search(self, queries: list[str], k: int = 3) -> list[list[Hit]]:
            return [[] for _ in queries]

    assert not any(observations(d) for d in demonstrations(world, "train", Nothing(), 1.0))


def test_hop_sentences_read_naturally() -> None:
    from searchr1.toy.warmstart import _statement

    assert _statement(Hop("Ana Bel", "occupation", "astronomer")) == "Ana Bel was an astronomer."
    assert _statement(Hop("Ana Bel", "birth_town", "Vorby")) == "Ana Bel was born in Vorby."


def test_world_command(tmp_path: Path) -> None:
    out = tmp_path / "w"
    args = ["world", "--out", str(out), "--seed", "4", "--people", "30", "--towns", "8"]
    result = CliRunner().invoke(main, [*args, "--orgs", "6", "--two-hop-fraction", "0.5"])
    assert result.exit_code == 0, result.output
    assert "wrote a toy world" in result.stdout and "44 passages" in result.stdout
    manifest = json.loads((out / "world.json").read_text())
    config = WorldConfig(seed=4, n_people=30, n_towns=8, n_orgs=6, two_hop_fraction=0.5)
    assert manifest["config"] == asdict(config)
    assert (out / "corpus.jsonl").read_text().count("\n") == 44
    assert build_world(config).questions("test") == [
        json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()
    ]
    bad = CliRunner().invoke(main, ["world", "--out", str(out), "--people", "3", "--orgs", "4"])
    assert bad.exit_code == 2 and "n_people" in bad.output


def test_init_model_command(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    world_dir = tmp_path / "w"
    write_world(build_world(WorldConfig(n_people=20, n_towns=6, n_orgs=5)), world_dir)
    notes = tmp_path / "notes.txt"
    notes.write_text("Zorblat Quenfix wrote this line.\n")
    out = tmp_path / "model"
    args = ["init-model", "--out", str(out), "--world", str(world_dir), "--text", str(notes)]
    sizes = ["--vocab-size", "400", "--hidden-size", "64", "--layers", "1", "--heads", "2"]
    result = CliRunner().invoke(main, [*args, *sizes])
    assert result.exit_code == 0, result.output
    said = re.search(r"with ([\d,]+) parameters", result.stdout)
    assert said is not None
    count = int(said[1].replace(",", ""))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert count == model.num_parameters()
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 64
    tok = transformers.AutoTokenizer.from_pretrained(out)
    # The tokenizer learned the world's text: its names take fewer tokens than letters
    # it never saw.
    name = build_world(WorldConfig(n_people=20, n_towns=6, n_orgs=5)).entities[0].name
    assert len(tok(name)["input_ids"]) < len(tok("Xqzjvw Wqyxjkz")["input_ids"])
    again = CliRunner().invoke(main, [*args, *sizes])
    assert again.exit_code == 2 and "--overwrite" in again.output
    nothing = CliRunner().invoke(main, ["init-model", "--out", str(tmp_path / "m2")])
    assert nothing.exit_code == 2 and "--world" in nothing.output


def test_name_drills_copy_names_made_of_vocabulary_words(bpe_world_tokenizer: object) -> None:
    tok = bpe_world_tokenizer
    drills = name_drills(tok, 200, seed=3)
    assert len(drills) == 200 and drills == name_drills(tok, 200, seed=3)
    assert drills != name_drills(tok, 200, seed=4)
    questions = {r.question.split("{s}")[0] for r in RELATIONS.values()}
    vocabulary = {t[1:] for t in tok.get_vocab() if t.startswith("\u0120")}  # type: ignore[attr-defined]
    for drill in drills:
        ((piece, generated),) = drill.pieces
        assert generated and piece.startswith("<think>I remember that ")
        name = piece.removeprefix("<think>I remember that ")
        assert name in drill.question and any(drill.question.startswith(q) for q in questions)
        words = name.split()
        assert 1 <= len(words) <= 2 and all(w in vocabulary for w in words), name
        # Template words never make a name ("Which", "Its"...); organisation kinds end one.
        assert not {"Which", "What", "Who", "In", "Its", "Doc", "Title"} & set(words), name
    assert {len(d.pieces[0][0].split()) for d in drills} == {4, 5}  # towns; people, orgs
    assert name_drills(tok, 0) == []
    with pytest.raises(ValueError, match="n must be"):
        name_drills(tok, -1)


@pytest.fixture(scope="module")
def bpe_world_tokenizer(world: World) -> object:
    pytest.importorskip("transformers")
    from searchr1.toy.models import train_tokenizer

    return train_tokenizer(world.texts(), 2048)


def test_read_world_rebuilds_the_written_world(world: World, tmp_path: Path) -> None:
    write_world(world, tmp_path / "w")
    again = read_world(tmp_path / "w")
    assert again.config == world.config and again.corpus() == world.corpus()
    assert again.questions("train") == world.questions("train")

    with pytest.raises(InputError, match=r"world\.json: not found"):
        read_world(tmp_path)
    train = tmp_path / "w" / "train.jsonl"
    train.write_text(train.read_text().replace("?", "!", 1))
    with pytest.raises(InputError, match=r"train.jsonl:1: not the first question"):
        read_world(tmp_path / "w")
    (tmp_path / "w" / "world.json").write_text('{"config": {"seed": "x", "n_people": 1}}')
    with pytest.raises(InputError, match="not a toy world's settings"):
        read_world(tmp_path / "w")


@pytest.mark.slow
def test_sft_command(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    world_dir, model_dir, out = tmp_path / "w", tmp_path / "init", tmp_path / "sft"
    small = ["--people", "20", "--towns", "6", "--orgs", "5"]
    tiny = ["--vocab-size", "400", "--hidden-size", "64", "--heads", "2", "--copy-steps", "3"]
    runner = CliRunner()
    for args in (
        ["world", "--out", str(world_dir), *small],
        ["index", "--corpus", str(world_dir / "corpus.jsonl"), "--out", str(tmp_path / "i")],
        ["init-model", "--out", str(model_dir), "--world", str(world_dir), *tiny],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    assert "pre-trained to copy" in result.stdout
    args = ["sft", "--model", str(model_dir), "--world", str(world_dir), "--index"]
    args += [str(tmp_path / "i"), "--out", str(out), "--steps", "3", "--drills", "5"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    small_world = build_world(WorldConfig(n_people=20, n_towns=6, n_orgs=5))
    questions = len(small_world.split("train"))
    other = reading_demonstrations(small_world, 1)  # --reading-worlds' default
    said = re.search(
        r"fine-tuned on (\d+) demonstrations \((\d+) searching\) of this world and 1 "
        r"other\(s\), and 5 drills",
        result.stdout,
    )
    assert said is not None, result.stdout
    assert int(said[1]) == questions + len(other) > questions
    assert int(said[2]) == round(questions / 2) + sum(bool(observations(d)) for d in other)
    before = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir))
    after = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert not all(
        (a == b).all() for a, b in zip(before.parameters(), after.parameters(), strict=True)
    )
    assert (out / "tokenizer.json").exists()
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    missing = runner.invoke(main, [*args[:4], str(tmp_path), *args[5:], "--overwrite"])
    assert missing.exit_code == 1 and "world.json: not found" in missing.output
