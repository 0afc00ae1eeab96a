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
    # Long inputs run through the layer `chunk_size` tokens at a time, the state carried between
    # chunks (exactly the same result): temporaries stay small enough for the allocator to reuse
    # and for the caches, which keeps the time linear in length on CPU. 0 = one pass.
    chunk_size: int = 2048

    def __attrs_post_init__(self) -> None:
        if self.chunk_size % self.mini_batch_size:
            raise ValueError(f"chunk_size {self.chunk_size} must be a multiple of mini_batch_size {self.mini_batch_size}")
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
    chunk_size: int = 2048

    def layer_config(self) -> TTTLayerConfig:
        """The config of every TTT layer of the model."""
        return TTTLayerConfig(**{name: getattr(self, name) for name in _LAYER_FIELDS})

    def __attrs_post_init__(self) -> None:
        self.layer_config()  # validates head sizes early, with the layer's message


# ---------------------------------------------------------------------------------------------
# Recipe-facing configs of the registered components (names follow the core's llama backbone,
# so that a TTT LM and a transformer of equal size are written alike).

VARIANTS = ("transformer", "mamba")


@attrs.frozen(kw_only=True)
class TTTLMConfig:
    """Backbone `ttt_lm`: the paper's LM, blocks of TTT layer + SwiGLU; vocabulary from the task.

    `variant = "mamba"` adds the shared q/k projection with causal convs, the output gate and the
    pre-conv sub-block; `"transformer"` is the plain pre-norm block.
    """

    layers: int = attrs.field(default=4, validator=_positive)
    dim: int = attrs.field(default=128, validator=_positive)
    heads: int = attrs.field(default=4, validator=_positive)
    mlp_ratio: float = attrs.field(default=4.0, validator=_positive)
    inner: str = attrs.field(default="linear", validator=v.in_(INNER_KINDS))
    variant: str = attrs.field(default="transformer", validator=v.in_(VARIANTS))
    mini_batch_size: int = attrs.field(default=16, validator=_positive)
    base_lr: float = attrs.field(default=1.0, validator=_positive)
    rope_theta: float = attrs.field(default=10000.0, validator=_positive)
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    init_std: float = 0.02
    kernel: str = attrs.field(default="auto", validator=v.in_(KERNELS))

    def __attrs_post_init__(self) -> None:
        self.model_config(1)  # validates head sizes

    def model_config(self, vocab_size: int) -> TTTModelConfig:
        mamba = self.variant == "mamba"
        return TTTModelConfig(
            vocab_size=vocab_size, hidden_size=self.dim, intermediate_size=max(1, int(self.mlp_ratio * self.dim)),
            num_layers=self.layers, num_heads=self.heads, inner=self.inner, mini_batch_size=self.mini_batch_size,
            base_lr=self.base_lr, share_qk=mamba, use_gate=mamba, pre_conv=mamba, rope_theta=self.rope_theta,
            rms_norm_eps=self.norm_eps, tie_embeddings=self.tie_embeddings, init_std=self.init_std,
            kernel=self.kernel,
        )


@attrs.frozen(kw_only=True)
class TTTMemoryConfig:
    """Inner learners `ttt_linear` / `ttt_mlp`: a TTT layer's inner model as the memory.

    The fast weights (per head) are written by the core's inner loop on the context (loss: the TTT
    reconstruction loss of `v - k` from `k` through a per-head LayerNorm, weighted per token by the
    learned lr gate) and read by the query tokens (`q + LN(f(q))`), whose readout is added to their
    embeddings before the backbone.
    """

    heads: int = attrs.field(default=4, validator=_positive)
    base_lr: float = attrs.field(default=1.0, validator=_positive)
    mlp_expansion: int = attrs.field(default=4, validator=_positive)
    ttt_norm_eps: float = 1e-6
    init_std: float = 0.02
