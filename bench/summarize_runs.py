"""One machine-readable summary of the recorded training runs: `bench/results/runs.csv`.

A row per run (a curriculum gives a row per stage) says what ran it (`command`, `recipe`), on what
(`dataset`), for how long (`steps`, `train_time_s`), what it scored (`headline`, `test_value`, the
validation curve `val`) and the commit that recorded it. The run directory itself (metrics.jsonl,
recipe.toml, report.json) stays out of git: `command` regenerates it under `runs/`, and this script
rebuilds the row from it.

    python bench/summarize_runs.py runs/NAME [runs/OTHER ...] [--command "ttt run ..."] [--notes TEXT]

adds or updates the row of each run (keyed by its path under `--root`, default `runs`); a row's
`command` and `notes` are kept unless given. Test-split breakdowns a run directory holds
(`accuracy_by_segment*.md`, written by `bench/accuracy_by_segment.py`) are copied to
`bench/results/accuracy_by_segment/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results"
SUMMARY = RESULTS / "runs.csv"
SEGMENT_REPORTS = RESULTS / "accuracy_by_segment"

COLUMNS = (
    "run",  # the run's path under runs/ (a curriculum stage: CURRICULUM/stage-NAME)
    "status",  # finished, or stopped (no report.json: cut short, diverged or stalled; its test
    #            result, if any, is of the checkpoint `ttt eval RUN > RUN/eval.json` evaluated)
    "recurrence",  # recurrence.name: single (the baseline's memory tokens), rmt, rmt4, prmt4
    "dataset",  # task.dataset, or the text files of an LM task
    "headline",  # the task's headline metric
    "test_value",  # the headline on the test split, as report.json has it (exact match: a fraction)
    "test_loss",
    "test_samples",
    "test_other",  # the task's other test metrics: "NAME:VALUE ..."
    "steps",  # steps trained (the last logged step of a stopped run)
    "planned_steps",  # the recipe's train.steps
    "train_time_s",  # training time as the run measured it (evaluation excluded)
    "val",  # validation headline by step: "STEP:VALUE ..."
    "val_loss",  # validation loss by step
    "last_train_loss",  # the training loss of the last logged step
    "threads",
    "compile",
    "precision",
    "init_from",
    "recipe",  # the recipe the run was started from
    "stage",  # the curriculum stage, if any
    "command",  # the command that ran it (output folder named after `run`)
    "extra_sets",  # the --set that today's recipe files need on top of `command` to give the run's
    #                recipe (empty: unchanged since; "?": the command's recipe does not load here)
    "commit",  # the commit that recorded the run (its code, or that commit's parent's)
    "raw_path",  # where the run directory is in git at `commit` (metrics.jsonl, recipe.toml, report.json);
    #              empty: never committed (its `command` regenerates it)
    "torch",
    "notes",
)
KEPT_COLUMNS = ("command", "notes")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a later row of a step repeated after a resume replaces the earlier."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["split"], row["step"])] = row
    return sorted(rows.values(), key=lambda row: (row["step"], row["split"]))


def number(value: Any, digits: int = 6) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def decimals(value: float, places: int = 4) -> str:
    return f"{value:.{places}f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


def curve(rows: list[dict[str, Any]], key: str) -> str:
    return " ".join(f"{row['step']}:{decimals(row[key])}" for row in rows if key in row)


def dataset_of(task: dict[str, Any]) -> str:
    if "dataset" in task:
        return str(task["dataset"])
    if "glob" in task:  # a text task (lm_text)
        where = ",".join(task.get("paths") or []) or "the Python standard library"
        return f"{task.get('name')}: {task['glob']} in {where}, seq_len {task.get('seq_len', '')}"
    options = ", ".join(f"{key} {task[key]}" for key in ("tasks", "length") if key in task)  # BABILong
    return f"{task.get('name')}: {options}" if options else str(task.get("name"))


def recorded_commit(run_dir: Path) -> str:
    """The last commit that changed the run's files if git tracks them, else the checked-out commit."""
    def git(where: Path, *args: str) -> str:
        result = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    files = [name for name in ("metrics.jsonl", "report.json", "recipe.toml") if (run_dir / name).exists()]
    return git(run_dir, "log", "-1", "--format=%h", "--", *files) or git(REPOSITORY, "rev-parse", "--short", "HEAD")


