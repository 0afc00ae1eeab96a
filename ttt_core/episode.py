"""What a task hands to a recurrence: token ids and masks for the context segments, query and target.

Every tensor is right-padded (`mask` True = real token), so position 0 is always the first real token.
Keeping the segments separately (and their concatenation as `context`) lets single-segment schemes
read `context` while recurrent ones walk `segments`.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from ttt_core.packing import LengthBuckets, PairPacking


@attrs.frozen(eq=False)
class Segment:
    """A right-padded batch of token sequences: ids `[B, T]` long, mask `[B, T]` bool; optionally the
    pair layout of its rows behind a learner's prefix or its length groups (`ttt_core.packing`,
    attached by the learner)."""

    ids: Tensor
    mask: Tensor
    packing: PairPacking | LengthBuckets | None = None

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]], pad_id: int = 0) -> Segment:
        width = max((len(s) for s in seqs), default=0)
        ids = torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        mask = torch.arange(width)[None, :] < lengths[:, None]
        return cls(ids.view(len(seqs), width), mask)

    @property
    def lengths(self) -> Tensor:
        """Real tokens per row, `[B]`."""
        return self.mask.sum(-1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Segment:
        move = lambda x: x.to(device, non_blocking=non_blocking)  # noqa: E731
        packing = None if self.packing is None else self.packing.to(device, non_blocking)
        return Segment(move(self.ids), move(self.mask), packing)


@attrs.frozen(eq=False)
class Episode:
    """One batch: context segments (and their concatenation), the query, and the answer to predict."""

    segments: tuple[Segment, ...]
    context: Segment
    query: Segment
    target: Segment

    @property
    def batch_size(self) -> int:
        return self.query.ids.shape[0]

    @property
    def num_segments(self) -> int:
        return len(self.segments)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Episode:
        move = lambda s: s.to(device, non_blocking)  # noqa: E731
        return Episode(tuple(map(move, self.segments)), move(self.context), move(self.query), move(self.target))


def answer_logits_inputs(episode: Episode) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forcing input `[query; target[:-1]]` per row: (ids `[B, W]`, mask, target_positions `[B, Tt]`).

    `target_positions[b, j]` is the position whose logits predict `target.ids[b, j]` (clamped into
    range where the target is padding). Add the prefix length when memory tokens are prepended.
    """
    query, target = episode.query, episode.target
    tt = target.ids.shape[1]
    ids, _, _ = join_context(query, target.ids[:, :-1], target.mask[:, 1:])
    width = ids.shape[1]
    q_len, t_len = query.lengths, target.lengths
    # not join_context's mask: a row without a target keeps its last query token out, as it always has
    mask = torch.arange(width, device=ids.device)[None, :] < (q_len + t_len - 1).clamp(min=0)[:, None]
    positions = (q_len[:, None] - 1 + torch.arange(tt, device=ids.device)).clamp(0, width - 1)
    return ids, mask, positions


def join_context(context: Segment, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`[context; ids]` per row, the context's padding squeezed out: (ids `[B, Tc + W]`, mask, index
    `[B, W]`) where `index[b, j]` is the joined position of `ids[b, j]` (gather logits back with it).

    `ids`, `mask` are right-padded like every segment, so each row stays right-padded when joined.
    """
    b, tc = context.ids.shape
    w = ids.shape[1]
    context_len = context.lengths
    index = context_len[:, None] + torch.arange(w, device=ids.device)
    joined = torch.zeros(b, tc + w, dtype=ids.dtype, device=ids.device)
    joined[:, :tc] = torch.where(context.mask, context.ids, 0)
    joined.scatter_(1, index, torch.where(mask, ids, 0))
    joined_len = context_len + mask.sum(-1)
    joined_mask = torch.arange(tc + w, device=ids.device)[None, :] < joined_len[:, None]
    return joined, joined_mask, index


def gather_answer_logits(logits: Tensor, target_positions: Tensor, offset: int = 0) -> Tensor:
    """logits `[B, T, V]` -> the logits predicting each target token, `[B, Tt, V]`."""
    index = (target_positions + offset)[..., None].expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def answer_loss(answer_logits: Tensor, target: Segment, denominator: Tensor | float | None = None) -> Tensor:
    """Mean cross-entropy of answer logits ``[B, Tt, V]`` over the real target tokens.

    `denominator` replaces this batch's token count: data-parallel ranks divide by their share of the
    global count, so that averaging their losses gives the mean over the global batch.
    """
    dtype = torch.promote_types(answer_logits.dtype, torch.float32)  # float64 stays float64 (gradient checks)
    losses = F.cross_entropy(answer_logits.flatten(0, 1).to(dtype), target.ids.flatten(), reduction="none")
    mask = target.mask.flatten().to(losses.dtype)
    return (losses * mask).sum() / (mask.sum().clamp(min=1) if denominator is None else denominator)
