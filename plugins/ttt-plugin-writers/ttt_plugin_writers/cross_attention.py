"""NeuralMemory: the memory tokens cross-attend to the context embeddings.

memory = mem + o(Attn(q(mem), k(ctx), v(ctx))) with padding masked, then optional self-attention
rounds over the slots. q, k, v and o are per-example fast weights with a meta-learned initial value
(`[memory.writer] fast`), adapted by the inner loop together with the memory tokens; the outer loop
trains their initial values, the backbone and the memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ttt_core.interfaces import State
from ttt_plugin_writers.fast_weights import FastWeightWriter, FastWeights, rms_norm
from ttt_plugin_writers.writer_config import CrossAttentionConfig


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, heads: int) -> Tensor:
    """Multi-head attention ``[B, M, d] x [B, T, d] -> [B, M, d]``; written out (not SDPA) so that
    its double backward exists on every device. Keys under ``mask == False`` get exactly zero
    weight, and a row with no real key (an empty segment) reads zero."""
    b, m, d = q.shape
    t = k.shape[1]
    split = lambda x, n: x.view(b, n, heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q, m) @ split(k, t).transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        keep = mask[:, None, None, :]
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * keep.to(scores.dtype)
    else:
        weights = torch.softmax(scores, dim=-1)
    return (weights @ split(v, t)).transpose(1, 2).reshape(b, m, d)


class SlotSelfAttention(nn.Module):
    """One pre-norm self-attention round over the memory slots (meta-learned weights)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.Parameter(torch.ones(dim))
        self.qkv = nn.Parameter(torch.randn(dim, 3 * dim) / math.sqrt(dim))
        self.out = nn.Parameter(torch.zeros(dim, dim))  # starts as the identity

    def forward(self, memory: Tensor) -> Tensor:
        q, k, v = (rms_norm(memory, self.norm) @ self.qkv).chunk(3, dim=-1)
        return memory + attend(q, k, v, None, self.heads) @ self.out


class CrossAttentionWriter(FastWeightWriter):
    def __init__(self, config: CrossAttentionConfig, *, dim: int) -> None:
        super().__init__()
        if dim % config.heads:
            raise ValueError(f"option 'heads' ({config.heads}) must divide the model width {dim}")
        self.heads = config.heads
        self.read_context = config.read_context
        std = 1.0 / math.sqrt(dim)
        initial = {name: torch.randn(dim, dim) * std for name in ("q", "k", "v")}
        initial["o"] = torch.randn(dim, dim) * config.init_out_std
        self.weights = FastWeights(initial, config.fast)
        with_norm = config.norm == "rms"
        self.memory_norm = nn.Parameter(torch.ones(dim)) if with_norm else None
        self.context_norm = nn.Parameter(torch.ones(dim)) if with_norm else None
        self.rounds = nn.ModuleList(SlotSelfAttention(dim, config.heads) for _ in range(config.rounds))

    def forward(self, state: State, memory: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        w = self.weights.resolve(state)
        if context is None:
            context, context_mask = memory, None
        queries = rms_norm(memory, self.memory_norm) @ w["q"]
        source = rms_norm(context, self.context_norm)
        written = attend(queries, source @ w["k"], source @ w["v"], context_mask, self.heads) @ w["o"]
        memory = memory + written
        for round_ in self.rounds:
            memory = round_(memory)
        return memory
