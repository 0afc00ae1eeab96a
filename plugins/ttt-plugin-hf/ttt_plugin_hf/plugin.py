"""Registration with ttt-core (entry point `hf` in the group `ttt`).

Imports neither torch nor transformers: the factory imports them when a recipe builds the backbone.
"""

from __future__ import annotations

from typing import Any

from ttt_core import hookimpl

from ttt_plugin_hf.config import HFConfig


def hf_needs(config: HFConfig) -> dict[str, tuple[str, ...]]:
    """With tokenizer = "model" the task must run on the model's tokenizer."""
    return {"task": ("takes_tokenizer",)} if config.tokenizer == "model" else {}


@hookimpl
def ttt_register_components(registry: Any) -> None:
    # no layer_blocks: transformers' blocks are modules with their own forward, not functions of
    # stacked weights, so prmt4's diagonal batching is refused by validation
    registry.add(
        "backbone", "hf", config=HFConfig, factory="ttt_plugin_hf.backbone:build_hf",
        provides=("packed_rows", "weight_deltas"), needs=hf_needs,
        tokenizer="ttt_plugin_hf.tokenizer:model_tokenizer",
        description="a Hugging Face transformers causal LM (llama, mistral, qwen2, gpt_neox, gpt2): pretrained or from a config",
    )
