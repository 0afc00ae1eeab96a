"""`[curriculum] carry_set`: each stage's `set` on top of the previous stage's; the stages of the
shipped curricula are the ones they were when every stage spelled out its whole `set`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttt_core.errors import RecipeError
from ttt_core.recipe import dumps_toml, load_recipe, tomllib

RECIPES = Path(__file__).parents[1] / "recipes"
TINY = (RECIPES / "tiny" / "baseline_ar_tiny.toml").as_posix()


def stages_of(recipe):
    return [(s.name, s.steps, s.overrides) for s in recipe.stages]


def test_carried_sets(write):
    path = write("c.toml", f"""
        extends = ["{TINY}"]
        [curriculum]
        carry_set = true
        [[stages]]
        name = "a"
        steps = 1
        set = {{ "optimizer.lr" = 3e-4, "task.dataset" = "N2-K4V4-S2_16-32_1M", "train.init_from" = "w" }}
        [[stages]]
        name = "b"
        steps = 2
        set = {{ "task.dataset" = "N1-K4V4-S1_16-32_1M" }}
        [[stages]]
        name = "c"
        steps = 3
    """)
    recipe = load_recipe(path)
    a, b, c = recipe.stages
    assert a.overrides["train.init_from"].endswith("w")
    # init_from is not carried; b sets the dataset back to the recipe's own: its stored `set` leaves it out
    assert b.overrides == c.overrides == {"optimizer.lr": 3e-4}
    assert c.recipe["task"].config.dataset == "N1-K4V4-S1_16-32_1M" and c.recipe["optimizer"].config.lr == 3e-4
    # the stored recipe spells every stage out, and reads back as the same stages without [curriculum]
    stored = tomllib.loads(dumps_toml(recipe.resolved()))
    assert "curriculum" not in stored
    again = load_recipe(write("again.toml", dumps_toml(recipe.resolved())))
    assert [s.recipe.resolved() for s in again.stages] == [s.recipe.resolved() for s in recipe.stages]
    # without carrying, stage c is the recipe itself
    plain = load_recipe(path, ["curriculum.carry_set=false"])
    assert plain.stages[2].overrides == {} and plain.stages[2].recipe["optimizer"].config.lr != 3e-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[curriculum]\ncarry_set = 1\n", "[curriculum] option 'carry_set': expected a boolean (true or false), got integer 1"),
        ("[curriculum]\ncary_set = true\n", "[curriculum] unknown option 'cary_set' (did you mean 'carry_set'?)"),
    ],
)
def test_bad_curriculum_table(write, text, message):
    path = write("c.toml", f'extends = ["{TINY}"]\n{text}[[stages]]\nname = "a"\nsteps = 1\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.lines == [f"{path}: {message}"]


def test_curriculum_without_stages(write):
    path = write("c.toml", f'extends = ["{TINY}"]\n[curriculum]\ncarry_set = true\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.lines == [f"{path}: [curriculum] applies to [[stages]] only, and this recipe has none"]


WARM = {"optimizer.warmup_steps": 20}
N2 = {"task.dataset": "N2-K4V4-S2_16-32_1M"}
SHIPPED = {
    "baseline_ar_curriculum.toml": [("n1", 1500, {}), ("n2", 1500, N2)],
    "tiny/curriculum_ar_tiny.toml": [("n1", 4, {}), ("n2", 4, {**N2, "optimizer.lr": 3e-4})],
    "prmt4_ar_curriculum.toml": [
        ("n1-short", 300, {"task.dataset": "N1-K4V4-S1_10-14_1M", "optimizer.schedule": "constant"}),
        ("n1-mid", 300, {"task.dataset": "N1-K4V4-S1_12-22_1M", "optimizer.schedule": "constant", **WARM}),
        ("n1", 1200, WARM),
        ("n2-short", 600, {"task.dataset": "N2-K4V4-S2_10-14_1M", **WARM, "optimizer.lr": 3e-4}),
        ("n2", 1500, {**N2, **WARM, "optimizer.lr": 3e-4}),
    ],
    "prmt4_lm_ar_curriculum.toml": [
        ("n1", 250, {"train.eval_every": 250, "train.checkpoint_every": 250}),
        ("n2-one-segment", 600, {"task.dataset": "N2-K4V4-S1_24-32_1M", "optimizer.lr": 3e-4, **WARM}),
        ("n2", 300, {**N2, "optimizer.lr": 3e-4, **WARM, "train.eval_every": 150, "train.checkpoint_every": 150}),
        *[(name, steps, {**N2, "optimizer.lr": 3e-4, **WARM, "train.eval_every": 250, "train.checkpoint_every": 250})
          for name, steps in (("n2-more", 500), ("n2-more-2", 500), ("n2-long", 1000), ("n2-long-2", 1000))],
        *[(name, 1000, {**N2, "optimizer.lr": 1e-4, **WARM, "train.eval_every": 250, "train.checkpoint_every": 125})
          for name in ("n2-long-3-lr1e-4", "n2-long-4-lr1e-4")],
        ("n2-inner3-lr1e-4", 1000, {**N2, "inner.steps": 3, "optimizer.lr": 1e-4, **WARM, "train.eval_every": 250,
                                    "train.checkpoint_every": 125}),
    ],
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_curricula_keep_their_stages(name):
    if name.startswith("prmt4"):
        pytest.importorskip("ttt_plugin_rmt")
    assert stages_of(load_recipe(RECIPES / name)) == SHIPPED[name]
