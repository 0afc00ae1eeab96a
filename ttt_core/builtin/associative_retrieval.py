"""Noisy associative retrieval: recall the value stored under a key somewhere in a noisy context.

Dataset names read `N{pairs}-K{key_len}V{value_len}-S{segments}_{min}-{max}_{size}`. One sample:

- `pairs` unique keys of `key_len` random alphanumerics, values of `value_len` (values may repeat);
- each pair is written `!KEY:VAL!` and assigned to one of `segments` segments uniformly at random;
- each segment is random alphanumeric noise whose length is drawn so that noise plus the segment's
  pairs has `segment_min..segment_max` characters, the pairs inserted at random positions of the
  noise, then `|` appended (the range counts noise and pairs, not the `|`);
- query `?!KEY:` for a random key of the context, target `VAL!|`; the metric is exact match of the
  `value_len` value characters.

Over-long segments. Noise is never negative: when more pairs land in one segment than fit in
`segment_max`, that segment is its pairs alone (no noise) and is longer than `segment_max`. A config
is refused only when no assignment at all could respect the range: by pigeonhole some segment always
receives ceil(pairs / segments) pairs, so those must fit in `segment_max`.

Determinism. Sample `index` of `split` depends only on (split, config.seed, index): each sample has its
own `random.Random` seeded with a string of the three, so a training stream resumes at any position,
the three splits never share a generator seed, and val/test are the same for every run of a config.
The training stream cycles over `size` indices.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
from torch import Tensor

from ttt_core.builtin.task_config import PAIR_OVERHEAD, ARConfig
from ttt_core.interfaces import IndexedTask
from ttt_core.episode import Episode, Segment
from ttt_core.tokenizer import ALPHANUMERIC, CharTokenizer

SPLITS: tuple[str, ...] = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------
# Samples


_PAIR = re.compile(r"!([^!?:|]+):([^!?:|]+)!")
_SEGMENT = re.compile(r"[^|]*\|")


@attrs.frozen
class ARSample:
    """One sample as text; `segments` each end with `|` and concatenate to the context."""

    segments: list[str]
    query: str
    target: str
    pairs: list[tuple[str, str]]  # in the order they appear in the context

    @property
    def context(self) -> str:
        return "".join(self.segments)

    @property
    def key(self) -> str:
        return self.query[2:-1]  # ?!KEY:

    @property
    def value(self) -> str:
        return self.target[:-2]  # VAL!|

    def to_record(self) -> dict[str, str]:
        """The published shape: `context`, `query`, `target`."""
        return {"context": self.context, "query": self.query, "target": self.target}

    @classmethod
    def from_record(cls, record: dict) -> ARSample:
        """Recover segments (from the `|` terminators) and pairs (from `!KEY:VAL!`) of a record."""
        missing = [f for f in ("context", "query", "target") if f not in record]
        if missing:
            raise ValueError(f"missing field {missing[0]!r}")
        context = record["context"]
        segments = _SEGMENT.findall(context)
        if "".join(segments) != context:
            raise ValueError("context does not end with the segment terminator '|'")
        pairs = [(k, v) for k, v in _PAIR.findall(context)]
        return cls(segments, record["query"], record["target"], pairs)

    def render(self) -> str:
        """Human-readable, one segment per line (for `ttt data`)."""
        lines = [f"segment {i}: {s}" for i, s in enumerate(self.segments)]
        return "\n".join([*lines, f"query:     {self.query}", f"target:    {self.target}"])


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def sample(config: ARConfig, split: str, index: int, seed: int = 0) -> ARSample:
    """Sample `index` of `split`, a pure function of (config, split, seed, index)."""
    _check_split(split)
    rng = random.Random(f"ttt/associative_retrieval/{split}/{seed}/{index}")
    keys = _unique_keys(rng, config.pairs, config.key_len)
    pairs = [(key, _symbols(rng, config.value_len)) for key in keys]
    owner = [rng.randrange(config.segments) for _ in pairs]
    segments, written = [], []
    for s in range(config.segments):
        text, order = _segment(rng, [p for p, o in zip(pairs, owner) if o == s], config.segment_min, config.segment_max)
        segments.append(text)
        written += order
    key, value = rng.choice(pairs)
    return ARSample(segments, f"?!{key}:", f"{value}!|", written)


def _symbols(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(ALPHANUMERIC, k=n))


def _unique_keys(rng: random.Random, n: int, length: int) -> list[str]:
    """n distinct random keys (rejection sampling: uniform over ordered distinct tuples)."""
    keys: dict[str, None] = {}
    while len(keys) < n:
        keys.setdefault(_symbols(rng, length))
    return list(keys)


def _segment(rng: random.Random, pairs: list[tuple[str, str]], lo: int, hi: int) -> tuple[str, list[tuple[str, str]]]:
    """Noise with the pairs inserted at random positions, then `|` (see the module doc for lo/hi).

    Returns the text and the pairs in the order they were written."""
    used = sum(len(k) + len(v) + PAIR_OVERHEAD for k, v in pairs)
    noise = _symbols(rng, rng.randint(max(lo - used, 0), max(hi - used, 0)))
    pairs = list(pairs)
    rng.shuffle(pairs)
    cuts = sorted(rng.randint(0, len(noise)) for _ in pairs)
    pieces, start = [], 0
    for cut, (key, value) in zip(cuts, pairs):
        pieces += [noise[start:cut], f"!{key}:{value}!"]
        start = cut
    return "".join([*pieces, noise[start:], "|"]), pairs


# ---------------------------------------------------------------------------------------------
# Collation, loss and metric


def collate(samples: Sequence[ARSample], tokenizer: CharTokenizer) -> Episode:
    """Tokenize and right-pad a batch; every sample must have the same number of segments."""
    counts = sorted({len(s.segments) for s in samples})
    if len(counts) != 1:
        raise ValueError(f"collate: samples in one batch must have equal segment counts, got {counts}")
    pad = lambda texts: Segment.from_lists([tokenizer.encode(t) for t in texts], tokenizer.pad_id)  # noqa: E731
    return Episode(
        segments=tuple(pad([s.segments[i] for s in samples]) for i in range(counts[0])),
        context=pad([s.context for s in samples]),
        query=pad([s.query for s in samples]),
        target=pad([s.target for s in samples]),
    )


def exact_match(pred_ids: Tensor, episode: Episode, value_len: int) -> Tensor:
    """`[B]` bool: all `value_len` value characters right.

    With `pred_ids` the argmax of teacher-forced answer logits this equals exact match of greedy
    decoding: greedy decoding first differs from teacher forcing right after its first mistake.
    """
    target = episode.target
    real = target.mask[:, :value_len].all(-1)
    return real & (pred_ids[:, :value_len] == target.ids[:, :value_len]).all(-1)


# ---------------------------------------------------------------------------------------------
# Local datasets in the published shape (JSON lines or parquet with context, query, target)


def write_dataset(samples: Iterable[ARSample], path: str | Path) -> Path:
    """Write `.jsonl` (or `.json`, also JSON lines) or `.parquet` (needs pyarrow)."""
    path = Path(path)
    records = [s.to_record() for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    if _format(path) == "parquet":
        pa, pq = _pyarrow(path)
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        with path.open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def read_dataset(path: str | Path) -> list[ARSample]:
    """Read a file written by `write_dataset` or published in the same shape."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such dataset file")
    if _format(path) == "parquet":
        _, pq = _pyarrow(path)
        rows = enumerate(pq.read_table(path).to_pylist(), 1)
    else:
        with path.open() as f:
            rows = [(n, json.loads(line)) for n, line in enumerate(f, 1) if line.strip()]
    samples = []
    for n, record in rows:
        try:
            samples.append(ARSample.from_record(record))
        except ValueError as err:
            raise ValueError(f"{path}:{n}: {err}") from None
    return samples


