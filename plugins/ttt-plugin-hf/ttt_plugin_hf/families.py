"""Where each supported transformers family keeps what the `hf` backbone reaches into. No torch here:
recipe validation reads `FAMILIES` to refuse an unsupported `model_type` before anything is loaded.

A family is a layout of module names, not a model: every `model_type` below loads through
`AutoModelForCausalLM` and runs through its own transformers code. The backbone needs from a family
only the blocks (per-layer hidden states, rmt/rmt4), the final norm (``head``) and the linear maps a
per-example LoRA delta may target (`WeightDeltas`).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Delta:
    """A linear map a delta may target: its module path inside a block, and how the rows of a fused
    q/k/v output are laid out (``"qkv"``: [q; k; v] blocks, as the `WeightDeltas` name ``wqkv`` means;
    ``"heads"``: per head [q_h; k_h; v_h], GPT-NeoX's ``query_key_value``, permuted to [q; k; v])."""

    module: str
    rows: str = "qkv"


@attrs.frozen
class Family:
    """Attribute names: the base model on the causal LM, the blocks and the final norm on the base
    model, and the delta targets by the names `WeightDeltas` uses (``layers.<i>.<name>``)."""

    base: str
    layers: str
    final_norm: str
    deltas: dict[str, Delta]


_LLAMA = Family(
    base="model", layers="layers", final_norm="norm",
    deltas={
        "q": Delta("self_attn.q_proj"), "k": Delta("self_attn.k_proj"), "v": Delta("self_attn.v_proj"),
        "o": Delta("self_attn.o_proj"), "gate": Delta("mlp.gate_proj"), "up": Delta("mlp.up_proj"),
        "down": Delta("mlp.down_proj"),
    },
)

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt_neox": Family(
        base="gpt_neox", layers="layers", final_norm="final_layer_norm",
        deltas={"wqkv": Delta("attention.query_key_value", rows="heads"), "o": Delta("attention.dense"),
                "up": Delta("mlp.dense_h_to_4h"), "down": Delta("mlp.dense_4h_to_h")},
    ),
    "gpt2": Family(
        base="transformer", layers="h", final_norm="ln_f",
        deltas={"wqkv": Delta("attn.c_attn"), "o": Delta("attn.c_proj"), "up": Delta("mlp.c_fc"),
                "down": Delta("mlp.c_proj")},
    ),
}
"""transformers `model_type` -> its layout. Llama's layout also fits mistral and qwen2 (tested)."""


def unsupported(model_type: object) -> str | None:
    """Why `model_type` cannot be an `hf` backbone, or None if it can."""
    if model_type in FAMILIES:
        return None
    return f"model_type '{model_type}' is not supported by the hf backbone; supported: {', '.join(sorted(FAMILIES))}"
