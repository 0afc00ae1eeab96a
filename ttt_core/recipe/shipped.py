"""The recipes shipped inside the package (`ttt_core/recipes/`; `recipes/` in a clone links there).

A shipped recipe is named by its path below that directory without `.toml`: `baseline_ar_n1`,
`tiny/baseline_ar_tiny`, `base/ar`. `ttt run NAME` (and show, validate, data) and `extends = ["NAME"]`
take a name where no file of that path exists; a file always wins. A shipped recipe run by name
resolves the paths it writes relative to itself (`train.init_from = "../runs/x"`) as if it lay in
`./recipes/` of the working directory, as in a clone: next to the `runs/` that `ttt run` fills.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "recipes"
GROUPS = (("", "recipes"), ("tiny/", "tiny recipes (tests and smoke runs: seconds on a CPU)"),
          ("base/", "bases (for extends; not runnable alone)"))


def shipped_names() -> list[str]:
    """Every shipped recipe's name, sorted."""
    if not SHIPPED.is_dir():
        return []
    return sorted(p.relative_to(SHIPPED).with_suffix("").as_posix() for p in SHIPPED.rglob("*.toml"))


def find_shipped(name: str | Path) -> Path | None:
    """The file of a shipped recipe `name` (with or without `.toml`, or `recipes/` in front), or None."""
    text = Path(name).as_posix().removesuffix(".toml").removeprefix("recipes/")
    if not text or text.startswith(("/", "..")) or "/../" in text:
        return None
    path = SHIPPED / f"{text}.toml"
    return path if path.is_file() else None


def recipe_path(arg: str | Path) -> tuple[Path, bool]:
    """(the file `arg` names, whether it is a shipped recipe named instead of a path)."""
    path = Path(arg)
    if path.exists():
        return path, False
    shipped = find_shipped(arg)
    return (shipped, True) if shipped is not None else (path, False)
