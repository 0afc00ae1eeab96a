"""`ttt data`: look at what a recipe's task produces, or write a split to a file."""

from __future__ import annotations

from pathlib import Path

from ttt_core.errors import TTTError
from ttt_core.interfaces import ExportsData
from ttt_core.recipe import load_recipe


def data_command(recipe_path: str, n: int = 3, split: str = "train", write: str | None = None, overrides=()) -> int:
    from ttt_core.build import build_task

    recipe = load_recipe(recipe_path, overrides)
    task = build_task(recipe)
    if write is not None:
        if not isinstance(task, ExportsData):
            raise TTTError(f"{recipe.source}: task '{recipe['task'].name}' cannot write datasets (it has no export)")
        paths = task.export(Path(write), fmt="parquet" if write.endswith("parquet") else "jsonl", train_samples=n)
        print("\n".join(str(p) for p in paths))
        return 0
    for index in range(n):
        print(f"--- {split} sample {index}")
        print(task.describe(split, index))
    return 0
