"""The `babilong_qa*` tasks: bAbI stories in noise, cut into episodes for memory models.

An episode's context is the sample's sentences (facts and noise) as word tokens, also cut into
segments for recurrences (`segment_tokens`: whole sentences packed up to a token budget, a longer
sentence cut at the budget; `segment_sentences`: that many sentences each; neither: one segment).
Rows of a batch with fewer segments get empty ones at the end, which recurrences skip. The query is
the question, the target the answer's tokens then `[EOS]`; the metric is exact match of the answer
tokens.

Tokenizer: the word tokenizer (`ttt_plugin_babilong.tokenizer`), or one handed to the task
(`takes_tokenizer`: a pretrained `hf` model's own). Texts are encoded as they follow one another,
each sentence after the first, the question and the answer with the space before it, so a
subword tokenizer sees words where they stand in the running text (the context's ids are the
tokenizer's ids of the context's text); the answer ends with the tokenizer's EOS. `length` and the
noise still count word tokens.

Samples are a pure function of (task, split, seed, index): the story from the generator, then the
noise from its own generator seeded with the same four. The train split cycles over `size` indices.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
from torch import Tensor

from ttt_core.episode import Episode, Segment
from ttt_core.errors import TTTError
from ttt_core.interfaces import IndexedTask, TextTokenizer

from ttt_plugin_babilong.babilong_config import SPLITS, BabilongConfig, BabilongMixConfig
from ttt_plugin_babilong.generators import DEFAULT_FACTS, TASK_LABELS, generate
from ttt_plugin_babilong.loaders import load_records, write_records
from ttt_plugin_babilong.metrics import exact_match
from ttt_plugin_babilong.noise import inject, load_corpus, split_sentences
from ttt_plugin_babilong.tokenizer import WordTokenizer, count_tokens
from ttt_plugin_babilong.world import parse_fact

_NOISE_PREVIEW = 60  # characters of a run of noise that `render` shows


@attrs.frozen
class BabilongSample:
    """A sample as text: the context's sentences, where the story's facts are among them, the
    question, the answer, and the supporting facts (ids into `facts`; empty when unknown)."""

    sentences: tuple[str, ...]
    fact_positions: tuple[int, ...]
    question: str
    answer: str
    supporting: tuple[int, ...] = ()

    @property
    def context(self) -> str:
        return " ".join(self.sentences)

    @property
    def facts(self) -> tuple[str, ...]:
        return tuple(self.sentences[i] for i in self.fact_positions)

    def to_record(self) -> dict[str, str]:
        """The published shape."""
        return {"input": self.context, "question": self.question, "target": self.answer}

    @classmethod
    def from_record(cls, record: dict[str, str]) -> BabilongSample:
        """Sentences split from `input`; the facts are the sentences that read as bAbI facts."""
        sentences = tuple(split_sentences(record["input"]))
        positions = tuple(i for i, s in enumerate(sentences) if parse_fact(s) is not None)
        return cls(sentences, positions, record["question"].strip(), record["target"].strip())

    def render(self) -> str:
        """Facts on lines of their own (`F3*`: fact 3, a supporting one), noise runs abbreviated."""
        facts = {p: i for i, p in enumerate(self.fact_positions)}
        lines, run = [], []

        def flush() -> None:
            if run:
                text = " ".join(run)
                preview = text if len(text) <= _NOISE_PREVIEW else text[:_NOISE_PREVIEW] + " ..."
                lines.append(f"      ~ {preview} [{len(run)} noise sentences, {count_tokens(text)} tokens]")
                run.clear()

        for position, sentence in enumerate(self.sentences):
            if position in facts:
                flush()
                fact = facts[position]
                lines.append(f"  F{fact}{'*' if fact in self.supporting else ' '}: {sentence}")
            else:
                run.append(sentence)
        flush()
        lines += [f"question: {self.question}", f"answer:   {self.answer}",
                  f"context:  {count_tokens(self.context)} tokens, {len(self.fact_positions)} facts"
                  + (f", supporting {list(self.supporting)}" if self.supporting else "")]
        return "\n".join(lines)


def segment_ids(sentence_ids: Sequence[list[int]], segment_tokens: int | None, segment_sentences: int | None) -> list[list[int]]:
    """The context's token ids cut into segments (see the module docstring)."""
    if segment_sentences is not None:
        return [
            [t for ids in sentence_ids[i : i + segment_sentences] for t in ids]
            for i in range(0, len(sentence_ids), segment_sentences)
        ]
    if segment_tokens is None:
        return [[t for ids in sentence_ids for t in ids]]
    segments: list[list[int]] = [[]]
    for ids in sentence_ids:
        if segments[-1] and len(segments[-1]) + len(ids) > segment_tokens:
            segments.append([])
        for start in range(0, len(ids), segment_tokens):
            piece = ids[start : start + segment_tokens]
            if segments[-1] and len(segments[-1]) + len(piece) > segment_tokens:
                segments.append([])
            segments[-1] += piece
    return segments


