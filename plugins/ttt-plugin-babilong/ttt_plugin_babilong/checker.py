"""Re-derive a story's answer from its words: parse every fact, replay it in the world, ask.

Used by the tests on every generator (the answer must follow from the facts, and from the supporting
facts alone) and by `ttt data` to mark the facts of loaded samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from ttt_plugin_babilong.world import InconsistentStory, World, parse_fact, parse_question


def derive_answer(facts: Sequence[str], question: str, strict: bool = True) -> str:
    """The answer the facts imply; InconsistentStory if a fact breaks the world's rules (`strict`),
    is not a bAbI sentence, or the question has no single answer."""
    world = World(strict=strict)
    for sentence in facts:
        fact = parse_fact(sentence)
        if fact is None:
            raise InconsistentStory(f"not a bAbI fact: {sentence!r}")
        world.apply(fact)
    return world.answer(parse_question(question))


def check_story(facts: Sequence[str], question: str, answer: str, supporting: Sequence[int]) -> None:
    """Raise InconsistentStory unless the facts give `answer` and so do the supporting facts alone."""
    derived = derive_answer(facts, question)
    if derived != answer:
        raise InconsistentStory(f"the facts say {derived!r}, the story says {answer!r}")
    if not supporting or sorted(set(supporting)) != list(supporting) or supporting[-1] >= len(facts):
        raise InconsistentStory(f"supporting fact ids {list(supporting)} are not sorted ids of the {len(facts)} facts")
    alone = derive_answer([facts[i] for i in supporting], question, strict=False)
    if alone != answer:
        raise InconsistentStory(f"the supporting facts alone say {alone!r}, the story says {answer!r}")
