"""TTT-Linear and TTT-MLP sequence-mixing layers (Sun et al., 2024).

x -> q, k, v projections (mamba variant: one shared projection then two depthwise causal convs)
  -> per-head interleaved RoPE with positions restarting every mini-batch
  -> inner loop (see `inner.py`): train f on (k, v - k) token by token, read out f(q)
  -> q + LN(f(q)) per head -> post LayerNorm -> [gelu_tanh(g_proj(x)) *] -> o_proj.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ttt_plugin_layers.config import TTTLayerConfig
from ttt_plugin_layers.functional import Delta, apply_rope, causal_conv, conv_history, gelu, layer_norm, rope_tables, with_delta
from ttt_plugin_layers.inner import INNER, FastWeights, dual_form, primal_step


@dataclass
class LayerState:
    """What a TTT layer carries from one call to the next: fast weights and conv history."""

    fast: FastWeights
    conv: Tensor | None = None  # [B, conv_kernel - 1, hidden] last inputs of the shared q/k conv

    def detach(self) -> LayerState:
        return LayerState(self.fast.detach(), None if self.conv is None else self.conv.detach())


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Per example, one past its last real token (`mask` is `[B, n]`, True = real)."""
    idx = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * idx).amax(dim=1)


class TTTLayer(nn.Module):
    """A TTT layer; `config.inner` picks TTT-Linear ("linear") or TTT-MLP ("mlp").

    `forward(x)` runs the dual form over the whole sequence (training, prefill). Pass a `state`
    (from `init_state` or a previous call) to continue a sequence: chunks of any length at any
    offset, and single tokens (decoding, primal form), give the same outputs as one full pass.
    """

    def __init__(self, config: TTTLayerConfig) -> None:
        super().__init__()
        self.config = c = config
        C, H, f = c.hidden_size, c.num_heads, c.head_dim
        self.inner = INNER[c.inner]

        self.q_proj = nn.Linear(C, C, bias=False)
        if c.share_qk:
            self.conv_q = nn.Conv1d(C, C, c.conv_kernel, groups=C, bias=True)
            self.conv_k = nn.Conv1d(C, C, c.conv_kernel, groups=C, bias=True)
        else:
            self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        if c.use_gate:
            self.g_proj = nn.Linear(C, C, bias=False)

        # Learned inner learning rate: a per-head gate on the token, and per-position offsets
        # added to the 1/i scale of the i-th token of a mini-batch.
        self.lr_proj = nn.Linear(C, H)
        self.token_scale = nn.Parameter(torch.zeros(c.mini_batch_size))

        # Learned initial state of the inner model.
        hidden = f if c.inner == "linear" else c.mlp_expansion * f
        self.W1 = nn.Parameter(torch.empty(H, f, hidden))
        self.b1 = nn.Parameter(torch.zeros(H, hidden))
        if c.inner == "mlp":
            self.W2 = nn.Parameter(torch.empty(H, hidden, f))
            self.b2 = nn.Parameter(torch.zeros(H, f))

        # Per-head LayerNorm inside the inner loss and readout; LayerNorm after the heads.
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, f))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, f))
        self.post_norm = nn.LayerNorm(C, eps=c.post_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of the reference: normal(0, init_std) projections and fast weights."""
        std = self.config.init_std
        for lin in (self.q_proj, self.v_proj, self.o_proj, self.lr_proj, getattr(self, "k_proj", None),
                    getattr(self, "g_proj", None)):
            if lin is not None:
                nn.init.normal_(lin.weight, 0.0, std)
        nn.init.zeros_(self.lr_proj.bias)
        for name in self.inner.names:
            p = getattr(self, name)
            nn.init.normal_(p, 0.0, std) if name.startswith("W") else nn.init.zeros_(p)
        nn.init.zeros_(self.token_scale)

    # ----------------------------------------------------------------------------- state

    def init_state(self, batch_size: int) -> LayerState:
        """The learned initial state, broadcast over the batch (gradients reach the parameters)."""
        params = {}
        for name in self.inner.names:
            p = getattr(self, name)
            p = p[:, None, :] if name.startswith("b") else p
            params[name] = p.expand(batch_size, *p.shape)
        grads = {n: torch.zeros_like(t) for n, t in params.items()}
        pos = torch.zeros(batch_size, dtype=torch.long, device=self.W1.device)
        return LayerState(FastWeights(params, grads, pos))

    def token_eta_table(self) -> Tensor:
        """`max(0, 1/i + token_scale[i-1])` for the positions i = 1..mini_batch_size."""
        k = self.config.mini_batch_size
        base = 1.0 / torch.arange(1, k + 1, dtype=self.token_scale.dtype, device=self.token_scale.device)
        return torch.clamp_min(base + self.token_scale, 0.0)

    # ----------------------------------------------------------------------------- forward

    def forward(self, x: Tensor, state: LayerState | None = None, mask: Tensor | None = None,
                return_state: bool = False, deltas: dict[str, Delta] | None = None) -> Tensor | tuple[Tensor, LayerState]:
        """`x [B, n, hidden]` -> `[B, n, hidden]` (and the state after the chunk if asked).

        `mask [B, n]` (True = real token): padding tokens never write to the fast weights and are
        zeroed before the causal convs, so trailing padding leaves real outputs unchanged and the
        returned state is each example's state after its last real token. `deltas` (role "q", "k",
        "v" or "o" -> per-example low-rank delta) adapt those projections per example.
        """
        c = self.config
        if state is None:
            state = self.init_state(x.shape[0])
        lengths = None
        if mask is not None:
            mask = mask.to(torch.bool)
            lengths = None if bool(mask.all()) else lengths_from_mask(mask)
        if lengths is None and 0 < c.chunk_size < x.shape[1]:
            outs = []
            for part in x.split(c.chunk_size, dim=1):  # split, not slicing: one gradient buffer
                out, state = self._forward(part, state, None, None, deltas)
                outs.append(out)
            out = torch.cat(outs, dim=1)
        else:
            out, state = self._forward(x, state, mask, lengths, deltas)
        return (out, state) if return_state else out

    def _forward(self, x: Tensor, state: LayerState, mask: Tensor | None,
                 lengths: Tensor | None, deltas: dict[str, Delta] | None = None) -> tuple[Tensor, LayerState]:
        c = self.config
        deltas = deltas or {}
        B, n, C = x.shape
        H, f = c.num_heads, c.head_dim
        keep = None if lengths is None else mask[..., None].to(x.dtype)

        q = with_delta(self.q_proj(x), x, deltas.get("q"))
        new_conv = None
        if c.share_qk:
            xq = q if keep is None else q * keep
            q = causal_conv(xq, self.conv_q.weight, self.conv_q.bias, state.conv)
            k = causal_conv(xq, self.conv_k.weight, self.conv_k.bias, state.conv)
            new_conv = conv_history(xq, state.conv, c.conv_kernel, lengths)
        else:
            k = with_delta(self.k_proj(x), x, deltas.get("k"))
        v = with_delta(self.v_proj(x), x, deltas.get("v"))
        q, k, v = (t.view(B, n, H, f).transpose(1, 2) for t in (q, k, v))

        positions = (state.fast.pos[:, None] + torch.arange(n, device=x.device)) % c.mini_batch_size
        cos, sin = rope_tables(positions, f, c.rope_theta, x.dtype)
        cos, sin = cos[:, None], sin[:, None]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        lr = c.base_lr * torch.sigmoid(self.lr_proj(x)) / f  # [B, n, H]
        if keep is not None:
            lr = lr * keep
        lr = lr.transpose(1, 2)
        te_table = self.token_eta_table()
        norm = (self.ttt_norm_weight[:, None], self.ttt_norm_bias[:, None], c.ttt_norm_eps)

        Z, fast = self._inner(state.fast, q, k, v - k, lr, te_table, norm, lengths)
        out = q + layer_norm(Z, *norm)
        out = self.post_norm(out.transpose(1, 2).reshape(B, n, C))
        if c.use_gate:
            out = gelu(self.g_proj(x)) * out
        return with_delta(self.o_proj(out), out, deltas.get("o")), LayerState(fast, new_conv)

    def _inner(self, fast: FastWeights, q: Tensor, k: Tensor, t: Tensor, lr: Tensor, te_table: Tensor,
               norm: tuple, lengths: Tensor | None) -> tuple[Tensor, FastWeights]:
        n = q.shape[2]
        if n == 1:
            return primal_step(self.inner, fast, q, k, t, lr, te_table, norm, lengths)
        if not bool((fast.pos == fast.pos[0]).all()):
            return self._inner_by_position(fast, q, k, t, lr, te_table, norm, lengths)
        if self._use_triton(q, lengths):
            from ttt_plugin_layers.triton_kernels import ttt_dual_triton

            return ttt_dual_triton(self.config.inner, fast, q, k, t, lr, te_table, norm)
        return dual_form(self.inner, fast, q, k, t, lr, te_table, norm, lengths)

    def _inner_by_position(self, fast: FastWeights, q: Tensor, k: Tensor, t: Tensor, lr: Tensor,
                           te_table: Tensor, norm: tuple, lengths: Tensor | None) -> tuple[Tensor, FastWeights]:
        """A multi-token chunk when examples sit at different positions of their mini-batches
        (after a padded prefill): the dual form runs once per group of examples at one position."""
        Z = q.new_empty(q.shape)
        params = {n: p.new_empty(p.shape) for n, p in fast.params.items()}
        grads = {n: g.new_empty(g.shape) for n, g in fast.grads.items()}
        pos = torch.empty_like(fast.pos)
        for p in fast.pos.unique().tolist():
            idx = (fast.pos == p).nonzero().squeeze(1)
            sub = FastWeights({n: t_[idx] for n, t_ in fast.params.items()},
                              {n: t_[idx] for n, t_ in fast.grads.items()}, fast.pos[idx])
            Zs, new = dual_form(self.inner, sub, q[idx], k[idx], t[idx], lr[idx], te_table, norm,
                                None if lengths is None else lengths[idx])
            Z = Z.index_copy(0, idx, Zs)
            params = {n: params[n].index_copy(0, idx, new.params[n]) for n in params}
            grads = {n: grads[n].index_copy(0, idx, new.grads[n]) for n in grads}
            pos = pos.index_copy(0, idx, new.pos)
        return Z, FastWeights(params, grads, pos)

    def _use_triton(self, q: Tensor, lengths: Tensor | None) -> bool:
        """Triton runs the dual form when asked, or on CUDA when no gradient is needed (TTT-MLP: only
        for head_dim <= 32, whose fast weights fit in registers)."""
        kernel = self.config.kernel
        if kernel == "torch" or lengths is not None:
            return False
        if kernel == "triton":
            return True
        c = self.config
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        pow2 = all(d & (d - 1) == 0 for d in (c.head_dim, c.mini_batch_size, c.mlp_expansion))
        if not q.is_cuda or needs_grad or not pow2 or (c.inner == "mlp" and c.head_dim > 32):
            return False
        from ttt_plugin_layers.triton_kernels import triton_available

        return triton_available()


def TTTLinear(config: TTTLayerConfig | None = None, **overrides: object) -> TTTLayer:
    """A TTT-Linear layer (`TTTLayer` with `inner="linear"`)."""
    config = config or TTTLayerConfig()
    return TTTLayer(_evolve(config, inner="linear", **overrides))


def TTTMLP(config: TTTLayerConfig | None = None, **overrides: object) -> TTTLayer:
    """A TTT-MLP layer (`TTTLayer` with `inner="mlp"`)."""
    config = config or TTTLayerConfig()
    return TTTLayer(_evolve(config, inner="mlp", **overrides))


def _evolve(config: TTTLayerConfig, **changes: object) -> TTTLayerConfig:
    import attrs

    return attrs.evolve(config, **changes)


__all__ = ["LayerState", "TTTLayer", "TTTLinear", "TTTMLP", "lengths_from_mask"]
