"""`ttt plot`: learning curves (training loss, validation exact match) of several runs in one PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ttt_core.errors import TTTError


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise TTTError(f"{run_dir}: no metrics.jsonl (not a run directory, or nothing logged yet)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(run_dirs: list[str], out: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TTTError("ttt plot needs matplotlib: pip install 'ttt-core[plot]'") from None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for run_dir in map(Path, run_dirs):
        records = read_metrics(run_dir)
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "val"]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=run_dir.name)
        ax_acc.plot([r["step"] for r in val], [100 * r["exact_match"] for r in val], marker="o", label=run_dir.name)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="answer loss")
    ax_acc.set(xlabel="step", ylabel="exact match (%)", title="validation exact match", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
