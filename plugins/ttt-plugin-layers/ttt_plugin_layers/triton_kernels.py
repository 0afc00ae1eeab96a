"""Triton kernel for the dual form of TTT-Linear (the forward pass of `inner.dual_form`).

One program per (example, head) keeps the fast weights `W [f, f]`, `b [f]` on chip and walks the
mini-batches in order, so the state never round-trips through memory between mini-batches (the
torch path launches ~25 kernels per mini-batch). Same contract as `dual_form` (without `lengths`):
it returns the pre-LayerNorm readouts `Z` and the new `FastWeights`.

Gradients: `ttt_linear_dual_triton` is an autograd function whose backward recomputes the chunk with
the torch dual form, so it is exact but only pays off when no gradient is needed; `TTTLayer` picks
it automatically on CUDA under `torch.no_grad()` (or always with `kernel="triton"`). Tested on CPU
with `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ttt_plugin_layers.inner import FastWeights, LinearInner, dual_form
try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path is used instead
    triton = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:
    # TRITON_INTERPRET=1 must be set before this module is imported (triton.jit reads it here).

    @triton.jit
    def _minibatch(q, k, t, lr, te, W, b, lnw, lnb, eps, F_: tl.constexpr, KB: tl.constexpr, PREC: tl.constexpr):
        # gradient of 0.5*||LN(kW + b) - t||^2 w.r.t. Z1 = kW + b, per row, at the mini-batch start
        z1 = tl.dot(k, W, input_precision=PREC) + b[None, :]
        mu = tl.sum(z1, axis=1) / F_
        xc = z1 - mu[:, None]
        std = tl.sqrt(tl.sum(xc * xc, axis=1) / F_ + eps)
        xh = xc / std[:, None]
        gh = (lnw[None, :] * xh + lnb[None, :] - t) * lnw[None, :]
        g = (F_ * gh - tl.sum(gh, axis=1)[:, None] - xh * tl.sum(gh * xh, axis=1)[:, None]) / (F_ * std[:, None])
        # readouts: Z_i = q_i W + b - sum_{j<=i} te_i lr_j (q_i.k_j + 1) g_j
        rows = tl.arange(0, KB)
        causal = rows[:, None] >= rows[None, :]
        eta = tl.where(causal, te[:, None] * lr[None, :], 0.0)
        a = eta * (tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0)
        z = tl.dot(q, W, input_precision=PREC) + b[None, :] - tl.dot(a.to(g.dtype), g, input_precision=PREC)
        # lr-weighted gradient sums of the mini-batch
        lg = lr[:, None] * g
        gw = tl.dot(tl.trans(k), lg, input_precision=PREC)
        gb = tl.sum(lg, axis=0)
        return z, gw, gb

    @triton.jit
    def _ttt_linear_dual_kernel(Q, K, T, LR, TE, W0, B0, AW0, AB0, LNW, LNB, Z, W1, B1, AW1, AB1, n_mb, H, eps,
                                F_: tl.constexpr, KB: tl.constexpr, HAS_ACC: tl.constexpr,
                                FOLD_LAST: tl.constexpr, PREC: tl.constexpr):
        pid = tl.program_id(0)
        h = pid % H
        rk = tl.arange(0, KB)
        rf = tl.arange(0, F_)
        mat = rf[:, None] * F_ + rf[None, :]
        W = tl.load(W0 + pid * F_ * F_ + mat)
        b = tl.load(B0 + pid * F_ + rf)
        lnw = tl.load(LNW + h * F_ + rf)
        lnb = tl.load(LNB + h * F_ + rf)
        te = tl.load(TE + rk)
        te_last = tl.load(TE + KB - 1)
        tile = rk[:, None] * F_ + rf[None, :]
        seq = pid * n_mb * KB
        gw = tl.zeros((F_, F_), dtype=W.dtype)
        gb = tl.zeros((F_,), dtype=W.dtype)
        if HAS_ACC:  # the state was saved in the middle of a mini-batch: what it had seen so far
            aw = tl.load(AW0 + pid * F_ * F_ + mat)
            ab = tl.load(AB0 + pid * F_ + rf)
        for m in range(0, n_mb):
            off = (seq + m * KB) * F_
            q = tl.load(Q + off + tile)
            k = tl.load(K + off + tile)
            t = tl.load(T + off + tile)
            lr = tl.load(LR + seq + m * KB + rk)
            z, gw, gb = _minibatch(q, k, t, lr, te, W, b, lnw, lnb, eps, F_, KB, PREC)
            if HAS_ACC:  # enters mini-batch 0 only
                first = m == 0
                acc_z = te[:, None] * (tl.dot(q, aw, input_precision=PREC) + ab[None, :])
                z = tl.where(first, z - acc_z, z)
                gw = tl.where(first, gw + aw, gw)
                gb = tl.where(first, gb + ab, gb)
            tl.store(Z + off + tile, z)
            fold = te_last
            if not FOLD_LAST:
                fold = tl.where(m == n_mb - 1, 0.0, te_last)
            W = W - fold * gw
            b = b - fold * gb
        tl.store(W1 + pid * F_ * F_ + mat, W)
        tl.store(B1 + pid * F_ + rf, b)
        if FOLD_LAST:
            gw = gw * 0.0
            gb = gb * 0.0
        tl.store(AW1 + pid * F_ * F_ + mat, gw)
        tl.store(AB1 + pid * F_ + rf, gb)


def _launch(fast: FastWeights, q: Tensor, k: Tensor, t: Tensor, lr: Tensor, te_table: Tensor,
            ln_w: Tensor, ln_b: Tensor, eps: float) -> tuple[Tensor, ...]:
    B, H, n, f = q.shape
    kb = te_table.shape[0]
    p0 = int(fast.pos[0])
    n_mb = math.ceil((p0 + n) / kb)
    right = n_mb * kb - p0 - n
    if f & (f - 1) or kb & (kb - 1):
        raise ValueError(f"the Triton kernel needs power-of-two head_dim and mini_batch_size, got {f}, {kb}")
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernel on CPU tensors needs TRITON_INTERPRET=1 (set before the first call)")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32

    def prep(x: Tensor) -> Tensor:
        return x.to(dtype).contiguous()

    grid_pad = (0, 0, p0, right)
    Q, K, T = (prep(F.pad(x, grid_pad)) for x in (q, k, t))
    LR = prep(F.pad(lr, (p0, right)))
    W0 = prep(fast.params["W1"].expand(B, H, f, f))
    B0 = prep(fast.params["b1"].expand(B, H, 1, f))
    AW0, AB0 = prep(fast.grads["W1"].expand(B, H, f, f)), prep(fast.grads["b1"].expand(B, H, 1, f))
    Z = torch.empty_like(Q)
    W1, B1, AW1, AB1 = (torch.empty_like(x) for x in (W0, B0, AW0, AB0))
    _ttt_linear_dual_kernel[(B * H,)](
        Q, K, T, LR, prep(te_table), W0, B0, AW0, AB0, prep(ln_w.reshape(H, f)), prep(ln_b.reshape(H, f)),
        Z, W1, B1, AW1, AB1, n_mb, H, eps,
        F_=f, KB=kb, HAS_ACC=p0 > 0, FOLD_LAST=(p0 + n) % kb == 0, PREC="ieee",
    )
    out = q.dtype
    return Z[:, :, p0 : p0 + n].to(out), W1.to(out), B1.to(out), AW1.to(out), AB1.to(out)


class _TritonDualForm(torch.autograd.Function):
    """Triton forward; backward by recomputing the chunk with the torch dual form."""

    @staticmethod
    def forward(ctx: Any, pos: Tensor, eps: float, q: Tensor, k: Tensor, t: Tensor, lr: Tensor, te: Tensor,
                ln_w: Tensor, ln_b: Tensor, W: Tensor, b: Tensor, aW: Tensor, ab: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(pos, q, k, t, lr, te, ln_w, ln_b, W, b, aW, ab)
        ctx.eps = eps
        fast = FastWeights({"W1": W, "b1": b}, {"W1": aW, "b1": ab}, pos)
        return _launch(fast, q, k, t, lr, te, ln_w, ln_b, eps)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        pos, *inputs = ctx.saved_tensors
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
        q, k, t, lr, te, ln_w, ln_b, W, b, aW, ab = inputs
        with torch.enable_grad():
            fast = FastWeights({"W1": W, "b1": b}, {"W1": aW, "b1": ab}, pos)
            Z, new = dual_form(LinearInner, fast, q, k, t, lr, te, (ln_w, ln_b, ctx.eps))
            outs = (Z, new.params["W1"], new.params["b1"], new.grads["W1"], new.grads["b1"])
            pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
            wanted = [x for x in inputs if x.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
        it = iter(grads)
        return (None, None, *(next(it) if x.requires_grad else None for x in inputs))


def ttt_linear_dual_triton(fast: FastWeights, q: Tensor, k: Tensor, t: Tensor, lr: Tensor, te_table: Tensor,
                           norm: tuple[Tensor, Tensor, float]) -> tuple[Tensor, FastWeights]:
    """`dual_form(LinearInner, ...)` computed by the Triton kernel (examples at one position)."""
    ln_w, ln_b, eps = norm
    Z, W, b, aW, ab = _TritonDualForm.apply(fast.pos, eps, q, k, t, lr, te_table, ln_w, ln_b,
                                            fast.params["W1"], fast.params["b1"], fast.grads["W1"], fast.grads["b1"])
    return Z, FastWeights({"W1": W, "b1": b}, {"W1": aW, "b1": ab}, (fast.pos + q.shape[2]) % te_table.shape[0])
