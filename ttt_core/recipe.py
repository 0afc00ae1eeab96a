"""TOML recipes -> validated specs.

A recipe is a TOML file. Component slots are tables whose `name` picks a registered component and
whose other keys are that component's options::

    extends = ["base/ar.toml"]          # resolved relative to this file, deep-merged in order
    requires = ["ttt-plugin-rmt>=0.1"]

    [recurrence]
    name = "rmt4"

    [memory.writer]
    name = "cross_attention"
    heads = 4

Merging: tables merge key by key, except that a slot whose `name` changes is replaced whole (the
old component's options mean nothing to the new one). Every problem is collected and reported at
once, one line each, as `FILE: [TABLE] MESSAGE`.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import typing
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ForbiddenExtraKeysError,
    IterableValidationNote,
)

from ttt_core.config import DistributedConfig, EvalConfig, InnerConfig, TrainConfig
from ttt_core.errors import RecipeError, RegistryError, did_you_mean
from ttt_core.kinds import KINDS_TABLE
from ttt_core.registry import Component, Registry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# slot path -> component kind
SLOTS: dict[str, str] = {kind.slot: kind.name for kind in KINDS_TABLE}
# slots that may be left out, and the component they default to
DEFAULT_SLOTS: dict[str, str] = {kind.slot: kind.default for kind in KINDS_TABLE if kind.default is not None}
# the standard tables every recipe has
TABLES: dict[str, type] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "distributed": DistributedConfig,
    "inner": InnerConfig,
}
TOP_LEVEL_KEYS = (
    "extends",
    "requires",
    "description",
    "task",
    "backbone",
    "memory",
    "recurrence",
    "optimizer",
    "deepspeed",
    "stages",
    *TABLES,
)
STAGE_KEYS = ("name", "steps", "set")
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------------------------------------
# structuring with cattrs: strict TOML types, one message per problem


def _strict(expected: type, label: str):
    def hook(value: Any, _type: Any) -> Any:
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise TypeError(f"expected {label}, got {_describe(value)}")
        return value

    return hook


def _describe(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    kind = kinds.get(type(value), type(value).__name__)
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) else ""
    return f"{kind} {shown}".strip()


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(bool, _strict(bool, "a boolean (true or false)"))
    # a string is iterable: without this, paths = "x" would become ["x"] letter by letter; the
    # type check runs first, then cattrs' own list/tuple handling (of a copy without this hook)
    plain = converter.copy()
    converter.register_structure_hook_func(
        lambda t: typing.get_origin(t) in (list, tuple),
        lambda value, t: _array(value) or plain.structure(value, t),
    )
    return converter


def _array(value: Any) -> None:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected an array, got {_describe(value)}")


CONVERTER = make_converter()


def _flatten(exc: BaseException, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], BaseException]]:
    if isinstance(exc, BaseValidationError):
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = (*path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = (*path, str(note.index))
            yield from _flatten(sub, sub_path)
    else:
        yield path, exc


def structure_options(cls: type, data: Any) -> tuple[Any, list[str]]:
    """Structure `data` into the attrs class `cls`; return (instance or None, problems)."""
    if not isinstance(data, dict):
        return None, [f"expected a table, got {_describe(data)}"]
    try:
        return CONVERTER.structure(data, cls), []
    except BaseValidationError as exc:
        problems = []
        for path, error in _flatten(exc, ()):
            problems.extend(_problem_lines(cls, path, error))
        return None, problems
    except (ValueError, TypeError) as exc:  # validators outside detailed validation
        return None, [str(exc)]


def _problem_lines(cls: type, path: tuple[str, ...], error: BaseException) -> list[str]:
    if isinstance(error, ForbiddenExtraKeysError):
        known = [f.name for f in attrs.fields(error.cl)]
        return [
            f"unknown option '{key}'{did_you_mean(key, known)}" for key in sorted(error.extra_fields)
        ]
    where = f"option '{'.'.join(path)}'" if path else ""
    if isinstance(error, KeyError):
        return [f"missing required {where or 'option'}"]
    message = str(error)
    if where and not message.startswith("option '"):
        message = f"{where}: {message}"
    return [message]


def options_of(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each option of a component config, for `ttt list`."""
    rows = []
    for field in attrs.fields(cls):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        elif default is attrs.NOTHING:
            default = "(required)"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        rows.append((field.name, str(kind), default))
    return rows


