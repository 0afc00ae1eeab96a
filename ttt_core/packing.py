"""Two examples per row: the context pass of a prefix learner without most of its padding.

A batch of right-padded contexts of 16 to 32 tokens behind 8 memory tokens is ~20% padding, and
every projection, MLP and norm of every inner step (and their double backward) runs on it. Pairing
the longest context with the shortest, the second longest with the second shortest, and so on, and
laying each pair out in one row (`[prefix_a; context_a; prefix_b; context_b; padding]`, positions
restarting at 0 for b, attention kept within each example) halves the rows and leaves a row only as
wide as its longest pair. Results equal the padded layout's up to float rounding.

`plan_pairs` makes the layout from the mask (outside any compiled graph: it reads lengths);
`packed_prefixed_logits` runs the backbone on it and returns logits in the padded layout, so the
learner's loss is unchanged.

Length buckets (`plan_buckets`) are the other way to skip padding, for any backbone: the examples
sorted by length and split into a few groups, each run as its own batch only as wide as its longest
example. Per-token work drops about as much as with pairs, and attention, which pairs make twice as
wide (`[2T, 2T]` scores per row, half of them masked), drops too: each group's scores are only as
wide as the group.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class PairPacking(NamedTuple):
    """Where each position of the padded `[B, P + T]` layout (prefix P, context T) sits in `[R, W]`
    packed rows. Every field has a static shape for a given (B, P + T, W)."""

    gather: Tensor  # [R * W] long: packed position -> flat padded position (padding: 0)
    scatter: Tensor  # [B * (P + T)] long: flat padded position -> flat packed position (padding: 0)
    mask: Tensor  # [R, W] bool: real positions
    positions: Tensor  # [R, W] long: position within its own example (RoPE)
    segments: Tensor  # [R, W] long: which example a position belongs to (-1: padding)

    @property
    def width(self) -> int:
        """Packed row width: what a compiled step passes back as `min_width` (static shapes)."""
        return self.mask.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairPacking:
        return PairPacking(*(t.to(device, non_blocking=non_blocking) for t in self))


class LengthBuckets(NamedTuple):
    """Examples grouped by length: `order[start:start + sizes[i]]` (longest first) form group i, whose
    context is cut to `widths[i]` tokens. The sizes and widths are Python ints: static shapes."""

    order: Tensor  # [B] long: example indices, group after group
    inverse: Tensor  # [B] long: where each example sits in `order`
    sizes: tuple[int, ...]
    widths: tuple[int, ...]

    @property
    def width(self) -> tuple[int, ...]:
        """Every group's width: what a compiled step passes back as `min_width` (static shapes)."""
        return self.widths

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LengthBuckets:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return LengthBuckets(move(self.order), move(self.inverse), self.sizes, self.widths)

    def groups(self) -> list[tuple[Tensor, int]]:
        """(example indices, width) of each group."""
        starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        return [(self.order[a : a + n], w) for a, n, w in zip(starts, self.sizes, self.widths)]


def plan_buckets(mask: Tensor, buckets: int, min_widths: tuple[int, ...] | int = (), multiple: int = 1) -> LengthBuckets:
    """`buckets` groups of a right-padded mask `[B, T]`'s examples by length (sizes differ by at most
    one), each as wide as its longest, at least `min_widths[i]`, rounded up to `multiple`, at most T
    (a compiled step passes the widest so far: static shapes, few compiles)."""
    b, t = mask.shape
    lengths = mask.sum(-1)
    order = torch.sort(lengths, descending=True, stable=True).indices
    count = max(1, min(buckets, b))
    sizes = tuple(b // count + (1 if i < b % count else 0) for i in range(count))
    minimum = tuple(min_widths) if isinstance(min_widths, tuple) else ()
    sorted_lengths = lengths[order].tolist()
    widths, start = [], 0
    for i, size in enumerate(sizes):
        need = max(sorted_lengths[start] if size else 0, minimum[i] if i < len(minimum) else 0, 1)
        widths.append(min(t, -(-need // multiple) * multiple))
        start += size
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(b, device=order.device)
    return LengthBuckets(order, inverse, sizes, tuple(widths))


def _pairs(lengths: list[int]) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    b = len(order)
    return [[order[r], order[b - 1 - r]] if r != b - 1 - r else [order[r]] for r in range((b + 1) // 2)]


def plan_pairs(mask: Tensor, prefix: int, min_width: int = 0, multiple: int = 1) -> PairPacking:
    """The pair layout of a right-padded context mask `[B, T]` behind `prefix` always-real positions,
    in rows as narrow as fits, but at least `min_width` and a multiple of `multiple` wide (a compiled
    step passes the widest so far: static shapes, few compiles)."""
    b, t = mask.shape
    n = prefix + t
    lengths = (mask.sum(-1) + prefix).tolist()
    pairs = _pairs(lengths)
    need = max(sum(lengths[i] for i in pair) for pair in pairs)
    width = -(-max(min_width, need) // multiple) * multiple
    rows = len(pairs)
    gather = torch.zeros(rows, width, dtype=torch.long)
    scatter = torch.zeros(b, n, dtype=torch.long)
    positions = torch.zeros(rows, width, dtype=torch.long)
    segments = torch.full((rows, width), -1, dtype=torch.long)
    for r, pair in enumerate(pairs):
        offset = 0
        for i in pair:
            span = torch.arange(lengths[i])
            gather[r, offset : offset + lengths[i]] = i * n + span
            scatter[i, : lengths[i]] = r * width + offset + span
            positions[r, offset : offset + lengths[i]] = span
            segments[r, offset : offset + lengths[i]] = i
            offset += lengths[i]
    device = mask.device
    return PairPacking(gather.view(-1).to(device), scatter.view(-1).to(device), (segments >= 0).to(device),
                       positions.to(device), segments.to(device))


def packed_prefixed_logits(backbone: nn.Module, prefix: Tensor, embeds: Tensor, packing: PairPacking) -> Tensor:
    """`prefixed_logits` computed on pair-packed rows: logits `[B, P + T, V]` in the padded layout
    (its padding positions hold copies of other logits: mask them, as any padding)."""
    x = torch.cat([prefix, embeds], dim=1)
    b, n, d = x.shape
    rows, width = packing.mask.shape
    packed = x.reshape(b * n, d).index_select(0, packing.gather).view(rows, width, d)
    logits = backbone(packed, packing.mask, positions=packing.positions, segments=packing.segments).logits
    return logits.reshape(rows * width, -1).index_select(0, packing.scatter).view(b, n, -1)
