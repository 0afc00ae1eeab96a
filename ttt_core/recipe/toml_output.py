"""Writing recipe data as TOML, for `ttt show` and the `recipe.toml` of run directories.

Our own writer rather than tomli-w: tomli-w writes arrays over several lines and a stage's `set` as
a `[stages.set]` sub-table, and refuses None; this one keeps the stored recipes' layout (one line
per option, `set = {...}` inline) and leaves None out (TOML has no null).
"""

from __future__ import annotations

import json
import math
from typing import Any


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
    """Recipe data as TOML (None values are left out: TOML has no null)."""
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
