"""Curriculum runs: a recipe with `[[stages]]` trains stage after stage in one `ttt run`.

Stage k trains in `RUN/stage-NAME/` (an ordinary run directory) and starts from stage k-1's final
weights through `train.init_from` (its best validated weights with `train.init_checkpoint = "best"`). Running the command again skips every stage whose report is
written (it finished, test included) and resumes the interrupted one from its checkpoint, so a
curriculum is interrupted and resumed exactly like a single run. `RUN/recipe.toml` holds the staged
recipe (`ttt run RUN` resumes), `RUN/report.json` / `report.md` every stage's test result.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ttt_core.errors import TTTError
from ttt_core.recipe import Recipe, Stage, dumps_toml
from ttt_core.train.checkpoint import write_text_atomic
from ttt_core.train.rundir import check_run_dir, dumps_json, make_run_dir, stages_markdown, summary
from ttt_core.train.trainer import Trainer


def stage_dir(run_dir: Path, stage: Stage) -> Path:
    return Path(run_dir) / f"stage-{stage.name}"


def stage_recipes(recipe: Recipe, run_dir: Path) -> list[tuple[Stage, Recipe, Path]]:
    """(stage, its recipe with `init_from` set to the previous stage, its directory), in order."""
    out, previous = [], None
    for stage in recipe.stages:
        staged = stage.recipe if previous is None else stage.recipe.with_init_from(str(previous))
        previous = stage_dir(run_dir, stage)
        out.append((stage, staged, previous))
    return out


def finished(directory: Path, steps: int) -> dict[str, Any] | None:
    """The stage's report if it trained all `steps` (or stopped early) and was tested, else None."""
    path = directory / "report.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TTTError(f"{path}: unreadable stage report ({exc}); remove it to train the stage again") from None
    return report if report.get("steps", 0) >= steps or report.get("stopped_early") else None


def run_stages(recipe: Recipe, run_dir: Path, quiet: bool = False, train_stage=None,
               command: str | None = None) -> dict[str, Any]:
    """Train every unfinished stage in order; return (and write) the curriculum's report.

    `train_stage(recipe, directory)` trains one stage and returns its report (default: the
    single-process `Trainer`; `ttt run` passes the DeepSpeed launcher for DeepSpeed recipes).
    """
    run_dir = Path(run_dir)
    make_run_dir(run_dir)
    check_run_dir(recipe, run_dir)  # its stages' reports belong to this recipe only
    write_text_atomic(run_dir / "recipe.toml", dumps_toml(recipe.resolved()))
    if train_stage is None:

        def train_stage(stage_recipe: Recipe, directory: Path) -> dict[str, Any]:
            resume = f"ttt run {shlex.quote(str(run_dir))}"  # the curriculum, not the stage alone
            report = Trainer(stage_recipe, directory, quiet=quiet, command=command, resume_command=resume).run()
            print(summary(directory, report))  # (DeepSpeed's rank 0 prints its own)
            return report

    results = []
    for stage, staged, directory in stage_recipes(recipe, run_dir):
        report = finished(directory, stage.steps)
        if report is not None:
            print(f"stage {stage.name}: finished earlier ({directory}), skipped", file=sys.stderr)
        else:
            if not quiet:
                print(f"stage {stage.name}: {stage.steps} steps in {directory}", file=sys.stderr)
            report = train_stage(staged, directory)
        results.append({"stage": stage.name, "dir": str(directory), **report})
    report = {"recipe": recipe.source, "stages": results}
    write_text_atomic(run_dir / "report.json", dumps_json(report))
    write_text_atomic(run_dir / "report.md", stages_markdown(run_dir, results))
    return report

