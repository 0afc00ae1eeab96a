"""Baseline TTT: M memory token embeddings prefixed to the input (prompt tuning at test time)."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from ttt_core.builtin.configs import MemoryTokensConfig
from ttt_core.episode import Segment
from ttt_core.interfaces import InnerLearner, State
from ttt_core.model import lm_loss_per_example, prefixed_logits
from ttt_core.packing import LengthBuckets, PairPacking, packed_prefixed_logits, plan_buckets, plan_pairs

WRITER = "writer."


def writer_state(state: State) -> State:
    return {k[len(WRITER):]: v for k, v in state.items() if k.startswith(WRITER)}


class MemoryTokens(nn.Module, InnerLearner):
    """Adapted on the next-token loss of the context with the (written) memory prefixed.

    The first context token is predicted from the last memory token, so the memory is pushed to
    hold what the context needs from the start.
    """

    def __init__(self, config: MemoryTokensConfig, *, backbone: nn.Module, writer: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.writer = writer
        self.tokens = config.tokens
        self.pack_pairs = config.pack_pairs
        self.length_buckets = config.length_buckets
        self.memory = nn.Parameter(torch.randn(config.tokens, backbone.dim) * config.init_std)

    def init_state(self, batch_size: int) -> State:
        state = {"memory": self.memory.unsqueeze(0).expand(batch_size, -1, -1)}
        state.update({WRITER + k: v for k, v in self.writer.init_state(batch_size).items()})
        return state

    def _run(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None) -> Tensor:
        """Logits over ``[memory; ids]``."""
        return self._logits(state, ids, mask, None if context is None else (context.ids, context.mask, context.packing))

    def _logits(self, state: State, ids: Tensor, mask: Tensor,
                context: tuple[Tensor, Tensor, PairPacking | LengthBuckets | None] | None) -> Tensor:
        """`_run` with the context as (ids, mask, packing): a length group is no `Segment`, which
        dynamo cannot build inside a compiled step (a frozen attrs class)."""
        context_emb = None if context is None else self.backbone.embed(context[0])
        context_mask = None if context is None else context[1]
        memory = self.writer(writer_state(state), state["memory"], context_emb, context_mask)
        # the inner loss runs on the context itself: embed it once, not once for the writer and again here
        if context is not None and ids is context[0]:
            packing = context[2] if isinstance(context[2], PairPacking) else None
            if packing is None and self.pack_pairs and not torch.compiler.is_compiling():
                packing = plan_pairs(context_mask, self.tokens)  # eager; a compiled step attaches it before tracing
            if packing is not None:
                return packed_prefixed_logits(self.backbone, memory, context_emb, packing)
            return prefixed_logits(self.backbone, memory, context_emb, mask)
        return prefixed_logits(self.backbone, memory, self.backbone.embed(ids), mask)

    def pack(self, segment: Segment, min_width: int | tuple[int, ...] = 0) -> Segment:
        """`segment` with its pair layout (rows a multiple of 8 wide) or its length groups (each a
        multiple of 4 wide) attached, at least `min_width` (a compiled step passes the widest so far:
        static shapes); unchanged unless `pack_pairs` or `length_buckets`."""
        if self.length_buckets > 1:
            return attrs.evolve(segment, packing=plan_buckets(segment.mask, self.length_buckets, min_width, multiple=4))
        if not self.pack_pairs:
            return segment
        return attrs.evolve(segment, packing=plan_pairs(segment.mask, self.tokens, int(min_width or 0), multiple=8))

    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        buckets = segment.packing
        if buckets is None and self.length_buckets > 1 and not torch.compiler.is_compiling():
            buckets = plan_buckets(segment.mask, self.length_buckets)  # eager; a compiled step attaches it
        if not isinstance(buckets, LengthBuckets):
            return self._inner_loss(state, segment.ids, segment.mask, segment.packing)
        losses = []
        for index, width in buckets.groups():  # each group its own batch, only as wide as its longest
            ids, mask = segment.ids.index_select(0, index)[:, :width], segment.mask.index_select(0, index)[:, :width]
            losses.append(self._inner_loss({k: v.index_select(0, index) for k, v in state.items()}, ids, mask, None))
        return torch.cat(losses).index_select(0, buckets.inverse)

    def _inner_loss(self, state: State, ids: Tensor, mask: Tensor, packing: PairPacking | None) -> Tensor:
        # the last memory position predicts the first token; the last token predicts nothing
        logits = self._logits(state, ids, mask, (ids, mask, packing))[:, self.tokens - 1 : -1]
        return lm_loss_per_example(logits, ids, mask)

    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        """Logits where position t predicts ids[t + 1] (the usual convention)."""
        return self._run(state, ids, mask, context if self.writer.read_context else None)[:, self.tokens :]
