"""Per-example fast weights: a meta-learned initial value, expanded over the batch for the inner loop.

A writer keeps its fast weights' initial values as parameters and hands the inner loop one copy per
example (``init_state``); its forward takes them back from the state. ``x @ w`` with ``x [B, N, in]``
and ``w [B, in, out]`` is one batched matmul, so a single ``autograd.grad`` of the summed per-example
losses gives every example its own gradient. A weight that is not fast is the parameter itself
(``[in, out]``), which the same ``x @ w`` broadcasts over the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ttt_core.interfaces import MemoryWriter, State


class FastWeights(nn.Module):
    """Named initial values; ``fast`` names those the inner loop adapts per example."""

    def __init__(self, initial: dict[str, Tensor], fast: tuple[str, ...]) -> None:
        super().__init__()
        self.initial = nn.ParameterDict({name: nn.Parameter(value) for name, value in initial.items()})
        self.fast = tuple(name for name in initial if name in fast)

    def init_state(self, batch_size: int) -> State:
        return {name: self.initial[name].unsqueeze(0).expand(batch_size, *self.initial[name].shape) for name in self.fast}

    def resolve(self, state: State) -> dict[str, Tensor]:
        """Every weight: the adapted per-example copy where fast, else the shared parameter."""
        return {name: state[name] if name in self.fast else param for name, param in self.initial.items()}

    def fast_parameters(self) -> list[nn.Parameter]:
        return [self.initial[name] for name in self.fast]


class FastWeightWriter(nn.Module, MemoryWriter):
    """A writer whose `weights` (a `FastWeights`) are its fast state; their initial values are the
    memory parameters it reports (its other parameters are meta-learned only)."""

    weights: FastWeights

    def init_state(self, batch_size: int) -> State:
        return self.weights.init_state(batch_size)

    def memory_parameters(self) -> list[nn.Parameter]:
        return self.weights.fast_parameters()


def add_bias(x: Tensor, bias: Tensor) -> Tensor:
    """``x [B, N, d] + bias``, where bias is ``[d]`` (shared) or ``[B, d]`` (per example)."""
    return x + (bias.unsqueeze(-2) if bias.dim() == 2 else bias)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-6) -> Tensor:
    if weight is None:
        return x
    wide = x.to(torch.promote_types(x.dtype, torch.float32))  # the mean square of bf16 in float32
    return x * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * weight


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over time ``[B, T, d] -> [B, d]`` of the real positions only (0 when there are none)."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
