"""`ttt eval RUN_DIR`: evaluate a run's checkpoint (plain or DeepSpeed), also on another dataset setting (--set)."""

from __future__ import annotations

import json
from pathlib import Path

from ttt_core.errors import TTTError
from ttt_core.recipe import load_recipe
from ttt_core.train.checkpoint import load_model_state


def eval_command(run_dir: str, split: str = "test", checkpoint: str | None = None, overrides: list[str] = ()) -> int:
    from ttt_core.train.build import build
    from ttt_core.train.trainer import evaluate, pick_device

    run = Path(run_dir)
    if not (run / "recipe.toml").exists():
        raise TTTError(f"{run}: not a run directory (no recipe.toml)")
    recipe = load_recipe(run / "recipe.toml", overrides)
    if recipe.stages:  # a curriculum: its last stage's model
        from ttt_core.train.stages import stage_dir

        run = stage_dir(run, recipe.stages[-1])
        recipe = load_recipe(run / "recipe.toml", overrides)
    path, state = load_model_state(Path(checkpoint) if checkpoint else run)
    device = pick_device(recipe.train.device)
    built = build(recipe, device)
    try:
        built.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise TTTError(f"{path}: does not fit the recipe's model: {str(exc).splitlines()[0]}") from None
    samples = recipe.eval.samples if split == "test" else recipe.eval.val_samples
    result = evaluate(built.model, built.task, split, samples, recipe.eval.batch_size, device, recipe.train.precision)
    result = {"checkpoint": str(path), "step": state["step"], "split": split, "overrides": list(overrides), **result}
    print(json.dumps(result, indent=2))
    return 0
