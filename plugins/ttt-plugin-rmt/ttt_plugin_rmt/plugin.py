"""Registration with ttt-core (entry point `rmt` in the group `ttt`).

Imports no torch: the factories import the implementation when a component is built.
"""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl


@hookimpl
def ttt_register_components(registry: Any) -> None:
    pass  # rmt, rmt4 (ttt_plugin_rmt.rmt*), prmt4 (ttt_plugin_rmt.prmt4) register here
