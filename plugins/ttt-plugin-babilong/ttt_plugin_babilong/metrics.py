"""Metrics: exact match of the answer tokens (trained models) and BABILong's label check of free text.

The label check is how the published BABILong numbers of chat models are scored: the answer counts
when, in the first sentence of the lowercased output, the target is the only one of the task's labels
mentioned, after leaving out the labels the question itself mentions (they are never the answer, and
a model may repeat them: "the apple was in the garden before the kitchen"). Labels are matched as
whole words here (the published check matches substrings, which would find "milk" in "milkman").
For a list target ("apple,milk") every item and nothing else must be mentioned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from ttt_core.episode import Episode

_FIRST_SENTENCE = re.compile(r"[.!?\n]")


def first_sentence(text: str) -> str:
    return _FIRST_SENTENCE.split(text.strip(), maxsplit=1)[0]


def _mentioned(labels: Iterable[str], text: str) -> set[str]:
    words = set(re.findall(r"[^\W_]+", text.lower()))
    return {label.lower() for label in labels if label.lower() in words}


def label_match(output: str, target: str, question: str, labels: Iterable[str]) -> bool:
    """Whether generated `output` answers `target` by BABILong's label rule (see the module docstring)."""
    labels = list(labels)
    candidates = _mentioned(labels, first_sentence(output)) - _mentioned(labels, question)
    wanted = {t.strip().lower() for t in target.split(",") if t.strip()}
    return bool(wanted) and candidates == wanted


def exact_match(pred_ids: Tensor, episode: Episode, eos_id: int) -> Tensor:
    """`[B]` bool: every answer token right (the target's real tokens but its closing `[EOS]`).

    With `pred_ids` the argmax of teacher-forced answer logits this equals exact match of greedy
    decoding: greedy decoding first differs from teacher forcing right after its first mistake.
    """
    target = episode.target
    answer = target.mask & (target.ids != eos_id)
    right = (pred_ids == target.ids) | ~answer
    return answer.any(-1) & right.all(-1)