def tracked_path(run_dir: Path) -> str:
    """The run directory's path in the repository if git tracks its metrics, else ""."""
    result = subprocess.run(["git", "ls-files", "--full-name", "metrics.jsonl"], cwd=run_dir, capture_output=True,
                            text=True)
    return result.stdout.strip().removesuffix("/metrics.jsonl") if result.returncode == 0 else ""


def summarize(run_dir: Path, name: str) -> dict[str, str]:
    """The measured columns of one run directory (one that holds metrics.jsonl and recipe.toml)."""
    recipe = tomllib.loads((run_dir / "recipe.toml").read_text())
    metrics = read_metrics(run_dir / "metrics.jsonl")
    report_path, eval_path = run_dir / "report.json", run_dir / "eval.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    evaluated = json.loads(eval_path.read_text()) if eval_path.exists() and not report else {}
    versions_path = run_dir / "versions.json"
    versions = json.loads(versions_path.read_text()) if versions_path.exists() else {}
    train = [row for row in metrics if row["split"] == "train"]
    val = [row for row in metrics if row["split"] == "val"]
    headline = report.get("headline") or ("exact_match" if any("exact_match" in row for row in metrics)
                                          else "bits_per_byte")
    test = report.get("test") or evaluated
    if evaluated:  # a stopped run's checkpoint evaluated by `ttt eval RUN > RUN/eval.json`
        train = [row for row in train if row["step"] <= evaluated["step"]]
        val = [row for row in val if row["step"] <= evaluated["step"]]
    recipe_name, _, stage = str(report.get("recipe", "")).partition(": stage ")
    stage = stage or (run_dir.name.removeprefix("stage-") if run_dir.name.startswith("stage-") else "")
    settings = recipe.get("train", {})
    return {
        "run": name,
        "status": "finished" if report else "stopped",
        "recurrence": str(recipe.get("recurrence", {}).get("name", "")),
        "dataset": dataset_of(recipe.get("task", {})),
        "headline": headline,
        "test_value": number(test.get(headline)),
        "test_loss": number(test.get("loss")),
        "test_samples": number(test.get("samples")),
        "test_other": " ".join(f"{key}:{number(value)}" for key, value in test.items() if isinstance(value, float)
                               and key not in (headline, "loss")),
        "steps": number(report.get("steps", evaluated.get("step", metrics[-1]["step"] if metrics else ""))),
        "planned_steps": number(settings.get("steps")),
        "train_time_s": number(report.get("train_time_s", round(train[-1]["time"], 1) if train else "")),
        # (a stopped run: the time logged at its last training step, or at the evaluated checkpoint's)
        "val": curve(val, headline),
        "val_loss": curve(val, "loss"),
        "last_train_loss": decimals(train[-1]["loss"]) if train else "",
        "threads": number(settings.get("threads")),
        "compile": number(settings.get("compile", False)).lower(),
        "precision": str(settings.get("precision", "fp32")),
        "init_from": str(settings.get("init_from", "") or ""),
        "recipe": recipe_name,
        "stage": stage.strip("'"),
        "commit": recorded_commit(run_dir),
        "raw_path": tracked_path(run_dir),
        "torch": str(versions.get("torch", "")),
    }


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return repr(value)


def command_recipe(command: str) -> tuple[str, list[str]] | None:
    """The recipe and --set overrides of the `ttt run` in `command`, if there is one."""
    for part in command.replace("&&", ";").split(";"):
        words = shlex.split(part)
        if words[:2] == ["ttt", "run"] and len(words) > 2:
            sets = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]
            return words[2], sets
    return None