class Babilong(IndexedTask):
    """One bAbI task (`qa`: "qa1".."qa8") under one `BabilongConfig`, on the word tokenizer or on
    `tokenizer` (a model's own; it needs an EOS token to end answers with)."""

    def __init__(self, config: BabilongConfig, qa: str, tokenizer: TextTokenizer | None = None) -> None:
        if qa not in TASK_LABELS:
            raise ValueError(f"unknown bAbI task {qa!r}; expected one of {', '.join(TASK_LABELS)}")
        if tokenizer is not None and tokenizer.eos_id is None:
            raise TTTError(f"[task] babilong_{qa}: the model's tokenizer has no EOS token, which ends every answer")
        self.config = config
        self.qa = qa
        self.labels = TASK_LABELS[qa]
        self.tokenizer = WordTokenizer(config.buckets) if tokenizer is None else tokenizer
        lo, hi = DEFAULT_FACTS[qa]
        self.facts_range = (config.min_facts or lo, config.max_facts or max(hi, config.min_facts or hi))
        self.loaded: dict[str, list[BabilongSample]] = {}
        self._held_out: dict[tuple[str, int], BabilongSample] = {}  # val and test, generated once
        if config.source == "loaded":
            for split, records in load_records(config.path, qa, config.length_name, config.loaded_split).items():
                self.loaded[split] = [BabilongSample.from_record(r) for r in records]

    def _corpus(self):
        return load_corpus(tuple(self.config.noise_paths))

    def split_size(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split in self.loaded:
            return len(self.loaded[split])
        return {"train": self.config.size, "val": self.config.val_samples, "test": self.config.test_samples}[split]

    def sample(self, split: str, index: int) -> BabilongSample:
        index = self.position(split, index)
        if split in self.loaded:
            return self.loaded[split][index]
        if split != "train":
            cached = self._held_out.get((split, index))
            if cached is None:
                cached = self._held_out[(split, index)] = self._generate(split, index)
            return cached
        return self._generate(split, index)

    def _generate(self, split: str, index: int) -> BabilongSample:
        c = self.config
        story = generate(self.qa, split, index, c.seed, self.facts_range)
        if c.length_tokens == 0:
            sentences, positions = list(story.facts), list(range(len(story.facts)))
        else:
            rng = random.Random(f"ttt/babilong/noise/{self.qa}/{split}/{c.seed}/{index}")
            sentences, positions = inject(story.facts, self._corpus(), split, c.length_tokens, rng)
        return BabilongSample(tuple(sentences), tuple(positions), story.question, story.answer, story.supporting)

    def sentence_ids(self, sample: BabilongSample) -> list[list[int]]:
        """Each context sentence's ids, every one after the first with the space before it."""
        return [self.tokenizer.encode(s if i == 0 else " " + s) for i, s in enumerate(sample.sentences)]

    def collate(self, samples: Sequence[BabilongSample]) -> Episode:
        tok, c = self.tokenizer, self.config
        per_row = [segment_ids(self.sentence_ids(x), c.segment_tokens, c.segment_sentences) for x in samples]
        count = max(len(rows) for rows in per_row)
        pad = lambda rows: Segment.from_lists(rows, tok.pad_id)  # noqa: E731
        return Episode(
            segments=tuple(pad([rows[i] if i < len(rows) else [] for rows in per_row]) for i in range(count)),
            context=pad([[t for segment in rows for t in segment] for rows in per_row]),
            query=pad([tok.encode(" " + x.question) for x in samples]),
            target=pad([tok.encode(" " + x.answer) + [tok.eos_id] for x in samples]),
        )

    def batch(self, split: str, indices: Iterable[int]) -> Episode:
        return self.collate([self.sample(split, i) for i in indices])

    def metrics(self, answer_logits: Tensor, episode: Episode) -> dict[str, Tensor]:
        return {"exact_match": exact_match(answer_logits.argmax(-1), episode, self.tokenizer.eos_id)}

    def describe(self, split: str, index: int) -> str:
        sample = self.sample(split, index)
        episode = self.collate([sample])
        shapes = ", ".join(str(int(s.lengths[0])) for s in episode.segments)
        return "\n".join([
            f"babilong_{self.qa} {split} #{index} (length {self.config.length_name})",
            sample.render(),
            f"tokens:   segments [{shapes}], query {self.tokenizer.decode(episode.query.ids[0].tolist())!r}, "
            f"target {self.tokenizer.decode(episode.target.ids[0].tolist())!r}",
        ])

    def export(self, directory: str | Path, fmt: str = "jsonl", train_samples: int | None = None) -> list[Path]:
        """Write the splits as `{split}.{fmt}` records in the published shape (`train_samples` caps train)."""
        counts = {s: self.split_size(s) for s in SPLITS}
        if train_samples is not None:
            counts["train"] = min(train_samples, counts["train"])
        return [
            write_records((self.sample(s, i).to_record() for i in range(n)), Path(directory) / f"{s}.{fmt}")
            for s, n in counts.items()
        ]


class BabilongMix(Babilong):
    """Several bAbI tasks in turn (`BabilongMixConfig`): sample i of a split is sample i // n of
    task i mod n, so the mixture of one task is that task's own samples, and all share one tokenizer."""

    def __init__(self, config: BabilongMixConfig, tokenizer: TextTokenizer | None = None) -> None:
        super().__init__(config, config.tasks[0], tokenizer)
        self.qa = "mix"
        self.parts = [Babilong(config, qa, self.tokenizer) for qa in config.tasks]
        self.labels = tuple(dict.fromkeys(label for part in self.parts for label in part.labels))

    def sample(self, split: str, index: int) -> BabilongSample:
        index = self.position(split, index)
        return self.parts[index % len(self.parts)].sample(split, index // len(self.parts))
