"""Config of the `lora` inner learner. No torch here: recipes validate without building a model."""

from __future__ import annotations

from typing import Any

import attrs
from ttt_core.config import non_negative, one_of, positive

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
"""The linear maps of a LLaMA-style block an adapter may target (attention q, k, v, o; SwiGLU gate, up, down)."""


def _roles(_instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    if not value:
        raise ValueError(f"option '{attribute.name}' must name at least one of {', '.join(ROLES)}")
    unknown = [role for role in value if role not in ROLES]
    if unknown:
        raise ValueError(f"option '{attribute.name}': unknown role {unknown[0]!r}; roles: {', '.join(ROLES)}")
    if len(set(value)) != len(value):
        raise ValueError(f"option '{attribute.name}' names a role twice: {value}")


def _layers(_instance: Any, attribute: attrs.Attribute, value: list[int] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError(f"option '{attribute.name}' must name at least one layer (leave it out for all)")
    if any(layer < 0 for layer in value) or len(set(value)) != len(value):
        raise ValueError(f"option '{attribute.name}' must hold distinct layer indices >= 0; got {value}")


@attrs.define
class LoRAConfig:
    """Per-example low-rank adapters ``W + (alpha / rank) B A`` on chosen linear maps of the backbone,
    adapted on the context's next-token loss; the query reads through the adapted backbone."""

    targets: list[str] = attrs.field(factory=lambda: ["q", "v"], validator=_roles)
    """Roles adapted in every chosen layer: q, k, v, o, gate, up, down."""
    layers: list[int] | None = attrs.field(default=None, validator=_layers)
    """Block indices that get adapters; None: every block."""
    rank: int = attrs.field(default=4, validator=positive)
    alpha: float = attrs.field(default=4.0, validator=non_negative)
    """The delta is scaled by alpha / rank (peft's `lora_alpha`); 0 leaves the backbone alone."""
    init: str = attrs.field(default="balanced", validator=one_of("balanced", "lora"))
    """balanced: A and B both N(0, init_std), so the first inner step moves both (each one's gradient is
    the other times the weight's gradient); lora: A N(0, init_std), B = 0 (peft's init: the initial
    model is the backbone, but a first inner step moves B only)."""
    init_std: float = attrs.field(default=0.05, validator=positive)
    tokens: int = attrs.field(default=0, validator=non_negative)
    """Memory tokens prefixed to the input and adapted together with the adapters (0: none)."""
    token_init_std: float = attrs.field(default=0.02, validator=positive)

