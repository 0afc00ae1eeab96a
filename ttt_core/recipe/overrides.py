"""`--set KEY=VALUE`: dotted keys into the merged recipe data, values read as TOML."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable
from typing import Any

from ttt_core.errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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


MISSING = object()
"""What `get_path` gives for a dotted key the data does not have."""


def get_path(data: dict[str, Any], keys: list[str], default: Any = MISSING) -> Any:
    """`data[k1][k2]...`, or `default` where a key is missing or a value on the way is not a table."""
    node: Any = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set `data[k1][k2]... = value`, making tables on the way; a slot whose `name` changes is emptied."""
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
        set_path(data, keys, value)
    return data
