"""`ttt run`: pick the run directory, resume if it has a checkpoint, train (in this process, or on
several ranks through DeepSpeed: `ttt_core.train.distributed`)."""

from __future__ import annotations

from pathlib import Path

from ttt_core.errors import TTTError
from ttt_core.recipe import load_recipe


def resolve_run(recipe_or_dir: str, out: str | None, overrides: list[str]):
    """(recipe, run_dir) for a recipe file, or for an existing run directory (resume)."""
    path = Path(recipe_or_dir)
    if path.is_dir():
        stored = path / "recipe.toml"
        if not stored.exists():
            raise TTTError(f"{path}: not a run directory (no recipe.toml)")
        return load_recipe(stored, overrides), Path(out) if out else path
    recipe = load_recipe(path, overrides)
    return recipe, Path(out) if out else Path("runs") / path.stem


def run_command(recipe_or_dir: str, out: str | None, overrides: list[str], nproc: int | None = None, quiet: bool = False) -> int:
    recipe, run_dir = resolve_run(recipe_or_dir, out, overrides)
    if recipe.stages:
        from ttt_core.train.stages import run_stages

        deepspeed = recipe.distributed.backend == "deepspeed"
        if not deepspeed and nproc not in (None, 1):
            raise TTTError(f"{recipe.source}: --nproc {nproc} needs [distributed] backend = \"deepspeed\"")
        run_stages(recipe, run_dir, quiet, train_stage=_deepspeed_stage(nproc, quiet) if deepspeed else None)
        print(f"{run_dir}: {len(recipe.stages)} stages done (report.md)")
        return 0
    if recipe.distributed.backend == "deepspeed":
        from ttt_core.train.distributed import checkpoint_dir, launch, read_marker

        if nproc is None:  # resume with as many ranks as saved the checkpoint
            nproc = (read_marker(checkpoint_dir(run_dir)) or {}).get("world_size", 1)
        return launch(recipe, run_dir, recipe_or_dir, list(overrides), nproc, quiet)
    if nproc not in (None, 1):
        raise TTTError(
            f"{recipe.source}: --nproc {nproc} needs [distributed] backend = \"deepspeed\" "
            "(e.g. --set distributed.backend=deepspeed)"
        )
    from ttt_core.train.trainer import Trainer

    report = Trainer(recipe, run_dir, quiet=quiet).run()
    print(summary(run_dir, report))
    return 0


def _deepspeed_stage(nproc: int | None, quiet: bool):
    """Train one stage through the DeepSpeed launcher: its ranks read the stage's recipe from a file."""

    def train(recipe, directory: Path) -> dict:
        import json

        from ttt_core.recipe import dumps_toml
        from ttt_core.train.checkpoint import write_text_atomic
        from ttt_core.train.distributed import checkpoint_dir, launch, read_marker

        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "stage_recipe.toml"  # not recipe.toml: the ranks compare against that one
        write_text_atomic(path, dumps_toml(recipe.resolved()))
        ranks = nproc if nproc is not None else (read_marker(checkpoint_dir(directory)) or {}).get("world_size", 1)
        launch(recipe, directory, str(path), [], ranks, quiet)
        return json.loads((directory / "report.json").read_text())

    return train


def summary(run_dir: Path, report: dict) -> str:
    from ttt_core.train.trainer import PERCENT_METRICS, format_metric

    test, headline = report["test"], report.get("headline", "exact_match")
    value = format_metric(headline, test[headline]) + ("%" if headline in PERCENT_METRICS else "")
    return (
        f"{run_dir}: {report['steps']} steps in {report['train_time_s']} s; test {headline.replace('_', ' ')} "
        f"{value} on {test['samples']} samples (report.md)"
    )
