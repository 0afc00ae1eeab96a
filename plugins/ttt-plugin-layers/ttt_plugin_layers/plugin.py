"""Registration with ttt-core (entry point `layers` in the group `ttt`).

Imports no torch: the factories import the implementation when a component is built.
"""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl

from ttt_plugin_layers.config import TTTLMConfig, TTTMemoryConfig


def build_ttt_lm(config: TTTLMConfig, *, vocab_size: int, **_: Any) -> Any:
    from ttt_plugin_layers.components import TTTLMBackbone

    return TTTLMBackbone(config, vocab_size)


def build_ttt_linear(config: TTTMemoryConfig, *, backbone: Any, writer: Any, **_: Any) -> Any:
    from ttt_plugin_layers.components import TTTMemory

    return TTTMemory(config, "linear", backbone=backbone, writer=writer)


def build_ttt_mlp(config: TTTMemoryConfig, *, backbone: Any, writer: Any, **_: Any) -> Any:
    from ttt_plugin_layers.components import TTTMemory

    return TTTMemory(config, "mlp", backbone=backbone, writer=writer)


@hookimpl
def ttt_register_components(registry: Any) -> None:
    # ttt_lm runs one sequence per row (no packed_rows) and its TTT blocks by its own model (no
    # layer_blocks); its linear maps take per-example low-rank deltas (weight_deltas: LoRA memory)
    registry.add(
        "backbone", "ttt_lm", config=TTTLMConfig, factory=build_ttt_lm, aliases=("ttt_model",),
        provides=("weight_deltas",),
        description="TTT language model (Sun et al. 2024): TTT-Linear/MLP + SwiGLU blocks, transformer or mamba variant",
    )
    registry.add(
        "inner_learner", "ttt_linear", config=TTTMemoryConfig, factory=build_ttt_linear,
        description="TTT-Linear fast weights per head: written by the reconstruction loss, read by the queries",
    )
    registry.add(
        "inner_learner", "ttt_mlp", config=TTTMemoryConfig, factory=build_ttt_mlp,
        description="TTT-MLP fast weights per head: written by the reconstruction loss, read by the queries",
    )
