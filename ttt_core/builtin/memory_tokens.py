"""Baseline TTT: M memory token embeddings prefixed to the input (prompt tuning at test time)."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from ttt_core.builtin.configs import MemoryTokensConfig
from ttt_core.episode import Segment
from ttt_core.interfaces import InnerLearner, State
from ttt_core.model import lm_loss_per_example, prefixed_logits
from ttt_core.packing import packed_prefixed_logits, plan_pairs

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
        self.memory = nn.Parameter(torch.randn(config.tokens, backbone.dim) * config.init_std)

    def init_state(self, batch_size: int) -> State:
        state = {"memory": self.memory.unsqueeze(0).expand(batch_size, -1, -1)}
        state.update({WRITER + k: v for k, v in self.writer.init_state(batch_size).items()})
        return state

    def _run(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None) -> Tensor:
        """Logits over ``[memory; ids]``."""
        context_emb = None if context is None else self.backbone.embed(context.ids)
        context_mask = None if context is None else context.mask
        memory = self.writer(writer_state(state), state["memory"], context_emb, context_mask)
        # the inner loss runs on the context itself: embed it once, not once for the writer and again here
        if context is not None and ids is context.ids:
            packing = context.packing
            if packing is None and self.pack_pairs and not torch.compiler.is_compiling():
                packing = plan_pairs(context.mask, self.tokens)  # eager; a compiled step attaches it before tracing
            if packing is not None:
                return packed_prefixed_logits(self.backbone, memory, context_emb, packing)
            return prefixed_logits(self.backbone, memory, context_emb, mask)
        return prefixed_logits(self.backbone, memory, self.backbone.embed(ids), mask)

    def pack(self, segment: Segment, min_width: int = 0) -> Segment:
        """`segment` with its pair layout attached, rows a multiple of 8 and at least `min_width` wide
        (a compiled step passes the widest so far: static shapes); unchanged unless `pack_pairs`."""
        if not self.pack_pairs:
            return segment
        return attrs.evolve(segment, packing=plan_pairs(segment.mask, self.tokens, min_width, multiple=8))

    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        # the last memory position predicts the first token; the last token predicts nothing
        logits = self._run(state, segment.ids, segment.mask, segment)[:, self.tokens - 1 : -1]
        return lm_loss_per_example(logits, segment.ids, segment.mask)

    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        """Logits where position t predicts ids[t + 1] (the usual convention)."""
        return self._run(state, ids, mask, context if self.writer.read_context else None)[:, self.tokens :]
