"""Validation: merged recipe data + the registry -> a `Recipe`, or one RecipeError with every problem.

Each slot's table is structured into its component's config; the recurrence's `slots` say which
optional slots it uses (a filled unused one is refused, an absent one is not required) and every
component's `needs` are checked against the `provides` of the components it names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from ttt_core.config import DistributedConfig
from ttt_core.errors import RecipeError, RegistryError, did_you_mean
from ttt_core.kinds import BY_SLOT, OPTIONAL_SLOTS
from ttt_core.recipe.overrides import apply_overrides, get_path, parse_override
from ttt_core.recipe.reading import absolute_file_paths, display, load_raw
from ttt_core.recipe.shipped import recipe_path
from ttt_core.recipe.schema import DEFAULT_SLOTS, SLOTS, TABLES, TOP_LEVEL_KEYS, ComponentSpec, Recipe
from ttt_core.recipe.stages import build_staged
from ttt_core.recipe.structure import describe, structure_options
from ttt_core.registry import Component, Registry

Problems = list[tuple[str, str]]
"""(table, message); table '' for the recipe as a whole."""


def _check_requires(requires: Any) -> tuple[tuple[str, ...], Problems]:
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        return (), [("", "'requires' must be a list of requirement strings")]
    problems = []
    for text in requires:
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(("", f"requires '{text}': {exc}"))
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(("", f"requires {text}, which is not installed (pip install '{text}')"))
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(("", f"requires {text}, but {requirement.name} {installed} is installed"))
    return tuple(requires), problems


def _slot_label(slot: str) -> str:
    """`memory.learner` -> 'memory learner': how messages name the component in a slot."""
    return slot.replace(".", " ")


def _article(label: str) -> str:
    return ("an " if label[0] in "aeiou" else "a ") + label


def _recurrence(data: dict[str, Any], registry: Registry, broken: dict[str, str] | None) -> Component | None:
    """The recurrence the recipe names (None if it is unknown: that is reported with its slot)."""
    table = get_path(data, ["recurrence"], None)
    name = table.get("name", DEFAULT_SLOTS.get("recurrence")) if isinstance(table, dict) else DEFAULT_SLOTS.get("recurrence")
    if not isinstance(name, str):
        return None
    try:
        return registry["recurrence"].get(name, broken)
    except RegistryError:
        return None


def _components(
    data: dict[str, Any], registry: Registry, broken: dict[str, str] | None, drop_unused_slots: bool = False
) -> tuple[dict[str, ComponentSpec], set[str], Problems]:
    """The filled slots, the optional slots the recurrence leaves unused, and the problems."""
    problems: Problems = []
    recurrence = _recurrence(data, registry, broken)
    uses = None if recurrence is None or recurrence.slots is None else set(recurrence.slots)
    unused = {slot for slot in OPTIONAL_SLOTS if uses is not None and slot not in uses}
    components: dict[str, ComponentSpec] = {}
    for slot, kind in SLOTS.items():
        table = get_path(data, slot.split("."), None)
        if slot in unused:
            if table is not None and not drop_unused_slots:
                assert recurrence is not None
                problems.append((slot, f"recurrence '{recurrence.name}' does not use {_article(_slot_label(slot))}: "
                                       "remove this table"))
            continue
        if table is None:
            if slot not in DEFAULT_SLOTS:
                problems.append((slot, f"missing: this recipe needs a [{slot}] table with a 'name'"))
                continue
            table = {"name": DEFAULT_SLOTS[slot]}
        if not isinstance(table, dict):
            problems.append((slot, f"expected a table, got {describe(table)}"))
            continue
        options = dict(table)
        name = options.pop("name", DEFAULT_SLOTS.get(slot))
        if not isinstance(name, str):
            available = ", ".join(registry[kind].names())
            problems.append((slot, f"missing 'name' of the {kind.replace('_', ' ')}; available: {available}"))
            continue
        try:
            component = registry[kind].get(name, broken)
        except RegistryError as exc:
            problems.append((slot, str(exc)))
            continue
        config, slot_problems = structure_options(component.config, options)
        problems.extend((slot, p) for p in slot_problems)
        if config is not None:
            components[slot] = ComponentSpec(slot=slot, component=component, config=config)
    return components, unused, problems


def _capabilities(components: dict[str, ComponentSpec], unused: set[str], registry: Registry) -> Problems:
    """Every component's `needs` against the `provides` of the component in the slot it names (an
    unused slot: the component the builder puts there)."""
    problems: Problems = []
    for slot, spec in components.items():
        try:
            needs = spec.component.needs_for(spec.config)
        except Exception as exc:  # noqa: BLE001 - a plugin's function of its config
            problems.append((slot, f"{spec.name}: cannot tell what it needs of other slots: "
                                   f"{type(exc).__name__}: {exc}"))
            continue
        for other_slot, capabilities in needs.items():
            if other_slot not in SLOTS:
                problems.append((slot, f"{spec.name} needs capabilities of an unknown slot '{other_slot}'"
                                       f"{did_you_mean(other_slot, SLOTS)}"))
                continue
            kind = SLOTS[other_slot]
            other = components.get(other_slot)
            provider: Component | None = other.component if other is not None else None
            if other is None and other_slot in unused:
                filler = BY_SLOT[other_slot].unused
                provider = registry[kind].get(filler) if filler is not None and filler in registry[kind] else None
            if provider is None:
                continue  # that slot's own problem is reported already
            for capability in capabilities:
                if capability not in provider.provides:
                    label = _slot_label(other_slot)
                    problems.append((slot, f"{spec.name} needs {_article(label)} with '{capability}'; "
                                           f"{label} '{provider.name}' does not provide it"))
    return problems


def build_recipe(
    data: dict[str, Any],
    source: str,
    registry: Registry,
    broken: dict[str, str] | None = None,
    drop_unused_slots: bool = False,
) -> Recipe:
    """Validate merged recipe data against the registry; raise one RecipeError with every problem.

    `drop_unused_slots`: leave out, instead of refusing, a table for an optional slot the recurrence
    does not use (for recipes stored by runs made before the recurrence declared its slots)."""
    if "stages" in data:
        return build_staged(data, source, lambda d, s: build_recipe(d, s, registry, broken, drop_unused_slots))
    problems: Problems = []

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(("", f"unknown table '{key}'{did_you_mean(key, TOP_LEVEL_KEYS)}"))
    if "curriculum" in data:
        problems.append(("curriculum", "applies to [[stages]] only, and this recipe has none"))
    memory = data.get("memory", {})
    memory_slots = [slot.split(".", 1)[1] for slot in SLOTS if slot.startswith("memory.")]
    if isinstance(memory, dict):
        for key in memory:
            if key not in memory_slots:
                problems.append(("memory", f"unknown slot '{key}'{did_you_mean(key, memory_slots)}"))
    else:
        problems.append(("memory", f"expected a table, got {describe(memory)}"))

    requires, require_problems = _check_requires(data.get("requires", []))
    problems.extend(require_problems)

    components, unused, slot_problems = _components(data, registry, broken, drop_unused_slots)
    problems.extend(slot_problems)
    problems.extend(_capabilities(components, unused, registry))

    tables: dict[str, Any] = {}
    for name, cls in TABLES.items():
        config, table_problems = structure_options(cls, data.get(name, {}))
        problems.extend((name, p) for p in table_problems)
        tables[name] = config

    train, distributed = tables["train"], tables["distributed"]
    if train is not None and train.compile is True and distributed is not None and distributed.backend != "none":
        problems.append(("train", f"compile = true runs the single-process trainer only; the {distributed.backend} "
                                  "engine steps eagerly (set compile = false, or distributed.backend = \"none\")"))

    deepspeed, deepspeed_source, deepspeed_problems = _deepspeed_table(data, tables["distributed"])
    problems.extend(("deepspeed", p) for p in deepspeed_problems)
    if deepspeed is not None and tables["train"] is not None and "optimizer" in components:
        from ttt_core.distributed import config as deepspeed_config

        clip_norm = getattr(components["optimizer"].config, "clip_norm", None)
        for problem in deepspeed_config.check(deepspeed, tables["train"].batch_size, clip_norm):
            problems.append(("deepspeed", problem) if deepspeed_source is None else
                            ("deepspeed", f"({deepspeed_source}) {problem}"))

    if problems:
        raise RecipeError(*(f"{source}: [{t}] {m}" if t else f"{source}: {m}" for t, m in problems))
    return Recipe(
        source=source,
        data=data,
        components=components,
        requires=requires,
        deepspeed=deepspeed,
        **tables,
    )


def _deepspeed_table(data: dict[str, Any], distributed: DistributedConfig | None):
    """(table or None, the JSON file it came from or None, problems)."""
    table = data.get("deepspeed")
    if table is not None and not isinstance(table, dict):
        return None, None, [f"expected a table, got {describe(table)}"]
    path = distributed.deepspeed_config if distributed is not None else None
    if path is None:
        return table, None, []
    shown = display(Path(path))
    if table is not None:
        return None, None, [f"give either a [deepspeed] table or [distributed] deepspeed_config = '{shown}', not both"]
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None, [f"deepspeed_config '{shown}': file not found"]
    except (OSError, ValueError) as exc:
        return None, None, [f"deepspeed_config '{shown}': not a JSON file ({exc})"]
    if not isinstance(loaded, dict):
        return None, None, [f"deepspeed_config '{shown}': expected a JSON object, got {describe(loaded)}"]
    return loaded, shown, []


def load_recipe(
    path: str | Path,
    overrides: Iterable[str] = (),
    registry: Registry | None = None,
    broken: dict[str, str] | None = None,
    stored: bool = False,
) -> Recipe:
    """Read, merge, override and validate a recipe file against the (default) registry.

    `stored`: the `recipe.toml` of a run directory: its paths are taken as stored (not against the
    run directory), and a table for a slot its recurrence does not use is left out rather than
    refused (earlier versions stored the learner rmt and prmt4 never used)."""
    if registry is None:
        from ttt_core.plugins import default_host

        host = default_host()
        registry, broken = host.registry, host.broken()
    overrides = list(overrides)
    file, shipped = (Path(path), False) if stored else recipe_path(path)
    anchor = Path.cwd() / "recipes" if shipped else None  # as if it lay in ./recipes of a clone
    data = apply_overrides(load_raw(file, relative_to_file=not stored, anchor=anchor), overrides)
    absolute_file_paths(data, {".".join(keys): value for keys, value in map(parse_override, overrides)})
    return build_recipe(data, str(path), registry, broken, drop_unused_slots=stored)
