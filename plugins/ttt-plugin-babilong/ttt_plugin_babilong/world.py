"""The bAbI world: its entities, the sentences that state facts and questions, and a simulator.

Generators write facts with `render_*`; the checker (`ttt_plugin_babilong.checker`) parses the text
back with `parse_fact` / `parse_question` and replays it in `World`, so a story is checked from its
words, not from the generator's bookkeeping.

`World(strict=True)` refuses what cannot happen (taking an object someone holds, dropping or giving
one not held, giving to someone elsewhere); `strict=False` replays any subset of a story (the
supporting facts alone) with what is known, leaving unknown locations unknown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

ACTORS: tuple[str, ...] = ("Mary", "John", "Sandra", "Daniel")  # qa1-qa3
ACTORS_QA5: tuple[str, ...] = ("Bill", "Fred", "Jeff", "Mary")
LOCATIONS: tuple[str, ...] = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS: tuple[str, ...] = ("apple", "football", "milk")
DIRECTIONS: tuple[str, ...] = ("north", "south", "east", "west")
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

MOVE_VERBS: tuple[str, ...] = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
TAKE_VERBS: tuple[str, ...] = ("got", "grabbed", "picked up", "took")
DROP_VERBS: tuple[str, ...] = ("dropped", "discarded", "put down", "left")
GIVE_VERBS: tuple[str, ...] = ("gave", "handed", "passed")

ALL_ACTORS: tuple[str, ...] = tuple(dict.fromkeys(ACTORS + ACTORS_QA5))


class InconsistentStory(ValueError):
    """A story breaks the world's rules, or its question has no single answer."""


# ---------------------------------------------------------------------------------------------
# Facts and questions as data


@attrs.frozen
class Fact:
    """One event or relation: `kind` is move, take, drop, give or relation."""

    kind: str
    actor: str = ""  # the subject (the first location of a relation)
    thing: str = ""  # object, destination, or the second location of a relation
    other: str = ""  # the recipient of a give; the direction of a relation


@attrs.frozen
class Question:
    kind: str
    args: tuple[str, ...]


def render_fact(fact: Fact, verb: str) -> str:
    """The sentence of a fact with the given verb (the direction for a relation)."""
    if fact.kind == "move":
        return f"{fact.actor} {verb} the {fact.thing}."
    if fact.kind == "take":
        return f"{fact.actor} {verb} the {fact.thing} there."
    if fact.kind == "drop":
        return f"{fact.actor} {verb} the {fact.thing}."
    if fact.kind == "give":
        return f"{fact.actor} {verb} the {fact.thing} to {fact.other}."
    if fact.kind == "relation":
        return f"The {fact.actor} is {fact.other} of the {fact.thing}."
    raise ValueError(f"unknown fact kind {fact.kind!r}")


QUESTION_TEMPLATES: dict[str, str] = {
    "where_actor": "Where is {0}?",
    "where_object": "Where is the {0}?",
    "where_before": "Where was the {0} before the {1}?",
    "what_is_dir_of": "What is {0} of the {1}?",
    "what_is_x_dir_of": "What is the {0} {1} of?",
    "who_gave_to": "Who gave the {0} to {1}?",
    "whom_did_give": "Who did {0} give the {1} to?",
    "what_did_give": "What did {0} give to {1}?",
    "who_received": "Who received the {0}?",
    "who_gave": "Who gave the {0}?",
    "is_actor_in": "Is {0} in the {1}?",
    "how_many": "How many objects is {0} carrying?",
    "carrying": "What is {0} carrying?",
}
COUNTS: tuple[str, ...] = ("none", "one", "two", "three")


def render_question(question: Question) -> str:
    return QUESTION_TEMPLATES[question.kind].format(*question.args)


def _alternatives(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_A, _L, _O, _D = (f"({_alternatives(x)})" for x in (ALL_ACTORS, LOCATIONS, OBJECTS, DIRECTIONS))
_FACT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("move", rf"{_A} (?:{_alternatives(MOVE_VERBS)}) the {_L}\."),
        ("take", rf"{_A} (?:{_alternatives(TAKE_VERBS)}) the {_O}(?: there)?\."),
        ("give", rf"{_A} (?:{_alternatives(GIVE_VERBS)}) the {_O} to {_A}\."),
        ("drop", rf"{_A} (?:{_alternatives(DROP_VERBS)}) the {_O}(?: there)?\."),
        ("relation", rf"The {_L} is {_D} of the {_L}\."),
    )
)
_QUESTION_PATTERNS: dict[str, re.Pattern[str]] = {
    kind: re.compile(
        re.escape(template).replace(r"\{0\}", "(\\w+)").replace(r"\{1\}", "(\\w+)"), re.IGNORECASE
    )
    for kind, template in QUESTION_TEMPLATES.items()
}


def _canonical(word: str) -> str:
    for vocabulary in (ALL_ACTORS, LOCATIONS, OBJECTS, DIRECTIONS):
        for known in vocabulary:
            if known.lower() == word.lower():
                return known
    return word


def parse_fact(sentence: str) -> Fact | None:
    """The fact a sentence states, or None for any other sentence (noise)."""
    text = sentence.strip()
    for kind, pattern in _FACT_PATTERNS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        words = [_canonical(w) for w in match.groups()]
        if kind == "move" or kind == "take" or kind == "drop":
            return Fact(kind, words[0], words[1])
        if kind == "give":
            return Fact(kind, words[0], words[1], words[2])
        return Fact(kind, words[0], words[2], words[1])  # The A is D of the B
    return None


