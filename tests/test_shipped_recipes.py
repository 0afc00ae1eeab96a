"""Every recipe under recipes/ loads and validates (every stage included), so a renamed option or a
typo in a recipe nobody trains in CI fails here, not an hour into someone's run."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttt_core.recipe import load_recipe

RECIPES = Path(__file__).parents[1] / "recipes"
SHIPPED = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.toml") if p.parent.name != "base")


def test_the_recipe_directory_is_found():
    assert "prmt4_ar.toml" in SHIPPED and "tiny/baseline_ar_tiny.toml" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_validates(name: str) -> None:
    load_recipe(RECIPES / name)  # raises RecipeError listing every problem, in every stage