# ---------------------------------------------------------------------------------------------
# the validated recipe


@attrs.frozen
class ComponentSpec:
    """A filled slot: the chosen component and its structured config."""

    slot: str
    component: Component
    config: Any

    @property
    def name(self) -> str:
        return self.component.name

    def build(self, **context: Any) -> Any:
        return self.component.build(self.config, **context)


@attrs.frozen
class Stage:
    """One stage of a curriculum: the recipe with the stage's `set` overrides and `steps`.

    Stage k > 0 starts from stage k-1's final weights (`train.init_from`, filled in by the runner,
    which knows the run directory: `with_init_from`)."""

    name: str
    steps: int
    overrides: dict[str, Any]
    recipe: Recipe

    def table(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "set": dict(self.overrides)}


@attrs.frozen
class Recipe:
    source: str
    data: dict[str, Any]
    """The merged TOML after `extends` and overrides (what was written, not the defaults)."""
    components: dict[str, ComponentSpec]
    train: TrainConfig
    eval: EvalConfig
    distributed: DistributedConfig
    inner: InnerConfig
    requires: tuple[str, ...] = ()
    deepspeed: dict[str, Any] | None = None
    stages: tuple[Stage, ...] = ()
    """A curriculum (`[[stages]]`): `ttt run` trains these in order instead of the recipe itself."""

    def __getitem__(self, slot: str) -> ComponentSpec:
        return self.components[slot]

    def resolved(self) -> dict[str, Any]:
        """The full recipe, every default filled in: what `ttt show` prints and a run stores."""
        out: dict[str, Any] = {}
        if "description" in self.data:
            out["description"] = self.data["description"]
        if self.requires:
            out["requires"] = list(self.requires)
        for slot, spec in self.components.items():
            options = CONVERTER.unstructure(spec.config)
            if hasattr(spec.config, "written_options"):  # configs that derive fields from others
                options = spec.config.written_options(options)
            table = {"name": spec.name, **options}
            _set_path(out, slot.split("."), table)
        for name in TABLES:
            out[name] = CONVERTER.unstructure(getattr(self, name))
        # a DeepSpeed JSON file is stored inline, so that a run directory is self-contained
        out["distributed"]["deepspeed_config"] = None
        if self.deepspeed is not None:
            out["deepspeed"] = self.deepspeed
        if self.stages:
            out["stages"] = [stage.table() for stage in self.stages]
        return out

    def with_init_from(self, source: str) -> Recipe:
        """This recipe starting from the weights of `source` (a checkpoint or run directory)."""
        data = copy.deepcopy(self.data)
        _set_path(data, ["train", "init_from"], source)
        return attrs.evolve(self, data=data, train=attrs.evolve(self.train, init_from=source))


# ---------------------------------------------------------------------------------------------
# reading files: extends, merging, overrides


