"""The TTT language model of the paper, readable top to bottom.

embed -> N x Block -> RMSNorm -> lm_head (tied to embed by default), where
Block(h) = [h + PreConv(h)]  (mamba variant only)
           h + TTTLayer(RMSNorm(h))
           h + SwiGLU(RMSNorm(h)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_plugin_layers.config import TTTModelConfig
from ttt_plugin_layers.functional import Delta, causal_conv, conv_history, with_delta
from ttt_plugin_layers.layer import LayerState, TTTLayer


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (`exact_fp32`, the reference's behaviour even for float64 inputs,
    which the golden logits depend on) or in at least float32 (half precision upcast)."""

    def __init__(self, dim: int, eps: float, exact_fp32: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.exact_fp32 = exact_fp32
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(torch.float32 if self.exact_fp32 else torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor, deltas: dict[str, Delta] | None = None) -> Tensor:
        """`deltas`: role "gate", "up" or "down" -> a per-example low-rank delta of that projection."""
        deltas = deltas or {}
        gate = with_delta(self.gate_proj(x), x, deltas.get("gate"))
        hidden = F.silu(gate) * with_delta(self.up_proj(x), x, deltas.get("up"))
        return with_delta(self.down_proj(hidden), hidden, deltas.get("down"))


class PreConv(nn.Module):
    """The mamba backbone's extra sub-block: RMSNorm then a depthwise causal conv over time."""

    def __init__(self, dim: int, kernel: int, eps: float, exact_fp32: bool) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps, exact_fp32)
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim, bias=True)

    def forward(self, x: Tensor, history: Tensor | None, keep: Tensor | None,
                lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.norm(x)
        if keep is not None:
            h = h * keep
        return causal_conv(h, self.conv.weight, self.conv.bias, history), conv_history(
            h, history, self.conv.kernel_size[0], lengths
        )


@dataclass
class BlockState:
    ttt: LayerState
    pre_conv: Tensor | None = None  # [B, conv_kernel - 1, hidden]


class Block(nn.Module):
    def __init__(self, config: TTTModelConfig) -> None:
        super().__init__()
        C = config.hidden_size
        eps, fp32 = config.rms_norm_eps, config.rms_norm_fp32
        self.pre_conv = PreConv(C, config.conv_kernel, eps, fp32) if config.pre_conv else None
        self.seq_norm = RMSNorm(C, eps, fp32)
        self.ttt = TTTLayer(config.layer_config())
        self.ffn_norm = RMSNorm(C, eps, fp32)
        self.mlp = SwiGLU(C, config.intermediate_size)

    def forward(self, h: Tensor, state: BlockState | None, mask: Tensor | None,
                lengths: Tensor | None, deltas: dict[str, Delta] | None = None) -> tuple[Tensor, BlockState]:
        keep = None if lengths is None else mask[..., None].to(h.dtype)
        pre = None
        if self.pre_conv is not None:
            out, pre = self.pre_conv(h, None if state is None else state.pre_conv, keep, lengths)
            h = h + out
        out, ttt_state = self.ttt(self.seq_norm(h), None if state is None else state.ttt, mask, return_state=True,
                                  deltas=deltas)
        h = h + out
        h = h + self.mlp(self.ffn_norm(h), deltas)
        return h, BlockState(ttt_state, pre)


@dataclass
class TTTCache:
    """Per-block state for chunked prefill and decoding; `TTTModel.forward(..., cache=...)` extends it."""

    blocks: list[BlockState]

    def detach(self) -> TTTCache:
        return TTTCache([BlockState(b.ttt.detach(), None if b.pre_conv is None else b.pre_conv.detach())
                         for b in self.blocks])


class Trunk(NamedTuple):
    """What the blocks produce: final-normed hidden states, the new cache, and (on request) the
    input of block 0 followed by every block's output, before the final norm."""

    hidden: Tensor
    cache: TTTCache
    hidden_states: tuple[Tensor, ...] | None = None


def pack_left(mask: Tensor) -> tuple[Tensor, Tensor]:
    """A per-row stable order that moves the real tokens of `mask [B, n]` first, and their counts.

    Running the model on the packed rows turns any padding (left, right, holes) into trailing
    padding, which a causal model ignores exactly.
    """
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return order, mask.sum(1)


class TTTModel(nn.Module):
    """TTT language model: `forward(input_ids) -> logits`; `cache` continues a sequence."""

    def __init__(self, config: TTTModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.rms_norm_fp32)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self) -> None:
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, 0.0, std)
        nn.init.normal_(self.lm_head.weight, 0.0, std)
        for block in self.blocks:
            for lin in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj):
                nn.init.normal_(lin.weight, 0.0, std)

    def init_cache(self, batch_size: int) -> TTTCache:
        return TTTCache([BlockState(b.ttt.init_state(batch_size)) for b in self.blocks])

    def forward(self, input_ids: Tensor, cache: TTTCache | None = None, attention_mask: Tensor | None = None,
                return_cache: bool = False) -> Tensor | tuple[Tensor, TTTCache]:
        """Logits `[B, n, vocab]` for `input_ids [B, n]`, continuing `cache` if given.

        `attention_mask [B, n]` (1 = real token) may pad anywhere: real tokens are packed to the
        front of each row, so their logits equal those of the unpadded sequence; padded positions
        get zero logits and do not touch the cache.
        """
        h, cache, _ = self.forward_embeddings(self.embed(input_ids), cache, attention_mask)
        logits = self.lm_head(h)
        if attention_mask is not None:
            logits = logits * attention_mask[..., None].to(logits.dtype)
        return (logits, cache) if return_cache else logits

    def forward_embeddings(self, h: Tensor, cache: TTTCache | None = None, attention_mask: Tensor | None = None,
                           return_hidden: bool = False, deltas: list[dict[str, Delta]] | None = None) -> Trunk:
        """The blocks and final norm on embeddings `[B, n, hidden]` (prefixes such as memory tokens
        are simply concatenated by the caller). Padding as in `forward`. `deltas[i]`: block i's
        per-example low-rank deltas by role (q, k, v, o, gate, up, down)."""
        order = lengths = mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            order, lengths = pack_left(attention_mask.to(torch.bool))
            h = h.gather(1, order[..., None].expand_as(h))
            mask = torch.arange(h.shape[1], device=h.device) < lengths[:, None]

        def unpack(x: Tensor) -> Tensor:
            return x if order is None else torch.empty_like(x).scatter(1, order[..., None].expand_as(x), x)

        states = [None] * len(self.blocks) if cache is None else cache.blocks
        new_states, hidden = [], [h]
        for i, (block, state) in enumerate(zip(self.blocks, states)):
            h, state = block(h, state, mask, lengths, None if deltas is None else deltas[i])
            new_states.append(state)
            hidden.append(h)
        hidden_states = tuple(unpack(x) for x in hidden) if return_hidden else None
        return Trunk(unpack(self.norm(h)), TTTCache(new_states), hidden_states)
