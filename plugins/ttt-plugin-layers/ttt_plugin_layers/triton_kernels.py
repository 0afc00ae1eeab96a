"""Triton kernels for the dual form of TTT-Linear and TTT-MLP (the forward of `inner.dual_form`).

One program per (example, head) keeps the fast weights on chip and walks the mini-batches in order,
so the state never round-trips through memory between mini-batches (the torch path launches ~25
kernels per mini-batch). Same contract as `dual_form` (without `lengths`): the pre-LayerNorm
readouts `Z` and the new `FastWeights`.

Gradients: `ttt_dual_triton` is an autograd function whose backward recomputes the chunk with the
torch dual form, so it is exact but only pays off when no gradient is needed; `TTTLayer` picks it
automatically on CUDA under `torch.no_grad()` (or always with `kernel="triton"`). Verified on CPU
with `TRITON_INTERPRET=1`; the TTT-MLP kernel keeps `W1`, `W2` (2 x 4 f^2 values) in registers,
which suits small heads (f <= 32) and will spill for larger ones.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ttt_plugin_layers.inner import INNER, FastWeights, dual_form

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
    def _ln_l2_grad(z, t, lnw, lnb, eps, F_: tl.constexpr):
        """Per row: d/dz of 0.5*||LN(z) - t||^2 (per-head LayerNorm weight/bias lnw, lnb)."""
        mu = tl.sum(z, axis=1) / F_
        xc = z - mu[:, None]
        std = tl.sqrt(tl.sum(xc * xc, axis=1) / F_ + eps)
        xh = xc / std[:, None]
        gh = (lnw[None, :] * xh + lnb[None, :] - t) * lnw[None, :]
        return (F_ * gh - tl.sum(gh, axis=1)[:, None] - xh * tl.sum(gh * xh, axis=1)[:, None]) / (F_ * std[:, None])

    @triton.jit
    def _gelu(x):
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * u) - 1.0))

    @triton.jit
    def _gelu_grad(x):
        """With the reference's rounded constants, as `functional.gelu_grad`."""
        th = 2.0 * tl.sigmoid(2.0 * (0.79788456 * x * (1.0 + 0.044715 * x * x))) - 1.0
        return 0.5 * x * ((1.0 - th * th) * (0.79788456 + 0.1070322243 * x * x)) + 0.5 * (1.0 + th)

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
        causal = rk[:, None] >= rk[None, :]
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
            # gradients at the mini-batch's start weights
            g = _ln_l2_grad(tl.dot(k, W, input_precision=PREC) + b[None, :], t, lnw, lnb, eps, F_)
            # readouts: Z_i = q_i W + b - sum_{j<=i} te_i lr_j (q_i.k_j + 1) g_j
            eta = tl.where(causal, te[:, None] * lr[None, :], 0.0)
            a = eta * (tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0)
            z = tl.dot(q, W, input_precision=PREC) + b[None, :] - tl.dot(a.to(g.dtype), g, input_precision=PREC)
            lg = lr[:, None] * g
            gw = tl.dot(tl.trans(k), lg, input_precision=PREC)
            gb = tl.sum(lg, axis=0)
            if HAS_ACC:  # enters mini-batch 0 only
                first = m == 0
                z = tl.where(first, z - te[:, None] * (tl.dot(q, aw, input_precision=PREC) + ab[None, :]), z)
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

    @triton.jit
    def _ttt_mlp_dual_kernel(Q, K, T, LR, TE, W1_0, B1_0, W2_0, B2_0, AW1_0, AB1_0, AW2_0, AB2_0, LNW, LNB, Z,
                             W1_1, B1_1, W2_1, B2_1, AW1_1, AB1_1, AW2_1, AB2_1, n_mb, H, eps,
                             F_: tl.constexpr, D_: tl.constexpr, KB: tl.constexpr, HAS_ACC: tl.constexpr,
                             FOLD_LAST: tl.constexpr, PREC: tl.constexpr):
        pid = tl.program_id(0)
        h = pid % H
        rk = tl.arange(0, KB)
        rf = tl.arange(0, F_)
        rd = tl.arange(0, D_)
        m1 = rf[:, None] * D_ + rd[None, :]  # W1 [F, D]
        m2 = rd[:, None] * F_ + rf[None, :]  # W2 [D, F]
        W1 = tl.load(W1_0 + pid * F_ * D_ + m1)
        b1 = tl.load(B1_0 + pid * D_ + rd)
        W2 = tl.load(W2_0 + pid * D_ * F_ + m2)
        b2 = tl.load(B2_0 + pid * F_ + rf)
        lnw = tl.load(LNW + h * F_ + rf)
        lnb = tl.load(LNB + h * F_ + rf)
        te = tl.load(TE + rk)
        te_last = tl.load(TE + KB - 1)
        causal = rk[:, None] >= rk[None, :]
        tile = rk[:, None] * F_ + rf[None, :]
        seq = pid * n_mb * KB
        gw1 = tl.zeros((F_, D_), dtype=W1.dtype)
        gb1 = tl.zeros((D_,), dtype=W1.dtype)
        gw2 = tl.zeros((D_, F_), dtype=W1.dtype)
        gb2 = tl.zeros((F_,), dtype=W1.dtype)
        if HAS_ACC:
            aw1 = tl.load(AW1_0 + pid * F_ * D_ + m1)
            ab1 = tl.load(AB1_0 + pid * D_ + rd)
            aw2 = tl.load(AW2_0 + pid * D_ * F_ + m2)
            ab2 = tl.load(AB2_0 + pid * F_ + rf)
        for m in range(0, n_mb):
            off = (seq + m * KB) * F_
            q = tl.load(Q + off + tile)
            k = tl.load(K + off + tile)
            t = tl.load(T + off + tile)
            lr = tl.load(LR + seq + m * KB + rk)
            # gradients at the mini-batch's start weights, back through the MLP
            z1 = tl.dot(k, W1, input_precision=PREC) + b1[None, :]
            x2 = _gelu(z1)
            g2 = _ln_l2_grad(tl.dot(x2, W2, input_precision=PREC) + b2[None, :], t, lnw, lnb, eps, F_)
            g1 = tl.dot(g2, tl.trans(W2), input_precision=PREC) * _gelu_grad(z1)
            # readouts, layer by layer
            eta = tl.where(causal, te[:, None] * lr[None, :], 0.0)
            a1 = eta * (tl.dot(q, tl.trans(k), input_precision=PREC) + 1.0)
            z1b = tl.dot(q, W1, input_precision=PREC) + b1[None, :] - tl.dot(a1.to(g1.dtype), g1, input_precision=PREC)
            if HAS_ACC:
                z1b = tl.where(m == 0, z1b - te[:, None] * (tl.dot(q, aw1, input_precision=PREC) + ab1[None, :]), z1b)
            x2b = _gelu(z1b)
            a2 = eta * (tl.dot(x2b, tl.trans(x2), input_precision=PREC) + 1.0)
            z2b = tl.dot(x2b, W2, input_precision=PREC) + b2[None, :] - tl.dot(a2.to(g2.dtype), g2, input_precision=PREC)
            if HAS_ACC:
                z2b = tl.where(m == 0, z2b - te[:, None] * (tl.dot(x2b, aw2, input_precision=PREC) + ab2[None, :]), z2b)
            tl.store(Z + off + tile, z2b)
            lg1 = lr[:, None] * g1
            lg2 = lr[:, None] * g2
            gw1 = tl.dot(tl.trans(k), lg1, input_precision=PREC)
            gb1 = tl.sum(lg1, axis=0)
            gw2 = tl.dot(tl.trans(x2), lg2, input_precision=PREC)
            gb2 = tl.sum(lg2, axis=0)
            if HAS_ACC:
                first = m == 0
                gw1 = tl.where(first, gw1 + aw1, gw1)
                gb1 = tl.where(first, gb1 + ab1, gb1)
                gw2 = tl.where(first, gw2 + aw2, gw2)
                gb2 = tl.where(first, gb2 + ab2, gb2)
            fold = te_last
            if not FOLD_LAST:
                fold = tl.where(m == n_mb - 1, 0.0, te_last)
            W1 = W1 - fold * gw1
            b1 = b1 - fold * gb1
            W2 = W2 - fold * gw2
            b2 = b2 - fold * gb2
        tl.store(W1_1 + pid * F_ * D_ + m1, W1)
        tl.store(B1_1 + pid * D_ + rd, b1)
        tl.store(W2_1 + pid * D_ * F_ + m2, W2)
        tl.store(B2_1 + pid * F_ + rf, b2)
        if FOLD_LAST:
            gw1 = gw1 * 0.0
            gb1 = gb1 * 0.0
            gw2 = gw2 * 0.0
            gb2 = gb2 * 0.0
        tl.store(AW1_1 + pid * F_ * D_ + m1, gw1)
        tl.store(AB1_1 + pid * D_ + rd, gb1)
        tl.store(AW2_1 + pid * D_ * F_ + m2, gw2)
        tl.store(AB2_1 + pid * F_ + rf, gb2)


