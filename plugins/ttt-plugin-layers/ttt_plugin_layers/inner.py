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

from ttt_plugin_layers.functional import gelu, gelu_grad, layer_norm_l2_grad_pre

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
    """Per-row scale `te` (`[k]` or `[B, 1, 1]`) shaped to multiply `[..., k, d]`."""
    return te[..., None]


class LinearInner:
    """TTT-Linear: f(x) = x W1 + b1.

    `update` is the sequential part (gradients at the mini-batch's start weights and their
    lr-weighted sums); `readout` is the rest of the dual form and runs on many mini-batches at once
    (leading dims of every argument broadcast).
    """

    names = ("W1", "b1")

    @staticmethod
    def apply(p: Params, X: Tensor) -> Tensor:
        """f(X) with the fast weights `p`."""
        return X @ p["W1"] + p["b1"]

    @staticmethod
    def update(p: Params, K: Tensor, KT: Tensor, TW: Tensor, lr: Tensor, w2: Tensor,
               eps: float) -> tuple[Params, dict[str, Tensor]]:
        G = layer_norm_l2_grad_pre(K @ p["W1"] + p["b1"], TW, w2, eps)  # [.., k, f] d loss_j / d f(k_j)
        lG = lr[..., None] * G
        return {"W1": KT @ lG, "b1": lG.sum(-2, keepdim=True)}, {"G": G}

    @staticmethod
    def readout(p: Params, acc: Params | None, Q: Tensor, te: Tensor, eta: Tensor, A: Tensor,
                aux: dict[str, Tensor]) -> Tensor:
        """`Z_i = q_i W_i + b_i` with `W_i = W - te_i (acc + sum_{j<=i} lr_j k_j^T g_j)`, as matmuls.

        `eta[i, j] = te_i lr_j` for j <= i (else 0) and `A = eta * (Q K^T + 1)`.
        """
        Z = Q @ p["W1"] + p["b1"] - A @ aux["G"]
        if acc is not None:
            Z = Z - _rows(te) * (Q @ acc["W1"] + acc["b1"])
        return Z


class MLPInner:
    """TTT-MLP: f(x) = gelu_tanh(x W1 + b1) W2 + b2, hidden width 4 * head_dim."""

    names = ("W1", "b1", "W2", "b2")

    @staticmethod
    def apply(p: Params, X: Tensor) -> Tensor:
        """f(X) with the fast weights `p`."""
        return gelu(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]

    @staticmethod
    def update(p: Params, K: Tensor, KT: Tensor, TW: Tensor, lr: Tensor, w2: Tensor,
               eps: float) -> tuple[Params, dict[str, Tensor]]:
        W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
        Z1 = K @ W1 + b1
        X2 = gelu(Z1)
        G2 = layer_norm_l2_grad_pre(X2 @ W2 + b2, TW, w2, eps)
        G1 = (G2 @ W2.mT) * gelu_grad(Z1)
        lG1, lG2 = lr[..., None] * G1, lr[..., None] * G2
        sums = {"W1": KT @ lG1, "b1": lG1.sum(-2, keepdim=True), "W2": X2.mT @ lG2, "b2": lG2.sum(-2, keepdim=True)}
        return sums, {"G1": G1, "G2": G2, "X2": X2}

    @staticmethod
    def readout(p: Params, acc: Params | None, Q: Tensor, te: Tensor, eta: Tensor, A: Tensor,
                aux: dict[str, Tensor]) -> Tensor:
        """Same contract as `LinearInner.readout`, layer by layer through the MLP."""
        Z1 = Q @ p["W1"] + p["b1"] - A @ aux["G1"]
        if acc is not None:
            Z1 = Z1 - _rows(te) * (Q @ acc["W1"] + acc["b1"])
        X2 = gelu(Z1)
        Z2 = X2 @ p["W2"] + p["b2"] - (eta * (X2 @ aux["X2"].mT + 1)) @ aux["G2"]
        if acc is not None:
            Z2 = Z2 - _rows(te) * (X2 @ acc["W2"] + acc["b2"])
        return Z2


INNER = {"linear": LinearInner, "mlp": MLPInner}


def _add(a: Params, b: Params | None) -> Params:
    return a if b is None else {n: a[n] + b[n] for n in a}


def _select(mask: Tensor, a: Params, b: Params) -> Params:
    m = mask.view(-1, 1, 1, 1)
    return {n: torch.where(m, a[n], b[n]) for n in a}


