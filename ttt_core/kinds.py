"""The component kinds: one table that the registry, recipes, validation and the builder all read.

Adding a kind means adding a row here (and its contract in `ttt_core.interfaces`). Imports nothing
heavy: `ttt validate` reads it without torch.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Kind:
    name: str
    """The registry kind (`registry.add(kind, ...)`, `ttt list KIND`)."""
    slot: str
    """The recipe table that picks a component of this kind (dotted: `memory.learner`)."""
    default: str | None
    """The component a recipe gets when it leaves the slot out; None: the slot is required."""
    unused: str | None = None
    """The component the builder puts in the slot when the recurrence does not use it (see
    `Component.slots`); None: every recurrence uses this slot."""
    description: str = ""


KINDS_TABLE: tuple[Kind, ...] = (
    Kind("task", "task", None, description="data, tokenizer, episodes and metrics"),
    Kind("backbone", "backbone", None, description="the sequence model the memory is read through"),
    Kind("inner_learner", "memory.learner", None, unused="none",
         description="fast weights with a meta-learned initial value, adapted per example"),
    Kind("memory_writer", "memory.writer", "identity", unused="identity",
         description="turns fast state plus context into the memory the backbone reads"),
    Kind("recurrence", "recurrence", "single", description="how the context is cut into segments and memory carried"),
    Kind("outer_optimizer", "optimizer", "adamw", description="the meta-learner: optimiser, schedule, clipping"),
)

KINDS: tuple[str, ...] = tuple(kind.name for kind in KINDS_TABLE)
BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS_TABLE}
BY_SLOT: dict[str, Kind] = {kind.slot: kind for kind in KINDS_TABLE}
OPTIONAL_SLOTS: tuple[str, ...] = tuple(kind.slot for kind in KINDS_TABLE if kind.unused is not None)
"""Slots a recurrence may leave unused (`Component.slots`)."""
