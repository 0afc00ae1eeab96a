"""Registration with ttt-core (entry point `rmt` in the group `ttt`).

Imports no torch: the factories import the implementation when a component is built.
"""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl
from ttt_plugin_rmt.prmt4_config import PRMT4Config


@hookimpl
def ttt_register_components(registry: Any) -> None:
    # rmt, rmt4 (ttt_plugin_rmt.rmt*) register here
    registry.add(
        "recurrence",
        "prmt4",
        config=PRMT4Config,
        factory="ttt_plugin_rmt.prmt4:PRMT4",
        description="layer-wise memory adapted by reconstruction (parallel RMT4), diagonal batching",
    )