def _stack(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {n: torch.stack([it[n] for it in items]) for n in items[0]}


def dual_form(inner: type, state: FastWeights, Q: Tensor, K: Tensor, T: Tensor, lr: Tensor,
              te_table: Tensor, norm: Norm, lengths: Tensor | None = None,
              group: int = 16) -> tuple[Tensor, FastWeights]:
    """Run n tokens (`[B, H, n, f]`) through the inner loop, one mini-batch at a time.

    Every example must be at the same position inside its mini-batch (`state.pos` uniform). The
    chunk is padded with zero-lr tokens to whole mini-batches aligned with that position, so that a
    chunk may start and end anywhere. `lengths` (`[B]`, optional) says that only the first
    `lengths[b]` tokens of example b are real (trailing padding, with lr already zero): the returned
    state is then each example's state right after its last real token.

    Only `inner.update` runs sequentially; readouts run `group` mini-batches at a time, and
    everything independent of the fast weights is computed once for the whole chunk.
    """
    n = Q.shape[2]
    k = te_table.shape[0]
    p0 = int(state.pos[0])
    N = math.ceil((p0 + n) / k)
    right = N * k - p0 - n
    ln_w, ln_b, eps = norm

    def grid(t: Tensor) -> Tensor:  # [B, H, n, d] -> [N, B, H, k, d], mini-batch major
        return F.pad(t, (0, 0, p0, right)).unflatten(2, (N, k)).permute(2, 0, 1, 3, 4).contiguous()

    Q, K, TW = grid(Q), grid(K), grid(ln_w * (T - ln_b))
    KT = K.mT.contiguous()
    lr = F.pad(lr, (p0, right)).unflatten(2, (N, k)).permute(2, 0, 1, 3)
    eta = torch.tril(te_table[:, None] * lr[..., None, :])  # [N, B, H, k, k]
    A = eta * (Q @ KT + 1)
    w2 = ln_w * ln_w

    params, acc = state.params, (state.grads if p0 > 0 else None)
    completes_last = (p0 + n) % k == 0
    if lengths is not None:
        stop = torch.div(p0 + lengths, k, rounding_mode="floor")  # mini-batch holding each example's next token
        kept_params, kept_grads = params, state.grads

    # Groups of mini-batches read out together; the saved mid-mini-batch sums (`acc`) enter the
    # readout of mini-batch 0 only, so it is a group of its own. unbind/split (not indexing) keep
    # the backward linear in N: each index op would allocate a full-size gradient.
    sizes = [1] if acc is not None else []
    rest = N - len(sizes)
    sizes += [group] * (rest // group) + ([rest % group] if rest % group else [])
    groups = zip(sizes, Q.split(sizes), eta.split(sizes), A.split(sizes))
    Ks, KTs, TWs, lrs = K.unbind(0), KT.unbind(0), TW.unbind(0), lr.unbind(0)
    outs: list[Tensor] = []
    m = 0
    for gi, (size, Qg, eta_g, A_g) in enumerate(groups):
        acc_in, seen = (acc if gi == 0 else None), []
        for _ in range(size):
            sums, aux = inner.update(params, Ks[m], KTs[m], TWs[m], lrs[m], w2, eps)
            sums = _add(sums, acc)
            seen.append((params, aux))
            if lengths is not None:
                here = stop == m
                kept_params, kept_grads = _select(here, params, kept_params), _select(here, sums, kept_grads)
            if m < N - 1 or completes_last:
                params = {name: params[name] - te_table[-1] * sums[name] for name in params}
                acc = None
            else:
                acc = sums
            m += 1
        P, X = _stack([p for p, _ in seen]), _stack([x for _, x in seen])
        outs.append(inner.readout(P, acc_in, Qg, te_table, eta_g, A_g, X))
    Z = torch.cat(outs).permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, p0 : p0 + n]

    if lengths is not None:
        zeros = {name: torch.zeros_like(t) for name, t in kept_grads.items()}
        done = stop == N
        new = FastWeights(_select(done, params, kept_params), _select(done, zeros, kept_grads), (p0 + lengths) % k)
    else:
        grads = acc if acc is not None else {name: torch.zeros_like(t) for name, t in params.items()}
        new = FastWeights(params, grads, (state.pos + n) % k)
    return Z, new


def primal_step(inner: type, state: FastWeights, Q: Tensor, K: Tensor, T: Tensor, lr: Tensor,
                te_table: Tensor, norm: Norm, lengths: Tensor | None = None) -> tuple[Tensor, FastWeights]:
    """One token (`[B, H, 1, f]`) per example, each example at its own position `state.pos`.

    `lengths` (`[B]`, 0 or 1) marks padding tokens (lr already zero), which leave the state as is.
    """
    k = te_table.shape[0]
    ln_w, ln_b, eps = norm
    te = te_table[state.pos].view(-1, 1, 1)  # [B, 1, n=1]
    eta = te[..., None] * lr[..., None, :]  # [B, H, 1, 1]
    KT = K.mT
    A = eta * (Q @ KT + 1)
    sums, aux = inner.update(state.params, K, KT, ln_w * (T - ln_b), lr, ln_w * ln_w, eps)
    Z = inner.readout(state.params, state.grads, Q, te, eta, A, aux)
    sums = _add(sums, state.grads)
    advance = torch.ones_like(state.pos) if lengths is None else lengths.to(state.pos.dtype)
    ends = (state.pos == k - 1) & (advance > 0)
    scale = te.view(-1, 1, 1, 1)
    folded = {name: p - scale * sums[name] for name, p in state.params.items()}
    zeros = {name: torch.zeros_like(t) for name, t in sums.items()}
    new = FastWeights(_select(ends, folded, state.params), _select(ends, zeros, sums), (state.pos + advance) % k)
    return Z, new
