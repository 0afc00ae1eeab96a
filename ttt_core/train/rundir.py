"""The run directory: which recipe it belongs to, its metrics log, its reports, and the one-line
summary `ttt run` prints.

A run directory belongs to one recipe (`recipe.toml`, up to the options in `RESUMABLE_CHANGES`).
Running another recipe into a directory that holds results of the first (a checkpoint, metrics, a
report) is refused, with or without a checkpoint: the rows of two recipes would mix. A directory that
holds only the recipe (a run stopped before its first step) is taken over. A run that starts from step
0 starts `metrics.jsonl` anew; a resumed one truncates it to the checkpoint's step.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ttt_core.errors import TTTError
from ttt_core.kinds import OPTIONAL_SLOTS
from ttt_core.recipe import Recipe, dumps_toml, load_recipe, tomllib
from ttt_core.recipe.overrides import get_path
from ttt_core.train.checkpoint import describe_os_error, has_checkpoint, write_text_atomic

# Options that may change when a run is resumed: they do not change what has been computed so far.
# (`init_from` only matters when a run starts: a resumed run loads its own checkpoint; `compile`
# computes the same gradients, up to float rounding.)
RESUMABLE_CHANGES = {
    ("train", k) for k in ("steps", "eval_every", "checkpoint_every", "log_every", "threads", "init_from", "compile",
                           "init_checkpoint", "keep_last", "keep_best", "patience")
} | {
    ("distributed", "timeout_s")
} | {
    ("logging", k) for k in ("tensorboard", "loggers")
}
RESULTS = ("metrics.jsonl", "report.json")  # besides a checkpoint: what a run has produced
PERCENT_METRICS = ("exact_match", "accuracy")


# --- which recipe a run directory belongs to ------------------------------------------------------


def _flat(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ, ignoring those that may change on resume."""
    a, b = _flat(old), _flat(new)
    return sorted(
        ".".join(k) for k in set(a) | set(b) if a.get(k) != b.get(k) and k[:2] not in RESUMABLE_CHANGES
    )


def holds_results(run_dir: Path) -> bool:
    """Whether a run directory holds anything a run produced (a checkpoint, metrics, a report, stages)."""
    run_dir = Path(run_dir)
    return (
        has_checkpoint(run_dir)
        or any((run_dir / name).exists() and (run_dir / name).stat().st_size > 0 for name in RESULTS)
        or any(run_dir.glob("stage-*"))
    )


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be one."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TTTError(f"{run_dir}: --out names a file, not a directory; give a directory for the run")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TTTError(f"{run_dir}: cannot create the run directory ({describe_os_error(exc)})") from None


