"""Small tensor functions the TTT layers are made of.

The inner loop needs the gradient of its own loss in closed form (so that the outer loop can
differentiate through it with ordinary autograd), hence the explicit LayerNorm+L2 backward and the
tanh-GELU derivative here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Constants of the official implementation's tanh-GELU derivative (Megatron's fused bias-gelu).
# They are rounded (sqrt(2/pi) = 0.7978845608...); using them keeps the inner gradient, and hence
# pretrained checkpoints, bit-compatible with the reference (the exact constants move outer
# gradients by ~1e-9 in float64).
_GELU_C = 0.79788456
_GELU_C3 = 0.1070322243


Delta = tuple[Tensor, Tensor]
"""A per-example low-rank weight delta ``(down [B, r, in], up [B, out, r])``: ``W + up[b] @ down[b]``."""


def with_delta(out: Tensor, x: Tensor, delta: Delta | None) -> Tensor:
    """``out = x W^T`` (``[B, T, out]``) plus each example's low-rank delta applied to ``x [B, T, in]``
    (`ttt_core.interfaces.WeightDeltas`); `out` unchanged without one."""
    if delta is None:
        return out
    down, up = delta
    return out + torch.einsum("btr,bor->bto", torch.einsum("bti,bri->btr", x, down), up)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the last dim with per-head affine parameters broadcast by the caller."""
    xc = x - x.mean(-1, keepdim=True)
    return weight * xc * torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps) + bias


def layer_norm_l2_grad(x: Tensor, target: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """d/dx of 0.5*||LN(x) - target||^2 per row: the inner loss gradient w.r.t. the inner output."""
    return layer_norm_l2_grad_pre(x, weight * (target - bias), weight * weight, eps)


def layer_norm_l2_grad_pre(x: Tensor, wt: Tensor, w2: Tensor, eps: float) -> Tensor:
    """`layer_norm_l2_grad` with `wt = weight*(target - bias)`, `w2 = weight^2` precomputed.

    The inner loop calls this once per mini-batch, so what does not depend on the fast weights is
    hoisted out by the caller (for all mini-batches at once) and the rest is kept to few ops.
    """
    xc = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)
    x_hat = xc * rstd
    g_hat = w2 * x_hat - wt  # (weight * x_hat + bias - target) * weight
    return (g_hat - g_hat.mean(-1, keepdim=True) - x_hat * (g_hat * x_hat).mean(-1, keepdim=True)) * rstd


def gelu(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def gelu_grad(x: Tensor) -> Tensor:
    """Derivative of tanh-GELU, with the reference implementation's constants."""
    t = torch.tanh(_GELU_C * x * (1 + 0.044715 * x * x))
    return 0.5 * x * ((1 - t * t) * (_GELU_C + _GELU_C3 * x * x)) + 0.5 * (1 + t)


def rope_tables(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin for the interleaved-pair rotary embedding, `[..., head_dim // 2]` per position.

    Computed in float32 whatever the model dtype, like the reference (which does so to keep bf16
    from losing precision); positions are always < mini_batch_size, so float32 is exact enough.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (x[2i], x[2i+1]) by the angles whose cos/sin are given."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


def causal_conv(x: Tensor, weight: Tensor, bias: Tensor | None, history: Tensor | None) -> Tensor:
    """Depthwise causal conv over time of `x [B, n, C]` preceded by `history [B, k-1, C]` (zeros if None).

    `weight` has the `nn.Conv1d` depthwise layout `[C, 1, k]`. Returns `[B, n, C]`.
    """
    k = weight.shape[-1]
    if history is None:
        history = x.new_zeros(x.shape[0], k - 1, x.shape[2])
    xx = torch.cat((history, x), dim=1).transpose(1, 2)
    return F.conv1d(xx, weight, bias, groups=x.shape[2]).transpose(1, 2)


def conv_history(x: Tensor, history: Tensor | None, kernel: int, lengths: Tensor | None) -> Tensor:
    """The last `kernel - 1` inputs of each example after `x` (its first `lengths[b]` rows are real)."""
    if history is None:
        history = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
    xx = torch.cat((history, x), dim=1)
    if lengths is None:
        return xx[:, xx.shape[1] - (kernel - 1) :]
    idx = lengths[:, None] + torch.arange(kernel - 1, device=x.device)
    return xx.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))
