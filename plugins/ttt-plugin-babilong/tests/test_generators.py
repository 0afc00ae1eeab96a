"""Every generated story follows from its facts (the checker replays them), deterministically, per split."""

from __future__ import annotations

import pytest

from ttt_plugin_babilong.checker import check_story, derive_answer
from ttt_plugin_babilong.generators import TASK_LABELS, TASKS, generate, split_of
from ttt_plugin_babilong.world import InconsistentStory, parse_question


@pytest.mark.parametrize("task", TASKS)
def test_answers_follow_from_the_facts_and_from_the_supporting_facts_alone(task: str) -> None:
    kinds = set()
    for split, n in (("train", 120), ("test", 30)):
        for index in range(n):
            story = generate(task, split, index)
            assert all(part in TASK_LABELS[task] for part in story.answer.split(","))
            check_story(story.facts, story.question, story.answer, story.supporting)
            kinds.add(parse_question(story.question).kind)
    expected = {"qa4": 2, "qa5": 5}.get(task, 1)
    assert len(kinds) == expected  # every question form of the task is asked


@pytest.mark.parametrize("task", ["qa6", "qa7", "qa8"])
def test_every_answer_of_the_small_label_sets_occurs(task: str) -> None:
    answers = {generate(task, "train", i).answer for i in range(150)}
    wanted = {"qa6": {"yes", "no"}, "qa7": {"none", "one", "two"}, "qa8": {"nothing", "apple", "milk", "football"}}[task]
    assert wanted <= answers
    if task == "qa8":
        assert any("," in a for a in answers)  # some actor carries two objects


def test_supporting_fact_counts_match_the_task_names() -> None:
    counts = {task: [len(generate(task, "train", i).supporting) for i in range(60)] for task in TASKS}
    assert set(counts["qa1"]) == {1} and set(counts["qa4"]) == {1} and set(counts["qa5"]) == {1}
    assert set(counts["qa2"]) == {2}
    assert min(counts["qa3"]) >= 3


def test_the_checker_refuses_wrong_answers_and_impossible_events() -> None:
    facts = ["Mary went to the kitchen.", "John moved to the office.", "Mary travelled to the garden."]
    assert derive_answer(facts, "Where is Mary?") == "garden"
    with pytest.raises(InconsistentStory, match="the facts say 'garden'"):
        check_story(facts, "Where is Mary?", "kitchen", (2,))
    with pytest.raises(InconsistentStory, match="supporting facts alone"):
        check_story(facts, "Where is Mary?", "garden", (0,))
    with pytest.raises(InconsistentStory, match="without holding"):
        derive_answer(["Mary went to the kitchen.", "Mary dropped the milk."], "Where is the milk?")
    with pytest.raises(InconsistentStory, match="which Mary holds"):
        derive_answer(["Mary went to the kitchen.", "John went to the kitchen.", "Mary got the milk there.",
                       "John took the milk there."], "Where is the milk?")
    with pytest.raises(InconsistentStory, match="0 answers"):
        derive_answer(facts, "Where is Sandra?")
    trail = ["John went to the office.", "John picked up the apple there.", "John went to the kitchen.",
             "John put down the apple.", "Sandra went to the kitchen.", "Sandra grabbed the apple there.",
             "Sandra journeyed to the garden."]
    assert derive_answer(trail, "Where was the apple before the garden?") == "kitchen"
    assert derive_answer(trail, "Where was the apple before the kitchen?") == "office"
    relations = ["The office is north of the kitchen.", "The garden is west of the kitchen."]
    assert derive_answer(relations, "What is the kitchen south of?") == "office"
    assert derive_answer(relations, "What is east of the garden?") == "kitchen"
    gives = ["Fred went to the office.", "Bill went to the office.", "Fred took the milk there.",
             "Fred gave the milk to Bill.", "Bill handed the milk to Fred."]
    assert derive_answer(gives, "Who gave the milk?") == "Bill"
    assert derive_answer(gives, "What did Fred give to Bill?") == "milk"
    assert derive_answer(gives, "Who did Fred give the milk to?") == "Bill"
    assert derive_answer(gives, "Is Fred in the office?") == "yes" and derive_answer(gives, "Is Bill in the garden?") == "no"
    assert derive_answer(gives, "How many objects is Fred carrying?") == "one"
    assert derive_answer(gives + ["Fred took the apple there."], "What is Fred carrying?") == "apple,milk"
    assert derive_answer(gives, "What is Bill carrying?") == "nothing"


def test_stories_are_deterministic_and_depend_on_the_seed() -> None:
    for task in TASKS:
        assert generate(task, "train", 7, seed=3) == generate(task, "train", 7, seed=3)
    assert [generate("qa1", "train", i, seed=0) for i in range(5)] != [generate("qa1", "train", i, seed=1) for i in range(5)]


@pytest.mark.parametrize("task", TASKS)
def test_splits_share_no_story(task: str) -> None:
    texts = {}
    for split, n in (("train", 300), ("val", 40), ("test", 40)):
        stories = [generate(task, split, i, seed=s) for s in (0, 1) for i in range(n // 2)]
        assert all(split_of(s.facts, s.question) == split for s in stories)
        texts[split] = {(s.facts, s.question) for s in stories}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["val"] and not texts["val"] & texts["test"]


def test_fact_counts_follow_the_asked_range() -> None:
    lengths = {len(generate("qa1", "train", i, facts=(3, 4)).facts) for i in range(40)}
    assert lengths == {3, 4}


def test_stories_and_noise_do_not_depend_on_the_process_hash_seed() -> None:
    """String hashing (set order) differs between processes; samples must not."""
    import os
    import subprocess
    import sys

    code = (
        "import random; from ttt_plugin_babilong.generators import TASKS, generate\n"
        "from ttt_plugin_babilong.noise import inject, load_corpus\n"
        "for qa in TASKS:\n"
        "    print([inject(generate(qa, 'train', i).facts, load_corpus(), 'train', 200, random.Random(i)) for i in range(15)])"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
