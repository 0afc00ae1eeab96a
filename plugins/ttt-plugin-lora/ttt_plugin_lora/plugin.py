"""Registration with ttt-core (entry point `lora` in the group `ttt`).

Imports no torch: the factory imports the implementation when the learner is built.
"""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl

from ttt_plugin_lora.lora_config import LoRAConfig


@hookimpl
def ttt_register_components(registry: Any) -> None:
    registry.add(
        "inner_learner", "lora", config=LoRAConfig, factory="ttt_plugin_lora.lora:build_lora",
        needs={"backbone": ("weight_deltas",)},
        description="LoRA adapters (per-example A, B on chosen q/k/v/o/gate/up/down maps) adapted on the context's LM loss",
    )
