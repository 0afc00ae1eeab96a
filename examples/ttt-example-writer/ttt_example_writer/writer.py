"""The writer itself; imported only when a recipe builds it."""

from __future__ import annotations

from torch import Tensor, nn

from ttt_core.interfaces import MemoryWriter, State


class ContextMeanWriter(nn.Module, MemoryWriter):
    def __init__(self, config, *, dim: int) -> None:
        super().__init__()
        self.scale = config.scale
        self.proj = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # starts as the identity writer

    def init_state(self, batch_size: int) -> State:
        return {}

    def forward(self, state: State, memory: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        if context is None:
            return memory
        if context_mask is None:
            mean = context.mean(dim=1)
        else:
            weights = context_mask.to(context.dtype).unsqueeze(-1)
            mean = (context * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return memory + self.scale * self.proj(mean).unsqueeze(1)
