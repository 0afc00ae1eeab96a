"""Character-level tokenizer with fixed ids: specials first (PAD = 0), then the alphabet in order.

Fixed ids mean a checkpoint never needs a vocabulary file: the same alphabet always gives the same ids.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
ALPHANUMERIC = string.ascii_letters + string.digits  # the 62 symbols keys, values and noise use
STRUCTURE = "!?:|"  # pair delimiters, query marker, key/value separator, segment terminator
AR_CHARS = ALPHANUMERIC + STRUCTURE


class CharTokenizer:
    """One id per character of `chars`, after `[PAD] [BOS] [EOS] [UNK]` (ids 0..3)."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, chars: str = AR_CHARS) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError(f"CharTokenizer: duplicate characters in {chars!r}")
        self.chars = chars
        self.tokens: tuple[str, ...] = SPECIAL_TOKENS + tuple(chars)
        self._ids = {c: i for i, c in enumerate(self.tokens) if i >= len(SPECIAL_TOKENS)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Characters to ids; characters outside the alphabet become `[UNK]`."""
        ids = [self._ids.get(c, self.unk_id) for c in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int] | Tensor, skip_special: bool = False) -> str:
        """Ids to text; specials are written as `[PAD]` etc., or dropped with `skip_special`."""
        if hasattr(ids, "tolist"):  # a tensor; torch is not imported here
            ids = ids.tolist()
        n_special = len(SPECIAL_TOKENS)
        return "".join("" if skip_special and i < n_special else self.tokens[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """Byte-level: the specials `[PAD] [BOS] [EOS] [UNK]` (ids 0..3), then byte b as id 4 + b.

    Text is UTF-8 encoded; any file is readable and nothing is ever unknown.
    """

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    offset = len(SPECIAL_TOKENS)
    vocab_size = offset + 256

    def encode(self, text: str | bytes, bos: bool = False, eos: bool = False) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        return [self.bos_id] * bos + [b + self.offset for b in data] + [self.eos_id] * eos

    def decode(self, ids: Iterable[int] | Tensor, skip_special: bool = True) -> str:
        """Ids to text (invalid UTF-8 shown as U+FFFD); specials dropped unless `skip_special=False`."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out, data = [], bytearray()
        for i in ids:
            if i >= self.offset:
                data.append(i - self.offset)
                continue
            out.append(data.decode("utf-8", errors="replace"))
            data = bytearray()
            if not skip_special:
                out.append(SPECIAL_TOKENS[i])
        return "".join(out) + data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"
