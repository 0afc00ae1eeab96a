"""Entry-point module: cheap to import (no torch), it only registers the component."""

from __future__ import annotations

import attrs

from ttt_core import hookimpl


@attrs.define
class ContextMeanConfig:
    """memory = mem + scale * W(mean over time of the context embeddings)."""

    scale: float = 1.0


@hookimpl
def ttt_register_components(registry) -> None:
    registry.add(
        "memory_writer",
        "context_mean",
        config=ContextMeanConfig,
        factory="ttt_example_writer.writer:ContextMeanWriter",
        description="adds a learned projection of the context mean to each memory token",
    )
