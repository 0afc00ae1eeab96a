"""The losses compute in at least float32: bf16 logits are widened, float64 stays float64 (the
finite-difference checks of `ttt_core.testing` rely on it)."""

from __future__ import annotations

import pytest
import torch

from ttt_core.episode import Segment, answer_loss
from ttt_core.model import lm_loss_per_example


@pytest.mark.parametrize("dtype, expected", [(torch.bfloat16, torch.float32), (torch.float32, torch.float32),
                                             (torch.float64, torch.float64)])
def test_losses_compute_in_at_least_float32(dtype, expected):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=dtype)
    target = Segment.from_lists([[1, 2, 3], [4, 0]])
    assert answer_loss(logits, target).dtype == expected
    assert lm_loss_per_example(logits, target.ids, target.mask).dtype == expected
    exact = answer_loss(logits.double(), target)
    assert torch.allclose(answer_loss(logits, target).double(), exact, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
