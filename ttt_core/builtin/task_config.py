"""Config of the associative-retrieval task: torch-free, so that recipes validate fast.

Dataset names read `N{pairs}-K{key_len}V{value_len}-S{segments}_{min}-{max}_{size}` (see
`ttt_core.builtin.associative_retrieval` for the generator).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import attrs

from ttt_core.tokenizer import ALPHANUMERIC

NAME_FORMAT = "N{pairs}-K{key_len}V{value_len}-S{segments}_{segment_min}-{segment_max}[_{size}]"
_NAME = re.compile(r"N(\d+)-K(\d+)V(\d+)-S(\d+)_(\d+)-(\d+)(?:_(\d+)([KMB]?))?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}
_FIELDS = ("pairs", "key_len", "value_len", "segments", "segment_min", "segment_max", "size")
_DEFAULTS = dict(zip(_FIELDS, (1, 4, 4, 1, 16, 32, 1_000_000)))  # N1-K4V4-S1_16-32_1M
PAIR_OVERHEAD = len("!:!")


# ---------------------------------------------------------------------------------------------
# Config


def parse_dataset_name(name: str) -> dict[str, int]:
    """`N2-K4V4-S2_16-32_1M` -> the explicit fields (`size` only when the name has a suffix)."""
    match = _NAME.fullmatch(name.strip())
    if match is None:
        raise ValueError(f"ARConfig: cannot parse dataset name {name!r}; expected {NAME_FORMAT}, e.g. N2-K4V4-S2_16-32_1M")
    *numbers, size, unit = match.groups()
    fields = dict(zip(_FIELDS, map(int, numbers)))
    if size is not None:
        fields["size"] = int(size) * _SIZE_UNITS[unit.upper()]
    return fields


def format_size(n: int) -> str:
    """1000000 -> '1M', 100000 -> '100K', 1234 -> '1234'."""
    for unit in ("B", "M", "K"):
        if n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


def _optional_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"ARConfig: {attribute.name} must be an integer, got {value!r}")


@attrs.define
class ARConfig:
    """A dataset setting: a name (`dataset`) or explicit fields, or both when they agree.

    Fields neither named nor given take the N1-K4V4-S1_16-32_1M values. `seed` is the data seed:
    it fixes the training stream and the val/test sets, so keep it fixed to compare models.
    `path` reads samples from a local file or directory instead of generating them (see `load_splits`).
    """

    dataset: str | None = None
    pairs: int | None = attrs.field(default=None, validator=_optional_int)
    key_len: int | None = attrs.field(default=None, validator=_optional_int)
    value_len: int | None = attrs.field(default=None, validator=_optional_int)
    segments: int | None = attrs.field(default=None, validator=_optional_int)
    segment_min: int | None = attrs.field(default=None, validator=_optional_int)
    segment_max: int | None = attrs.field(default=None, validator=_optional_int)
    size: int | None = attrs.field(default=None, validator=_optional_int)
    seed: int = attrs.field(default=0, validator=_optional_int)
    path: str | None = None
    val_samples: int = attrs.field(default=500, validator=_optional_int)
    test_samples: int = attrs.field(default=2000, validator=_optional_int)

    def __attrs_post_init__(self) -> None:
        named = parse_dataset_name(self.dataset) if self.dataset is not None else {}
        for field in _FIELDS:
            given = getattr(self, field)
            if given is not None and field in named and given != named[field]:
                raise ValueError(
                    f"ARConfig: dataset {self.dataset!r} means {field}={named[field]} but {field}={given} was given"
                )
            if given is None:
                setattr(self, field, named.get(field, _DEFAULTS[field]))
        self._check()

    def _check(self) -> None:
        if self.path is not None:
            self._check_path(Path(self.path))
        for field in ("pairs", "key_len", "value_len", "segments", "segment_max", "size"):
            if getattr(self, field) < 1:
                raise ValueError(f"ARConfig: {field} must be at least 1, got {getattr(self, field)}")
        for field in ("segment_min", "val_samples", "test_samples"):
            if getattr(self, field) < 0:
                raise ValueError(f"ARConfig: {field} must not be negative, got {getattr(self, field)}")
        if self.segment_min > self.segment_max:
            raise ValueError(f"ARConfig: segment_min={self.segment_min} > segment_max={self.segment_max}")
        if len(ALPHANUMERIC) ** self.key_len < self.pairs:
            raise ValueError(
                f"ARConfig: {self.pairs} unique keys cannot be made from key_len={self.key_len} "
                f"({len(ALPHANUMERIC)}**{self.key_len} = {len(ALPHANUMERIC) ** self.key_len} possible keys)"
            )
        load = math.ceil(self.pairs / self.segments)
        if load * self.pair_len > self.segment_max:
            raise ValueError(
                f"ARConfig: segment_max={self.segment_max} is too short: with {self.pairs} pairs in {self.segments} "
                f"segments some segment always holds {load} pairs of {self.pair_len} characters ({load * self.pair_len})"
            )

    @staticmethod
    def _check_path(path: Path) -> None:
        """What `load_splits` would refuse, found without reading the samples: at `ttt validate`."""
        formats = (".jsonl", ".json", ".parquet")
        if path.is_file():
            if path.suffix.lower() not in formats:
                raise ValueError(f"ARConfig: path {str(path)!r}: unknown dataset format {path.suffix!r}; use .jsonl or .parquet")
        elif path.is_dir():
            stems = ("train", "val", "validation", "test")
            if not any((path / f"{stem}{ext}").is_file() for stem in stems for ext in formats):
                raise ValueError(f"ARConfig: path {str(path)!r}: no train/val/test .jsonl, .json or .parquet files")
        else:
            raise ValueError(f"ARConfig: path {str(path)!r}: no such dataset file or directory")

    def written_options(self, options: dict) -> dict:
        """Leave out fields implied by `dataset`, so that overriding the name alone stays consistent."""
        if self.dataset is None:
            return options
        named = parse_dataset_name(self.dataset)
        return {k: v for k, v in options.items() if k not in named or named[k] != v or k not in _FIELDS}

    @property
    def pair_len(self) -> int:
        """Characters of one written pair `!KEY:VAL!`."""
        return self.key_len + self.value_len + PAIR_OVERHEAD

    @property
    def name(self) -> str:
        """The canonical dataset name of this setting."""
        return (
            f"N{self.pairs}-K{self.key_len}V{self.value_len}-S{self.segments}_"
            f"{self.segment_min}-{self.segment_max}_{format_size(self.size)}"
        )
