"""Conversion between the official implementation (`test-time-training/ttt-lm-pytorch`) and ours.

Names differ (`learnable_token_idx` -> `token_scale`, `model.layers.i.seq_modeling_block` ->
`blocks.i.ttt`, ...) and so do three layouts: the per-head lr gate is one `nn.Linear(hidden, heads)`
here (`[H, 1, C]` -> `[H, C]`, `[H, 1]` -> `[H]`) and the fast-weight biases drop their singleton
axis (`[H, 1, d]` -> `[H, d]`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ttt_plugin_layers.config import TTTLayerConfig, TTTModelConfig

# reference layer name -> (our name, reference layout -> ours, ours -> reference layout)
_LAYER_RENAMES = {
    "learnable_token_idx": "token_scale",
    "learnable_ttt_lr_weight": "lr_proj.weight",
    "learnable_ttt_lr_bias": "lr_proj.bias",
}
_SQUEEZED = {"learnable_ttt_lr_weight", "learnable_ttt_lr_bias", "b1", "b2"}  # drop axis 1
_OURS_TO_REF_LAYER = {v: k for k, v in _LAYER_RENAMES.items()}

_MODEL_RULES = [  # (reference regex, our template); the layer part is converted by the layer rules
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.seq_norm\.weight", r"blocks.\1.seq_norm.weight"),
    (r"model\.layers\.(\d+)\.ffn_norm\.weight", r"blocks.\1.ffn_norm.weight"),
    (r"model\.layers\.(\d+)\.mlp\.(\w+)\.weight", r"blocks.\1.mlp.\2.weight"),
    (r"model\.layers\.(\d+)\.conv\.norm\.weight", r"blocks.\1.pre_conv.norm.weight"),
    (r"model\.layers\.(\d+)\.conv\.conv\.(\w+)", r"blocks.\1.pre_conv.conv.\2"),
]
_LAYER_PREFIX = re.compile(r"model\.layers\.(\d+)\.seq_modeling_block\.(.+)")
_OUR_LAYER_PREFIX = re.compile(r"blocks\.(\d+)\.ttt\.(.+)")


def _layer_to_ours(name: str, t: Tensor) -> tuple[str, Tensor]:
    return _LAYER_RENAMES.get(name, name), (t.squeeze(1) if name in _SQUEEZED else t)


def _layer_to_ref(name: str, t: Tensor) -> tuple[str, Tensor]:
    ref = _OURS_TO_REF_LAYER.get(name, name)
    return ref, (t.unsqueeze(1) if ref in _SQUEEZED else t)


def is_model_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("model.", "blocks.", "embed.")) for k in state_dict)


def from_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A reference `TTTLinear`/`TTTMLP` or `TTTForCausalLM` state dict in our names and layout."""
    out: dict[str, Tensor] = {}
    for name, t in state_dict.items():
        if not is_model_state_dict(state_dict):
            key, val = _layer_to_ours(name, t)
        elif m := _LAYER_PREFIX.fullmatch(name):
            sub, val = _layer_to_ours(m.group(2), t)
            key = f"blocks.{m.group(1)}.ttt.{sub}"
        else:
            for pattern, template in _MODEL_RULES:
                if re.fullmatch(pattern, name):
                    key, val = re.sub(pattern, template, name), t
                    break
            else:
                raise KeyError(f"unknown parameter of the reference model: {name!r}")
        out[key] = val
    return out


def to_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `from_reference_state_dict` (used to compare gradients name by name)."""
    out: dict[str, Tensor] = {}
    for name, t in state_dict.items():
        if not is_model_state_dict(state_dict):
            key, val = _layer_to_ref(name, t)
        elif m := _OUR_LAYER_PREFIX.fullmatch(name):
            sub, val = _layer_to_ref(m.group(2), t)
            key = f"model.layers.{m.group(1)}.seq_modeling_block.{sub}"
        else:
            key, val = _model_name_to_ref(name), t
        out[key] = val
    return out


def _model_name_to_ref(name: str) -> str:
    fixed = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m is None:
        raise KeyError(f"unknown parameter: {name!r}")
    i, rest = m.groups()
    rest = rest.replace("pre_conv.", "conv.", 1) if rest.startswith("pre_conv.") else rest
    return f"model.layers.{i}.{rest}"


def config_from_reference(config: Mapping[str, Any], layer_only: bool = False) -> TTTLayerConfig | TTTModelConfig:
    """Our config from a reference `TTTConfig` dict (or the layer fixtures' reduced config)."""
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only the SwiGLU (silu) MLP is supported, got hidden_act={config['hidden_act']!r}")
    common = dict(
        hidden_size=config["hidden_size"],
        num_heads=config.get("num_heads", config.get("num_attention_heads")),
        mini_batch_size=config.get("mini_batch_size", 16),
        base_lr=config.get("ttt_base_lr", 1.0),
        share_qk=config.get("share_qk", False),
        use_gate=config.get("use_gate", False),
        conv_kernel=config.get("conv_kernel", 4),
        rope_theta=config.get("rope_theta", 10000.0),
        ttt_norm_eps=config.get("ttt_norm_eps", 1e-6),
    )
    if "ttt_layer_type" in config:
        common["inner"] = config["ttt_layer_type"]
    if layer_only:
        return TTTLayerConfig(**common)
    return TTTModelConfig(
        **common,
        vocab_size=config["vocab_size"],
        intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"],
        pre_conv=config.get("pre_conv", False),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        tie_embeddings=config.get("tie_word_embeddings", True),
        init_std=config.get("initializer_range", 0.02),
    )


def load_reference_layer(config: Mapping[str, Any], state_dict: Mapping[str, Tensor], inner: str,
                         dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Our `TTTLayer` holding the weights of a reference layer."""
    from attrs import evolve

    from ttt_plugin_layers.layer import TTTLayer

    layer = TTTLayer(evolve(config_from_reference(config, layer_only=True), inner=inner)).to(dtype)
    layer.load_state_dict(from_reference_state_dict(state_dict))
    return layer


def load_reference_model(config: Mapping[str, Any], state_dict: Mapping[str, Tensor],
                         dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Our `TTTModel` holding the weights of a reference `TTTForCausalLM`."""
    from ttt_plugin_layers.model import TTTModel

    model = TTTModel(config_from_reference(config)).to(dtype)
    model.load_state_dict(from_reference_state_dict(state_dict))
    return model
