"""The inner learner `none`: no fast weights, so reading is the plain backbone forward.

For tasks and backbones that need no test-time memory of the framework's own, e.g. language
modelling with `ttt_lm`, whose TTT layers train their fast weights inside the forward. The inner
loop is skipped (`MetaModel.adapt` returns an empty state unchanged). With `read_context` the read
sees the context before the query in one sequence: what carries it to the answer is the backbone's
own (the TTT layers' state in `ttt_lm`; plain attention in `llama`, the full-context control).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ttt_core.episode import Segment, gather_answer_logits, join_context
from ttt_core.interfaces import InnerLearner, State


class NoMemory(nn.Module, InnerLearner):
    def __init__(self, config, *, backbone: nn.Module, writer: nn.Module) -> None:
        super().__init__()
        if list(writer.parameters()) or writer.init_state(1):
            raise ValueError("inner learner 'none' has no memory to write; use the 'identity' writer")
        self.backbone = backbone
        self.read_context = config.read_context

    def init_state(self, batch_size: int) -> State:
        return {}

    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        return torch.zeros(segment.ids.shape[0], device=segment.ids.device)

    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        if not self.read_context:
            return self.backbone(self.backbone.embed(ids), mask).logits
        if context is None:
            raise ValueError("inner learner 'none' with read_context = true needs the context at the read; "
                             "this recurrence passes none")
        joined, joined_mask, index = join_context(context, ids, mask)
        logits = self.backbone(self.backbone.embed(joined), joined_mask).logits
        return gather_answer_logits(logits, index)
