"""BABILong noise: a story's facts placed, in order, at random sentence boundaries of distractor text.

Corpus. Local text files (`noise_paths`: files, or directories whose `*.txt` files are read), or by
default the English prose of `pydoc_data.topics` (the help topics of the Python language reference,
part of the standard library, so every machine with Python has it; about 460k characters). The
published BABILong noise is PG19: public-domain novels and essays from Project Gutenberg, narrative
prose full of people, places and movement. The default corpus is technical prose about a programming
language instead: shorter sentences on another subject, with almost no names, rooms or objects, so a
bAbI fact stands out from it more than from a novel, and results on it are not comparable with the
published ones. Name PG19 books (or any books) in `noise_paths` for that.

Sentences. Documents are cut into paragraphs; paragraphs of code or grammar (indented 3 spaces or more), titles
and underlines are left out; the rest is split after `.`, `!` or `?` (and closing quotes) before anything but a lowercase letter. Sentences of
fewer than 4 words or mostly non-letters are dropped, and so is any sentence that reads as a bAbI
fact, so the noise never states one.

Splits. The corpus's sentences, in document order, are cut into contiguous ranges: the first 80%
are the train noise, the next 10% val, the last 10% test, so held-out samples never share a
distractor sentence with training.

Length. A sample of length L tokens (the task's tokens, `ttt_plugin_babilong.tokenizer`) is its facts
plus consecutive noise sentences from a random place of the split's range, the last one cut to the
token so that the context is exactly L tokens (the cut sentence is the context's last: no fact comes
after it); a story longer than L gets no noise (length 0 = the plain story). Every fact is whole
and the facts keep their order.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from pathlib import Path

import attrs

from ttt_plugin_babilong.tokenizer import count_tokens, cut_to_tokens
from ttt_plugin_babilong.world import parse_fact

SPLIT_FRACTIONS: dict[str, tuple[float, float]] = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[^a-z\s])")
_MIN_WORDS = 4
_MIN_LETTERS = 0.7


def split_sentences(text: str) -> list[str]:
    """Sentences of running text (whitespace collapsed)."""
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _is_prose(sentence: str) -> bool:
    if len(sentence.split()) < _MIN_WORDS or sentence[-1] not in ".!?\"')":
        return False
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return letters >= _MIN_LETTERS * len(sentence) and parse_fact(sentence) is None


def prose_sentences(document: str) -> list[str]:
    """The sentences of a document's prose paragraphs (see the module docstring)."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", document):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or lines[0].startswith("   "):
            continue  # code, grammar, or an indented quotation
        lines = [line for line in lines if not re.fullmatch(r"[*=\-~^#]+", line.strip())]
        if len(lines) == 1 and not lines[0].rstrip().endswith((".", "!", "?", ":")):
            continue  # a title
        sentences += [s for s in split_sentences(" ".join(lines)) if _is_prose(s)]
    return sentences


def default_documents() -> list[str]:
    """The help topics of `pydoc_data.topics`, in topic-name order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; say so rather than train on nothing
        raise ValueError("the default noise corpus pydoc_data.topics is missing from this Python; name text files in 'noise_paths'") from None
    return [topics[name] for name in sorted(topics)]


def read_documents(paths: Sequence[str]) -> list[str]:
    """Files as given, directories as their `*.txt` files (sorted), each file one document."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise ValueError(f"option 'noise_paths': no .txt files under {path}")
            files += found
        else:
            raise ValueError(f"option 'noise_paths': {path}: no such file or directory")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


@attrs.frozen(eq=False)
class NoiseCorpus:
    """Distractor sentences with their token counts, and each split's range of them."""

    sentences: tuple[str, ...]
    tokens: tuple[int, ...]

    @classmethod
    def from_documents(cls, documents: Sequence[str]) -> NoiseCorpus:
        sentences = tuple(s for doc in documents for s in prose_sentences(doc))
        if len(sentences) < 10:
            raise ValueError(f"the noise corpus has {len(sentences)} prose sentences; at least 10 are needed (one per split and more)")
        return cls(sentences, tuple(count_tokens(s) for s in sentences))

    def split_range(self, split: str) -> range:
        lo, hi = SPLIT_FRACTIONS[split]
        n = len(self.sentences)
        return range(int(lo * n), int(hi * n))

    def draw(self, split: str, n_tokens: int, rng: random.Random) -> tuple[list[str], bool]:
        """Consecutive sentences of `split` from a random start, exactly `n_tokens` tokens in all, and
        whether the last one was cut; the range is read again from its start if it is shorter."""
        span = self.split_range(split)
        position = rng.randrange(len(span))
        out: list[str] = []
        left, cut = n_tokens, False
        while left > 0:
            index = span[position % len(span)]
            sentence, tokens = self.sentences[index], self.tokens[index]
            if tokens > left:
                sentence, tokens, cut = cut_to_tokens(sentence, left), left, True
            out.append(sentence)
            left -= tokens
            position += 1
        return out, cut


@functools.lru_cache(maxsize=8)
def load_corpus(paths: tuple[str, ...] = ()) -> NoiseCorpus:
    """The corpus of `paths` (the default one if empty), read once per process."""
    return NoiseCorpus.from_documents(read_documents(paths) if paths else default_documents())


def inject(facts: Sequence[str], corpus: NoiseCorpus, split: str, length: int,
           rng: random.Random) -> tuple[list[str], list[int]]:
    """The context's sentences and the positions of the facts in it (see the module docstring)."""
    needed = length - sum(count_tokens(f) for f in facts)
    if needed <= 0:
        return list(facts), list(range(len(facts)))
    noise, cut = corpus.draw(split, needed, rng)
    # no fact after a cut sentence: it would read as that sentence's end (and be lost on reloading)
    boundaries = sorted(rng.randint(0, len(noise) - cut) for _ in facts)
    sentences: list[str] = []
    positions: list[int] = []
    fact = 0
    for boundary in range(len(noise) + 1):
        while fact < len(facts) and boundaries[fact] == boundary:
            positions.append(len(sentences))
            sentences.append(facts[fact])
            fact += 1
        if boundary < len(noise):
            sentences.append(noise[boundary])
    return sentences, positions
