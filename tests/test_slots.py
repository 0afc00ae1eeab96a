"""Validation of slots and capabilities: a recurrence's unused optional slots and every component's
needs, checked with small fake components in a registry of their own (no torch, no plugins)."""

from __future__ import annotations

import attrs
import pytest

from ttt_core.errors import RecipeError, RegistryError
from ttt_core.recipe import build_recipe, dumps_toml, tomllib
from ttt_core.registry import Provider, ProviderRegistry, Registry


@attrs.define
class Empty:
    pass


@attrs.define
class Diagonal:
    diagonal: bool = False


def registry() -> Registry:
    out = Registry()
    add = ProviderRegistry(registry=out, provider=Provider("test", "ttt-test", "0")).add
    add("task", "toy", config=Empty, factory="json:dumps")
    add("backbone", "plain", config=Empty, factory="json:dumps")
    add("backbone", "blocky", config=Empty, factory="json:dumps", provides=("layer_blocks", "packed_rows"))
    add("inner_learner", "fast", config=Empty, factory="json:dumps", needs={"backbone": ("packed_rows",)})
    add("inner_learner", "none", config=Empty, factory="json:dumps")
    add("memory_writer", "identity", config=Empty, factory="json:dumps")
    add("memory_writer", "mixer", config=Empty, factory="json:dumps")
    add("recurrence", "single", config=Empty, factory="json:dumps")
    add("recurrence", "segments", config=Diagonal, factory="json:dumps", slots=(),
        needs=lambda config: {"backbone": ("layer_blocks",)} if config.diagonal else {})
    add("recurrence", "writes", config=Empty, factory="json:dumps", slots=("memory.writer",))
    add("outer_optimizer", "adamw", config=Empty, factory="json:dumps")
    return out


def recipe_data(text: str, backbone: str = "plain") -> dict:
    return tomllib.loads(f'[task]\nname = "toy"\n[backbone]\nname = "{backbone}"\n' + text)


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        build_recipe(recipe_data(text), "x.toml", registry())
    return info.value.lines


def test_unused_slot_is_not_required_nor_resolved():
    recipe = build_recipe(recipe_data('[recurrence]\nname = "segments"\n'), "x.toml", registry())
    assert set(recipe.components) == {"task", "backbone", "recurrence", "optimizer"}
    resolved = recipe.resolved()
    assert "memory" not in resolved
    again = build_recipe(tomllib.loads(dumps_toml(resolved)), "again.toml", registry())
    assert again.resolved() == resolved


def test_a_recurrence_that_uses_some_slots():
    recipe = build_recipe(recipe_data('[recurrence]\nname = "writes"\n[memory.writer]\nname = "mixer"\n'),
                          "x.toml", registry())
    assert set(recipe.components) == {"task", "backbone", "memory.writer", "recurrence", "optimizer"}


def test_filled_unused_slot_is_refused():
    assert problems('[recurrence]\nname = "segments"\n[memory.learner]\nname = "fast"\n'
                    '[memory.writer]\nname = "identity"\n') == [
        "x.toml: [memory.learner] recurrence 'segments' does not use a memory learner: remove this table",
        "x.toml: [memory.writer] recurrence 'segments' does not use a memory writer: remove this table",
    ]


def test_stored_recipes_may_drop_unused_slots():
    data = recipe_data('[recurrence]\nname = "segments"\n[memory.learner]\nname = "fast"\n')
    recipe = build_recipe(data, "run/recipe.toml", registry(), drop_unused_slots=True)
    assert "memory.learner" not in recipe.components and "memory" not in recipe.resolved()


def test_slot_still_required_when_the_recurrence_uses_it():
    assert problems("") == ["x.toml: [memory.learner] missing: this recipe needs a [memory.learner] table with a 'name'"]


def test_needs_checked_against_provides():
    assert problems('[memory.learner]\nname = "fast"\n') == [
        "x.toml: [memory.learner] fast needs a backbone with 'packed_rows'; backbone 'plain' does not provide it"
    ]
    build_recipe(recipe_data('[memory.learner]\nname = "fast"\n', backbone="blocky"), "x.toml", registry())


def test_needs_that_depend_on_the_config():
    build_recipe(recipe_data('[recurrence]\nname = "segments"\n'), "x.toml", registry())
    assert problems('[recurrence]\nname = "segments"\ndiagonal = true\n') == [
        "x.toml: [recurrence] segments needs a backbone with 'layer_blocks'; backbone 'plain' does not provide it"
    ]


def test_needs_of_an_unknown_slot_and_a_failing_needs_function():
    reg = registry()
    add = ProviderRegistry(registry=reg, provider=Provider("test", "ttt-test", "0")).add
    with pytest.raises(RegistryError, match=r"needs: unknown slot 'backbon' \(did you mean 'backbone'\?\)"):
        add("memory_writer", "typo", config=Empty, factory="json:dumps", needs={"backbon": ("packed_rows",)})
    add("memory_writer", "typo", config=Empty, factory="json:dumps", needs=lambda config: {"backbon": ("x",)})
    add("memory_writer", "crash", config=Empty, factory="json:dumps", needs=lambda config: 1 / 0)
    with pytest.raises(RecipeError) as info:
        build_recipe(recipe_data('[memory.learner]\nname = "none"\n[memory.writer]\nname = "typo"\n'), "x.toml", reg)
    assert info.value.lines == [
        "x.toml: [memory.writer] typo needs capabilities of an unknown slot 'backbon' (did you mean 'backbone'?)"
    ]
    with pytest.raises(RecipeError) as info:
        build_recipe(recipe_data('[memory.learner]\nname = "none"\n[memory.writer]\nname = "crash"\n'), "x.toml", reg)
    assert info.value.lines == [
        "x.toml: [memory.writer] crash: cannot tell what it needs of other slots: ZeroDivisionError: division by zero"
    ]


@pytest.mark.parametrize(("declaration", "message"), [
    ({"kind": "recurrence", "slots": ("memory.lerner",)}, "slots: 'memory.lerner' is not an optional slot (did you mean 'memory.learner'?)"),
    ({"kind": "memory_writer", "slots": ()}, "only a recurrence declares the slots it uses"),
    ({"kind": "backbone", "provides": ("layer_block",)}, "unknown capability 'layer_block' (did you mean 'layer_blocks'?)"),
    ({"kind": "recurrence", "needs": {"backbone": ("packed",)}}, "unknown capability 'packed'"),
])
def test_slot_and_capability_names_are_checked_when_registered(declaration, message):
    add = ProviderRegistry(registry=Registry(), provider=Provider("test", "ttt-test", "0")).add
    kind = declaration.pop("kind")
    with pytest.raises(RegistryError) as info:
        add(kind, "x", config=Empty, factory="json:dumps", **declaration)
    assert message in str(info.value)
