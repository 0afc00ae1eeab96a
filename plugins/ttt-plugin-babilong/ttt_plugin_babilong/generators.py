"""Story generators for bAbI qa1-qa8, deterministic from (task, split, seed, index).

- qa1 single supporting fact: actors move; "Where is Mary?"
- qa2 two supporting facts: actors move, take and drop objects; "Where is the milk?"
- qa3 three supporting facts: "Where was the milk before the kitchen?" (the object's trail of places)
- qa4 two-argument relations: "The office is north of the kitchen."; "What is north of the kitchen?"
- qa5 three-argument relations: objects are given between actors; "Who gave the milk to Fred?"
- qa6 yes/no questions: "Is Mary in the kitchen?"
- qa7 counting: "How many objects is Mary carrying?" (none, one, two, three)
- qa8 lists: "What is Mary carrying?" ("apple,milk", or "nothing")

Every event obeys the world's rules (`World(strict=True)` replays it as it is written), the
supporting fact ids are kept, and answers are within the task's `TASK_LABELS`.

Disjoint splits. A story belongs to one split by a hash of its text (1 in 10 test, 1 in 10 val, the
rest train); a split's generator skips stories of the others. So no story text (facts and question)
is ever in two splits, whatever the seeds, even for qa4 whose stories are few.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import attrs

from ttt_plugin_babilong.world import (
    ACTORS,
    ACTORS_QA5,
    COUNTS,
    DIRECTIONS,
    DROP_VERBS,
    GIVE_VERBS,
    LOCATIONS,
    MOVE_VERBS,
    OBJECTS,
    OPPOSITE,
    TAKE_VERBS,
    Fact,
    InconsistentStory,
    Question,
    World,
    render_fact,
    render_question,
)

SPLITS: tuple[str, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = ("qa1", "qa2", "qa3", "qa4", "qa5", "qa6", "qa7", "qa8")
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "qa1": LOCATIONS,
    "qa2": LOCATIONS,
    "qa3": LOCATIONS,
    "qa4": LOCATIONS,
    "qa5": (*ACTORS_QA5, *OBJECTS),
    "qa6": ("yes", "no"),
    "qa7": COUNTS,
    "qa8": (*OBJECTS, "nothing"),  # a list answer ("apple,milk") is made of these
}
DEFAULT_FACTS: dict[str, tuple[int, int]] = {
    "qa1": (2, 10),
    "qa2": (2, 20),
    "qa3": (4, 30),
    "qa4": (2, 2),
    "qa5": (4, 20),
    "qa6": (2, 10),
    "qa7": (2, 15),
    "qa8": (2, 15),
}
"""Facts per story (min, max) as in bAbI: qa1 two to ten moves, qa3 the longest, qa4 always two."""

_ATTEMPTS = 1000


@attrs.frozen
class Story:
    """A plain bAbI sample: facts (one sentence each), question, answer and supporting fact ids."""

    task: str
    facts: tuple[str, ...]
    question: str
    answer: str
    supporting: tuple[int, ...]

    @property
    def text(self) -> str:
        return " ".join(self.facts)


def split_of(facts: tuple[str, ...], question: str) -> str:
    """The split a story belongs to, from a hash of its text."""
    bucket = zlib.crc32("\n".join((*facts, question)).encode()) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def generate(task: str, split: str, index: int, seed: int = 0, facts: tuple[int, int] | None = None) -> Story:
    """Story `index` of `split`: a pure function of its arguments."""
    if task not in GENERATORS:
        raise ValueError(f"unknown bAbI task {task!r}; expected one of {', '.join(GENERATORS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    lo, hi = facts or DEFAULT_FACTS[task]
    rng = random.Random(f"ttt/babilong/{task}/{split}/{seed}/{index}")
    for _ in range(_ATTEMPTS):
        story = GENERATORS[task](rng, rng.randint(lo, hi))
        if story is not None and split_of(story.facts, story.question) == split:
            return story
    raise RuntimeError(f"{task}: no {split} story with {lo}..{hi} facts found in {_ATTEMPTS} attempts")


# ---------------------------------------------------------------------------------------------
# A story being written: the world, and which facts put each thing where it is


class _Writer:
    def __init__(self, rng: random.Random, actors: tuple[str, ...]) -> None:
        self.rng = rng
        self.actors = actors
        self.world = World(strict=True)
        self.facts: list[str] = []
        self.last_move: dict[str, int] = {}
        self.hold_fact: dict[str, int] = {}  # object -> the take or give that gave it to its holder
        self.drop_support: dict[str, tuple[int, int]] = {}  # object -> (move of the dropper, drop)
        self.causes: dict[str, list[set[int]]] = {}  # object -> the facts behind each entry of its trail
        self.gives: list[tuple[int, Fact]] = []
        self.handled: dict[str, list[int]] = {}  # actor -> the takes, drops and gives they were part of

    def write(self, fact: Fact) -> None:
        idx = len(self.facts)
        trail_before = {o: len(t) for o, t in self.world.history.items()}
        self.world.apply(fact)
        verbs = {"move": MOVE_VERBS, "take": TAKE_VERBS, "drop": DROP_VERBS, "give": GIVE_VERBS}.get(fact.kind)
        self.facts.append(render_fact(fact, self.rng.choice(verbs) if verbs else fact.other))
        grown = [o for o, t in self.world.history.items() if len(t) > trail_before.get(o, 0)]
        if fact.kind in ("take", "drop", "give"):
            for actor in {fact.actor, fact.other} - {""}:
                self.handled.setdefault(actor, []).append(idx)
        if fact.kind == "move":
            self.last_move[fact.actor] = idx
            for obj in grown:
                self.causes.setdefault(obj, []).append({idx, self.hold_fact[obj]})
        elif fact.kind == "take":
            self.hold_fact[fact.thing] = idx
            for obj in grown:
                self.causes.setdefault(obj, []).append({idx, self.last_move[fact.actor]})
        elif fact.kind == "drop":
            self.hold_fact.pop(fact.thing)
            self.drop_support[fact.thing] = (self.last_move[fact.actor], idx)
        elif fact.kind == "give":
            self.hold_fact[fact.thing] = idx
            self.gives.append((idx, fact))

    # the events possible now
    def moves(self, toward_others: bool = False) -> list[Fact]:
        at = self.world.actor_at
        if toward_others:
            places = sorted(set(at.values()))  # sorted: set order changes with the hash seed
            return [Fact("move", a, loc) for a in self.actors for loc in places if at.get(a) != loc]
        return [Fact("move", a, loc) for a in self.actors for loc in LOCATIONS if at.get(a) != loc]

    def takes(self) -> list[Fact]:
        w = self.world
        return [
            Fact("take", a, o) for a in self.actors if a in w.actor_at for o in OBJECTS
            if o not in w.holder and w.object_at.get(o, w.actor_at[a]) == w.actor_at[a]
        ]

    def drops(self) -> list[Fact]:
        return [Fact("drop", a, o) for o, a in self.world.holder.items()]

    def gives_possible(self) -> list[Fact]:
        at = self.world.actor_at
        return [
            Fact("give", a, o, r) for o, a in self.world.holder.items() for r in self.actors
            if r != a and r in at and at.get(a) == at[r]
        ]

    def random_event(self, weights: dict[str, float]) -> Fact:
        options = {
            "move": self.moves, "take": self.takes, "drop": self.drops, "give": self.gives_possible,
            "meet": lambda: self.moves(toward_others=True),
        }
        kinds = [k for k in weights if options[k]()]
        kind = self.rng.choices(kinds, [weights[k] for k in kinds])[0]
        return self.rng.choice(options[kind]())

    def story(self, task: str, question: Question, answer: str, supporting: set[int]) -> Story:
        return Story(task, tuple(self.facts), render_question(question), answer, tuple(sorted(supporting)))


# ---------------------------------------------------------------------------------------------
# The tasks


def qa1(rng: random.Random, n: int) -> Story | None:
    writer = _Writer(rng, ACTORS)
    for _ in range(n):
        writer.write(writer.random_event({"move": 1.0}))
    actor = rng.choice(sorted(writer.world.actor_at))
    question = Question("where_actor", (actor,))
    return writer.story("qa1", question, writer.world.actor_at[actor], {writer.last_move[actor]})


def qa2(rng: random.Random, n: int) -> Story | None:
    writer = _Writer(rng, ACTORS)
    for _ in range(n):
        writer.write(writer.random_event({"move": 0.5, "take": 0.3, "drop": 0.2}))
    w = writer.world
    candidates = sorted(o for o in OBJECTS if w.where_is_object(o) is not None)
    if not candidates:
        return None
    obj = rng.choice(candidates)
    if obj in w.holder:
        supporting = {writer.hold_fact[obj], writer.last_move[w.holder[obj]]}
    else:
        supporting = set(writer.drop_support[obj])
    return writer.story("qa2", Question("where_object", (obj,)), w.where_is_object(obj), supporting)


def qa3(rng: random.Random, n: int) -> Story | None:
    writer = _Writer(rng, ACTORS)
    for _ in range(n):
        writer.write(writer.random_event({"move": 0.5, "take": 0.3, "drop": 0.2}))
    trails = writer.world.history
    candidates = [
        (obj, i) for obj in sorted(trails) for i, loc in enumerate(trails[obj]) if i > 0 and trails[obj].count(loc) == 1
    ]
    if not candidates:
        return None
    obj, i = rng.choice(candidates)
    trail, causes = trails[obj], writer.causes[obj]
    question = Question("where_before", (obj, trail[i]))
    return writer.story("qa3", question, trail[i - 1], causes[i - 1] | causes[i])


def qa4(rng: random.Random, n: int) -> Story | None:
    writer = _Writer(rng, ())
    a, b, c = rng.sample(LOCATIONS, 3)
    pairs = [(a, b), (c, b) if rng.random() < 0.5 else (b, c)]
    relations = [Fact("relation", first, second, rng.choice(DIRECTIONS)) for first, second in pairs[:n]]
    for fact in relations:
        writer.write(fact)
    fact_index = rng.randrange(len(relations))
    first, second, direction = relations[fact_index].actor, relations[fact_index].thing, relations[fact_index].other
    forms = [  # each fact read forwards or backwards
        (Question("what_is_dir_of", (direction, second)), first),
        (Question("what_is_x_dir_of", (first, direction)), second),
        (Question("what_is_dir_of", (OPPOSITE[direction], first)), second),
        (Question("what_is_x_dir_of", (second, OPPOSITE[direction])), first),
    ]
    question, answer = rng.choice(forms)
    try:
        if writer.world.answer(question) != answer:
            return None
    except InconsistentStory:  # two places in that direction: ask another story
        return None
    return writer.story("qa4", question, answer, {fact_index})


def qa5(rng: random.Random, n: int) -> Story | None:
    writer = _Writer(rng, ACTORS_QA5)
    for _ in range(n):
        writer.write(writer.random_event({"move": 0.3, "meet": 0.3, "take": 0.25, "drop": 0.05, "give": 0.6}))
    if not writer.gives:
        return None
    _, give = rng.choice(writer.gives)
    kind, args = rng.choice([
        ("who_gave_to", (give.thing, give.other)),
        ("whom_did_give", (give.actor, give.thing)),
        ("what_did_give", (give.actor, give.other)),
        ("who_received", (give.thing,)),
        ("who_gave", (give.thing,)),
    ])
    question = Question(kind, args)
    answer = writer.world.answer(question)
    # the last give the question matches is the one that answers it
    world = World(strict=False)
    for idx, fact in writer.gives:
        world.gives = [fact]
        try:
            if world.answer(question) == answer:
                supporting = idx
        except InconsistentStory:
            pass
    return writer.story("qa5", question, answer, {supporting})


def qa6(rng: random.Random, n: int) -> Story | None:
    writer = _Writer(rng, ACTORS)
    for _ in range(n):
        writer.write(writer.random_event({"move": 1.0}))
    actor = rng.choice(sorted(writer.world.actor_at))
    here = writer.world.actor_at[actor]
    place = here if rng.random() < 0.5 else rng.choice([loc for loc in LOCATIONS if loc != here])
    question = Question("is_actor_in", (actor, place))
    return writer.story("qa6", question, "yes" if place == here else "no", {writer.last_move[actor]})


def _carrying(task: str, kind: str):
    """qa7 and qa8: what an actor holds follows from every take, drop and give they were part of."""

    def generate_story(rng: random.Random, n: int) -> Story | None:
        writer = _Writer(rng, ACTORS)
        for _ in range(n):
            writer.write(writer.random_event({"move": 0.35, "take": 0.35, "drop": 0.15, "give": 0.15, "meet": 0.15}))
        if not writer.handled:
            return None
        actor = rng.choice(sorted(writer.handled))
        question = Question(kind, (actor,))
        return writer.story(task, question, writer.world.answer(question), set(writer.handled[actor]))

    generate_story.__name__ = task
    return generate_story


qa7 = _carrying("qa7", "how_many")
qa8 = _carrying("qa8", "carrying")

GENERATORS: dict[str, Callable[[random.Random, int], Story | None]] = {
    "qa1": qa1, "qa2": qa2, "qa3": qa3, "qa4": qa4, "qa5": qa5, "qa6": qa6, "qa7": qa7, "qa8": qa8,
}