def _launch(kind: str, fast: FastWeights, q: Tensor, k: Tensor, t: Tensor, lr: Tensor, te_table: Tensor,
            ln_w: Tensor, ln_b: Tensor, eps: float) -> tuple[Tensor, ...]:
    """Returns `Z`, then the new params and gradient sums in `INNER[kind].names` order."""
    B, H, n, f = q.shape
    kb = te_table.shape[0]
    names = INNER[kind].names
    hidden = fast.params["W1"].shape[-1]
    p0 = int(fast.pos[0])
    n_mb = math.ceil((p0 + n) / kb)
    right = n_mb * kb - p0 - n
    if any(d & (d - 1) for d in (f, kb, hidden)):
        raise ValueError(f"the Triton kernel needs power-of-two sizes, got head_dim {f}, mini_batch_size {kb}, "
                         f"inner width {hidden}")
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the Triton kernel on CPU tensors needs TRITON_INTERPRET=1 (set before the first call)")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32

    def prep(x: Tensor) -> Tensor:
        return x.to(dtype).contiguous()

    Q, K, T = (prep(F.pad(x, (0, 0, p0, right))) for x in (q, k, t))
    LR = prep(F.pad(lr, (p0, right)))
    start = [prep(fast.params[name].expand(B, *fast.params[name].shape[1:])) for name in names]
    start += [prep(fast.grads[name].expand(B, *fast.grads[name].shape[1:])) for name in names]
    end = [torch.empty_like(x) for x in start]
    Z = torch.empty_like(Q)
    norm = (prep(ln_w.reshape(H, f)), prep(ln_b.reshape(H, f)))
    flags = dict(KB=kb, HAS_ACC=p0 > 0, FOLD_LAST=(p0 + n) % kb == 0, PREC="ieee")
    if kind == "linear":
        _ttt_linear_dual_kernel[(B * H,)](Q, K, T, LR, prep(te_table), *start, *norm, Z, *end, n_mb, H, eps,
                                          F_=f, **flags)
    else:
        _ttt_mlp_dual_kernel[(B * H,)](Q, K, T, LR, prep(te_table), *start, *norm, Z, *end, n_mb, H, eps,
                                       F_=f, D_=hidden, **flags)
    return tuple(x.to(q.dtype) for x in (Z[:, :, p0 : p0 + n], *end))


