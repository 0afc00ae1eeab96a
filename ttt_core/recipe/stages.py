"""`[[stages]]`: a curriculum in one recipe. Each stage is the recipe plus its `set` and `steps`.

With `[curriculum] carry_set = true` a stage's `set` applies on top of the previous stage's (its
carried keys first, then its own), so that each stage writes only what changes; without it each
stage's `set` applies to the recipe alone. `train.init_from` is never carried (a later stage starts
from the previous stage's weights), nor keys a stage may not set; a problem of a carried key is
reported for the stage that wrote it only.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import attrs

from ttt_core.errors import RecipeError, did_you_mean
from ttt_core.recipe.overrides import get_path, set_path
from ttt_core.recipe.schema import CURRICULUM_KEYS, STAGE_KEYS, Recipe, Stage
from ttt_core.recipe.structure import describe

_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NOT_CARRIED = ("train.init_from", "train.steps")

BuildOne = Callable[[dict[str, Any], str], Recipe]
"""build(data, source) -> the validated recipe of data without stages (raises RecipeError)."""


def build_staged(data: dict[str, Any], source: str, build: BuildOne) -> Recipe:
    """A recipe with `[[stages]]`: the recipe itself and every stage (recipe + `set` + `steps`) must be
    valid. A problem of the recipe is reported once, not again for every stage that inherits it."""
    base_data = {k: v for k, v in data.items() if k not in ("stages", "curriculum")}
    lines: list[str] = []
    base: Recipe | None = None
    try:
        base = build(base_data, source)
    except RecipeError as exc:
        lines.extend(exc.lines)
    seen = {line.removeprefix(f"{source}: ") for line in lines}
    carry, curriculum_lines = _curriculum_options(data.get("curriculum", {}))
    lines.extend(f"{source}: [curriculum] {line}" for line in curriculum_lines)
    tables, stage_lines = stage_tables(data["stages"], carry)
    lines.extend(f"{source}: [stages] {line}" for line in stage_lines)
    if carry:
        tables = [(name, steps, without_no_ops(overrides, base_data)) for name, steps, overrides in tables]
    stages = []
    for index, (name, steps, overrides) in enumerate(tables):
        where = f"{source}: stage '{name}'"
        stage_data = copy.deepcopy(base_data)
        bad = [key for key in overrides if key == "train.steps" or key.split(".")[0] in ("stages", "curriculum")
               or (index and key == "train.init_from")]
        for key in bad:
            lines.append(f"{where}: cannot set '{key}' (" + (
                "use the stage's 'steps'" if key == "train.steps" else
                "a later stage starts from the previous stage's weights" if key == "train.init_from" else
                "stages do not nest") + ")")
        try:
            for key, value in overrides.items():
                if key not in bad:
                    set_path(stage_data, key.split("."), copy.deepcopy(value))
        except RecipeError as exc:
            lines.append(f"{where}: {exc}")
            continue
        set_path(stage_data, ["train", "steps"], steps)
        try:
            stage_recipe = build(stage_data, where)
        except RecipeError as exc:
            new = [line for line in exc.lines if line.removeprefix(f"{where}: ") not in seen]
            lines.extend(new)
            if carry:  # the next stages carry the same keys: their problems are this stage's
                seen.update(line.removeprefix(f"{where}: ") for line in new)
            continue
        stages.append(Stage(name=name, steps=steps, overrides=overrides, recipe=stage_recipe))
    if lines:
        raise RecipeError(*lines)
    assert base is not None
    return attrs.evolve(base, data=data, stages=tuple(stages))


def without_no_ops(overrides: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`overrides` less the keys that set a value the recipe already has (a carried key set back to the
    recipe's value): the stage is the same, and its stored `set` is what a stage without carrying
    would write. Kept: tables, `name` keys and keys that overlap another key, whose order matters."""

    def overlaps(key: str) -> bool:
        return any(other != key and (other.startswith(key + ".") or key.startswith(other + "."))
                   for other in overrides)

    def table_renamed(key: str) -> bool:
        return any(other.endswith(".name") and key.startswith(other.removesuffix("name")) for other in overrides)

    out = {}
    for key, value in overrides.items():
        same = get_path(data, key.split("."))
        no_op = (not isinstance(value, dict) and not key.endswith("name") and type(same) is type(value)
                 and same == value and not overlaps(key) and not table_renamed(key))
        if not no_op:
            out[key] = value
    return out


def _curriculum_options(raw: Any) -> tuple[bool, list[str]]:
    """(carry_set, problems) of the `[curriculum]` table."""
    if not isinstance(raw, dict):
        return False, [f"expected a table, got {describe(raw)}"]
    problems = [f"unknown option '{key}'{did_you_mean(key, CURRICULUM_KEYS)}" for key in raw if key not in CURRICULUM_KEYS]
    carry = raw.get("carry_set", False)
    if not isinstance(carry, bool):
        problems.append(f"option 'carry_set': expected a boolean (true or false), got {describe(carry)}")
        carry = False
    return carry, problems


def stage_tables(raw: Any, carry: bool = False) -> tuple[list[tuple[str, int, dict[str, Any]]], list[str]]:
    """(name, steps, set) of each `[[stages]]` table (with `carry`, each set includes the previous
    stage's), and the problems of their shape."""
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        return [], ["expected one or more [[stages]] tables (name, steps, set)"]
    out, problems, names = [], [], set()
    carried: dict[str, Any] = {}
    for i, table in enumerate(raw):
        label = f"stage {i + 1}"
        for key in table:
            if key not in STAGE_KEYS:
                problems.append(f"{label}: unknown option '{key}'{did_you_mean(key, STAGE_KEYS)}")
        name, steps, overrides = table.get("name"), table.get("steps"), table.get("set", {})
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            problems.append(f"{label}: 'name' must be a string of letters, digits, '_', '.', '-' (it names the "
                            f"directory stage-NAME); got {describe(name) if name is not None else 'nothing'}")
            continue
        label = f"stage '{name}'"
        if name in names:
            problems.append(f"{label}: the name is used twice")
        names.add(name)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            problems.append(f"{label}: 'steps' must be a positive integer; got {describe(steps) if steps is not None else 'nothing'}")
            continue
        if not isinstance(overrides, dict):
            problems.append(f"{label}: 'set' must be a table of dotted keys, e.g. set = {{ \"task.dataset\" = \"...\" }}")
            continue
        if carry:
            overrides = {**{k: v for k, v in carried.items() if k not in overrides}, **overrides}
            carried = {k: v for k, v in overrides.items()
                       if k not in NOT_CARRIED and k.split(".")[0] not in ("stages", "curriculum")}
        out.append((name, steps, overrides))
    return out, problems
