"""Turn a validated recipe into live objects, in the order their contexts require.

A task that takes a tokenizer (`takes_tokenizer`) gets the one the backbone's model brings, when its
registration supplies one (`task_tokenizer`); the backbone is then built with that vocabulary.

The builder fills an optional slot the recipe leaves out (a recurrence that does not use it:
`Component.slots`) with the kinds table's `unused` component, checks every built component against
the capabilities its registration declares (`provides`) and those the other components need of it
(`needs`), and turns an allocation failure (a width too large for memory) into one line naming the
slot.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from ttt_core.errors import TTTError
from ttt_core.interfaces import CAPABILITIES, IndexedTask, TextTokenizer, missing_capability
from ttt_core.kinds import BY_SLOT
from ttt_core.model import MetaModel
from ttt_core.recipe import ComponentSpec, Recipe
from ttt_core.registry import Registry


@attrs.define
class Built:
    task: object
    model: MetaModel
    optimizer: object


def _is_allocation_failure(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
    )


@contextlib.contextmanager
def _allocating(what: str) -> Iterator[None]:
    """Turn running out of memory while building `what` into one line."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not _is_allocation_failure(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
        first = re.sub(r"^\[enforce fail at [^\]]*\] err == 0\. ", "", first)  # torch's CPU allocator prefix
        raise TTTError(f"{what}: ran out of memory while building it ({first}); is a width or size too large?") from None


def _spec_label(spec: ComponentSpec) -> str:
    return f"[{spec.slot}] {spec.component.kind.replace('_', ' ')} '{spec.name}'"


def component_specs(recipe: Recipe, registry: Registry | None = None) -> dict[str, ComponentSpec]:
    """The recipe's components, every optional slot it leaves out filled with the kinds table's
    `unused` component (its default config)."""
    specs = dict(recipe.components)
    for slot, kind in BY_SLOT.items():
        if slot in specs or kind.unused is None:
            continue
        if registry is None:
            from ttt_core.plugins import default_host

            registry = default_host().registry
        component = registry[kind.name].get(kind.unused)
        specs[slot] = ComponentSpec(slot=slot, component=component, config=component.config())
    return specs


def check_capabilities(slot: str, built: Any, specs: dict[str, ComponentSpec]) -> None:
    """`built` (the component in `slot`) has what its registration declares and what the other
    components need of it; one line naming the component and the capability otherwise."""
    spec = specs[slot]
    for capability in spec.component.provides:
        if capability not in CAPABILITIES:
            raise TTTError(f"{_spec_label(spec)} declares unknown capability '{capability}'; known: {', '.join(CAPABILITIES)}")
        lacking = missing_capability(built, capability)
        if lacking is not None:
            raise TTTError(f"{_spec_label(spec)} declares capability '{capability}' but lacks it: {lacking}")
    for other in specs.values():
        for capability in other.component.needs_for(other.config).get(slot, ()):
            if capability not in CAPABILITIES:
                raise TTTError(f"{_spec_label(other)} needs unknown capability '{capability}'; known: {', '.join(CAPABILITIES)}")
            lacking = missing_capability(built, capability)
            if lacking is not None:
                raise TTTError(f"{_spec_label(other)} needs capability '{capability}' of the {slot}; "
                               f"{spec.component.kind.replace('_', ' ')} '{spec.name}' lacks it: {lacking}")


def _build(slot: str, specs: dict[str, ComponentSpec], **context: Any) -> Any:
    spec = specs[slot]
    with _allocating(_spec_label(spec)):
        built = spec.build(**context)
    check_capabilities(slot, built, specs)
    return built


def task_tokenizer(specs: dict[str, ComponentSpec]) -> TextTokenizer | None:
    """The tokenizer the backbone's model brings (its registration's `tokenizer`), for a task that
    takes one (`takes_tokenizer`); None: the task builds its own."""
    task, backbone = specs["task"], specs.get("backbone")
    if backbone is None or "takes_tokenizer" not in task.component.provides:
        return None
    tokenizer = backbone.component.model_tokenizer(backbone.config)
    if tokenizer is not None and not isinstance(tokenizer, TextTokenizer):
        raise TTTError(f"{_spec_label(backbone)} supplies a tokenizer without "
                       f"{', '.join(n for n in ('vocab_size', 'pad_id', 'eos_id', 'bos_id', 'encode', 'decode') if not hasattr(tokenizer, n))}")
    return tokenizer


def build_task(recipe: Recipe, registry: Registry | None = None):
    """The task, on the backbone's model's tokenizer when both sides offer it (`task_tokenizer`)."""
    specs = component_specs(recipe, registry)
    tokenizer = task_tokenizer(specs)
    if tokenizer is None:
        return _build("task", specs)
    task = _build("task", specs, tokenizer=tokenizer)
    if getattr(task, "tokenizer", None) is not tokenizer:
        raise TTTError(f"{_spec_label(specs['task'])} declares 'takes_tokenizer' but did not use the tokenizer "
                       f"{_spec_label(specs['backbone'])} gave it")
    return task


def build_model(recipe: Recipe, task, registry: Registry | None = None) -> MetaModel:
    specs = component_specs(recipe, registry)
    backbone = _build("backbone", specs, vocab_size=task.tokenizer.vocab_size)
    writer = _build("memory.writer", specs, dim=backbone.dim)
    learner = _build("memory.learner", specs, backbone=backbone, writer=writer)
    recurrence = _build("recurrence", specs, backbone=backbone, inner=recipe.inner)
    return MetaModel(backbone, learner, writer, recurrence, recipe.inner)


def check_eval_sizes(recipe: Recipe, task: object) -> None:
    """`[eval]` asks for no more held-out samples than the task has: said before training, not at the
    first evaluation (or the final test) of a finished run."""
    if not isinstance(task, IndexedTask):
        return
    for split, option in (("val", "val_samples"), ("test", "samples")):
        asked, size = getattr(recipe.eval, option), task.split_size(split)
        if size is not None and asked > size:
            raise TTTError(f"{recipe.source}: [eval] {option} = {asked}, but the task's {split} set has {size} samples")


def build(recipe: Recipe, device: torch.device | str = "cpu") -> Built:
    torch.manual_seed(recipe.train.seed)
    task = build_task(recipe)
    check_eval_sizes(recipe, task)
    model = build_model(recipe, task)
    with _allocating(f"the model on {device}"):
        model = model.to(device)
    optimizer = recipe["optimizer"].build(model=model, total_steps=recipe.train.steps)
    return Built(task=task, model=model, optimizer=optimizer)
