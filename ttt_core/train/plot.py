"""`ttt plot`: learning curves of several runs in one PNG.

Default: two panels, the training loss and the validation headline metric (the first of `HEADLINES`
the runs' validation records have: exact match for retrieval tasks, bits per byte for language
modelling; else the validation loss). `--metric NAME` draws any logged metric instead, from every
split that logged it. `--smooth N` draws training curves as the mean of the last N records.

A curriculum's run directory is drawn stage after stage on one step axis (stage k starts where stage
k-1 ended), with a dashed line at each stage boundary. Percentages are zoomed to the values shown
(95 against 99% is visible), within 0-100. An existing file is never replaced without `--force`.
"""

from __future__ import annotations

from pathlib import Path

from ttt_core.errors import TTTError
from ttt_core.recipe import tomllib
from ttt_core.train.rundir import PERCENT_METRICS, metric_label, parse_metrics

# metric -> (axis label, scale)
HEADLINES: dict[str, tuple[str, float]] = {
    "exact_match": ("exact match (%)", 100.0),
    "bits_per_byte": ("bits per byte", 1.0),
    "loss": ("loss", 1.0),
}
SPLITS = ("train", "val")


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's records (a last line cut short by a kill, or being written, is left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise TTTError(f"{run_dir}: no metrics.jsonl (not a run directory, or nothing logged yet)")
    return parse_metrics(path)


def stage_names(run_dir: Path) -> list[str] | None:
    """The stages of a curriculum run directory, in order (None: not a curriculum)."""
    stored = run_dir / "recipe.toml"
    if (run_dir / "metrics.jsonl").exists() or not stored.exists():
        return None
    try:
        stages = tomllib.loads(stored.read_text(encoding="utf-8")).get("stages")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TTTError(f"{stored}: unreadable ({exc})") from None
    if not isinstance(stages, list):
        return None
    return [s["name"] for s in stages if isinstance(s, dict) and isinstance(s.get("name"), str)]


def curves(run_dir: Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """(records, stage boundaries): a curriculum's stages one after another, each stage's steps shifted
    by the steps of the stages before it; boundaries are (first step of a stage, its name)."""
    names = stage_names(run_dir)
    if names is None:
        return read_metrics(run_dir), []
    records: list[dict] = []
    boundaries: list[tuple[int, str]] = []
    offset = 0
    for name in names:
        directory = run_dir / f"stage-{name}"
        if not (directory / "metrics.jsonl").exists():
            break  # not trained yet
        stage = read_metrics(directory)
        boundaries.append((offset, name))
        records.extend({**r, "step": r["step"] + offset} for r in stage)
        offset += max((r["step"] for r in stage), default=0)
    if not records:
        raise TTTError(f"{run_dir}: a curriculum whose stages have logged nothing yet")
    return records, boundaries


def headline_of(records: list[dict]) -> str:
    val = [r for r in records if r["split"] == "val"]
    return next((name for name in HEADLINES if val and all(name in r for r in val)), "loss")


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or `parent/name` where names repeat (curriculum stages of several
    runs are all `stage-NAME`)."""
    names = [d.name for d in run_dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]


def smoothed(values: list[float], window: int) -> list[float]:
    """The mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def percent_limits(values: list[float]) -> tuple[float, float]:
    """y limits (in %) that show the differences between `values`, within 0-100."""
    low, high = min(values), max(values)
    margin = max((high - low) * 0.1, 0.5)
    return max(0.0, low - margin), min(100.0, high + margin)


def scale_of(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def free_name(out: str | None, force: bool) -> Path:
    """The file to write: `out` (refused if it exists, unless `force`), or the first free curves[-N].png."""
    if out is not None:
        path = Path(out)
        if path.exists() and not force:
            raise TTTError(f"{path}: exists; give another --out, or --force to replace it")
        return path
    path, n = Path("curves.png"), 2
    while path.exists():
        path, n = Path(f"curves-{n}.png"), n + 1
    return path


def plot_runs(run_dirs: list[str], out: str | None = None, metric: str | None = None, smooth: int = 1,
              force: bool = False) -> str:
    if smooth < 1:
        raise TTTError(f"ttt plot: --smooth {smooth}: give a number of records >= 1")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TTTError("ttt plot needs matplotlib: pip install 'ttt-core[plot]'") from None
    path = free_name(out, force)
    runs = {Path(d): curves(Path(d)) for d in run_dirs}
    labels = run_labels(list(runs))
    if metric is None:
        headlines = {headline_of(records) for records, _ in runs.values()}
        if len(headlines) > 1:
            raise TTTError(f"ttt plot: the runs report different headline metrics ({', '.join(sorted(headlines))}); "
                           "choose one with --metric")
        headline = headlines.pop()
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
        panels = [(ax_loss, "loss", ("train",), "training loss"), (ax_val, headline, ("val",), f"validation {HEADLINES[headline][0]}")]
        ax_loss.set_yscale("log")
    else:
        logged = {k for records, _ in runs.values() for r in records for k in r if k not in ("step", "split", "time")}
        if metric not in logged:
            raise TTTError(f"ttt plot: no run logged '{metric}'; logged: {', '.join(sorted(logged))}")
        fig, ax = plt.subplots(1, 1, figsize=(7, 4))
        panels = [(ax, metric, SPLITS, metric_label(metric))]
    for ax, name, splits, title in panels:
        scale, shown = scale_of(name), []
        for index, (label, (records, boundaries)) in enumerate(zip(labels, runs.values())):
            color = f"C{index % 10}"
            for split in splits:
                rows = [r for r in records if r["split"] == split and isinstance(r.get(name), (int, float))]
                if not rows:
                    continue
                ys = [scale * r[name] for r in rows]
                if split == "train" and smooth > 1:
                    ys = smoothed(ys, smooth)
                style = {"marker": "o", "markersize": 3} if split == "val" else {}
                if len(splits) > 1:
                    style["linestyle"] = "-" if split == "train" else "--"
                ax.plot([r["step"] for r in rows], ys, color=color, label=label if len(splits) == 1 else f"{label} {split}",
                        **style)
                shown.extend(ys)
            for step, stage in boundaries[1:]:
                ax.axvline(step, color=color, linestyle=":", alpha=0.6)
                ax.annotate(stage, (step, 1.0), xycoords=("data", "axes fraction"), fontsize="x-small",
                            rotation=90, va="top", ha="right", color=color)
        if name in PERCENT_METRICS and shown:
            ax.set_ylim(*percent_limits(shown))
        ax.set(xlabel="step", ylabel=metric_label(name) if name != "loss" or metric else "training loss", title=title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
