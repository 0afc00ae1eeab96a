"""Recipe options of the writers (`[memory.writer]`); no torch, so `ttt list` and `ttt validate` stay fast."""

from __future__ import annotations

from typing import Any

import attrs

from ttt_core.config import non_negative, one_of, positive

PROJECTIONS = ("q", "k", "v", "o")
ACTIVATIONS = ("gelu", "silu", "relu", "tanh")


def _projections(_instance: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    unknown = [name for name in value if name not in PROJECTIONS]
    if unknown or len(set(value)) != len(value):
        raise ValueError(f"option '{attribute.name}' takes distinct names among {', '.join(PROJECTIONS)}; got {list(value)}")


@attrs.define
class CrossAttentionConfig:
    """NeuralMemory: memory = mem + CrossAttn(mem, context), the projections fast weights per example.

    Without the context (a read with ``read_context = false``) the slots attend to themselves, so
    the adapted projections still act on the read memory."""

    heads: int = attrs.field(default=4, validator=positive)
    fast: tuple[str, ...] = attrs.field(default=PROJECTIONS, converter=tuple, validator=_projections)
    """Which of the projections q, k, v, o are per-example fast weights (the others are meta-learned only)."""
    norm: str = attrs.field(default="rms", validator=one_of("rms", "none"))
    """RMS norm of the memory and the context before projecting them."""
    rounds: int = attrs.field(default=0, validator=non_negative)
    """Self-attention rounds over the slots after the write (meta-learned weights)."""
    init_out_std: float = attrs.field(default=1e-3, validator=positive)
    """Std of the output projection's initial value: small, so training starts near the identity writer."""
    read_context: bool = False
    """Whether the read writes from the context again; false: the context reaches the query only
    through the adapted state (memory tokens and projections)."""


@attrs.define
class MLPWriterConfig:
    """MemoryMLP: memory = mem + gate * MLP(masked mean of the context), its weights fast per example.

    ``slot_input``: each slot's MLP input is [its own memory token; the context mean], so the slots
    receive different writes (false: the deck's form, one vector added to every slot). Without the
    context (``read_context = false`` at the read) the mean is over the memory slots."""

    hidden: int = attrs.field(default=256, validator=positive)
    activation: str = attrs.field(default="gelu", validator=one_of(*ACTIVATIONS))
    slot_input: bool = True
    norm: str = attrs.field(default="rms", validator=one_of("rms", "none"))
    gate_init: float = attrs.field(default=1.0)
    """Initial value of the per-channel gate (meta-learned)."""
    init_out_std: float = attrs.field(default=1e-3, validator=positive)
    """Std of the output layer's initial value: small, so training starts near the identity writer."""
    read_context: bool = False
    """Whether the read writes from the context again (see `CrossAttentionConfig.read_context`)."""
