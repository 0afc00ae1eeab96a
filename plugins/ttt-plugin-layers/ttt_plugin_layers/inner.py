"""The inner loop of a TTT layer: a fast model trained by gradient descent on every token.

Notation, per head (f = head_dim, k = mini-batch size): keys `K`, queries `Q`, targets `T = V - K`
(`[B, H, n, f]`), per-token learning rates `lr` (`[B, H, n]`, the gate `base_lr*sigmoid(..)/f`)
and per-position scales `te` (`max(0, 1/i + learned offset)`, indexed by the position inside the
mini-batch). The inner loss of token j is `0.5*||LN(f(k_j; W)) - t_j||^2`.

Mini-batch TTT: every token of a mini-batch takes its gradient at the weights `W0` the mini-batch
started from; token i reads out with `W_i = W0 - te_i * sum_{j<=i} lr_j grad_j`, and the next
mini-batch starts from `W_{k-1}`. The **dual form** computes all k readouts of a mini-batch with a
few matmuls (no per-token weights); the **primal form** (decoding) keeps the running sum
`sum lr_j grad_j` in the state and adds one token at a time. Both are the same function, `step`,
applied to n tokens: n = k for the dual form, n = 1 for the primal one.

`FastWeights` is that state: `params` (the weights at the start of the current mini-batch),
`grads` (the lr-weighted gradient summed over the tokens of the current mini-batch so far) and
`pos` (how many tokens of the current mini-batch were seen, per example). With it a sequence can be
cut anywhere (chunked prefill at any offset, then token-by-token decoding) and give the same
outputs as one full pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ttt_plugin_layers.functional import gelu, gelu_grad, layer_norm_l2_grad

Params = dict[str, Tensor]
Norm = tuple[Tensor, Tensor, float]  # per-head LayerNorm weight [H,1,f], bias [H,1,f], eps


@dataclass
class FastWeights:
    """The inner model's state for a batch: every tensor is `[B, H, ...]` (biases `[B, H, 1, d]`)."""

    params: Params
    grads: Params
    pos: Tensor  # [B] long, in [0, mini_batch_size)

    def detach(self) -> FastWeights:
        return FastWeights(
            {n: t.detach() for n, t in self.params.items()},
            {n: t.detach() for n, t in self.grads.items()},
            self.pos,
        )

    def effective(self, te_table: Tensor) -> Params:
        """The weights the last seen token read out with (what the memory "knows" right now)."""
        last = (self.pos - 1) % te_table.shape[0]
        scale = torch.where(self.pos > 0, te_table[last], torch.zeros_like(te_table[last]))
        scale = scale.view(-1, 1, 1, 1)
        return {n: p - scale * self.grads[n] for n, p in self.params.items()}


def _rows(te: Tensor) -> Tensor:
    """Per-row scale `te` (`[n]` or `[B, 1, n]`) shaped to multiply `[B, H, n, d]`."""
    return te[..., None]


class LinearInner:
    """TTT-Linear: f(x) = x W1 + b1."""

    names = ("W1", "b1")

    @staticmethod
    def step(p: Params, acc: Params | None, Q: Tensor, K: Tensor, T: Tensor, lr: Tensor, te: Tensor,
             eta: Tensor, A: Tensor, norm: Norm) -> tuple[Tensor, Params]:
        """Readouts of n tokens of one mini-batch, and their lr-weighted gradient sums.

        `eta[i, j] = te_i * lr_j` for j <= i (else 0), `A = eta * (Q K^T + 1)`; `acc` is the sum
        already accumulated in this mini-batch by earlier tokens (None when there are none).
        """
        W, b = p["W1"], p["b1"]
        G = layer_norm_l2_grad(K @ W + b, T, *norm)
        Z = Q @ W + b - A @ G
        if acc is not None:
            Z = Z - _rows(te) * (Q @ acc["W1"] + acc["b1"])
        lG = lr[..., None] * G
        return Z, {"W1": K.mT @ lG, "b1": lG.sum(-2, keepdim=True)}


class MLPInner:
    """TTT-MLP: f(x) = gelu_tanh(x W1 + b1) W2 + b2, hidden width 4 * head_dim."""

    names = ("W1", "b1", "W2", "b2")

    @staticmethod
    def step(p: Params, acc: Params | None, Q: Tensor, K: Tensor, T: Tensor, lr: Tensor, te: Tensor,
             eta: Tensor, A: Tensor, norm: Norm) -> tuple[Tensor, Params]:
        """Same contract as `LinearInner.step`, for the two-layer inner model."""
        W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
        Z1 = K @ W1 + b1
        X2 = gelu(Z1)
        G2 = layer_norm_l2_grad(X2 @ W2 + b2, T, *norm)
        G1 = (G2 @ W2.mT) * gelu_grad(Z1)

        Z1_bar = Q @ W1 + b1 - A @ G1
        if acc is not None:
            Z1_bar = Z1_bar - _rows(te) * (Q @ acc["W1"] + acc["b1"])
        X2_bar = gelu(Z1_bar)
        Z2_bar = X2_bar @ W2 + b2 - (eta * (X2_bar @ X2.mT + 1)) @ G2
        if acc is not None:
            Z2_bar = Z2_bar - _rows(te) * (X2_bar @ acc["W2"] + acc["b2"])

        lG1, lG2 = lr[..., None] * G1, lr[..., None] * G2
        sums = {
            "W1": K.mT @ lG1,
            "b1": lG1.sum(-2, keepdim=True),
            "W2": X2.mT @ lG2,
            "b2": lG2.sum(-2, keepdim=True),
        }
        return Z2_bar, sums