class _TritonDualForm(torch.autograd.Function):
    """Triton forward; backward by recomputing the chunk with the torch dual form."""

    @staticmethod
    def forward(ctx: Any, kind: str, pos: Tensor, eps: float, q: Tensor, k: Tensor, t: Tensor, lr: Tensor,
                te: Tensor, ln_w: Tensor, ln_b: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        ctx.save_for_backward(pos, q, k, t, lr, te, ln_w, ln_b, *state)
        ctx.kind, ctx.eps = kind, eps
        return _launch(kind, _fast_weights(kind, pos, state), q, k, t, lr, te, ln_w, ln_b, eps)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        pos, *inputs = ctx.saved_tensors
        inputs = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
        q, k, t, lr, te, ln_w, ln_b, *state = inputs
        names = INNER[ctx.kind].names
        with torch.enable_grad():
            fast = _fast_weights(ctx.kind, pos, state)
            Z, new = dual_form(INNER[ctx.kind], fast, q, k, t, lr, te, (ln_w, ln_b, ctx.eps))
            outs = (Z, *(new.params[n] for n in names), *(new.grads[n] for n in names))
            pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
            wanted = [x for x in inputs if x.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
        it = iter(grads)
        return (None, None, None, *(next(it) if x.requires_grad else None for x in inputs))


def _fast_weights(kind: str, pos: Tensor, state: list[Tensor] | tuple[Tensor, ...]) -> FastWeights:
    names = INNER[kind].names
    return FastWeights(dict(zip(names, state[: len(names)])), dict(zip(names, state[len(names) :])), pos)


def ttt_dual_triton(kind: str, fast: FastWeights, q: Tensor, k: Tensor, t: Tensor, lr: Tensor, te_table: Tensor,
                    norm: tuple[Tensor, Tensor, float]) -> tuple[Tensor, FastWeights]:
    """`dual_form(INNER[kind], ...)` computed by a Triton kernel (examples at one position)."""
    ln_w, ln_b, eps = norm
    names = INNER[kind].names
    state = [fast.params[n] for n in names] + [fast.grads[n] for n in names]
    Z, *new = _TritonDualForm.apply(kind, fast.pos, eps, q, k, t, lr, te_table, ln_w, ln_b, *state)
    pos = (fast.pos + q.shape[2]) % te_table.shape[0]
    return Z, _fast_weights(kind, pos, new)