def check_run_dir(recipe: Recipe, run_dir: Path) -> None:
    """Refuse a run directory whose results another recipe made."""
    stored = Path(run_dir) / "recipe.toml"
    if not stored.exists() or not holds_results(run_dir):
        return
    try:
        old = tomllib.loads(stored.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TTTError(f"{stored}: unreadable ({exc}); use another --out") from None
    try:  # with today's defaults filled in: an option added since the run started is no difference
        old = tomllib.loads(dumps_toml(load_recipe(stored, stored=True).resolved()))
    except TTTError:
        pass  # compared as stored: whatever no longer loads shows as a difference
    for slot in OPTIONAL_SLOTS:  # a table that runs stored for a slot their recurrence never used
        if slot not in recipe.components:
            *parents, last = slot.split(".")
            table = get_path(old, parents, None)
            if isinstance(table, dict):
                table.pop(last, None)
    diff = recipe_differences(old, tomllib.loads(dumps_toml(recipe.resolved())))  # same TOML types
    if diff:
        raise TTTError(
            f"{run_dir}: this run directory was made by another recipe (differs in: "
            f"{', '.join(diff)}); use another --out or resume it as it is"
        )


def clean_stale_temporaries(run_dir: Path) -> None:
    """Remove the `.NAME.tmp` files a killed write left behind (the next write would replace them)."""
    run_dir = Path(run_dir)
    for directory in (run_dir, run_dir / "checkpoints"):
        for stale in directory.glob(".*.tmp"):
            if stale.is_file():
                try:
                    stale.unlink()
                except OSError as exc:
                    raise TTTError(f"{stale}: cannot remove this stale temporary file ({describe_os_error(exc)})") from None


def resolve_run(recipe_or_dir: str, out: str | None, overrides: list[str]) -> tuple[Recipe, Path]:
    """(recipe, run_dir) for a recipe file, or for an existing run directory (resume)."""
    path = Path(recipe_or_dir)
    if path.is_dir():
        stored = path / "recipe.toml"
        if not stored.exists():
            raise TTTError(f"{path}: not a run directory (no recipe.toml)")
        return load_recipe(stored, overrides, stored=True), Path(out) if out else path
    recipe = load_recipe(path, overrides)
    return recipe, Path(out) if out else Path("runs") / path.stem


def versions() -> dict[str, str]:
    from ttt_core.plugins import default_host

    found = {"python": platform.python_version(), "torch": torch.__version__}
    found.update(default_host().versions())
    return found


def git_commit(directory: Path | None = None) -> str | None:
    """The commit checked out where the run was started (`-dirty` with uncommitted changes to tracked
    files), or None outside a git work tree."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_info(model: torch.nn.Module, device: torch.device, command: str) -> dict[str, Any]:
    """What a run records of itself at start: parameter count, device, command, commit, time."""
    parameters = list(model.parameters())
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "parameters": sum(p.numel() for p in parameters),
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "device": name,
        "command": command,
        "git_commit": git_commit(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --- metrics.jsonl --------------------------------------------------------------------------------


def parse_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics log. A last line cut short (a kill in mid-write) is dropped; a bad
    line elsewhere is an error."""
    lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise TTTError(f"{path}: line {number} is not a JSON record") from None
        if not isinstance(record, dict) or "step" not in record:
            raise TTTError(f"{path}: line {number} is not a metrics record (no 'step')")
        records.append(record)
    return records


class MetricsLog:
    """metrics.jsonl: one JSON object per line; started anew by a run from step 0, truncated to the
    checkpoint's step on resume."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled:
            return
        kept = [r for r in parse_metrics(self.path) if r["step"] <= step] if self.path.exists() else []
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            try:
                with open(self.path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as exc:
                raise TTTError(f"{self.path}: cannot write ({describe_os_error(exc)})") from None


# --- reports --------------------------------------------------------------------------------------


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float as None: strict JSON has no NaN or Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps_json(value: Any) -> str:
    return json.dumps(finite_json(value), indent=2, allow_nan=False) + "\n"


def metric_label(name: str) -> str:
    """`exact_match` -> `exact match (%)`, `bits_per_byte` -> `bits per byte`."""
    return name.replace("_", " ") + (" (%)" if name in PERCENT_METRICS else "")


def format_metric(name: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}" if name in PERCENT_METRICS else f"{value:.4f}"


def _format_loss(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def validation_summary(run_dir: Path, headline: str, higher_is_better: bool = True) -> dict[str, Any]:
    """The best and the final validation record of a run's metrics log ({} when it has none)."""
    path = Path(run_dir) / "metrics.jsonl"
    val = [r for r in parse_metrics(path) if r.get("split") == "val"] if path.exists() else []
    if not val:
        return {}
    scored = [r for r in val if isinstance(r.get(headline), (int, float)) and math.isfinite(r[headline])]
    best = None
    for r in scored:
        if best is None or (r[headline] > best[headline] if higher_is_better else r[headline] < best[headline]):
            best = r
    keep = ("step", "loss", headline)
    return {"best_val": {k: best.get(k) for k in keep} if best else None, "final_val": {k: val[-1].get(k) for k in keep}}


def write_report(run_dir: Path, report: dict[str, Any], recipe: Recipe) -> None:
    """report.json (everything) and report.md (the table a person reads)."""
    headline = report.get("headline", "exact_match")
    report.update(validation_summary(run_dir, headline, report.get("higher_is_better", True)))
    write_text_atomic(run_dir / "report.json", dumps_json(report))
    task = recipe.data.get("task", {})
    dataset = task.get("dataset", task.get("name", "?"))
    label = metric_label(headline)

    def val(which: str) -> str:
        row = report.get(which)
        return f"{format_metric(headline, row.get(headline))} (step {row['step']})" if row else "n/a"

    steps = f"{report['steps']}" + (" (early stop)" if report.get("stopped_early") else "")
    lines = [
        f"# {run_dir.name}",
        "",
        f"| recipe | dataset | steps | train time (s) | best val {label} | final val {label} | test samples "
        f"| test loss | test {label} |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {recipe.source} | {dataset} | {steps} | {report['train_time_s']} | {val('best_val')} | "
        f"{val('final_val')} | {report['test']['samples']} | {_format_loss(report['test']['loss'])} | "
        f"{format_metric(headline, report['test'][headline])} |",
        "",
    ]
    facts = [("parameters", f"{report['parameters']:,}" if isinstance(report.get("parameters"), int) else None),
             ("device", report.get("device")), ("command", f"`{report['command']}`" if report.get("command") else None),
             ("git commit", report.get("git_commit")), ("started", report.get("started"))]
    lines += [f"- {name}: {value}" for name, value in facts if value]
    write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")


def stages_markdown(run_dir: Path, results: list[dict[str, Any]]) -> str:
    headline = results[-1].get("headline", "exact_match")
    label = metric_label(headline)
    lines = [
        f"# {run_dir.name} (curriculum)",
        "",
        f"| stage | steps | train time (s) | best val {label} | test samples | test loss | test {label} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        test, best = r["test"], r.get("best_val")
        shown = f"{format_metric(headline, best.get(headline))} (step {best['step']})" if best else "n/a"
        lines.append(f"| {r['stage']} | {r['steps']} | {r['train_time_s']} | {shown} | {test['samples']} | "
                     f"{_format_loss(test['loss'])} | {format_metric(headline, test[headline])} |")
    last = results[-1]
    facts = [("parameters", f"{last['parameters']:,}" if isinstance(last.get("parameters"), int) else None),
             ("device", last.get("device")), ("command", f"`{last['command']}`" if last.get("command") else None),
             ("git commit", last.get("git_commit"))]
    lines += ["", *(f"- {name}: {value}" for name, value in facts if value)]
    return "\n".join([*lines, ""])


def summary(run_dir: Path, report: dict) -> str:
    test, headline = report["test"], report.get("headline", "exact_match")
    value = format_metric(headline, test[headline])
    value += "%" if headline in PERCENT_METRICS and value != "n/a" else ""
    return (
        f"{run_dir}: {report['steps']} steps in {report['train_time_s']} s; test {headline.replace('_', ' ')} "
        f"{value} on {test['samples']} samples (report.md)"
    )
