"""`ttt run RECIPE --sweep KEY=V1,V2 ...`: a grid of runs, one run directory each, and a summary table.

Each `--sweep` gives a key and its values (TOML values separated by commas outside brackets and
quotes); the grid is every combination, each run the recipe with `--set` and its values. Runs go to
`OUT/NAME` (OUT: `--out`, default `runs/<recipe name>`), NAME made of the values (`lr=0.001,seed=0`,
a key's last part unless two keys share it). A run whose report is written is not trained again, so
the same command resumes a sweep. Runs train one after another in this process, or `--parallel N` at
a time as `ttt run` subprocesses (their output in `OUT/NAME/sweep.log`; torch threads split between
them). The summary (`OUT/sweep.md`, `OUT/sweep.json`) has each run's best and final validation and
test result.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ttt_core.errors import TTTError, first_line
from ttt_core.recipe.overrides import parse_override
from ttt_core.train.checkpoint import write_text_atomic
from ttt_core.train.rundir import dumps_json, format_metric, metric_label


def split_values(text: str) -> list[str]:
    """`1e-3,3e-4` -> ['1e-3', '3e-4']; commas inside [..], {..} or quotes do not split."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


def parse_sweeps(sweeps: list[str]) -> list[tuple[str, list[str]]]:
    """[(key, [value text, ...]), ...] of the `--sweep` arguments, each checked as a `--set`."""
    axes = []
    for text in sweeps:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise TTTError(f"--sweep {text}: expected KEY=V1,V2,..., e.g. optimizer.lr=1e-3,3e-4")
        items = split_values(values)
        if any(not v for v in items):
            raise TTTError(f"--sweep {text}: an empty value (two commas, or one at an end)")
        for value in items:
            parse_override(f"{key}={value}")
        if key in (k for k, _ in axes):
            raise TTTError(f"--sweep {key}: given twice; give its values in one --sweep")
        axes.append((key, items))
    return axes


def run_name(keys: list[str], values: tuple[str, ...]) -> str:
    lasts = [k.split(".")[-1] for k in keys]
    shown = [last if lasts.count(last) == 1 else key for key, last in zip(keys, lasts)]
    name = ",".join(f"{k}={v}" for k, v in zip(shown, values))
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", name)


def grid(axes: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """(run name, its --set overrides) for every combination, in order."""
    keys = [k for k, _ in axes]
    return [(run_name(keys, values), [f"{k}={v}" for k, v in zip(keys, values)])
            for values in itertools.product(*(v for _, v in axes))]


def finished_report(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "report.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_sweep(recipe_arg: str, out: str | None, overrides: list[str], sweeps: list[str], parallel: int = 1,
              quiet: bool = False) -> int:
    from ttt_core.recipe import load_recipe

    if parallel < 1:
        raise TTTError(f"--parallel {parallel}: give a number of runs at a time >= 1")
    if Path(recipe_arg).is_dir():
        raise TTTError(f"{recipe_arg}: --sweep takes a recipe, not a run directory")
    axes = parse_sweeps(sweeps)
    runs = grid(axes)
    for _, run_overrides in runs:  # every recipe of the grid is valid before anything trains
        load_recipe(recipe_arg, [*overrides, *run_overrides])
    root = Path(out) if out else Path("runs") / Path(recipe_arg).stem
    print(f"sweep: {len(runs)} runs of {recipe_arg} in {root}/", file=sys.stderr)
    status: dict[str, str] = {}
    todo = []
    for name, run_overrides in runs:
        if finished_report(root / name) is not None:
            status[name] = "done earlier"
        else:
            todo.append((name, run_overrides))
    try:
        if parallel == 1:
            _sequential(recipe_arg, root, overrides, todo, status, quiet, len(runs))
        else:
            _parallel(recipe_arg, root, overrides, todo, status, parallel)
    finally:
        table = summary_table(root, runs, status, [k for k, _ in axes])
        print(table, end="")
    return 0 if all(s in ("done", "done earlier") for s in status.values()) and len(status) == len(runs) else 1


def _sequential(recipe_arg, root, overrides, todo, status, quiet, total) -> None:
    from ttt_core.run import run_command

    for index, (name, run_overrides) in enumerate(todo, 1):
        print(f"sweep run {index}/{len(todo)}: {name}", file=sys.stderr)
        command = " ".join(["ttt run", recipe_arg, "--out", str(root / name),
                            *(f"--set {o}" for o in [*overrides, *run_overrides])])
        try:
            run_command(recipe_arg, str(root / name), [*overrides, *run_overrides], quiet=quiet, command=command)
            status[name] = "done"
        except TTTError as exc:
            status[name] = f"failed: {first_line(exc)}"
            print(f"sweep run {name} failed: {exc}", file=sys.stderr)


def _parallel(recipe_arg, root, overrides, todo, status, parallel) -> None:
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    pending, running = list(todo), {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, run_overrides = pending.pop(0)
                directory = root / name
                directory.mkdir(parents=True, exist_ok=True)
                sets = [a for o in [*overrides, *run_overrides] for a in ("--set", o)]
                log = open(directory / "sweep.log", "a")
                args = [sys.executable, "-m", "ttt_core.cli", "run", recipe_arg, "--out", str(directory), "--quiet", *sets]
                running[name] = (subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                print(f"sweep: started {name} (log: {directory / 'sweep.log'})", file=sys.stderr)
            time.sleep(0.2)
            for name, (process, log) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    del running[name]
                    status[name] = "done" if process.returncode == 0 else f"failed (exit {process.returncode}; see sweep.log)"
                    print(f"sweep: {name} {status[name]}", file=sys.stderr)
    finally:
        for name, (process, log) in running.items():  # interrupted: stop the runs (each resumes from its checkpoint)
            process.terminate()
            process.wait()
            log.close()
            status[name] = "stopped"


def _last(report: dict[str, Any]) -> dict[str, Any]:
    """A curriculum's report: its last stage's."""
    return report["stages"][-1] if isinstance(report.get("stages"), list) and report["stages"] else report


def summary_table(root: Path, runs: list[tuple[str, list[str]]], status: dict[str, str], keys: list[str]) -> str:
    rows, headline = [], None
    for name, _ in runs:
        report = finished_report(root / name)
        row: dict[str, Any] = {"run": name, "dir": str(root / name), "status": status.get(name, "not run")}
        if report is not None:
            last = _last(report)
            headline = headline or last.get("headline")
            row.update({k: last.get(k) for k in ("steps", "train_time_s", "best_val", "final_val", "test", "headline")})
        rows.append(row)
    headline = headline or "exact_match"
    label = metric_label(headline)

    def val(row: dict[str, Any], which: str) -> str:
        value = row.get(which)
        return f"{format_metric(headline, value.get(headline))} (step {value['step']})" if value else ""

    lines = [f"| run | status | steps | best val {label} | final val {label} | test {label} | test loss | train time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        test = row.get("test") or {}
        lines.append(f"| {row['run']} | {row['status']} | {row.get('steps', '')} | {val(row, 'best_val')} | "
                     f"{val(row, 'final_val')} | {format_metric(headline, test.get(headline)) if test else ''} | "
                     f"{format_metric('loss', test.get('loss')) if test else ''} | {row.get('train_time_s', '')} |")
    table = "\n".join(lines) + "\n"
    if root.exists():
        write_text_atomic(root / "sweep.md", f"# sweep over {', '.join(keys)}\n\n{table}")
        write_text_atomic(root / "sweep.json", dumps_json(rows))
    return table
