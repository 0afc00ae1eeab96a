"""TTT-Linear and TTT-MLP (Sun et al., 2024, "Learning to (Learn at Test Time)") for `ttt`.

Importing this package imports no torch: the configs are plain attrs classes, and the torch modules
are loaded on first attribute access, so that the core can register the plugin cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

from ttt_plugin_layers.config import TTTLayerConfig, TTTModelConfig

__version__ = "0.1.0"

_LAZY = {
    "TTTLayer": "layer",
    "TTTLinear": "layer",
    "TTTMLP": "layer",
    "LayerState": "layer",
    "FastWeights": "inner",
    "TTTModel": "model",
    "TTTCache": "model",
    "from_reference_state_dict": "convert",
    "to_reference_state_dict": "convert",
    "config_from_reference": "convert",
    "load_reference_layer": "convert",
    "load_reference_model": "convert",
}

__all__ = ["TTTLayerConfig", "TTTModelConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ttt_plugin_layers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ttt_plugin_layers' has no attribute {name!r}")
