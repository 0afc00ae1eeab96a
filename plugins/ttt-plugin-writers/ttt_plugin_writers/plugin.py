"""Registration with ttt-core (entry point `writers` in the group `ttt`); imports no torch."""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl

from ttt_plugin_writers.writer_config import CrossAttentionConfig, MLPWriterConfig


@hookimpl
def ttt_register_components(registry: Any) -> None:
    registry.add(
        "memory_writer", "cross_attention", config=CrossAttentionConfig, aliases=("neural_memory",),
        factory="ttt_plugin_writers.cross_attention:CrossAttentionWriter",
        description="NeuralMemory: the memory tokens cross-attend to the context; projections are per-example fast weights",
    )
    registry.add(
        "memory_writer", "mlp", config=MLPWriterConfig, aliases=("memory_mlp",),
        factory="ttt_plugin_writers.mlp:MLPWriter",
        description="MemoryMLP: adds a gated MLP of the masked context mean to each slot; MLP weights are per-example fast weights",
    )
