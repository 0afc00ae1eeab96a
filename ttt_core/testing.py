"""Checks every component's tests need: a plugin's own tests import these (they must run with only
ttt-core and the plugin installed, so they cannot share a conftest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ttt_core.episode import Segment


def padded_segment(rows: Sequence[Sequence[int]], pad_width: int = 0, junk_id: int = 7) -> Segment:
    """Right-padded rows of ids, with `pad_width` more columns of `junk_id` under the mask: a
    component that lets padding change a result fails a comparison with `pad_width = 0`."""
    segment = Segment.from_lists(rows)
    if not pad_width:
        return segment
    b = segment.ids.shape[0]
    return Segment(torch.cat([segment.ids, torch.full((b, pad_width), junk_id)], dim=1),
                   torch.cat([segment.mask, torch.zeros(b, pad_width, dtype=torch.bool)], dim=1))


def assert_gradients_match_finite_differences(
    loss: Callable[[], Tensor], params: Sequence[Tensor], eps: float = 1e-6, rtol: float = 1e-6,
) -> None:
    """`autograd.grad(loss(), params)` against central differences at the first, middle and last entry
    of each parameter (run the model in float64: float32 rounds the differences away)."""
    grads = torch.autograd.grad(loss(), list(params))
    for p, g in zip(params, grads):
        for index in (0, p.numel() // 2, p.numel() - 1):
            flat = p.data.view(-1)
            original = flat[index].item()
            flat[index] = original + eps
            plus = loss().item()
            flat[index] = original - eps
            minus = loss().item()
            flat[index] = original
            numeric = (plus - minus) / (2 * eps)
            assert abs(g.view(-1)[index].item() - numeric) < rtol * max(1.0, abs(numeric)), (tuple(p.shape), index)
