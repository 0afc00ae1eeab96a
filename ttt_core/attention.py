"""Causal self-attention that picks its kernel by whether a second backward pass may come.

PyTorch's fused SDPA kernels (flash, memory-efficient, the CPU flash kernel) are fast but have no
double backward, and MAML-style inner loops differentiate through the gradient of the attention.
The inner loop therefore enters `keep_graph()` while it computes losses with `create_graph=True`;
inside it `causal_attention` takes an explicit matmul/softmax path that autograd can differentiate
any number of times. Outside it the fused kernel runs. A context variable (not a global flag) keeps
the choice correct across threads and nested calls.

Under `torch.compile` (the functional training step, `ttt_core.train.functional`) the math path is
always taken: dynamo cannot read or set a context variable, the compiled step differentiates
through attention twice anyway, and inductor fuses the math path's elementwise work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor

_KEEP_GRAPH: ContextVar[bool] = ContextVar("ttt_keep_graph", default=False)


@contextmanager
def keep_graph(enabled: bool = True) -> Iterator[None]:
    """Within this block attention uses the twice-differentiable math path (or not, if disabled).
    A no-op while dynamo traces (see the module docstring)."""
    if torch.compiler.is_compiling():
        yield
        return
    token = _KEEP_GRAPH.set(enabled)
    try:
        yield
    finally:
        _KEEP_GRAPH.reset(token)


def graph_kept() -> bool:
    """Whether the current context asked for double-backward-safe kernels (always, when compiling)."""
    return torch.compiler.is_compiling() or _KEEP_GRAPH.get()


def causal_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Causal scaled dot-product attention over `[..., H, T, hd]` tensors.

    `key_mask` is `[..., T]` bool (True = real token), with the leading dims of `q` minus `H`
    (`[B, T]` for `[B, H, T, hd]`). Every position may attend to itself even when it is padding, so
    padded rows stay finite (their outputs are meaningless but never NaN).
    """
    lead, (heads, t, hd) = q.shape[:-3], q.shape[-3:]
    if k.shape[-2] != t:
        raise ValueError(f"causal_attention needs as many keys as queries, got {k.shape[-2]} vs {t}")
    # Flatten leading dims to one batch dim: the fused kernels want 4-D inputs.
    q, k, v = (x.reshape(-1, heads, t, hd) for x in (q, k, v))
    allowed = None if key_mask is None else allowed_keys(key_mask.expand(*lead, t).reshape(-1, t))
    return attend(q, k, v, allowed).reshape(*lead, heads, t, hd)


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float | None = None) -> Tensor:
    """Attention over 4-D `[N, H, T, hd]` inputs with a precomputed `allowed` mask (`allowed_keys`,
    or None for plain causal), so a caller running several layers builds the mask once. `scale`
    defaults to `hd ** -0.5`; pass 1.0 when `q` is already scaled."""
    if graph_kept():
        return _math_attention(q, k, v, allowed, scale)
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def allowed_keys(key_mask: Tensor, segments: Tensor | None = None) -> Tensor:
    """`[N, 1, T, T]` bool from a `[N, T]` key mask: causal, real keys only, and always the diagonal;
    with `segments` `[N, T]` (several sequences packed in one row) only keys of the query's own."""
    t = key_mask.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=key_mask.device).tril()
    diagonal = torch.eye(t, dtype=torch.bool, device=key_mask.device)
    allowed = causal & key_mask[:, None, None, :].bool()
    if segments is not None:
        allowed = allowed & (segments[:, None, :, None] == segments[:, None, None, :])
    return allowed | diagonal


def _math_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float | None = None) -> Tensor:
    """Plain matmul/softmax attention: slower, but every op has a double backward.

    The mask is added as a 0 / -inf bias (no grad), which costs no op in the backward passes,
    unlike `masked_fill`; the scale is skipped when it is 1 (the caller folded it into `q`)."""
    t = q.shape[-2]
    if allowed is None:
        allowed = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1)
    if scale != 1.0:
        scores = scores * scale
    bias = torch.zeros(allowed.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~allowed, float("-inf"))
    probs = (scores + bias).softmax(-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return probs.to(v.dtype) @ v
