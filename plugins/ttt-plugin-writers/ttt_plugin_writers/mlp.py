"""MemoryMLP: memory = mem + gate * MLP(masked mean of the context embeddings).

The MLP's weights and biases are per-example fast weights with a meta-learned initial value,
adapted by the inner loop together with the memory tokens; the mean leaves padding out. With
``slot_input`` each slot's MLP sees [its own token; the context mean], so slots get different writes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_core.interfaces import State
from ttt_plugin_writers.fast_weights import FastWeightWriter, FastWeights, add_bias, masked_mean, rms_norm
from ttt_plugin_writers.writer_config import MLPWriterConfig

ACTIVATION = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh}


class MLPWriter(FastWeightWriter):
    def __init__(self, config: MLPWriterConfig, *, dim: int) -> None:
        super().__init__()
        self.read_context = config.read_context
        self.slot_input = config.slot_input
        self.activation = ACTIVATION[config.activation]
        inputs = 2 * dim if config.slot_input else dim
        initial = {
            "w_in": torch.randn(inputs, config.hidden) / math.sqrt(inputs),
            "b_in": torch.zeros(config.hidden),
            "w_out": torch.randn(config.hidden, dim) * config.init_out_std,
            "b_out": torch.zeros(dim),
        }
        self.weights = FastWeights(initial, tuple(initial))
        self.gate = nn.Parameter(torch.full((dim,), float(config.gate_init)))
        self.norm = nn.Parameter(torch.ones(dim)) if config.norm == "rms" else None

    def forward(self, state: State, memory: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        w = self.weights.resolve(state)
        if context is None:
            context, context_mask = memory, None
        summary = rms_norm(masked_mean(context, context_mask), self.norm).unsqueeze(1)  # [B, 1, d]
        if self.slot_input:
            summary = torch.cat([rms_norm(memory, self.norm), summary.expand_as(memory)], dim=-1)
        hidden = self.activation(add_bias(summary @ w["w_in"], w["b_in"]))
        return memory + self.gate * add_bias(hidden @ w["w_out"], w["b_out"])
