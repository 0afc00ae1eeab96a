"""Configs of the TTT layers and of the TTT language model.

Plain attrs classes with no torch import, so that registering them with the core (and validating a
recipe) stays cheap. Field names follow the paper's vocabulary; `convert.config_from_reference` maps
the official `TTTConfig` onto them.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import validators as v

INNER_KINDS = ("linear", "mlp")
KERNELS = ("auto", "torch", "triton")


def _positive(_inst: Any, attr: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class TTTLayerConfig:
    """One TTT sequence-mixing layer (TTT-Linear when `inner="linear"`, TTT-MLP when `"mlp"`).

    The "transformer" backbone of the paper is the default (separate q/k projections, no gate); the
    "mamba" backbone is `share_qk=True, use_gate=True` (the pre-conv sub-block lives in the model).
    """

    hidden_size: int = attrs.field(default=768, validator=_positive)
    num_heads: int = attrs.field(default=12, validator=_positive)
    inner: str = attrs.field(default="linear", validator=v.in_(INNER_KINDS))
    mini_batch_size: int = attrs.field(default=16, validator=_positive)
    base_lr: float = attrs.field(default=1.0, validator=_positive)
    share_qk: bool = False
    use_gate: bool = False
    conv_kernel: int = attrs.field(default=4, validator=_positive)
    rope_theta: float = attrs.field(default=10000.0, validator=_positive)
    ttt_norm_eps: float = 1e-6
    post_norm_eps: float = 1e-6
    mlp_expansion: int = attrs.field(default=4, validator=_positive)
    init_std: float = 0.02
    kernel: str = attrs.field(default="auto", validator=v.in_(KERNELS))

    def __attrs_post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for the rotary embedding")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


_LAYER_FIELDS = tuple(a.name for a in attrs.fields(TTTLayerConfig))


@attrs.frozen(kw_only=True)
class TTTModelConfig:
    """The paper's language model: blocks of [pre-conv] + TTT layer + SwiGLU MLP, RMSNorm, tied head.

    Flat on purpose, so that a recipe table sets any field directly. The mamba variant is
    `share_qk=True, use_gate=True, pre_conv=True`.
    """

    vocab_size: int = attrs.field(default=32000, validator=_positive)
    hidden_size: int = attrs.field(default=768, validator=_positive)
    intermediate_size: int = attrs.field(default=2048, validator=_positive)
    num_layers: int = attrs.field(default=12, validator=_positive)
    num_heads: int = attrs.field(default=12, validator=_positive)
    inner: str = attrs.field(default="linear", validator=v.in_(INNER_KINDS))
    mini_batch_size: int = attrs.field(default=16, validator=_positive)
    base_lr: float = attrs.field(default=1.0, validator=_positive)
    share_qk: bool = False
    use_gate: bool = False
    pre_conv: bool = False
    conv_kernel: int = attrs.field(default=4, validator=_positive)
    rope_theta: float = attrs.field(default=10000.0, validator=_positive)
    ttt_norm_eps: float = 1e-6
    post_norm_eps: float = 1e-6
    mlp_expansion: int = attrs.field(default=4, validator=_positive)
    rms_norm_eps: float = 1e-6
    rms_norm_fp32: bool = True  # RMSNorm in float32 for every input dtype, as the reference does
    tie_embeddings: bool = True
    init_std: float = 0.02
    kernel: str = attrs.field(default="auto", validator=v.in_(KERNELS))

    def layer_config(self) -> TTTLayerConfig:
        """The config of every TTT layer of the model."""
        return TTTLayerConfig(**{name: getattr(self, name) for name in _LAYER_FIELDS})

    def __attrs_post_init__(self) -> None:
        self.layer_config()  # validates head sizes early, with the layer's message
