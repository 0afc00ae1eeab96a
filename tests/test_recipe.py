import re

import pytest

from ttt_core.errors import RecipeError
from ttt_core.recipe import apply_overrides, dumps_toml, load_raw, load_recipe, merge
from ttt_core.registry import FIRST_PARTY

BASE = """
[task]
name = "associative_retrieval"
[backbone]
name = "llama"
layers = 2
[memory.learner]
name = "memory_tokens"
tokens = 4
"""


def problems(path, *overrides):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.lines


def test_extends_deep_merge(write):
    write("base/model.toml", BASE)
    child = write(
        "child.toml",
        """
        extends = ["base/model.toml"]
        [backbone]
        dim = 64
        heads = 2
        """,
    )
    recipe = load_recipe(child)
    assert (recipe["backbone"].config.layers, recipe["backbone"].config.dim) == (2, 64)
    assert recipe["memory.writer"].name == "identity"  # default slot
    assert recipe["recurrence"].name == "single"


def test_slot_with_new_name_is_replaced():
    base = {"memory": {"writer": {"name": "cross_attention", "heads": 4}}, "train": {"steps": 1}}
    merged = merge(base, {"memory": {"writer": {"name": "mlp", "hidden": 8}}, "train": {"seed": 2}})
    assert merged == {"memory": {"writer": {"name": "mlp", "hidden": 8}}, "train": {"steps": 1, "seed": 2}}
    same = merge(base, {"memory": {"writer": {"name": "cross_attention", "dropout": 0.1}}})
    assert same["memory"]["writer"] == {"name": "cross_attention", "heads": 4, "dropout": 0.1}


def test_set_of_a_new_name_replaces_the_slot():
    base = {"recurrence": {"name": "single", "split": "whole"}, "train": {"steps": 1}}
    swapped = apply_overrides(base, ["recurrence.name='rmt4'", "recurrence.segmenting='task'"])
    assert swapped == {"recurrence": {"name": "rmt4", "segmenting": "task"}, "train": {"steps": 1}}
    same = apply_overrides(base, ["recurrence.name='single'"])
    assert same["recurrence"] == {"name": "single", "split": "whole"}


def test_extends_cycle(write):
    write("a.toml", 'extends = ["b.toml"]\n')
    b = write("b.toml", 'extends = ["c.toml"]\n')
    write("c.toml", 'extends = ["b.toml"]\n')
    with pytest.raises(RecipeError, match=r"extends cycle: .*b.toml -> .*c.toml -> .*b.toml"):
        load_raw(b)


def test_set_overrides_are_toml_typed(write):
    path = write("r.toml", BASE)
    recipe = load_recipe(
        path,
        ["train.steps=7", "optimizer.betas=[0.9, 0.95]", "train.device=cpu", "inner.grad_mode='second'"],
    )
    assert recipe.train.steps == 7 and recipe["optimizer"].config.betas == (0.9, 0.95)
    assert recipe.train.device == "cpu" and recipe.inner.grad_mode == "second"
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=true"]) == {"a": {"b": 1, "c": {"d": True}}}


def test_resolved_round_trips_through_toml(write, tmp_path):
    path = write("r.toml", BASE)
    recipe = load_recipe(path, ["optimizer.betas=[0.8, 0.9]"])
    again = write("again.toml", dumps_toml(recipe.resolved()))
    assert load_recipe(again).resolved() == recipe.resolved()


# At least eight distinct malformed recipes, each with its exact message.


def test_unknown_option_did_you_mean(write):
    path = write("x.toml", BASE + '[memory.writer]\nname = "identity"\n[inner]\nstep = 3\n')
    assert problems(path) == [f"{path}: [inner] unknown option 'step' (did you mean 'steps'?)"]


def test_unknown_component_lists_available(write):
    path = write("x.toml", BASE + '[recurrence]\nname = "prmt5"\n')
    (line,) = problems(path)
    # with ttt-plugin-rmt installed a close name ('rmt', 'prmt4') is suggested before the list
    assert re.fullmatch(rf"{re.escape(str(path))}: \[recurrence\] unknown recurrence 'prmt5'( \(did you mean '\w+'\?\))?; available: .+", line)
    assert "single" in line.split("available: ")[1]


def test_unknown_component_from_first_party_plugin(write, monkeypatch):
    """A first-party name that is not installed names its package (a name made up here: the dev
    install has every first-party plugin)."""
    monkeypatch.setitem(FIRST_PARTY, ("memory_writer", "future_writer"), "ttt-plugin-future")
    path = write("x.toml", BASE + '[memory.writer]\nname = "future_writer"\n')
    assert problems(path) == [
        f"{path}: [memory.writer] unknown memory writer 'future_writer': it is provided by "
        "ttt-plugin-future (pip install ttt-plugin-future)"
    ]


