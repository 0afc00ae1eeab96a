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


def summary(run_dir: Path, report: dict) -> str:
    from ttt_core.train.trainer import format_metric, metric_label

    test, headline = report["test"], report.get("headline", "exact_match")
    return (
        f"{run_dir}: {report['steps']} steps in {report['train_time_s']} s; test {metric_label(headline)} "
        f"{format_metric(headline, test[headline])} on {test['samples']} samples (report.md)"
    )
