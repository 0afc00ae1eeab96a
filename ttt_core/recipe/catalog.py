"""`ttt recipes` and `ttt cp`: find the shipped recipes and copy one to edit.

Both read TOML only (no registry, no torch). A copy keeps the file as written (comments included),
with its `extends` turned into shipped recipe names and the paths it writes relative to itself
(`train.init_from`, `distributed.deepspeed_config`) made relative to the copy, so it reads the same
from wherever it is written.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from ttt_core.errors import RecipeError, TTTError, did_you_mean
from ttt_core.recipe.reading import FILE_PATHS, load_raw, read_toml
from ttt_core.recipe.shipped import GROUPS, SHIPPED, find_shipped, shipped_names


def recipe_summary(name: str) -> dict[str, Any]:
    """description, requires (merged through `extends`) and stage count of a shipped recipe."""
    path = find_shipped(name)
    if path is None:
        raise TTTError(f"no shipped recipe '{name}'")
    try:
        data = load_raw(path)
    except RecipeError as exc:
        return {"name": name, "description": f"(unreadable: {exc})", "requires": [], "stages": 0}
    requires, stages = data.get("requires", []), data.get("stages", [])
    return {
        "name": name,
        "description": str(data.get("description", "")),
        "requires": [r for r in requires if isinstance(r, str)] if isinstance(requires, list) else [],
        "stages": len(stages) if isinstance(stages, list) else 0,
    }


def _needs(requires: list[str]) -> str:
    """`ttt-plugin-rmt>=0.1 (not installed)`: the plugins a recipe needs and whether they are here."""
    from packaging.requirements import InvalidRequirement, Requirement

    shown = []
    for text in requires:
        try:
            metadata.version(Requirement(text).name)
            shown.append(text)
        except (InvalidRequirement, metadata.PackageNotFoundError):
            shown.append(f"{text} (not installed)")
    return ", ".join(shown)


def recipe_rows() -> str:
    """The listing `ttt recipes` prints: each group, then each recipe's name, description and needs."""
    names = shipped_names()
    lines = []
    for prefix, title in GROUPS:
        group = [n for n in names if n.startswith(prefix) and "/" not in n[len(prefix):]]
        if not group:
            continue
        lines.append(f"{title}:")
        for name in group:
            info = recipe_summary(name)
            stages = f" [{info['stages']} stages]" if info["stages"] else ""
            lines.append(f"  {name}{stages}")
            if info["description"]:
                lines.append(f"      {info['description']}")
            if info["requires"]:
                lines.append(f"      needs: {_needs(info['requires'])}")
        lines.append("")
    lines.append(f"(in {SHIPPED}; `ttt run NAME` runs one, `ttt cp NAME FILE` copies one to edit)")
    return "\n".join(lines) + "\n"


_EXTENDS = re.compile(r"^(extends\s*=\s*)(\[[^\]]*\]|\"[^\"]*\"|'[^']*')", re.MULTILINE)
_STRING = re.compile(r"\"([^\"]*)\"|'([^']*)'")


def copy_recipe(name: str, dest: str | Path, force: bool = False) -> tuple[Path, list[str]]:
    """Copy a shipped recipe to `dest` (a file, or a directory to put NAME.toml in); (path, notes)."""
    source = find_shipped(name)
    if source is None:
        names = shipped_names()
        raise TTTError(f"no shipped recipe '{name}'{did_you_mean(str(name).removesuffix('.toml'), names)}; "
                       "`ttt recipes` lists them")
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        raise TTTError(f"{target}: exists; give another destination, or --force to replace it")
    text = source.read_text(encoding="utf-8")

    def shipped_name(base: str) -> str:
        path = Path(os.path.normpath(source.parent / base))
        try:
            return path.relative_to(SHIPPED).with_suffix("").as_posix()
        except ValueError:  # already a name
            return base

    def rewrite_extends(match: re.Match) -> str:
        return match.group(1) + _STRING.sub(lambda m: f'"{shipped_name(m.group(1) or m.group(2) or "")}"', match.group(2))

    text = _EXTENDS.sub(rewrite_extends, text, count=1)
    notes = []
    data = read_toml(source, str(source))
    anchor = Path.cwd() / "recipes"  # a shipped recipe's relative paths, as `ttt run NAME` reads them
    for table, option in FILE_PATHS:
        value = data.get(table, {}).get(option) if isinstance(data.get(table), dict) else None
        if isinstance(value, str) and value and not os.path.isabs(value):
            new = os.path.relpath(os.path.normpath(anchor / value), Path(os.path.abspath(target)).parent)
            pattern = re.compile(rf"^(\s*{option}\s*=\s*)([\"']){re.escape(value)}\2", re.MULTILINE)
            text = pattern.sub(lambda m: f'{m.group(1)}"{Path(new).as_posix()}"', text, count=1)
            notes.append(f"note: [{table}] {option} = '{value}' is now '{Path(new).as_posix()}' (relative to the copy)")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TTTError(f"{target}: cannot write ({exc.strerror})") from None
    return target, notes
