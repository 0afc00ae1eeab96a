"""Registration (cheap, lazy), config errors, the recipes, and a few training steps of each tiny recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ttt_core.errors import RecipeError
from ttt_core.plugins import create_host
from ttt_core.recipe import load_recipe
from ttt_core.train.trainer import Trainer

from ttt_plugin_rmt import plugin
from ttt_plugin_rmt.rmt_config import RMT4Config, RMTConfig

RECIPES = Path(__file__).parents[3] / "recipes"
# the recipes live in the source tree; a plugin installed alone (tests/test_plugin_install.py) has none
needs_recipes = pytest.mark.skipif(not RECIPES.is_dir(), reason="recipes live in the source tree")


@pytest.fixture(scope="module")
def host():
    return create_host(extra_plugins=(("rmt", plugin),))


def test_plugin_module_imports_no_torch() -> None:
    code = "import sys, ttt_plugin_rmt.plugin; print([m for m in ('torch', 'ttt_plugin_rmt.rmt', 'ttt_plugin_rmt.rmt4') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_recurrences_are_registered_and_build(host) -> None:
    registry = host.registry["recurrence"]
    assert registry.get("rmt").config is RMTConfig and registry.get("rmt4").config is RMT4Config
    backbone = host.registry["backbone"].get("llama").build(host.registry["backbone"].get("llama").config(layers=1, dim=24, heads=2), vocab_size=10)
    rmt = registry.get("rmt").build(RMTConfig(memory_tokens=5), backbone=backbone)
    assert rmt.memory.shape == (5, 24)
    assert not list(registry.get("rmt4").build(RMT4Config(), backbone=backbone).parameters())


@needs_recipes
@pytest.mark.parametrize(
    "override, message",
    [
        ("recurrence.k2=0", "option 'k2' must be >= 1 (leave it out for full backpropagation); got 0"),
        ("recurrence.segmenting='chunk'", "option 'segmenting' must be one of task, chunks; got 'chunk' (did you mean 'chunks'?)"),
        ("recurrence.chunk_size=0", "option 'chunk_size' must be > 0; got 0"),
        ("recurrence.memory_token=3", "unknown option 'memory_token' (did you mean 'memory_tokens'?)"),
    ],
)
def test_bad_options_are_one_line_errors(host, override: str, message: str) -> None:
    recipe = str(RECIPES / "tiny" / "rmt_ar_tiny.toml")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, [override], registry=host.registry)
    assert str(info.value) == f"{recipe}: [recurrence] {message}"


@needs_recipes
@pytest.mark.parametrize("name", ["rmt_ar", "rmt_ar_n1", "rmt4_ar", "rmt4_ar_n1", "tiny/rmt_ar_tiny", "tiny/rmt4_ar_tiny"])
def test_recipes_validate(host, name: str) -> None:
    recipe = load_recipe(RECIPES / f"{name}.toml", registry=host.registry)
    assert recipe["recurrence"].name in ("rmt", "rmt4")


@needs_recipes
@pytest.mark.parametrize("name", ["rmt_ar_tiny", "rmt4_ar_tiny"])
def test_tiny_recipe_trains(host, tmp_path, name: str) -> None:
    torch.set_num_threads(1)
    overrides = ["train.steps=20", "train.log_every=1", "train.eval_every=20", "optimizer.lr=3e-3", "optimizer.warmup_steps=0"]
    recipe = load_recipe(RECIPES / "tiny" / f"{name}.toml", overrides, registry=host.registry)
    report = Trainer(recipe, tmp_path, quiet=True).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2  # the loss falls over 20 steps for both
    assert 0.0 <= report["test"]["exact_match"] <= 1.0


@needs_recipes
def test_a_run_directory_that_stored_an_unused_learner_resumes_and_evaluates(tmp_path, capsys) -> None:
    """Run directories of earlier versions stored the unused `[memory.learner]` of rmt and prmt4
    recipes: `ttt eval` and resuming them must not refuse it."""
    from ttt_core.cli import main

    run = tmp_path / "run"
    small = ["--set", "eval.samples=8", "--set", "eval.val_samples=8", "--quiet"]
    assert main(["run", str(RECIPES / "tiny" / "prmt4_tiny.toml"), "--out", str(run), "--set", "train.steps=1", *small]) == 0
    stored = run / "recipe.toml"
    stored.write_text(stored.read_text() + '\n[memory.learner]\nname = "memory_tokens"\ntokens = 8\n')
    assert main(["eval", str(run)]) == 0
    assert main(["run", str(run), "--set", "train.steps=2", *small]) == 0
    assert "Traceback" not in capsys.readouterr().err
