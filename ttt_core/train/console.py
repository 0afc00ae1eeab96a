"""What a run shows while it trains: a progress bar on a terminal, plain lines elsewhere.

Progress (the training bar, evaluation bars, plain progress lines) goes to stderr; validation results
go to stdout and are shown with `--quiet` too. When stderr is not a terminal (a log file, `nohup`, a
job scheduler) there is no bar: a plain line every `train.log_every` steps, without carriage returns.
Only rank 0 shows anything.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def duration(seconds: float) -> str:
    """`75.0` -> `1m15s`, `3725` -> `1h02m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Console:
    """Where and how a run reports progress (`quiet`: validation lines only; `enabled`: rank 0)."""

    def __init__(self, quiet: bool = False, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.enabled = enabled
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.bar: Any = None

    @property
    def bars(self) -> bool:
        return self.enabled and not self.quiet and self.tty

    @property
    def lines(self) -> bool:
        """Plain progress lines instead of a bar."""
        return self.enabled and not self.quiet and not self.tty

    def info(self, text: str) -> None:
        """A diagnostic line (stderr), left out with --quiet."""
        if self.enabled and not self.quiet:
            self._write(text, self.stream)

    def note(self, text: str) -> None:
        """A line shown with --quiet too (stderr): resumes, interrupts, early stops, compiling."""
        if self.enabled:
            self._write(text, self.stream)

    def result(self, text: str) -> None:
        """A result line (stdout), shown with --quiet too: validation."""
        if self.enabled:
            self._write(text, sys.stdout)

    def _write(self, text: str, stream: TextIO) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    # --- the training bar -----------------------------------------------------------------------

    def start_training(self, total: int, initial: int) -> None:
        self.total, self.started, self.first = total, time.perf_counter(), initial
        if self.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, desc="train", file=self.stream)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def logged(self, step: int, values: dict[str, str]) -> None:
        """The record of a logging step: the bar's postfix, or one plain line."""
        if self.bar is not None:
            self.bar.set_postfix(values)
        elif self.lines:
            done = step - self.first
            spent = time.perf_counter() - self.started
            eta = f" eta {duration(spent / done * (self.total - step))}" if done > 0 and step < self.total else ""
            shown = " ".join(f"{k} {v}" for k, v in values.items())
            self._write(f"step {step}/{self.total} ({100 * step // self.total}%) {shown}{eta}", self.stream)

    def end_training(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # --- evaluation -------------------------------------------------------------------------------

    def evaluating(self, batches: Iterable[T], split: str, samples: int, batch_size: int) -> Iterator[T]:
        """`batches` with a transient bar on a terminal (none elsewhere: evaluation ends in a line)."""
        if not self.bars:
            yield from batches
            return
        from tqdm import tqdm

        total = math.ceil(samples / batch_size)
        position = 1 if self.bar is not None else 0
        with tqdm(batches, total=total, desc=split, unit="batch", leave=False, dynamic_ncols=True,
                  file=self.stream, position=position) as bar:
            yield from bar