def _read_toml(path: Path, shown: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{shown}: file not found") from None
    except OSError as exc:
        raise RecipeError(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{shown}: invalid TOML: {exc}") from None


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a table whose `name` differs from the base's replaces it whole."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, dict)
            and not ("name" in value and "name" in old and value["name"] != old["name"])
        ):
            out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_raw(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's TOML with every `extends` resolved (bases first, this file on top)."""
    path = Path(path)
    resolved = path.resolve()
    shown = _display(resolved) if _chain else str(path)
    if resolved in _chain:
        cycle = " -> ".join(_display(p) for p in (*_chain, resolved))
        raise RecipeError(f"{_display(_chain[0])}: extends cycle: {cycle}")
    data = _read_toml(resolved, shown)
    distributed = data.get("distributed")
    if isinstance(distributed, dict) and isinstance(distributed.get("deepspeed_config"), str):
        # relative to the file that names it, like `extends`
        distributed["deepspeed_config"] = str(resolved.parent / distributed["deepspeed_config"])
    extends = data.pop("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        raise RecipeError(f"{shown}: 'extends' must be a list of file paths")
    merged: dict[str, Any] = {}
    for base in extends:
        base_path = resolved.parent / base
        if not base_path.exists():
            raise RecipeError(f"{shown}: extends '{base}': file not found ({_display(base_path)})")
        merged = merge(merged, load_raw(base_path, (*_chain, resolved)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], c) with c read as a TOML value (a bare word stays a string)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. train.steps=100")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.split("."), parsed


def _set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise RecipeError(f"cannot set {'.'.join(keys)}: '{'.'.join(keys[: i + 1])}' is not a table")
        node = child
    if keys[-1] == "name" and node.get("name", value) != value:
        node.clear()  # a slot whose component changes is replaced, as with `extends`; later --set fill it
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(data, keys, value)
    return data


# ---------------------------------------------------------------------------------------------
# validation


def _check_requires(requires: Any) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
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


def _slot_data(data: dict[str, Any], slot: str) -> Any:
    node: Any = data
    for key in slot.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def build_recipe(
    data: dict[str, Any], source: str, registry: Registry, broken: dict[str, str] | None = None
) -> Recipe:
    """Validate merged recipe data against the registry; raise one RecipeError with every problem."""
    if "stages" in data:
        return _build_staged(data, source, registry, broken)
    problems: list[tuple[str, str]] = []  # (table, message)

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(("", f"unknown table '{key}'{did_you_mean(key, TOP_LEVEL_KEYS)}"))
    memory = data.get("memory", {})
    if isinstance(memory, dict):
        for key in memory:
            if key not in ("learner", "writer"):
                problems.append(("memory", f"unknown slot '{key}'{did_you_mean(key, ('learner', 'writer'))}"))
    else:
        problems.append(("memory", f"expected a table, got {_describe(memory)}"))

    requires, require_problems = _check_requires(data.get("requires", []))
    problems.extend(require_problems)

    components: dict[str, ComponentSpec] = {}
    for slot, kind in SLOTS.items():
        table = _slot_data(data, slot)
        if table is None:
            if slot not in DEFAULT_SLOTS:
                problems.append((slot, f"missing: this recipe needs a [{slot}] table with a 'name'"))
                continue
            table = {"name": DEFAULT_SLOTS[slot]}
        if not isinstance(table, dict):
            problems.append((slot, f"expected a table, got {_describe(table)}"))
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

    tables: dict[str, Any] = {}
    for name, cls in TABLES.items():
        config, table_problems = structure_options(cls, data.get(name, {}))
        problems.extend((name, p) for p in table_problems)
        tables[name] = config

    train, distributed = tables["train"], tables["distributed"]
    if train is not None and train.compile and distributed is not None and distributed.backend != "none":
        problems.append(("train", f"compile = true runs the single-process trainer only; the {distributed.backend} "
                                  "engine steps eagerly (set compile = false, or distributed.backend = \"none\")"))

    deepspeed, deepspeed_source, deepspeed_problems = _deepspeed_table(data, tables["distributed"])
    problems.extend(("deepspeed", p) for p in deepspeed_problems)
    if deepspeed is not None and tables["train"] is not None and "optimizer" in components:
        from ttt_core import deepspeed_config

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


def _build_staged(data: dict[str, Any], source: str, registry: Registry, broken: dict[str, str] | None) -> Recipe:
    """A recipe with `[[stages]]`: the recipe itself and every stage (recipe + `set` + `steps`) must be
    valid. A problem of the recipe is reported once, not again for every stage that inherits it."""
    base_data = {k: v for k, v in data.items() if k != "stages"}
    lines: list[str] = []
    base: Recipe | None = None
    try:
        base = build_recipe(base_data, source, registry, broken)
    except RecipeError as exc:
        lines.extend(exc.lines)
    seen = {line.removeprefix(f"{source}: ") for line in lines}
    tables, stage_lines = _stage_tables(data["stages"])
    lines.extend(f"{source}: [stages] {line}" for line in stage_lines)
    stages = []
    for index, (name, steps, overrides) in enumerate(tables):
        where = f"{source}: stage '{name}'"
        stage_data = copy.deepcopy(base_data)
        bad = [key for key in overrides if key == "train.steps" or key.split(".")[0] == "stages"
               or (index and key == "train.init_from")]
        for key in bad:
            lines.append(f"{where}: cannot set '{key}' (" + (
                "use the stage's 'steps'" if key == "train.steps" else
                "a later stage starts from the previous stage's weights" if key == "train.init_from" else
                "stages do not nest") + ")")
        try:
            for key, value in overrides.items():
                if key not in bad:
                    _set_path(stage_data, key.split("."), copy.deepcopy(value))
        except RecipeError as exc:
            lines.append(f"{where}: {exc}")
            continue
        _set_path(stage_data, ["train", "steps"], steps)
        try:
            stage_recipe = build_recipe(stage_data, where, registry, broken)
        except RecipeError as exc:
            lines.extend(line for line in exc.lines if line.removeprefix(f"{where}: ") not in seen)
            continue
        stages.append(Stage(name=name, steps=steps, overrides=overrides, recipe=stage_recipe))
    if lines:
        raise RecipeError(*lines)
    assert base is not None
    return attrs.evolve(base, data=data, stages=tuple(stages))


def _stage_tables(raw: Any) -> tuple[list[tuple[str, int, dict[str, Any]]], list[str]]:
    """(name, steps, set) of each `[[stages]]` table, and the problems of their shape."""
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        return [], ["expected one or more [[stages]] tables (name, steps, set)"]
    out, problems, names = [], [], set()
    for i, table in enumerate(raw):
        label = f"stage {i + 1}"
        for key in table:
            if key not in STAGE_KEYS:
                problems.append(f"{label}: unknown option '{key}'{did_you_mean(key, STAGE_KEYS)}")
        name, steps, overrides = table.get("name"), table.get("steps"), table.get("set", {})
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            problems.append(f"{label}: 'name' must be a string of letters, digits, '_', '.', '-' (it names the "
                            f"directory stage-NAME); got {_describe(name) if name is not None else 'nothing'}")
            continue
        label = f"stage '{name}'"
        if name in names:
            problems.append(f"{label}: the name is used twice")
        names.add(name)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
            problems.append(f"{label}: 'steps' must be a positive integer; got {_describe(steps) if steps is not None else 'nothing'}")
            continue
        if not isinstance(overrides, dict):
            problems.append(f"{label}: 'set' must be a table of dotted keys, e.g. set = {{ \"task.dataset\" = \"...\" }}")
            continue
        out.append((name, steps, overrides))
    return out, problems


def _deepspeed_table(data: dict[str, Any], distributed: DistributedConfig | None):
    """(table or None, the JSON file it came from or None, problems)."""
    table = data.get("deepspeed")
    if table is not None and not isinstance(table, dict):
        return None, None, [f"expected a table, got {_describe(table)}"]
    path = distributed.deepspeed_config if distributed is not None else None
    if path is None:
        return table, None, []
    shown = _display(Path(path))
    if table is not None:
        return None, None, [f"give either a [deepspeed] table or [distributed] deepspeed_config = '{shown}', not both"]
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None, [f"deepspeed_config '{shown}': file not found"]
    except (OSError, ValueError) as exc:
        return None, None, [f"deepspeed_config '{shown}': not a JSON file ({exc})"]
    if not isinstance(loaded, dict):
        return None, None, [f"deepspeed_config '{shown}': expected a JSON object, got {_describe(loaded)}"]
    return loaded, shown, []


def load_recipe(
    path: str | Path,
    overrides: Iterable[str] = (),
    registry: Registry | None = None,
    broken: dict[str, str] | None = None,
) -> Recipe:
    """Read, merge, override and validate a recipe file against the (default) registry."""
    if registry is None:
        from ttt_core.plugins import default_host

        host = default_host()
        registry, broken = host.registry, host.broken()
    data = apply_overrides(load_raw(path), overrides)
    return build_recipe(data, str(path), registry, broken)


# ---------------------------------------------------------------------------------------------
# writing TOML (for `ttt show` and run directories)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def dumps_toml(data: dict[str, Any], _prefix: tuple[str, ...] = ()) -> str:
    """Minimal TOML writer for recipe data (None values are left out: TOML has no null)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    out = "\n".join(lines)
    for key, value in tables:
        path = (*_prefix, key)
        body = dumps_toml(value, path)
        scalars = any(not isinstance(v, dict) for v in value.values())
        header = f"[{'.'.join(_toml_key(p) for p in path)}]\n" if scalars or not value else ""
        out += ("\n\n" if out else "") + header + body
    for key, items in arrays:
        path = ".".join(_toml_key(p) for p in (*_prefix, key))
        for item in items:
            body = "\n".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items() if v is not None)
            out += ("\n\n" if out else "") + f"[[{path}]]\n" + body
    return out.strip("\n") + ("\n" if not _prefix else "")
