"""`ttt plot`: learning curves (training loss, the validation headline metric) of several runs in one PNG.

The headline is the first of `HEADLINES` the runs' validation records have (exact match for
retrieval tasks, bits per byte for language modelling), else the validation loss.
"""

from __future__ import annotations

from pathlib import Path

from ttt_core.errors import TTTError
from ttt_core.train.rundir import parse_metrics

# metric -> (axis label, scale, y limits or None)
HEADLINES: dict[str, tuple[str, float, tuple[float, float] | None]] = {
    "exact_match": ("exact match (%)", 100.0, (0, 100)),
    "bits_per_byte": ("bits per byte", 1.0, None),
    "loss": ("loss", 1.0, None),
}


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's records (a last line cut short by a kill, or being written, is left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise TTTError(f"{run_dir}: no metrics.jsonl (not a run directory, or nothing logged yet)")
    return parse_metrics(path)


def headline_of(records: list[dict]) -> str:
    val = [r for r in records if r["split"] == "val"]
    return next((name for name in HEADLINES if val and all(name in r for r in val)), "loss")


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or `parent/name` where names repeat (curriculum stages of several
    runs are all `stage-NAME`)."""
    names = [d.name for d in run_dirs]
    return [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]


def plot_runs(run_dirs: list[str], out: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TTTError("ttt plot needs matplotlib: pip install 'ttt-core[plot]'") from None
    runs = {Path(d): read_metrics(Path(d)) for d in run_dirs}
    metrics = {headline_of(records) for records in runs.values()}
    if len(metrics) > 1:
        raise TTTError(f"ttt plot: the runs report different headline metrics ({', '.join(sorted(metrics))})")
    metric = metrics.pop()
    label, scale, limits = HEADLINES[metric]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in zip(run_labels(list(runs)), runs.values()):
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "val"]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        ax_val.plot([r["step"] for r in val], [scale * r[metric] for r in val], marker="o", label=name)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    ax_val.set(xlabel="step", ylabel=label, title=f"validation {label}")
    if limits:
        ax_val.set_ylim(*limits)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
