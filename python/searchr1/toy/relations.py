"""What a toy world is made of: the relations between its entities (how each fact is
asked, searched for and stated, in one and two hops), and the words that names and
facts are drawn from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BIRTH_YEARS",
    "FLAG_COLOURS",
    "NAME_CODAS",
    "NAME_ONSETS",
    "NAME_VOWELS",
    "OCCUPATIONS",
    "ORG_AGE",
    "ORG_KINDS",
    "RELATIONS",
    "TOWN_ENDINGS",
    "TOWN_YEARS",
    "TRADES",
    "TWO_HOP",
    "Relation",
]

# Name parts: every syllable starts with a consonant, so no name is an English stop word.
NAME_ONSETS = (
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
    "kr", "st", "th", "sh",
)  # fmt: skip
NAME_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ou")
NAME_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "k")
TOWN_ENDINGS = ("ford", "holm", "wick", "stad", "dale", "mere", "by", "ton")
ORG_KINDS = (
    "Guild", "Company", "Society", "Works", "Trust", "Press", "Foundry", "Cooperative",
    "Consortium", "Institute",
)  # fmt: skip
OCCUPATIONS = (
    "weaver", "potter", "cartographer", "glassblower", "clockmaker", "shipwright",
    "beekeeper", "bookbinder", "brewer", "mason", "tanner", "cooper", "astronomer",
    "botanist", "surveyor", "printer", "luthier", "apothecary", "lamplighter", "ropemaker",
    "miller", "chandler", "engraver", "falconer", "saddler", "tailor", "vintner",
    "locksmith", "bellfounder", "cheesemaker",
)  # fmt: skip
TRADES = (
    "shipbuilding", "glassmaking", "printing", "banking", "brewing", "clockmaking",
    "weaving", "mining", "insurance", "shipping", "publishing", "milling", "tanning",
    "pottery", "timber", "wool", "salt", "silk", "dye", "rope",
)  # fmt: skip
FLAG_COLOURS = (
    "red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey",
    "crimson", "teal", "gold",
)  # fmt: skip
#: Years: people are born in BIRTH_YEARS, towns founded in TOWN_YEARS; organisations
#: are founded 25 to 65 years after their founder's birth.
BIRTH_YEARS = (1700, 1960)
TOWN_YEARS = (800, 1899)
ORG_AGE = (25, 65)


@dataclass(frozen=True)
class Relation:
    """A fact's wording: its question, what a searcher looks for, how it is stated."""

    #: What the subject is: "person", "organisation" or "town".
    subject: str
    #: What the answer is: an entity kind, "year" or "occupation".
    answer: str
    #: The single-hop question; {s} is the subject.
    question: str
    #: A noun phrase for the thing looked for, e.g. "the town where {s} was born".
    wanted: str
    #: Words added to the subject's name in a search query.
    query: str
    #: The fact as a sentence, {s} the subject and {v} the value.
    statement: str


RELATIONS: dict[str, Relation] = {
    "birth_town": Relation(
        subject="person",
        answer="town",
        question="In which town was {s} born?",
        wanted="the town where {s} was born",
        query="born",
        statement="{s} was born in {v}.",
    ),
    "birth_year": Relation(
        subject="person",
        answer="year",
        question="In what year was {s} born?",
        wanted="the year {s} was born",
        query="born",
        statement="{s} was born in {v}.",
    ),
    "occupation": Relation(
        subject="person",
        answer="occupation",
        question="What was the occupation of {s}?",
        wanted="the occupation of {s}",
        query="occupation",
        statement="{s} was {a} {v}.",
    ),
    "employer": Relation(
        subject="person",
        answer="organisation",
        question="Which organisation did {s} work for?",
        wanted="the organisation {s} worked for",
        query="worked for",
        statement="{s} worked for {v}.",
    ),
    "founder": Relation(
        subject="organisation",
        answer="person",
        question="Who founded {s}?",
        wanted="the founder of {s}",
        query="founded by",
        statement="{s} was founded by {v}.",
    ),
    "founded": Relation(
        subject="organisation",
        answer="year",
        question="In what year was {s} founded?",
        wanted="the year {s} was founded",
        query="founded",
        statement="{s} was founded in {v}.",
    ),
    "headquarters": Relation(
        subject="organisation",
        answer="town",
        question="In which town is {s} headquartered?",
        wanted="the town where {s} is headquartered",
        query="headquartered",
        statement="{s} is headquartered in {v}.",
    ),
    "town_founded": Relation(
        subject="town",
        answer="year",
        question="In what year was {s} founded?",
        wanted="the year {s} was founded",
        query="founded",
        statement="{s} was founded in {v}.",
    ),
    "twin": Relation(
        subject="town",
        answer="town",
        question="Which town is twinned with {s}?",
        wanted="the town twinned with {s}",
        query="twinned",
        statement="{s} is twinned with {v}.",
    ),
}

#: Two-hop questions: (first relation, second relation) -> question about the subject {s}.
#: The bridge's passage never mentions the subject (towns do not list their natives,
#: organisations name only their founder, and nobody works for what they founded).
TWO_HOP: dict[tuple[str, str], str] = {
    ("employer", "headquarters"): (
        "In which town is the organisation that {s} worked for headquartered?"
    ),
    ("employer", "founded"): "In what year was the organisation that {s} worked for founded?",
    ("employer", "founder"): "Who founded the organisation that {s} worked for?",
    ("birth_town", "twin"): "Which town is twinned with the town where {s} was born?",
    ("birth_town", "town_founded"): "In what year was the town where {s} was born founded?",
    ("founder", "birth_town"): "In which town was the founder of {s} born?",
    ("founder", "birth_year"): "In what year was the founder of {s} born?",
    ("founder", "occupation"): "What was the occupation of the founder of {s}?",
    ("headquarters", "town_founded"): (
        "In what year was the town where {s} is headquartered founded?"
    ),
    ("headquarters", "twin"): "Which town is twinned with the town where {s} is headquartered?",
}