INNER = {"linear": LinearInner, "mlp": MLPInner}


def _add(a: Params, b: Params | None) -> Params:
    return a if b is None else {n: a[n] + b[n] for n in a}


def _select(mask: Tensor, a: Params, b: Params) -> Params:
    m = mask.view(-1, 1, 1, 1)
    return {n: torch.where(m, a[n], b[n]) for n in a}


def dual_form(inner: type, state: FastWeights, Q: Tensor, K: Tensor, T: Tensor, lr: Tensor,
              te_table: Tensor, norm: Norm, lengths: Tensor | None = None) -> tuple[Tensor, FastWeights]:
    """Run n tokens (`[B, H, n, f]`) through the inner loop, one mini-batch at a time.

    Every example must be at the same position inside its mini-batch (`state.pos` uniform). The
    chunk is padded with zero-lr tokens to whole mini-batches aligned with that position, so that a
    chunk may start and end anywhere. `lengths` (`[B]`, optional) says that only the first
    `lengths[b]` tokens of example b are real (trailing padding, with lr already zero): the returned
    state is then each example's state right after its last real token.
    """
    B, H, n, f = Q.shape
    k = te_table.shape[0]
    p0 = int(state.pos[0])
    N = math.ceil((p0 + n) / k)
    right = N * k - p0 - n

    def grid(t: Tensor) -> Tensor:
        return F.pad(t, (0, 0, p0, right)).unflatten(2, (N, k))

    Q, K, T = grid(Q), grid(K), grid(T)
    lr = F.pad(lr, (p0, right)).unflatten(2, (N, k))
    # Everything that does not depend on the fast weights is computed for all mini-batches at once.
    eta = torch.tril(te_table[:, None] * lr[..., None, :])  # [B, H, N, k, k]
    A = eta * (Q @ K.mT + 1)

    params, acc = state.params, (state.grads if p0 > 0 else None)
    completes_last = (p0 + n) % k == 0
    if lengths is not None:
        stop = torch.div(p0 + lengths, k, rounding_mode="floor")  # mini-batch holding each example's next token
        kept_params, kept_grads = params, state.grads
    outs = []
    for m in range(N):
        Z, sums = inner.step(params, acc, Q[:, :, m], K[:, :, m], T[:, :, m], lr[:, :, m], te_table,
                             eta[:, :, m], A[:, :, m], norm)
        outs.append(Z)
        sums = _add(sums, acc)
        if lengths is not None:
            here = stop == m
            kept_params, kept_grads = _select(here, params, kept_params), _select(here, sums, kept_grads)
        if m < N - 1 or completes_last:
            params = {name: params[name] - te_table[-1] * sums[name] for name in params}
            acc = None
        else:
            acc = sums
    Z = torch.stack(outs, dim=2).flatten(2, 3)[:, :, p0 : p0 + n]

    if lengths is not None:
        zeros = {name: torch.zeros_like(t) for name, t in kept_grads.items()}
        done = stop == N
        new = FastWeights(_select(done, params, kept_params), _select(done, zeros, kept_grads), (p0 + lengths) % k)
    else:
        grads = acc if acc is not None else {name: torch.zeros_like(t) for name, t in params.items()}
        new = FastWeights(params, grads, (state.pos + n) % k)
    return Z, new


def primal_step(inner: type, state: FastWeights, Q: Tensor, K: Tensor, T: Tensor, lr: Tensor,
                te_table: Tensor, norm: Norm) -> tuple[Tensor, FastWeights]:
    """One token (`[B, H, 1, f]`) per example, each example at its own position `state.pos`."""
    k = te_table.shape[0]
    te = te_table[state.pos].view(-1, 1, 1)  # [B, 1, n=1]
    eta = te[..., None] * lr[..., None, :]  # [B, H, 1, 1]
    A = eta * (Q @ K.mT + 1)
    Z, sums = inner.step(state.params, state.grads, Q, K, T, lr, te, eta, A, norm)
    sums = _add(sums, state.grads)
    ends = state.pos == k - 1
    scale = te.view(-1, 1, 1, 1)
    folded = {name: p - scale * sums[name] for name, p in state.params.items()}
    zeros = {name: torch.zeros_like(t) for name, t in sums.items()}
    new = FastWeights(_select(ends, folded, state.params), _select(ends, zeros, sums), (state.pos + 1) % k)
    return Z, new
