"""Exact match of the answer tokens, and BABILong's label check of generated text (hand-made cases)."""

from __future__ import annotations

import pytest
import torch
from ttt_core.episode import Episode, Segment

from ttt_plugin_babilong.generators import TASK_LABELS
from ttt_plugin_babilong.metrics import exact_match, label_match

PLACES = TASK_LABELS["qa1"]
QA5 = TASK_LABELS["qa5"]


@pytest.mark.parametrize(
    "output, target, question, labels, expected",
    [
        ("kitchen", "kitchen", "Where is Mary?", PLACES, True),
        ("Mary is in the kitchen.", "kitchen", "Where is Mary?", PLACES, True),
        ("KITCHEN", "kitchen", "Where is Mary?", PLACES, True),
        ("The garden.", "kitchen", "Where is Mary?", PLACES, False),
        ("kitchen or garden", "kitchen", "Where is Mary?", PLACES, False),  # two labels: no answer
        ("Kitchen. Before that she was in the garden.", "kitchen", "Where is Mary?", PLACES, True),  # first sentence only
        ("I don't know.", "kitchen", "Where is Mary?", PLACES, False),
        # a label of the question is never the answer and may be repeated
        ("Before the kitchen, the apple was in the office.", "office", "Where was the apple before the kitchen?", PLACES, True),
        ("The kitchen.", "kitchen", "Where was the apple before the kitchen?", PLACES, False),
        ("Fred gave it to Bill", "Bill", "Who did Fred give the milk to?", QA5, True),
        ("Fred gave the milk to Bill", "Bill", "Who did Fred give the football to?", QA5, False),  # milk is another label
        ("apple and milk", "apple,milk", "What is Daniel carrying?", ("apple", "football", "milk"), True),
        ("apple", "apple,milk", "What is Daniel carrying?", ("apple", "football", "milk"), False),
        ("the officer left", "office", "Where is Mary?", PLACES, False),  # whole words only
    ],
)
def test_label_match(output: str, target: str, question: str, labels, expected: bool) -> None:
    assert label_match(output, target, question, labels) is expected


def test_exact_match_scores_the_answer_tokens_not_the_end_token() -> None:
    eos = 2
    target = Segment.from_lists([[10, 11, eos], [12, eos], [13, eos]])
    query = Segment.from_lists([[5], [5], [5]])
    episode = Episode((query,), query, query, target)
    pred = torch.tensor([[10, 11, 7], [12, 9, 9], [14, eos, 0]])
    assert exact_match(pred, episode, eos).tolist() == [True, True, False]
    assert exact_match(torch.tensor([[10, 9, eos], [12, eos, 0], [13, eos, 0]]), episode, eos).tolist() == [False, True, True]
