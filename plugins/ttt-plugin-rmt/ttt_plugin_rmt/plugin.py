"""Registration with ttt-core (entry point `rmt` in the group `ttt`).

Imports no torch: the factories import the implementation when a component is built.
"""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl

from ttt_plugin_rmt.prmt4_config import PRMT4Config
from ttt_plugin_rmt.rmt_config import RMT4Config, RMTConfig


def build_rmt(config: RMTConfig, *, backbone: Any, **_: Any) -> Any:
    from ttt_plugin_rmt.rmt import RMT

    return RMT(config, backbone=backbone)


def build_rmt4(config: RMT4Config, **_: Any) -> Any:
    from ttt_plugin_rmt.rmt4 import RMT4

    return RMT4(config)


@hookimpl
def ttt_register_components(registry: Any) -> None:
    registry.add(
        "recurrence", "rmt", config=RMTConfig, factory=build_rmt, slots=(),
        description="Recurrent Memory Transformer: memory read/written by the forward pass, truncated BPTT (no inner loop)",
    )
    registry.add(
        "recurrence", "rmt4", config=RMT4Config, factory=build_rmt4,
        description="RMT + TTT: the inner loop adapts the memory on each segment and carries it on; the query only reads",
    )
    registry.add(
        "recurrence", "prmt4", config=PRMT4Config, factory="ttt_plugin_rmt.prmt4:PRMT4",
        slots=(), needs={"backbone": ("layer_blocks",)},
        description="layer-wise memory adapted by reconstruction (parallel RMT4), diagonal batching",
    )