def extra_sets(run_dir: Path, command: str, stage: str) -> str:
    """The keys of the run's stored recipe that `command` run today would give otherwise, as --set.

    Keys a recipe no longer has, or that the run's recipe did not have yet, are not compared; nor is
    train.init_from, a path that the command names (a curriculum's runner fills in its stages')."""
    from ttt_core import load_recipe  # noqa: PLC0415 (only this column needs the framework)

    parsed = command_recipe(command)
    if parsed is None:
        return ""
    path, sets = parsed
    if not Path(path).exists() and (REPOSITORY / path).exists():  # run from elsewhere than the repository
        path = str(REPOSITORY / path)
    try:
        recipe = load_recipe(path, sets)
        if recipe.stages:
            recipe = next(item.recipe for item in recipe.stages if item.name == stage)
        today = flatten(recipe.resolved())
    except Exception:  # noqa: BLE001 (a recipe or run directory that is not there now)
        return "?"
    stored = flatten(tomllib.loads((run_dir / "recipe.toml").read_text()))
    skip = {"description", "requires", "train.init_from"}  # init_from: a path, named by the command
    return " ".join(set_option(key, value) for key, value in stored.items()
                    if key not in skip and not key.startswith("stages") and key in today and today[key] != value)


def set_option(key: str, value: Any) -> str:
    text = f"{key}={toml_literal(value)}"
    return f'--set "{text}"' if any(char in text for char in " '[") else f"--set {text}"


def run_directories(path: Path) -> list[Path]:
    """The run directories at `path`: itself, or its `stage-*` folders for a curriculum."""
    stages = sorted(p for p in path.glob("stage-*") if (p / "metrics.jsonl").exists())
    if stages:
        return stages
    if (path / "metrics.jsonl").exists() and (path / "recipe.toml").exists():
        return [path]
    raise SystemExit(f"{path}: not a run directory (no metrics.jsonl and recipe.toml, no stage-* folders)")


def segment_report_name(run: str, filename: str) -> str:
    """accuracy_by_segment[_SUFFIX].md of run a/b (or a/stage-s) -> b[_SUFFIX].md (a_stage-s[_SUFFIX].md)."""
    parts = run.split("/")
    base = "_".join(parts[-2:]) if parts[-1].startswith("stage-") and len(parts) > 1 else parts[-1]
    return base + filename.removeprefix("accuracy_by_segment")


def read_summary(path: Path = SUMMARY) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_summary(rows: list[dict[str, str]], path: Path = SUMMARY) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in COLUMNS})


def update(rows: list[dict[str, str]], new: dict[str, str]) -> None:
    """Replace the row of `new["run"]` (keeping its command and notes unless `new` has them) or append."""
    for index, row in enumerate(rows):
        if row["run"] == new["run"]:
            kept = {column: row.get(column, "") for column in KEPT_COLUMNS if not new.get(column)}
            rows[index] = {**row, **new, **kept}
            return
    rows.append(new)


def default_command(row: dict[str, str]) -> str:
    out = row["run"].rsplit("/stage-", 1)[0] if row["stage"] else row["run"]
    return f"ttt run {row['recipe']} --out runs/{out}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, default=Path("runs"), help="run names are paths under it")
    parser.add_argument("--command", help="the command that ran it (default: the row's, else `ttt run RECIPE`)")
    parser.add_argument("--notes", help="what the numbers do not say (stopped why, resumed, ...)")
    parser.add_argument("--commit", help="the commit of the code that ran it (default: see recorded_commit)")
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    args = parser.parse_args()
    rows = read_summary(args.summary)
    SEGMENT_REPORTS.mkdir(exist_ok=True)
    for path in args.run_dirs:
        for run_dir in run_directories(path):
            name = run_dir.resolve().relative_to(args.root.resolve()).as_posix()
            row = summarize(run_dir, name)
            row.update({key: value for key, value in
                        (("command", args.command), ("notes", args.notes), ("commit", args.commit)) if value})
            update(rows, row)
            stored = next(r for r in rows if r["run"] == name)
            stored["command"] = stored.get("command") or default_command(stored)
            stored["recipe"] = stored["recipe"] or (command_recipe(stored["command"]) or ("",))[0]
            stored["extra_sets"] = extra_sets(run_dir, stored["command"], stored["stage"])
            for report in sorted(run_dir.glob("accuracy_by_segment*.md")):
                shutil.copyfile(report, SEGMENT_REPORTS / segment_report_name(name, report.name))
            print(f"{args.summary}: {name}")
    write_summary(rows, args.summary)


if __name__ == "__main__":
    main()
