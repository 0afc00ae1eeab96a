"""Configs of the built-in components. No torch here: recipes validate without building models."""

from __future__ import annotations

import attrs

from ttt_core.config import in_range, non_negative, one_of, positive


def _divides_dim(instance: "LlamaConfig", _attribute: attrs.Attribute, heads: int) -> None:
    if heads <= 0:
        raise ValueError(f"option 'heads' must be > 0; got {heads}")
    if instance.dim % heads:
        raise ValueError(f"option 'dim' ({instance.dim}) must be divisible by 'heads' ({heads})")


@attrs.define
class LlamaConfig:
    """Decoder-only transformer: RMSNorm, RoPE, SwiGLU, causal self-attention."""

    layers: int = attrs.field(default=4, validator=positive)
    dim: int = attrs.field(default=128, validator=positive)
    heads: int = attrs.field(default=4, validator=_divides_dim)
    mlp_ratio: float = attrs.field(default=4.0, validator=positive)
    rope_theta: float = attrs.field(default=10000.0, validator=positive)
    norm_eps: float = attrs.field(default=1e-6, validator=positive)
    tie_embeddings: bool = False

    def __attrs_post_init__(self) -> None:
        if self.head_dim % 2:
            raise ValueError(f"option 'dim' / 'heads' = {self.head_dim} must be even for RoPE")
        if self.hidden_dim < 1:
            raise ValueError(f"option 'mlp_ratio' ({self.mlp_ratio}) gives an empty MLP at dim {self.dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden_dim(self) -> int:
        return int(self.mlp_ratio * self.dim)


@attrs.define
class MemoryTokensConfig:
    """M memory token embeddings prefixed to the input, adapted on the LM loss of the context."""

    tokens: int = attrs.field(default=8, validator=positive)
    init_std: float = attrs.field(default=0.02, validator=positive)
    # the context pass on two examples per row (ttt_core.packing): less padding, same results up to
    # float rounding; needs a backbone whose forward takes `positions` and `segments` (llama does)
    pack_pairs: bool = False
    # the context pass in `length_buckets` groups of examples sorted by length, each run only as wide
    # as its longest (ttt_core.packing): less padding and narrower attention, same results up to float
    # rounding, any backbone; 1 = off; not together with pack_pairs
    length_buckets: int = attrs.field(default=1, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.pack_pairs and self.length_buckets > 1:
            raise ValueError("options 'pack_pairs' and 'length_buckets' both lay out the context pass: choose one")


@attrs.define
class NoMemoryConfig:
    """No fast weights: the backbone alone (plain language models, or TTT layers inside the backbone)."""

    read_context: bool = False
    """The read runs on [context; query] as one sequence per example: the backbone's own mechanism carries the context to the answer (a ttt_lm's TTT layers; with attention, the full-context control)."""


@attrs.define
class IdentityWriterConfig:
    """The memory is the fast state itself."""


@attrs.define
class SingleConfig:
    """The whole context is one segment."""

    split: str = attrs.field(default="whole", validator=one_of("whole", "segments"))
    """whole: adapt once on the full context; segments: one inner loop per task segment, state carried."""


def _betas(_instance: "AdamWConfig", _attribute: attrs.Attribute, betas: tuple[float, float]) -> None:
    for name, beta in zip(("beta1", "beta2"), betas):
        if not 0.0 <= beta < 1.0:  # also refuses nan and inf
            raise ValueError(f"option 'betas': {name} must be in [0, 1); got {beta}")


@attrs.define
class AdamWConfig:
    """AdamW with warmup then a constant or cosine schedule, per-group learning rates, clipping."""

    lr: float = attrs.field(default=1e-4, validator=positive)
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), validator=_betas)
    weight_decay: float = attrs.field(default=0.01, validator=non_negative)
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    schedule: str = attrs.field(default="constant", validator=one_of("constant", "cosine"))
    min_lr_ratio: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    clip_norm: float | None = attrs.field(default=1.0, validator=positive)
    backbone_lr: float | None = attrs.field(default=None, validator=positive)
    memory_lr: float | None = attrs.field(default=None, validator=positive)
    """Learning rate of the fast weights' initial values (default: lr)."""
    meta_lr: float | None = attrs.field(default=None, validator=positive)
    """Learning rate of meta-parameters such as inner learning rates (default: lr)."""
