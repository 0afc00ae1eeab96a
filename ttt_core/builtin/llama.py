"""A small LLaMA-style decoder: RMSNorm, RoPE, causal self-attention, SwiGLU.

It takes input embeddings rather than ids so that memory tokens can be prefixed, returns per-layer
hidden states on request, and exposes its blocks so recurrence schemes can run them one at a time.

Every block runs through one functional path, `block_forward(params, x)`, where each parameter and
the input carry a leading "cell" dim C: C different layers applied to C different inputs with one
batched matmul per projection (a plain matmul over `[B*T, d]` when C = 1). `LlamaBlock.forward` is that
path with C = 1, so the diagonal-batching scheduler (several (layer, segment) cells at once) and the
sequential reference agree to float rounding. `Llama.forward` builds the mask and RoPE tables once
and runs its blocks through the same internal `_block`. `block_forward_prefixed` runs a block on
`[prefix; x]` for outputs after the prefix only, with x's projections computed once (`project`) and
reused under many prefixes (PRMT4's memory).

Block parameters are plain tensors in `nn.Linear` layout (`[out, in]`):
`attn_norm [d]`, `wqkv [3d, d]`, `wo [d, d]`, `mlp_norm [d]`, `w_gate_up [2h, d]`, `w_down [d, h]`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_core.attention import allowed_keys, attend
from ttt_core.builtin.configs import LlamaConfig
from ttt_core.interfaces import Backbone, BackboneOutput


# ---------------------------------------------------------------------------------------------
# The functional block: every tensor has a leading cell dim C.


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dim, computed in float32 at least; `weight` broadcasts against x."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin of shape `[..., 1, T, hd]` for positions `[..., T]` (the 1 broadcasts over heads)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(-3)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class _WithDelta(NamedTuple):
    """A per-cell weight `[C, out, in]` plus a per-example low-rank delta `up[b] @ down[b]`
    (`down [B, r, in]`, `up [B, out, r]`), standing in for the weight in `_linear` (`WeightDeltas`).
    Row slices (`w[:, a:b]`: q/k vs v, gate vs up) slice the delta's `up` alike."""

    weight: Tensor
    down: Tensor
    up: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.weight.shape

    def __getitem__(self, index: tuple[slice, slice]) -> _WithDelta:
        cells, rows = index
        return _WithDelta(self.weight[cells, rows], self.down, self.up[:, rows])


def _linear(x: Tensor, weight: Tensor | _WithDelta) -> Tensor:
    """x `[C, B, T, in]` times per-cell weight `[C, out, in]`. One cell (every plain forward) is a
    single matmul over `[B*T, in]`; several cells are one bmm."""
    if isinstance(weight, _WithDelta):
        low_rank = torch.einsum("cbtr,bor->cbto", torch.einsum("cbti,bri->cbtr", x, weight.down), weight.up)
        return _linear(x, weight.weight) + low_rank
    c, b, t, d_in = x.shape
    if c == 1 and weight.shape[0] == 1:
        return F.linear(x, weight[0])
    return torch.bmm(x.reshape(c, b * t, d_in), weight.transpose(1, 2)).view(c, b, t, -1)


def _cell(weight: Tensor) -> Tensor:
    """A per-cell vector `[C, d]` as `[C, 1, 1, d]` so it broadcasts over batch and time."""
    return weight[:, None, None, :]


class _Prepared(NamedTuple):
    """What every block of one forward shares: attention mask and RoPE tables (built once)."""

    allowed: Tensor | None  # [C*B, 1, T, T] bool, or None: plain causal
    cos: Tensor  # [..., T, 2, 1, hd]: q (pre-scaled by hd**-0.5) and k
    sin: Tensor  # the same, sign of the first half flipped (see `_rope_qk`)


