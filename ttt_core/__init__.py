"""`ttt`: meta-learned test-time-training memory.

The public API for plugin authors:

- `hookimpl`: decorate `ttt_register_components(registry)` in your plugin module.
- `ttt_core.interfaces`: the contracts of the six component kinds.
- `load_recipe`, `get_registry`: read a recipe / look components up from Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ttt_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from ttt_core.recipe import Recipe
    from ttt_core.registry import Registry

__all__ = ["hookimpl", "get_registry", "load_recipe"]


def get_registry() -> Registry:
    """The registry filled by the built-ins and every plugin that loaded."""
    from ttt_core.plugins import default_host

    return default_host().registry


def load_recipe(path: str, overrides: tuple[str, ...] | list[str] = ()) -> Recipe:
    """Read, merge and validate a recipe; raises `ttt_core.errors.RecipeError` listing every problem."""
    from ttt_core.recipe import load_recipe as _load

    return _load(path, overrides)