def test_wrong_types(write):
    path = write("x.toml", BASE + '[train]\nsteps = 2.5\nseed = "one"\n')
    assert problems(path) == [
        f"{path}: [train] option 'steps': expected an integer, got float 2.5",
        f'{path}: [train] option \'seed\': expected an integer, got string "one"',
    ]


def test_out_of_range_keeps_validator_message(write):
    path = write("x.toml", BASE.replace("layers = 2", "layers = 2\ndim = 130\nheads = 4"))
    assert problems(path) == [f"{path}: [backbone] option 'dim' (130) must be divisible by 'heads' (4)"]
    path = write("y.toml", BASE + '[inner]\ngrad_mode = "secnd"\n')
    assert problems(path) == [
        f"{path}: [inner] option 'grad_mode' must be one of first, second, truncated; got 'secnd' "
        "(did you mean 'second'?)"
    ]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    assert problems(path) == [f"{path}: file not found"]


def test_missing_base(write):
    path = write("x.toml", 'extends = ["base/gone.toml"]\n' + BASE)
    lines = problems(path)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: extends 'base/gone.toml': file not found")


def test_invalid_toml_line_and_column(write):
    path = write("x.toml", "[train]\nsteps = = 3\n")
    assert problems(path) == [f"{path}: invalid TOML: Invalid value (at line 2, column 9)"]


def test_unknown_table_and_missing_slot(write):
    path = write("x.toml", '[trian]\nsteps = 3\n[task]\nname = "associative_retrieval"\n[backbone]\nname = "llama"\n')
    assert problems(path) == [
        f"{path}: unknown table 'trian' (did you mean 'train'?)",
        f"{path}: [memory.learner] missing: this recipe needs a [memory.learner] table with a 'name'",
    ]


def test_slot_without_name(write):
    path = write("x.toml", BASE.replace('name = "llama"', "dim = 64"))
    (line,) = problems(path)  # plugins installed beside the core may add more names
    assert line.startswith(f"{path}: [backbone] missing 'name' of the backbone; available: ")
    assert "llama" in line.split("available: ")[1].split(", ")  # sorted: hf (ttt-plugin-hf) may come first
    path = write("y.toml", BASE + "[optimizer]\nlr = 0.1\n")  # a slot with a default keeps its name
    assert load_recipe(path)["optimizer"].config.lr == 0.1


def test_requires_missing_plugin(write):
    path = write("x.toml", 'requires = ["ttt-plugin-nonexistent>=0.1"]\n' + BASE)
    assert problems(path) == [
        f"{path}: requires ttt-plugin-nonexistent>=0.1, which is not installed "
        "(pip install 'ttt-plugin-nonexistent>=0.1')"
    ]


def test_bad_override(write):
    path = write("x.toml", BASE)
    assert problems(path, "train.steps") == ["--set train.steps: expected KEY=VALUE, e.g. train.steps=100"]
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["train.steps=1", "train.steps.x=1"])
    assert info.value.lines == ["cannot set train.steps.x: 'train.steps' is not a table"]


def test_all_problems_reported_at_once(write):
    path = write(
        "x.toml",
        BASE + '[memory.writer]\nname = "identity"\nn_head = 2\n[optimizer]\nname = "adamw"\nlr = -1.0\n'
        '[train]\nbatch_size = 0\n',
    )
    assert problems(path) == [
        f"{path}: [memory.writer] unknown option 'n_head'",
        f"{path}: [optimizer] option 'lr' must be > 0; got -1.0",
        f"{path}: [train] option 'batch_size' must be > 0; got 0",
    ]


def test_paths_in_a_recipe_are_relative_to_it(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write("recipes/base.toml", BASE + '[train]\ninit_from = "../runs/a"\n')
    path = write("recipes/r.toml", 'extends = ["base.toml"]\n[[stages]]\nname = "s"\nsteps = 1\n'
                                   'set = { "train.init_from" = "../runs/b" }\n')
    recipe = load_recipe(path)
    assert recipe.train.init_from == str(tmp_path / "runs" / "a")  # the file that writes it, not the cwd
    assert recipe.stages[0].recipe.train.init_from == str(tmp_path / "runs" / "b")
    # --set: against the working directory, stored absolute (a run directory keeps the recipe)
    assert load_recipe(path, ["train.init_from=runs/c"]).train.init_from == str(tmp_path / "runs" / "c")
    # a relative directory handed to a later stage is made absolute: its stored recipe still names it
    assert recipe.with_init_from("runs/x").train.init_from == str(tmp_path / "runs" / "x")
