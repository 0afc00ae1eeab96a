"""Baseline TTT: M memory token embeddings prefixed to the input (prompt tuning at test time)."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor, nn

from ttt_core.builtin.configs import MemoryTokensConfig
from ttt_core.episode import Segment
from ttt_core.interfaces import FixedSuffix, InnerLearner, State
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

    def pack(self, segment: Segment, min_width: int | tuple[int, ...] = 0) -> Segment:
        """`segment` with its pair layout (rows a multiple of 8 wide) or its length groups (each a
        multiple of 4 wide) attached, at least `min_width` (a compiled step passes the widest so far:
        static shapes); unchanged unless `pack_pairs` or `length_buckets`."""
        if self.length_buckets > 1:
            return attrs.evolve(segment, packing=plan_buckets(segment.mask, self.length_buckets, min_width, multiple=4))
        if not self.pack_pairs:
            return segment
        return attrs.evolve(segment, packing=plan_pairs(segment.mask, self.tokens, int(min_width or 0), multiple=8))

    def inner_objective(self, segment: Segment) -> Callable[[State], Tensor]:
        """`inner_loss` on `segment` as a function of the state, with what does not depend on the
        state computed once for the K inner steps: the context's embeddings and, on a `FixedSuffix`
        backbone, its first layer's projections (which the memory's gradient then never runs
        back through). Each length group (`length_buckets`) is a batch of its own."""
        buckets = segment.packing
        if buckets is None and self.length_buckets > 1 and not torch.compiler.is_compiling():
            buckets = plan_buckets(segment.mask, self.length_buckets)  # eager; a compiled step attaches it
        pairs = None
        if isinstance(buckets, LengthBuckets):
            groups = [(index, segment.ids.index_select(0, index)[:, :width], segment.mask.index_select(0, index)[:, :width])
                      for index, width in buckets.groups()]
        else:
            groups = [(None, segment.ids, segment.mask)]
            pairs = segment.packing if isinstance(segment.packing, PairPacking) else None
            if pairs is None and self.pack_pairs and not torch.compiler.is_compiling():
                pairs = plan_pairs(segment.mask, self.tokens)  # eager; a compiled step attaches it before tracing
        reuse = pairs is None and isinstance(self.backbone, FixedSuffix)
        contexts = []
        for index, ids, mask in groups:
            embeds = self.backbone.embed(ids)
            contexts.append((index, ids, mask, embeds, self.backbone.project_suffix(embeds, self.tokens) if reuse else None))

        def objective(state: State) -> Tensor:
            losses = [self._context_loss(state if index is None else {k: v.index_select(0, index) for k, v in state.items()},
                                         ids, mask, embeds, suffix, pairs)
                      for index, ids, mask, embeds, suffix in contexts]
            return losses[0] if len(losses) == 1 else torch.cat(losses).index_select(0, buckets.inverse)

        return objective

    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        return self.inner_objective(segment)(state)

    def _context_loss(self, state: State, ids: Tensor, mask: Tensor, embeds: Tensor, suffix: object | None,
                      pairs: PairPacking | None) -> Tensor:
        memory = self.writer(writer_state(state), state["memory"], embeds, mask)
        if suffix is not None:
            full_mask = torch.cat([mask.new_ones(mask.shape[0], self.tokens), mask], dim=1)
            logits = self.backbone.forward_prefixed(memory, suffix, full_mask).logits
        elif pairs is not None:
            logits = packed_prefixed_logits(self.backbone, memory, embeds, pairs)
        else:
            logits = prefixed_logits(self.backbone, memory, embeds, mask)
        # the last memory position predicts the first token; the last token predicts nothing
        return lm_loss_per_example(logits[:, self.tokens - 1 : -1], ids, mask)

    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        """Logits where position t predicts ids[t + 1] (the usual convention)."""
        context = context if self.writer.read_context else None
        context_emb = None if context is None else self.backbone.embed(context.ids)
        memory = self.writer(writer_state(state), state["memory"], context_emb, None if context is None else context.mask)
        return prefixed_logits(self.backbone, memory, self.backbone.embed(ids), mask)[:, self.tokens :]
