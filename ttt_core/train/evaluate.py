"""`ttt eval RUN_DIR`: evaluate a run's checkpoint (plain or DeepSpeed; its last, its best or a file), also
on another dataset setting (--set). The result is printed and kept in `RUN/eval/` under a name made of
the split, the checkpoint and the overrides (evaluating the same again replaces it)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ttt_core.build import Built, build
from ttt_core.errors import TTTError
from ttt_core.objective import evaluate
from ttt_core.recipe import Recipe, load_recipe
from ttt_core.train.checkpoint import CHOICES, load_model_state, load_weights, write_text_atomic
from ttt_core.train.device import pick_device
from ttt_core.train.fast import choose_fast_settings
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
    if checkpoint in CHOICES:
        path, state = load_model_state(run, checkpoint)
    else:
        path, state = load_model_state(Path(checkpoint) if checkpoint else run)
    built = build(recipe, device)
    load_weights(built.model, state, path, "the checkpoint")
    return LoadedRun(recipe, built, device, path, state.get("step"))


def result_name(split: str, checkpoint: str | None, overrides: Sequence[str]) -> str:
    """`test`, `val-best`, `test-task.dataset=N2-K4V4` ...: the file name (without .json) of an eval result."""
    if checkpoint and checkpoint not in CHOICES:
        checkpoint = Path(checkpoint).stem
    parts = [split, *([checkpoint] if checkpoint and checkpoint != "last" else []), *overrides]
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", "-".join(parts)).strip("._") or split
    if len(name) > 120:  # file names have limits; the full overrides are inside the file
        name = f"{name[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def eval_command(run_dir: str, split: str = "test", checkpoint: str | None = None, overrides: list[str] = ()) -> int:
    run = load_run(run_dir, checkpoint, overrides)
    recipe, built = run.recipe, run.built
    samples = recipe.eval.samples if split == "test" else recipe.eval.val_samples
    from ttt_core.train.console import Console

    console = Console()
    precision = choose_fast_settings(recipe.train, run.device, single_process=True)[0].precision
    result = evaluate(built.model, built.task, split, samples, recipe.eval.batch_size, run.device, precision,
                      progress=lambda batches: console.evaluating(batches, split, samples, recipe.eval.batch_size))
    result = {"checkpoint": str(run.checkpoint), "step": run.step, "split": split, "overrides": list(overrides), **result}
    text = json.dumps(result, indent=2)
    print(text)
    path = Path(run_dir) / "eval" / f"{result_name(split, checkpoint, overrides)}.json"
    write_text_atomic(path, text + "\n")
    print(f"written to {path}", file=sys.stderr)
    return 0
