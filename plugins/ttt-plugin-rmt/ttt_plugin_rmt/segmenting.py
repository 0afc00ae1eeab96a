"""Cutting an episode's context into the segments a recurrence walks, and what recurrences share.

Two ways: the task's own segments (`episode.segments`), or fixed-size chunks of the concatenated
context. Segments stay right-padded, so a row can have no real token in a segment (a short row's last
chunks, or a task segment that happens to be empty); recurrences keep that row's memory unchanged
there (`keep_where_empty`), so a row's result never depends on how long the other rows are.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ttt_core.episode import Episode, Segment


def context_segments(episode: Episode, segmenting: str, chunk_size: int) -> tuple[Segment, ...]:
    """The context segments in reading order (the query is not among them)."""
    if segmenting == "task":
        return episode.segments
    if segmenting != "chunks":
        raise ValueError(f"segmenting must be 'task' or 'chunks', got '{segmenting}'")
    return chunks(episode.context, chunk_size)


def chunks(context: Segment, size: int) -> tuple[Segment, ...]:
    """`context` cut into chunks of `size` positions, up to the longest row's last real token.

    Real tokens of a right-padded row are a prefix, so each chunk is right-padded too; its width is
    `size` except for the last one.
    """
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    longest = int(context.lengths.max()) if context.ids.shape[0] else 0
    return tuple(
        Segment(context.ids[:, start : start + size], context.mask[:, start : start + size])
        for start in range(0, longest, size)
    )


def is_truncated(segment: int, total: int, k2: int | None) -> bool:
    """Whether the memory entering `segment` (0..total-1, the query segment last) is detached.

    Detaching where s < total - k2 keeps exactly the k2 most recent memory states in the graph.
    """
    return k2 is not None and segment < total - k2


def detach_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of `state` cut from the graph, still a leaf the inner loop can differentiate against."""
    grad = torch.is_grad_enabled()
    return {k: v.detach().requires_grad_(grad and v.requires_grad) for k, v in state.items()}


def keep_where_empty(segment: Segment, new: Tensor, old: Tensor) -> Tensor:
    """`new` for rows with at least one real token in `segment`, `old` for the others."""
    has_tokens = segment.mask.any(dim=1)
    return torch.where(has_tokens.view(-1, *([1] * (new.dim() - 1))), new, old)
