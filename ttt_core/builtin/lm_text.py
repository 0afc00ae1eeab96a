"""Byte-level language modelling over local text files (default: the Python standard library's sources).

How it fits the episode design. A plain LM has nothing to write into a memory before it answers, so
an episode's context is empty (one segment of width 0), its query is `[BOS]` and its target is the
whole window: teacher forcing (`ttt_core.episode.answer_logits_inputs`) then feeds `[BOS] w_0 ..
w_{T-2}` and scores the prediction of every byte `w_0 .. w_{T-1}`, i.e. next-byte prediction over
the window. The backbone's own test-time training (TTT layers of `ttt_lm`) happens inside its
forward; pair it with the inner learner `none` (no fast weights) and the `single` recurrence.

Data. Each split (files disjoint, see `LMTextConfig`) is its files' bytes concatenated. Sample `i` of
a split is the window at a start drawn by a generator seeded with (split, seed, i): the train stream
is endless and resumes at any step, every rank can draw its own samples, and val/test are fixed sets.

Metrics: `bits_per_byte` (the headline, lower is better; the outer loss in nats / ln 2) and `accuracy`
(top-1 next-byte accuracy). Exact match of a whole window means nothing here.

The model's tokenizer. The task takes a tokenizer handed to it (`takes_tokenizer`: a pretrained
`hf` model's own). Each file's text (UTF-8, undecodable bytes replaced) is then encoded by it, file
by file, a split is its files' ids concatenated, `seq_len` counts its tokens, and the query is its
BOS token (EOS when it has none, as GPT-2's). `bits_per_token` is the loss in bits, and
`bits_per_byte` that divided by the corpus's bytes per token (all files' bytes / all their tokens):
a token-level model's bits per byte, comparable with the byte-level task's.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ttt_core.builtin.lm_config import SPLITS, LMTextConfig
from ttt_core.episode import Episode, Segment
from ttt_core.errors import TTTError
from ttt_core.interfaces import IndexedTask, TextTokenizer
from ttt_core.tokenizer import ByteTokenizer


class LMText(IndexedTask):
    """Windows of `seq_len` bytes (or tokens of a given tokenizer); see the module docstring."""

    headline = "bits_per_byte"
    higher_is_better = False

    def __init__(self, config: LMTextConfig, tokenizer: TextTokenizer | None = None) -> None:
        self.config = config
        self.files = config.split_files()
        self.data: dict[str, Tensor] = {}
        self.starts: dict[str, list[int]] = {}  # offset of each file in its split (bytes, or tokens)
        self.given_tokenizer = tokenizer is not None
        self.bytes_per_token = 1.0
        if tokenizer is None:
            self.tokenizer = ByteTokenizer()
            self.start_id = self.tokenizer.bos_id
            for split, files in self.files.items():
                blobs = [path.read_bytes() for path in files]
                self.starts[split] = [0, *itertools.accumulate(len(b) for b in blobs)][:-1]
                joined = bytearray(b"".join(blobs))
                # ids are bytes + offset; int16 keeps a large corpus at 2 bytes per byte
                self.data[split] = torch.frombuffer(joined, dtype=torch.uint8).to(torch.int16) + self.tokenizer.offset
        else:
            self.tokenizer = tokenizer
            self._encode_files(tokenizer)

    def _encode_files(self, tokenizer: TextTokenizer) -> None:
        """Every split's files encoded by a given tokenizer (see the module docstring)."""
        start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if start is None:
            raise TTTError("[task] lm_text: the model's tokenizer has neither a BOS nor an EOS token to start windows with")
        self.start_id = start
        dtype = torch.int16 if tokenizer.vocab_size <= 2**15 else torch.int32
        n_bytes = n_tokens = 0
        for split, files in self.files.items():
            pieces = []
            for path in files:
                blob = path.read_bytes()
                pieces.append(torch.tensor(tokenizer.encode(blob.decode("utf-8", errors="replace")), dtype=dtype))
                n_bytes += len(blob)
            self.starts[split] = [0, *itertools.accumulate(len(p) for p in pieces)][:-1]
            self.data[split] = torch.cat(pieces)
            n_tokens += len(self.data[split])
            if len(self.data[split]) <= self.config.seq_len:
                raise TTTError(f"[task] lm_text: option 'seq_len' ({self.config.seq_len}) is too large: the {split} split "
                               f"has only {len(self.data[split])} tokens of the model's tokenizer")
        self.bytes_per_token = n_bytes / n_tokens

    def split_size(self, split: str) -> int | None:
        """Samples in a split: None (endless) for train."""
        _check_split(split)
        return {"train": None, "val": self.config.val_samples, "test": self.config.test_samples}[split]

    def window_start(self, split: str, index: int) -> int:
        _check_split(split)
        size = self.split_size(split)
        if size is not None and not 0 <= index < size:
            raise IndexError(f"{split} index {index} out of range (size {size})")
        rng = random.Random(f"ttt/lm_text/{split}/{self.config.seed}/{index}")
        return rng.randrange(len(self.data[split]) - self.config.seq_len + 1)

    def window(self, split: str, index: int) -> Tensor:
        start = self.window_start(split, index)
        return self.data[split][start : start + self.config.seq_len].long()

    def batch(self, split: str, indices: range) -> Episode:
        windows = torch.stack([self.window(split, i) for i in indices])
        b = windows.shape[0]
        empty = Segment(torch.zeros(b, 0, dtype=torch.long), torch.zeros(b, 0, dtype=torch.bool))
        query = Segment(torch.full((b, 1), self.start_id, dtype=torch.long), torch.ones(b, 1, dtype=torch.bool))
        target = Segment(windows, torch.ones_like(windows, dtype=torch.bool))
        return Episode(segments=(empty,), context=empty, query=query, target=target)

    def metrics(self, answer_logits: Tensor, episode: Episode) -> dict[str, Tensor]:
        target = episode.target
        nats = F.cross_entropy(answer_logits.transpose(1, 2).float(), target.ids, reduction="none")
        weights = target.mask.float()
        count = weights.sum(1).clamp_min(1.0)
        right = (answer_logits.argmax(-1) == target.ids).float()
        bits = (nats * weights).sum(1) / count / math.log(2)
        out = {"bits_per_byte": bits / self.bytes_per_token, "accuracy": (right * weights).sum(1) / count}
        if self.given_tokenizer:
            out["bits_per_token"] = bits
        return out

    def source(self, split: str, index: int) -> tuple[Path, int]:
        """The file a window starts in and the offset in it (bytes, or tokens of a given tokenizer)."""
        start = self.window_start(split, index)
        k = bisect.bisect_right(self.starts[split], start) - 1
        return self.files[split][k], start - self.starts[split][k]

    def describe(self, split: str, index: int) -> str:
        path, offset = self.source(split, index)
        text = self.tokenizer.decode(self.window(split, index).tolist())
        unit = "token" if self.given_tokenizer else "byte"
        return f"{path} at {unit} {offset} ({self.config.seq_len} {unit}s; may run into the next file):\n{text}"

    def summary(self) -> str:
        """One line per split: files and bytes (or tokens)."""
        unit = "tokens" if self.given_tokenizer else "bytes"
        return "\n".join(f"{s}: {len(self.files[s])} files, {len(self.data[s])} {unit}" for s in SPLITS)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
