"""`ttt run`: pick the run directory, resume if it has a checkpoint, train: in this process
(`ttt_core.train`), or on several ranks through DeepSpeed (`ttt_core.distributed`). A recipe with
`[[stages]]` trains stage after stage either way (`ttt_core.train.stages`)."""

from __future__ import annotations

import json
from pathlib import Path

from ttt_core.errors import TTTError
from ttt_core.recipe import Recipe, dumps_toml
from ttt_core.train.checkpoint import checkpoint_dir, read_marker, write_text_atomic
from ttt_core.train.rundir import make_run_dir, resolve_run, summary


def run_command(recipe_or_dir: str, out: str | None, overrides: list[str], nproc: int | None = None, quiet: bool = False,
                command: str | None = None) -> int:
    recipe, run_dir = resolve_run(recipe_or_dir, out, overrides)
    deepspeed = recipe.distributed.backend == "deepspeed"
    if not deepspeed and nproc not in (None, 1):
        raise TTTError(
            f"{recipe.source}: --nproc {nproc} needs [distributed] backend = \"deepspeed\" "
            "(e.g. --set distributed.backend=deepspeed)"
        )
    if recipe.stages:
        from ttt_core.train.stages import run_stages

        run_stages(recipe, run_dir, quiet, train_stage=_deepspeed_stage(nproc, quiet) if deepspeed else None,
                   command=command)
        print(f"{run_dir}: {len(recipe.stages)} stages done (report.md)")
        return 0
    if deepspeed:
        from ttt_core.distributed.launch import launch

        return launch(recipe, run_dir, recipe_or_dir, list(overrides), _ranks(nproc, run_dir), quiet)
    from ttt_core.train.trainer import Trainer

    report = Trainer(recipe, run_dir, quiet=quiet, command=command).run()
    print(summary(run_dir, report))
    return 0


def _ranks(nproc: int | None, run_dir: Path) -> int:
    """--nproc, else as many ranks as saved the checkpoint being resumed, else 1."""
    if nproc is not None:
        return nproc
    return (read_marker(checkpoint_dir(run_dir)) or {}).get("world_size", 1)


def _deepspeed_stage(nproc: int | None, quiet: bool):
    """Train one stage through the DeepSpeed launcher: its ranks read the stage's recipe from a file."""

    def train(recipe: Recipe, directory: Path) -> dict:
        from ttt_core.distributed.launch import launch

        make_run_dir(directory)
        path = directory / "stage_recipe.toml"  # not recipe.toml: the ranks compare against that one
        write_text_atomic(path, dumps_toml(recipe.resolved()))
        launch(recipe, directory, str(path), [], _ranks(nproc, directory), quiet)
        return json.loads((directory / "report.json").read_text())

    return train