def parse_question(text: str) -> Question:
    text = text.strip()
    for kind, pattern in _QUESTION_PATTERNS.items():
        match = pattern.fullmatch(text)
        if match is not None:
            return Question(kind, tuple(_canonical(w) for w in match.groups()))
    raise InconsistentStory(f"not a bAbI question: {text!r}")


# ---------------------------------------------------------------------------------------------
# The simulator


class World:
    """Who is where, who holds what, where each object has been, who gave what to whom."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.actor_at: dict[str, str] = {}
        self.holder: dict[str, str] = {}  # object -> actor holding it
        self.object_at: dict[str, str] = {}  # object -> last known location
        self.history: dict[str, list[str]] = {}  # object -> locations it has been in, in order
        self.gives: list[Fact] = []
        self.relations: set[tuple[str, str, str]] = set()  # (a, direction, b): a is direction of b

    def _refuse(self, why: str) -> None:
        if self.strict:
            raise InconsistentStory(why)

    def _place(self, obj: str, location: str | None) -> None:
        if location is None:
            return
        self.object_at[obj] = location
        trail = self.history.setdefault(obj, [])
        if not trail or trail[-1] != location:
            trail.append(location)

    def apply(self, fact: Fact) -> None:
        if fact.kind == "move":
            self.actor_at[fact.actor] = fact.thing
            for obj, holder in self.holder.items():
                if holder == fact.actor:
                    self._place(obj, fact.thing)
        elif fact.kind == "take":
            owner = self.holder.get(fact.thing)
            if owner is not None:
                self._refuse(f"{fact.actor} takes the {fact.thing}, which {owner} holds")
            here, there = self.actor_at.get(fact.actor), self.object_at.get(fact.thing)
            if here is None:
                self._refuse(f"{fact.actor} takes the {fact.thing} at an unknown place")
            elif there is not None and there != here and owner is None:
                self._refuse(f"{fact.actor} takes the {fact.thing} in the {here}, but it is in the {there}")
            self.holder[fact.thing] = fact.actor
            self._place(fact.thing, here)
        elif fact.kind == "drop":
            if self.holder.get(fact.thing) != fact.actor:
                self._refuse(f"{fact.actor} drops the {fact.thing} without holding it")
            self.holder.pop(fact.thing, None)
            self._place(fact.thing, self.actor_at.get(fact.actor))
        elif fact.kind == "give":
            if self.holder.get(fact.thing) != fact.actor:
                self._refuse(f"{fact.actor} gives the {fact.thing} without holding it")
            here, there = self.actor_at.get(fact.actor), self.actor_at.get(fact.other)
            if fact.other == fact.actor or here is None or here != there:
                self._refuse(f"{fact.actor} gives the {fact.thing} to {fact.other}, who is not with them")
            self.holder[fact.thing] = fact.other
            self.gives.append(fact)
        elif fact.kind == "relation":
            self.relations.add((fact.actor, fact.other, fact.thing))
            self.relations.add((fact.thing, OPPOSITE[fact.other], fact.actor))
        else:
            raise ValueError(f"unknown fact kind {fact.kind!r}")

    def where_is_object(self, obj: str) -> str | None:
        holder = self.holder.get(obj)
        if holder is not None and holder in self.actor_at:
            return self.actor_at[holder]
        return self.object_at.get(obj)

    def carried(self, actor: str) -> list[str]:
        return sorted(o for o, holder in self.holder.items() if holder == actor)

    def answer(self, question: Question) -> str:
        """The single answer, or InconsistentStory when there is none or several."""
        kind, args = question.kind, question.args
        answers: list[str]
        if kind == "where_actor":
            answers = [self.actor_at[args[0]]] if args[0] in self.actor_at else []
        elif kind == "where_object":
            found = self.where_is_object(args[0])
            answers = [found] if found is not None else []
        elif kind == "where_before":
            trail = self.history.get(args[0], [])
            positions = [i for i, loc in enumerate(trail) if loc == args[1]]
            answers = [trail[positions[0] - 1]] if len(positions) == 1 and positions[0] > 0 else []
        elif kind == "what_is_dir_of":
            answers = sorted({a for a, d, b in self.relations if d == args[0] and b == args[1]})
        elif kind == "what_is_x_dir_of":
            answers = sorted({b for a, d, b in self.relations if a == args[0] and d == args[1]})
        elif kind == "is_actor_in":
            answers = [("yes" if self.actor_at[args[0]] == args[1] else "no")] if args[0] in self.actor_at else []
        elif kind == "how_many":
            answers = [COUNTS[len(self.carried(args[0]))]]
        elif kind == "carrying":
            answers = [",".join(self.carried(args[0])) or "nothing"]
        else:
            answers = self._give_answer(kind, args)
        if len(answers) != 1:
            raise InconsistentStory(f"{render_question(question)!r} has {len(answers)} answers: {answers}")
        return answers[0]

    def _give_answer(self, kind: str, args: tuple[str, ...]) -> list[str]:
        """Questions about gives are about the last give that matches."""
        match = {
            "who_gave_to": lambda g: (g.thing, g.other) == args,
            "whom_did_give": lambda g: (g.actor, g.thing) == args,
            "what_did_give": lambda g: (g.actor, g.other) == args,
            "who_received": lambda g: g.thing == args[0],
            "who_gave": lambda g: g.thing == args[0],
        }.get(kind)
        if match is None:
            raise InconsistentStory(f"unknown question kind {kind!r}")
        found = [g for g in self.gives if match(g)]
        if not found:
            return []
        last = found[-1]
        field = {"who_gave_to": "actor", "whom_did_give": "other", "what_did_give": "thing",
                 "who_received": "other", "who_gave": "actor"}[kind]
        return [getattr(last, field)]
