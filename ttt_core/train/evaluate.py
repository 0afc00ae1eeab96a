"""`ttt eval RUN_DIR`: evaluate a run's checkpoint (plain or DeepSpeed), also on another dataset setting (--set)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ttt_core.build import Built, build
from ttt_core.errors import TTTError
from ttt_core.objective import evaluate
from ttt_core.recipe import Recipe, load_recipe
from ttt_core.train.checkpoint import load_model_state, load_weights
from ttt_core.train.device import pick_device
from ttt_core.train.stages import stage_dir


class LoadedRun(NamedTuple):
    recipe: Recipe
    built: Built
    device: torch.device
    checkpoint: Path
    step: int | None


def load_run(run_dir: str | Path, checkpoint: str | None = None, overrides: Sequence[str] = ()) -> LoadedRun:
    """A run's recipe (with `overrides`) and model with its checkpoint's weights; a curriculum
    directory gives its last stage."""
    run = Path(run_dir)
    if not (run / "recipe.toml").exists():
        raise TTTError(f"{run}: not a run directory (no recipe.toml)")
    recipe = load_recipe(run / "recipe.toml", overrides, stored=True)
    if recipe.stages:  # a curriculum: its last stage's model
        run = stage_dir(run, recipe.stages[-1])
        recipe = load_recipe(run / "recipe.toml", overrides, stored=True)
    device = pick_device(recipe.train.device)
    path, state = load_model_state(Path(checkpoint) if checkpoint else run)
    built = build(recipe, device)
    load_weights(built.model, state, path, "the checkpoint")
    return LoadedRun(recipe, built, device, path, state.get("step"))


def eval_command(run_dir: str, split: str = "test", checkpoint: str | None = None, overrides: list[str] = ()) -> int:
    run = load_run(run_dir, checkpoint, overrides)
    recipe, built = run.recipe, run.built
    samples = recipe.eval.samples if split == "test" else recipe.eval.val_samples
    result = evaluate(built.model, built.task, split, samples, recipe.eval.batch_size, run.device, recipe.train.precision)
    result = {"checkpoint": str(run.checkpoint), "step": run.step, "split": split, "overrides": list(overrides), **result}
    print(json.dumps(result, indent=2))
    return 0
