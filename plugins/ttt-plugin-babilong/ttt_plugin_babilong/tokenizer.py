"""Word-level tokenizer: the bAbI vocabulary by name, every other word in one of a fixed set of hash buckets.

Why. The facts are what a model must remember, so each bAbI word (names, places, objects, verbs,
question words) gets an id of its own, and an answer is one token. Distractor text has an open
vocabulary; hashing its words into `buckets` ids keeps the vocabulary fixed (no vocabulary file: a
checkpoint works with any noise corpus) while noise still reads as a varied stream of words rather
than one `[UNK]`. A noise word that is a bAbI word ("the", "to", "kitchen") keeps its bAbI id, as it
would in the published data. Words are matched case-insensitively; decoding writes a bucket as `<w17>`.

Tokens are runs of letters, runs of digits, and single other characters (punctuation), so a length
in tokens is close to a length in GPT-2 tokens on plain English (see the plugin's README).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ttt_plugin_babilong.world import (
    ALL_ACTORS,
    DIRECTIONS,
    DROP_VERBS,
    GIVE_VERBS,
    LOCATIONS,
    MOVE_VERBS,
    OBJECTS,
    QUESTION_TEMPLATES,
    TAKE_VERBS,
)

if TYPE_CHECKING:
    from torch import Tensor

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
TOKEN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]|_")
_TEMPLATE_WORDS = "the is of to there"  # words of the fact sentences besides verbs and entities
_ANSWER_WORDS = "yes no none one two three nothing"  # answers of qa6-qa8


def _babi_words() -> tuple[str, ...]:
    text = " ".join([
        *ALL_ACTORS, *LOCATIONS, *OBJECTS, *DIRECTIONS, *MOVE_VERBS, *TAKE_VERBS, *DROP_VERBS, *GIVE_VERBS,
        _TEMPLATE_WORDS, _ANSWER_WORDS, *QUESTION_TEMPLATES.values(), ". , ?",
    ])
    words: dict[str, str] = {}
    for token in TOKEN.findall(text.replace("{0}", " ").replace("{1}", " ")):
        display = token if token in ALL_ACTORS else token.lower()
        words.setdefault(token.lower(), display)
    return tuple(sorted(words.values(), key=str.lower))


BABI_WORDS: tuple[str, ...] = _babi_words()


def count_tokens(text: str) -> int:
    """Tokens of `text` (the same for any bucket count)."""
    return sum(1 for _ in TOKEN.finditer(text))


def cut_to_tokens(text: str, n: int) -> str:
    """The prefix of `text` holding its first `n` tokens."""
    end = 0
    for i, match in enumerate(TOKEN.finditer(text)):
        if i == n:
            break
        end = match.end()
    return text[:end]


class WordTokenizer:
    """`[PAD] [BOS] [EOS] [UNK]` (ids 0..3), the bAbI words, then `buckets` hash buckets for other words."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, buckets: int = 1024) -> None:
        if buckets < 1:
            raise ValueError(f"WordTokenizer: buckets must be >= 1, got {buckets}")
        self.buckets = buckets
        self.words = BABI_WORDS
        self.first_bucket = len(SPECIAL_TOKENS) + len(self.words)
        self._ids = {w.lower(): len(SPECIAL_TOKENS) + i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return self.first_bucket + self.buckets

    def token_id(self, token: str) -> int:
        key = token.lower()
        known = self._ids.get(key)
        if known is not None:
            return known
        return self.first_bucket + zlib.crc32(key.encode("utf-8")) % self.buckets

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.token_id(t) for t in TOKEN.findall(text)]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def token_text(self, token_id: int) -> str:
        if token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id]
        if token_id < self.first_bucket:
            return self.words[token_id - len(SPECIAL_TOKENS)]
        return f"<w{token_id - self.first_bucket}>"

    def decode(self, ids: Iterable[int] | Tensor, skip_special: bool = False) -> str:
        """Words separated by spaces, punctuation attached to the word before it."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out: list[str] = []
        for i in ids:
            if skip_special and i < len(SPECIAL_TOKENS):
                continue
            text = self.token_text(i)
            if out and not (len(text) == 1 and text in ".,?!;:)"):
                out.append(" ")
            out.append(text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, buckets={self.buckets})"
