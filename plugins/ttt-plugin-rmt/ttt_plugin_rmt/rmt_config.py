"""Configs of `rmt` and `rmt4`. No torch here: recipes validate without building a model."""

from __future__ import annotations

from typing import Any

import attrs
from ttt_core.config import one_of, positive

SEGMENTING = ("task", "chunks")


def _k2(_instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"option '{attribute.name}' must be >= 1 (leave it out for full backpropagation); got {value}")


def _segmenting() -> Any:
    return attrs.field(default="task", validator=one_of(*SEGMENTING))


def _chunk_size() -> Any:
    return attrs.field(default=32, validator=positive)


def _k2_field() -> Any:
    return attrs.field(default=None, validator=_k2)


@attrs.define
class RMTConfig:
    """Recurrent Memory Transformer: memory tokens read at the start and written at the end of each segment."""

    memory_tokens: int = attrs.field(default=8, validator=positive)
    """M: memory tokens at the read and at the write positions of each segment."""
    init_std: float = attrs.field(default=0.02, validator=positive)
    """Standard deviation of the learned initial memory (the token embeddings' init scale)."""
    k2: int | None = _k2_field()
    """Truncated BPTT: how many of the most recent memory states stay in the graph. The memory entering
    segment s (0..S-1, the query segment last) is detached when s < S - k2; so k2 = 1 trains only the
    last context segment's write, and the initial memory learns only when k2 >= S. None: full BPTT."""
    segmenting: str = _segmenting()
    """task: the episode's own segments; chunks: the context cut into `chunk_size`-token chunks."""
    chunk_size: int = _chunk_size()
    """Tokens per chunk when segmenting = "chunks"."""


@attrs.define
class RMT4Config:
    """RMT + test-time training: the inner loop adapts the learner's state on each segment, carried on."""

    k2: int | None = _k2_field()
    """Truncation of the carried state, as for rmt: the state entering segment s (the query segment is
    the last, S in all) is detached when s < S - k2. None: the outer gradient reaches every segment."""
    segmenting: str = _segmenting()
    """task: the episode's own segments; chunks: the context cut into `chunk_size`-token chunks."""
    chunk_size: int = _chunk_size()
    """Tokens per chunk when segmenting = "chunks"."""
