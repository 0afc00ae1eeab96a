"""The identity writer: the memory is the fast state itself."""

from __future__ import annotations

from torch import Tensor, nn

from ttt_core.interfaces import MemoryWriter, State


class IdentityWriter(nn.Module, MemoryWriter):
    def __init__(self, config, *, dim: int) -> None:
        super().__init__()

    def init_state(self, batch_size: int) -> State:
        return {}

    def forward(self, state: State, memory: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        return memory
