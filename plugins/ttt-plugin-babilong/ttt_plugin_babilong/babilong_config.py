"""Config of the `babilong_qa*` tasks: torch-free, so that recipes validate fast."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from ttt_core.config import non_negative, one_of, positive

from ttt_plugin_babilong.generators import TASK_LABELS

SPLITS: tuple[str, ...] = ("train", "val", "test")
_LENGTH = re.compile(r"(\d+)([kKmM]?)")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def parse_length(value: str | int) -> int:
    """"0k" -> 0, "1k" -> 1024, "4k" -> 4096, 1500 -> 1500 (tokens of the context)."""
    if isinstance(value, bool):
        raise ValueError(f"option 'length' must be tokens (e.g. 1024) or a size such as '4k'; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"option 'length' must be >= 0; got {value}")
        return value
    match = _LENGTH.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"option 'length' must be tokens (e.g. 1024) or a size such as '0k', '1k', '4k'; got {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _length(_instance: object, _attribute: attrs.Attribute, value: object) -> None:
    parse_length(value)  # type: ignore[arg-type]


def _optional_positive(_instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        positive(_instance, attribute, value)


@attrs.define
class BabilongConfig:
    """A BABILong task setting (the bAbI task itself is the component's name, e.g. `babilong_qa1`).

    `length`: context tokens (facts plus noise), "0k" for the plain story, "1k" = 1024 tokens.
    `noise_paths`: text files or directories of `*.txt` for the distractor text; empty: the
    standard library's `pydoc_data.topics` (see `ttt_plugin_babilong.noise`).
    `source`: "generated", or "loaded" to read `path` (published layouts, see `loaders`): its
    records are the `loaded_split` split (a directory of train/val/test files gives all three);
    other splits stay generated.
    `seed`: the data seed (training stream, val and test sets). `size`: the training stream cycles
    over that many samples. `min_facts` / `max_facts`: story length in facts (default: the task's).
    `segment_tokens` / `segment_sentences`: context segments for recurrences (`segmenting = "task"`):
    whole sentences packed up to that many tokens, or that many sentences per segment; neither: one.
    `buckets`: hash buckets of the word tokenizer for words outside the bAbI vocabulary.
    """

    length: str = attrs.field(default="0k", converter=str, validator=_length)
    noise_paths: list[str] = attrs.field(factory=list)
    source: str = attrs.field(default="generated", validator=one_of("generated", "loaded"))
    path: str | None = None
    loaded_split: str = attrs.field(default="test", validator=one_of(*SPLITS))
    seed: int = attrs.field(default=0, validator=non_negative)
    size: int = attrs.field(default=1_000_000, validator=positive)
    val_samples: int = attrs.field(default=500, validator=non_negative)
    test_samples: int = attrs.field(default=1000, validator=non_negative)
    min_facts: int | None = attrs.field(default=None, validator=_optional_positive)
    max_facts: int | None = attrs.field(default=None, validator=_optional_positive)
    segment_tokens: int | None = attrs.field(default=None, validator=_optional_positive)
    segment_sentences: int | None = attrs.field(default=None, validator=_optional_positive)
    buckets: int = attrs.field(default=1024, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.source == "loaded" and self.path is None:
            raise ValueError("option 'source' is 'loaded' but no 'path' names the data")
        if self.source == "generated" and self.path is not None:
            raise ValueError("option 'path' is read only with source = 'loaded'")
        if self.path is not None and not Path(self.path).exists():
            raise ValueError(f"option 'path': {self.path}: no such file or directory")
        for name in self.noise_paths:
            if not Path(name).exists():
                raise ValueError(f"option 'noise_paths': {name}: no such file or directory")
        if self.segment_tokens is not None and self.segment_sentences is not None:
            raise ValueError("options 'segment_tokens' and 'segment_sentences' exclude each other; give one")
        if self.min_facts is not None and self.max_facts is not None and self.min_facts > self.max_facts:
            raise ValueError(f"option 'min_facts' ({self.min_facts}) > 'max_facts' ({self.max_facts})")

    @property
    def length_tokens(self) -> int:
        return parse_length(self.length)

    @property
    def length_name(self) -> str:
        """The published name of the length: "0k", "1k", "4k", ... (else the token count)."""
        n = self.length_tokens
        return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _qa_tasks(_instance: object, attribute: attrs.Attribute, value: list[str]) -> None:
    if not value:
        raise ValueError(f"option '{attribute.name}' names no bAbI task; e.g. ['qa1', 'qa2']")
    for qa in value:
        one_of(*TASK_LABELS)(_instance, attribute, qa)
    if len(set(value)) != len(value):
        raise ValueError(f"option '{attribute.name}' names a task twice: {value}")


@attrs.define
class BabilongMixConfig(BabilongConfig):
    """`babilong_mix`: the bAbI tasks `tasks` in turn (sample i is task i mod n), one model for all.

    Why: BABILong's headline is a mean over qa1-qa5; one run on the mixture costs what one task
    costs. A single task of it is evaluated with `--set "task.tasks=['qa3']"`, whose samples are
    exactly `babilong_qa3`'s (`bench/babilong_by_task.py` makes the table).
    """

    tasks: list[str] = attrs.field(factory=lambda: ["qa1", "qa2", "qa3", "qa4", "qa5"], validator=_qa_tasks)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.source == "loaded":
            raise ValueError("babilong_mix generates its samples; load published data per task (babilong_qa1 ...)")