def load_splits(path: str | Path) -> dict[str, list[ARSample]]:
    """A file is the train split; a directory holds `{train,val,test}.{jsonl,json,parquet}`
    (`validation` also names val). Splits without a file are generated from the config."""
    path = Path(path)
    if path.is_file():
        return {"train": read_dataset(path)}
    if not path.is_dir():
        raise ValueError(f"{path}: no such dataset file or directory")
    found = {}
    for split in SPLITS:
        stems = (split, "validation") if split == "val" else (split,)
        files = [path / f"{stem}.{ext}" for stem in stems for ext in ("jsonl", "json", "parquet")]
        existing = [f for f in files if f.is_file()]
        if existing:
            found[split] = read_dataset(existing[0])
    if not found:
        raise ValueError(f"{path}: no train/val/test .jsonl, .json or .parquet files")
    return found


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise ValueError(f"{path}: unknown dataset format {suffix!r}; use .jsonl or .parquet")


def _pyarrow(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: parquet needs pyarrow (pip install pyarrow); or use a .jsonl file") from None
    return pa, pq


# ---------------------------------------------------------------------------------------------
# The task: config + tokenizer + splits


class AssociativeRetrieval(IndexedTask):
    """Samples, batches and metric of one `ARConfig`; splits come from `config.path` or the generator."""

    def __init__(self, config: ARConfig, tokenizer: CharTokenizer | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer or CharTokenizer()
        self.loaded = load_splits(config.path) if config.path else {}
        for split, samples in self.loaded.items():
            self._check_loaded(split, samples)

    def _check_loaded(self, split: str, samples: list[ARSample]) -> None:
        c = self.config
        if not samples:
            raise ValueError(f"{c.path}: the {split} split is empty")
        for i, s in enumerate(samples):
            if len(s.segments) != c.segments or len(s.value) != c.value_len:
                raise ValueError(
                    f"{c.path}: {split} sample {i} has {len(s.segments)} segments and a {len(s.value)}-character "
                    f"value but the config says segments={c.segments}, value_len={c.value_len}"
                )

    def split_size(self, split: str) -> int:
        _check_split(split)
        if split in self.loaded:
            return len(self.loaded[split])
        return {"train": self.config.size, "val": self.config.val_samples, "test": self.config.test_samples}[split]

    def sample(self, split: str, index: int) -> ARSample:
        index = self.position(split, index)
        if split in self.loaded:
            return self.loaded[split][index]
        return sample(self.config, split, index, self.config.seed)

    def batch(self, split: str, indices: Iterable[int]) -> Episode:
        return collate([self.sample(split, i) for i in indices], self.tokenizer)

    def metrics(self, answer_logits: Tensor, episode: Episode) -> dict[str, Tensor]:
        return {"exact_match": exact_match(answer_logits.argmax(-1), episode, self.config.value_len)}

    def describe(self, split: str, index: int) -> str:
        return self.sample(split, index).render()

    def export(self, directory: str | Path, fmt: str = "jsonl", train_samples: int | None = None) -> list[Path]:
        """Write the three splits as `{split}.{fmt}`; `train_samples` caps the (large) train split."""
        counts = {s: self.split_size(s) for s in SPLITS}
        if train_samples is not None:
            counts["train"] = min(train_samples, counts["train"])
        return [
            write_dataset((self.sample(s, i) for i in range(n)), Path(directory) / f"{s}.{fmt}")
            for s, n in counts.items()
        ]