def _qk_tables(positions: Tensor, config: LlamaConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RoPE cos / signed sin for q and k together, `[..., T, 2, 1, hd]`, with the attention scale
    folded into q's half: one rotation of the joint q/k tensor, and no multiply of the scores."""
    hd = config.head_dim
    cos, sin = rope(positions, hd, config.rope_theta, torch.float32)  # [..., 1, T, hd]
    cos, sin = cos.squeeze(-3)[..., None, None, :], sin.squeeze(-3)[..., None, None, :]
    scale = torch.tensor([hd**-0.5, 1.0], device=positions.device).view(2, 1, 1)
    sign = torch.ones(hd, device=positions.device)
    sign[: hd // 2] = -1
    return (cos * scale).to(dtype), (sin * sign * scale).to(dtype)


def _prepare(
    x: Tensor,
    mask: Tensor | None,
    positions: Tensor | None,
    config: LlamaConfig,
    segments: Tensor | None = None,
    tables: tuple[Tensor, Tensor] | None = None,
    *,
    length: int | None = None,
) -> _Prepared:
    """`tables`: precomputed `_qk_tables` of positions 0, 1, ... (at least T rows), used when
    `positions` is None. Under `torch.compile` tables built in the graph from `arange` are recomputed
    (cos, sin, pow) inside every kernel that reads them; tables passed in are only read. `length`:
    the sequence's T when x is only its first part (`Llama.forward_prefixed`)."""
    c, b, t = x.shape[0], x.shape[1], x.shape[2] if length is None else length
    if segments is not None and mask is None:
        mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
    cells = lambda m: m.expand(c, b, t).reshape(-1, t)  # noqa: E731
    allowed = None if mask is None else allowed_keys(cells(mask), None if segments is None else cells(segments))
    with torch.no_grad():  # constants: built once per forward, shared by every block
        if positions is None:
            cos, sin = _leading_tables(t, tables, config, x.dtype, x.device)
        else:
            cos, sin = _qk_tables(positions, config, x.dtype)
    return _Prepared(allowed, cos, sin)


def _leading_tables(
    length: int, tables: tuple[Tensor, Tensor] | None, config: LlamaConfig, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """`_qk_tables` of positions 0 .. length-1: the first rows of `tables` when it has them."""
    if tables is not None and tables[0].shape[0] >= length:
        return tables[0][:length].to(dtype), tables[1][:length].to(dtype)
    return _qk_tables(torch.arange(length, device=device), config, dtype)


def _rope_qk(qk: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on q and k at once, `qk` `[C, B, T, 2, H, hd]`: pairs (i, i + hd/2) rotated (the GPT-NeoX /
    HF LLaMA convention); `sin` carries the sign of the rotation. Written on the two halves, not as
    one `flip` of them: inductor vectorizes these kernels, not the flip's div/mod indexing (the
    compiled step's backward RoPE kernels took 45 of 170 ms with the flip)."""
    half = qk.shape[-1] // 2
    first, second = qk[..., :half], qk[..., half:]
    return torch.cat([first * cos[..., :half] + second * sin[..., :half],
                      second * cos[..., half:] + first * sin[..., half:]], dim=-1)


def _qkv(params: dict[str, Tensor], x: Tensor, cos: Tensor, sin: Tensor, config: LlamaConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Normed input `[C, B, T, d]` -> q (pre-scaled), k, v as `[C, B, H, T, hd]`, RoPE applied."""
    c, b, t, d = x.shape
    heads, hd = config.heads, config.head_dim
    # q/k and v from two matmuls on row blocks of wqkv: slicing one qkv output would cost a
    # zero-filled full-size tensor per slice in every backward pass (and under double backward)
    w = params["wqkv"]
    qk = _rope_qk(_linear(x, w[:, : 2 * d]).view(c, b, t, 2, heads, hd), cos, sin)
    q, k = (qk[:, :, :, i].transpose(2, 3) for i in (0, 1))
    v = _linear(x, w[:, 2 * d :]).view(c, b, t, heads, hd).transpose(2, 3)
    return q, k, v


def _attend_cells(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, wo: Tensor) -> Tensor:
    """Attention of `[C, B, H, T, hd]` queries over `[C, B, H, S, hd]` keys/values, then the output
    projection: `[C, B, T, d]`."""
    c, b, heads, t, hd = q.shape
    out = attend(q.reshape(c * b, heads, t, hd), k.reshape(c * b, heads, -1, hd), v.reshape(c * b, heads, -1, hd),
                 allowed, scale=1.0)
    return _linear(out.view(c, b, heads, t, hd).transpose(2, 3).reshape(c, b, t, heads * hd), wo)


def _attention(params: dict[str, Tensor], x: Tensor, prep: _Prepared, config: LlamaConfig) -> Tensor:
    return _attend_cells(*_qkv(params, x, prep.cos, prep.sin, config), prep.allowed, params["wo"])


def _mlp(params: dict[str, Tensor], x: Tensor) -> Tensor:
    # gate and up as two matmuls on the halves of w_gate_up: contiguous outputs, whose many
    # elementwise ops under double backward run faster than on strided chunks of one output
    w, h = params["w_gate_up"], params["w_down"].shape[-1]
    return _linear(F.silu(_linear(x, w[:, :h])) * _linear(x, w[:, h:]), params["w_down"])


def _mlp_residual(params: dict[str, Tensor], h: Tensor, config: LlamaConfig) -> Tensor:
    return h + _mlp(params, rms_norm(h, _cell(params["mlp_norm"]), config.norm_eps))


def _block(params: dict[str, Tensor], x: Tensor, prep: _Prepared, config: LlamaConfig) -> Tensor:
    h = x + _attention(params, rms_norm(x, _cell(params["attn_norm"]), config.norm_eps), prep, config)
    return _mlp_residual(params, h, config)


def block_forward(
    params: dict[str, Tensor],
    x: Tensor,
    mask: Tensor | None = None,
    positions: Tensor | None = None,
    *,
    config: LlamaConfig,
) -> Tensor:
    """Run C blocks (one per cell) on C inputs: x `[C, B, T, d]` -> `[C, B, T, d]`.

    `params` holds every block parameter stacked along a leading C dim (`Llama.stacked_layer_params`).
    `mask` is `[C, B, T]` bool (True = real token) or anything broadcastable to it; `positions`
    (RoPE) is `[T]`, `[B, T]` or `[C, B, T]` and defaults to `arange(T)`.
    """
    return _block(params, x, _prepare(x, mask, positions, config), config)


class Projected(NamedTuple):
    """A block input that follows a prefix of `offset` positions, with its queries, keys and values
    (`project`) and what a prefix needs (RoPE tables, mask), computed once and reused by
    `block_forward_prefixed` under many different prefixes."""

    x: Tensor  # [C, b, T, d]; b may be 1 (shared by every example)
    q: Tensor  # [C, b, H, T, hd]
    k: Tensor
    v: Tensor
    prefix_cos: Tensor  # RoPE tables of positions 0 .. offset-1
    prefix_sin: Tensor
    allowed: Tensor  # [T, offset + T] bool: causal over [prefix; x]


def project(
    params: dict[str, Tensor], x: Tensor, offset: int, *, config: LlamaConfig, tables: tuple[Tensor, Tensor] | None = None
) -> Projected:
    """Attention projections of x `[C, b, T, d]` sitting at positions offset .. offset + T - 1
    (`tables`: RoPE tables of at least offset + T positions, as `_prepare` takes them)."""
    t = x.shape[2]
    with torch.no_grad():
        cos, sin = _leading_tables(offset + t, tables, config, x.dtype, x.device)
        allowed = torch.ones(t, offset + t, dtype=torch.bool, device=x.device).tril(diagonal=offset)
    normed = rms_norm(x, _cell(params["attn_norm"]), config.norm_eps)
    q, k, v = _qkv(params, normed, cos[offset:], sin[offset:], config)
    return Projected(x, q, k, v, cos[:offset], sin[:offset], allowed)


def block_forward_prefixed(params: dict[str, Tensor], prefix: Tensor, suffix: Projected, *, config: LlamaConfig) -> Tensor:
    """The block's outputs at the suffix positions of `[prefix; suffix]`: `[C, B, T, d]`.

    Equals `block_forward(params, cat([prefix, suffix.x], 2))[:, :, M:]` (causal, no padding mask)
    for a prefix `[C, B, M, d]` (M = the suffix's offset), but computes neither the prefix's own
    outputs (only its keys and values) nor the suffix's projections again, and a suffix with batch 1
    is shared by all B examples. PRMT4 runs its memory through a layer this way, where only what
    follows the memory is compared.
    """
    c, b, _, _ = prefix.shape
    _, k, v = _join_prefix(params, prefix, suffix, config)  # the prefix's queries go unused: M is small
    h = suffix.x + _attend_cells(suffix.q.expand(c, b, -1, -1, -1), k, v, suffix.allowed, params["wo"])
    return _mlp_residual(params, h, config)


def _join_prefix(params: dict[str, Tensor], prefix: Tensor, suffix: Projected, config: LlamaConfig) -> tuple[Tensor, Tensor, Tensor]:
    """The prefix's own queries, and keys and values over `[prefix; suffix]` (the suffix's projected,
    expanded to the prefix's batch): `[C, B, H, M, hd]`, `[C, B, H, M + T, hd]` twice."""
    c, b, m, _ = prefix.shape
    if m != suffix.prefix_cos.shape[0]:
        raise ValueError(f"the suffix was projected after {suffix.prefix_cos.shape[0]} prefix positions, got {m}")
    normed = rms_norm(prefix, _cell(params["attn_norm"]), config.norm_eps)
    q, k, v = _qkv(params, normed, suffix.prefix_cos, suffix.prefix_sin, config)
    return q, *(torch.cat([own, theirs.expand(c, b, -1, -1, -1)], dim=3) for own, theirs in ((k, suffix.k), (v, suffix.v)))


def block_forward_joined(
    params: dict[str, Tensor], prefix: Tensor, suffix: Projected, allowed: Tensor | None, *, config: LlamaConfig
) -> Tensor:
    """The block on `[prefix; suffix.x]` with the suffix's projections given (`project`): its outputs
    at every position, `[C, B, M + T, d]`, equal to `block_forward` on the concatenation (`allowed`:
    the mask of the whole sequence, as `_prepare` builds it). The suffix's queries, keys and values
    do not depend on the prefix, so memory tokens' inner steps, which run many memories before one
    context, project the context once, and the gradient w.r.t. the memory never runs back through
    the context's projections."""
    c, b, _, _ = prefix.shape
    q, k, v = _join_prefix(params, prefix, suffix, config)
    q = torch.cat([q, suffix.q.expand(c, b, -1, -1, -1)], dim=3)
    x = torch.cat([prefix, suffix.x.expand(c, b, -1, -1)], dim=2)
    h = x + _attend_cells(q, k, v, allowed, params["wo"])
    return _mlp_residual(params, h, config)


# ---------------------------------------------------------------------------------------------
# Modules

ROPE_ROWS = 256
"""Positions a new `Llama` keeps RoPE tables for; a longer forward doubles them until they fit."""


class LlamaBlock(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then h + SwiGLU(RMSNorm(h))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        d, h = config.dim, config.hidden_dim
        self.attn_norm = nn.Parameter(torch.ones(d))
        self.wqkv = nn.Parameter(torch.empty(3 * d, d))
        self.wo = nn.Parameter(torch.empty(d, d))
        self.mlp_norm = nn.Parameter(torch.ones(d))
        self.w_gate_up = nn.Parameter(torch.empty(2 * h, d))
        self.w_down = nn.Parameter(torch.empty(d, h))

    def params(self) -> dict[str, Tensor]:
        return dict(self.named_parameters())

    def forward(self, x: Tensor, mask: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """x `[B, T, d]`, mask `[B, T]` bool, positions `[T]` or `[B, T]` -> `[B, T, d]`."""
        mask = None if mask is None else mask.unsqueeze(0)
        return block_forward(self.cell_params(), x.unsqueeze(0), mask, positions, config=self.config)[0]

    def cell_params(self) -> dict[str, Tensor]:
        """This block's parameters with a cell dim of 1, for `block_forward`."""
        return {name: p.unsqueeze(0) for name, p in self.named_parameters()}


class Llama(nn.Module, Backbone):
    """Decoder-only LM over input embeddings: `embed(ids)`, `forward(embeds)`, `head(hidden)`.

    Capabilities (`ttt_core.interfaces`): `PackedRows` (forward's `positions` and `segments`),
    `LayerBlocks` (its blocks on stacked weights: `stacked_layer_params`, `layer_params`,
    `project`, `block_forward_prefixed`), `WeightDeltas` (`forward_with_deltas`) and `FixedSuffix`
    (`project_suffix`, `forward_prefixed`)."""

    def __init__(self, config: LlamaConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.dim, self.n_layers, self.vocab_size = config.dim, config.layers, vocab_size
        self.tok_embeddings = nn.Embedding(vocab_size, config.dim)
        self.layers = nn.ModuleList(LlamaBlock(config) for _ in range(config.layers))
        self.norm = nn.Parameter(torch.ones(config.dim))
        self.lm_head = nn.Linear(config.dim, vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        self._table_rope(ROPE_ROWS)
        self.reset_parameters()

    def _table_rope(self, rows: int) -> None:
        """RoPE tables of positions 0 .. rows-1 as buffers (not saved: a function of the config)."""
        device = self.norm.device
        cos, sin = _qk_tables(torch.arange(rows, device=device), self.config, torch.float32)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def rope_tables(self, length: int) -> tuple[Tensor, Tensor]:
        """The RoPE tables for a forward over `length` positions, grown when too short, except while
        compiling (a buffer cannot change then: a forward past them builds its own, `_leading_tables`)."""
        if length > self.rope_cos.shape[0] and not torch.compiler.is_compiling():
            self._table_rope(1 << (length - 1).bit_length())
        return self.rope_cos, self.rope_sin

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * layers)
        so the residual stream's variance does not grow with depth; norm gains start at 1."""
        residual_std = 0.02 / math.sqrt(2 * self.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, std=0.02)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        nn.init.ones_(self.norm)
        for block in self.layers:
            nn.init.normal_(block.wqkv, std=0.02)
            nn.init.normal_(block.w_gate_up, std=0.02)
            nn.init.normal_(block.wo, std=residual_std)
            nn.init.normal_(block.w_down, std=residual_std)
            nn.init.ones_(block.attn_norm)
            nn.init.ones_(block.mlp_norm)

    def embed(self, ids: Tensor) -> Tensor:
        """ids `[B, T]` -> embeddings `[B, T, d]`."""
        return self.tok_embeddings(ids)

    def head(self, x: Tensor) -> Tensor:
        """Final RMSNorm and LM head: hidden `[..., d]` -> logits `[..., V]`."""
        return self.lm_head(rms_norm(x, self.norm, self.config.norm_eps))

    def forward(
        self,
        embeds: Tensor,
        mask: Tensor | None = None,
        return_hidden: bool = False,
        positions: Tensor | None = None,
        segments: Tensor | None = None,
    ) -> BackboneOutput:
        """embeds `[B, T, d]`, mask `[B, T]` bool (True = real) -> logits `[B, T, V]`.

        Prefixes (memory tokens) are simply concatenated to `embeds`; positions default to arange(T)
        over the whole sequence. With left padding pass positions that start at the first real token.
        Several sequences packed in one row (`ttt_core.packing`): `segments` `[B, T]` says which each
        position belongs to (attention stays within one), `positions` restart for each.
        """
        x, hidden = embeds.unsqueeze(0), [embeds]
        mask = None if mask is None else mask.unsqueeze(0)
        prep = _prepare(x, mask, positions, self.config, segments, self.rope_tables(x.shape[2]))  # once for all layers
        for layer in self.layers:
            x = _block(layer.cell_params(), x, prep, self.config)
            hidden.append(x[0])
        return BackboneOutput(self.head(x[0]), tuple(hidden) if return_hidden else None)

    @property
    def norm_eps(self) -> float:
        return self.config.norm_eps

    def layer_params(self, layer: int) -> dict[str, Tensor]:
        """Layer `layer`'s own parameters with a cell dim of 1, for the functional block."""
        return self.layers[layer].cell_params()

    def project(self, params: dict[str, Tensor], x: Tensor, offset: int) -> Projected:
        """`project` with this model's block config."""
        return project(params, x, offset, config=self.config, tables=self.rope_tables(offset + x.shape[2]))

    def project_suffix(self, embeds: Tensor, offset: int) -> Projected:
        """`FixedSuffix`: embeddings `[B, T, d]` that will follow `offset` prefix positions, with the
        first layer's queries, keys and values, for `forward_prefixed`."""
        return self.project(self.layer_params(0), embeds.unsqueeze(0), offset)

    def forward_prefixed(self, prefix: Tensor, suffix: Projected, mask: Tensor | None = None) -> BackboneOutput:
        """`FixedSuffix`: `forward(cat([prefix, embeds], 1), mask)` for a suffix from `project_suffix`
        (prefix `[B, M, d]`, mask `[B, M + T]`), the first layer joining the prefix's projections to
        the suffix's (`block_forward_joined`)."""
        x = prefix.unsqueeze(0)
        length = prefix.shape[1] + suffix.x.shape[2]
        mask = None if mask is None else mask.unsqueeze(0)
        prep = _prepare(x, mask, None, self.config, tables=self.rope_tables(length), length=length)
        x = block_forward_joined(self.layer_params(0), x, suffix, prep.allowed, config=self.config)
        for layer in self.layers[1:]:
            x = _block(layer.cell_params(), x, prep, self.config)
        return BackboneOutput(self.head(x[0]), None)

    def block_forward_prefixed(self, params: dict[str, Tensor], prefix: Tensor, suffix: Projected) -> Tensor:
        """`block_forward_prefixed` with this model's block config."""
        return block_forward_prefixed(params, prefix, suffix, config=self.config)

    DELTA_WEIGHTS = ("wqkv", "wo", "w_gate_up", "w_down")

    def delta_targets(self) -> dict[str, tuple[int, int]]:
        """`WeightDeltas`: every block's linear weights, `"layers.{i}.{name}"` -> `(out, in)`."""
        return {f"layers.{i}.{name}": tuple(getattr(layer, name).shape)
                for i, layer in enumerate(self.layers) for name in self.DELTA_WEIGHTS}

    def forward_with_deltas(
        self, embeds: Tensor, mask: Tensor | None, deltas: dict[str, tuple[Tensor, Tensor]], return_hidden: bool = False
    ) -> BackboneOutput:
        """`forward` with each named linear weight W replaced, for example b, by W + up[b] @ down[b]
        (`deltas[name] = (down [B, r, in], up [B, out, r])`; see `WeightDeltas`)."""
        unknown = sorted(set(deltas) - set(self.delta_targets()))
        if unknown:
            raise KeyError(f"no linear weight {unknown}; the llama backbone's are layers.<i>.{{{', '.join(self.DELTA_WEIGHTS)}}}")
        x, hidden = embeds.unsqueeze(0), [embeds]
        mask = None if mask is None else mask.unsqueeze(0)
        prep = _prepare(x, mask, None, self.config, tables=self.rope_tables(x.shape[2]))
        for i, layer in enumerate(self.layers):
            params = layer.cell_params()
            for name in self.DELTA_WEIGHTS:
                if f"layers.{i}.{name}" in deltas:
                    params[name] = _WithDelta(params[name], *deltas[f"layers.{i}.{name}"])
            x = _block(params, x, prep, self.config)
            hidden.append(x[0])
        return BackboneOutput(self.head(x[0]), tuple(hidden) if return_hidden else None)

    def stacked_layer_params(self, indices: Tensor | list[int] | None = None) -> dict[str, Tensor]:
        """Parameters of the chosen layers stacked along a new leading dim (differentiable)."""
        if indices is None:
            indices = range(self.n_layers)
        elif isinstance(indices, Tensor):
            indices = indices.tolist()
        blocks = [self.layers[i] for i in indices]
        return {name: torch.stack([getattr(b, name) for b in blocks]) for name, _ in self.layers[0].named_parameters()}

    def run_layers(
        self,
        indices: Tensor | list[int],
        x: Tensor,
        mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Layer `indices[c]` applied to `x[c]` for every cell c in one batched call: `[C, B, T, d]`."""
        return block_forward(self.stacked_layer_params(indices), x, mask, positions, config=self.config)


def build_llama(config: LlamaConfig, *, vocab_size: int) -> Llama:
    """Registry factory: the vocabulary comes from the task."""
    return Llama(config, vocab_size)
