"""Reading recipe files: TOML text, `extends` (relative to the file, bases first) and deep merging.

Paths a recipe writes are relative to the file that writes them: `extends`,
`distributed.deepspeed_config` and `train.init_from` (`--set` values stay relative to the working
directory).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ttt_core.errors import RecipeError, did_you_mean
from ttt_core.recipe.overrides import tomllib
from ttt_core.recipe.shipped import find_shipped, shipped_names

FILE_PATHS: tuple[tuple[str, str], ...] = (("distributed", "deepspeed_config"), ("train", "init_from"))
"""(table, option) of the paths a recipe file writes relative to itself."""


def read_toml(path: Path, shown: str) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{shown}: file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{shown}: is a directory, not a recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{shown}: cannot read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (some Windows editors write one) is dropped
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{shown}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save the recipe as UTF-8"
        ) from None
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


def display(path: Path) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _resolve_file_paths(data: dict[str, Any], directory: Path) -> None:
    """Make the paths of FILE_PATHS, in their tables and in the `set` of `[[stages]]`, relative to
    `directory` (the recipe's) instead of the working directory."""

    def resolve(value: Any) -> Any:
        return os.path.normpath(directory / value) if isinstance(value, str) and value else value

    for table, option in FILE_PATHS:
        values = data.get(table)
        if isinstance(values, dict) and option in values:
            values[option] = resolve(values[option])
    stages = data.get("stages")
    for stage in stages if isinstance(stages, list) else ():
        overrides = stage.get("set") if isinstance(stage, dict) else None
        for table, option in FILE_PATHS if isinstance(overrides, dict) else ():
            if f"{table}.{option}" in overrides:
                overrides[f"{table}.{option}"] = resolve(overrides[f"{table}.{option}"])


def absolute_file_paths(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Make the FILE_PATHS among `overrides` (dotted key -> value, as `--set` gave them) absolute,
    against the working directory: a run directory stores the recipe, and a relative path there
    would later be read against the run directory."""
    for table, option in FILE_PATHS:
        value = overrides.get(f"{table}.{option}")
        if isinstance(value, str) and value and isinstance(data.get(table), dict):
            data[table][option] = os.path.abspath(value)


def load_raw(
    path: str | Path, _chain: tuple[Path, ...] = (), relative_to_file: bool = True, anchor: Path | None = None,
) -> dict[str, Any]:
    """The recipe's TOML with every `extends` resolved (bases first, this file on top). A base is a
    path relative to the file, or else the name of a shipped recipe (`ttt recipes`).

    `relative_to_file`: resolve FILE_PATHS against the file's directory (`anchor` instead, when given:
    a shipped recipe run by name); off for a recipe a run directory stored, whose paths were resolved
    when it was written (or, by earlier versions, left relative to the working directory).

    Paths are made absolute without following links, so that `recipes/` of a clone (a link to
    `ttt_core/recipes/`) resolves `../runs/x` next to itself; cycles are found on the real files."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    resolved = path.resolve()
    shown = display(absolute) if _chain else str(path)
    if resolved in _chain:
        cycle = " -> ".join(display(p) for p in (*_chain, resolved))
        raise RecipeError(f"{display(_chain[0])}: extends cycle: {cycle}")
    data = read_toml(resolved, shown)
    if relative_to_file:
        _resolve_file_paths(data, anchor if anchor is not None else absolute.parent)
    extends = data.pop("extends", [])
    if isinstance(extends, str):
        extends = [extends]
    if not isinstance(extends, list) or not all(isinstance(e, str) for e in extends):
        raise RecipeError(f"{shown}: 'extends' must be a list of file paths or shipped recipe names")
    merged: dict[str, Any] = {}
    for base in extends:
        base_path = Path(os.path.normpath(absolute.parent / base))
        if not base_path.exists():
            shipped = find_shipped(base)
            if shipped is None:
                raise RecipeError(f"{shown}: extends '{base}': file not found ({display(base_path)}), nor a shipped "
                                  f"recipe{did_you_mean(base.removesuffix('.toml'), shipped_names())} (ttt recipes)")
            base_path = shipped
        merged = merge(merged, load_raw(base_path, (*_chain, resolved)))
    return merge(merged, data)
