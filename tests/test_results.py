"""Results kept: `ttt eval` writes into the run directory, report.md says what ran where, `ttt plot`
draws curricula stage after stage, zooms percentages and never replaces a file silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttt_core.cli import main
from ttt_core.errors import TTTError
from ttt_core.recipe import load_recipe
from ttt_core.train.evaluate import result_name
from ttt_core.train.plot import curves, percent_limits, smoothed
from ttt_core.train.rundir import git_commit
from ttt_core.train.trainer import Trainer

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "recipes" / "tiny" / "baseline_ar_tiny.toml")
CURRICULUM = str(ROOT / "recipes" / "tiny" / "curriculum_ar_tiny.toml")
QUICK = ["eval.samples=8", "eval.val_samples=8", "train.log_every=1", "train.eval_every=2"]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_eval_keeps_its_result_in_the_run_directory(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(load_recipe(TINY, ["train.steps=2", *QUICK]), run_dir, quiet=True).run()
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--set", "task.dataset=N2-K4V4-S2_16-32_1M"]) == 0
    out, err = capsys.readouterr()
    stored = run_dir / "eval" / "test-task.dataset=N2-K4V4-S2_16-32_1M.json"
    assert json.loads(stored.read_text()) == json.loads(out) and f"written to {stored}" in err
    assert main(["eval", str(run_dir), "--split", "val", "--checkpoint", "best"]) == 0
    result = json.loads((run_dir / "eval" / "val-best.json").read_text())
    assert result["checkpoint"].endswith("best.pt") and result["split"] == "val"
    assert result_name("test", "/x/step4.pt", ["a.b='c d'"]) == "test-step4-a.b=_c_d"
    assert len(result_name("test", None, ["x=" + "y" * 300])) < 130


def test_a_curriculum_report_and_plot(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "cur"
    assert main(["run", CURRICULUM, "--out", str(run_dir), "--quiet", *sets(*QUICK)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    last = report["stages"][-1]
    assert last["command"].startswith(f"ttt run {CURRICULUM} --out {run_dir}") and last["git_commit"] == git_commit()
    assert last["best_val"]["step"] in (2, 4) and last["final_val"]["step"] == 4
    text = (run_dir / "report.md").read_text()
    assert "best val exact match (%)" in text and "- parameters: " in text and "- command: `ttt run" in text
    records, boundaries = curves(run_dir)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 9))  # n2 follows n1
    assert boundaries == [(0, "n1"), (4, "n2")]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["plot", str(run_dir)]) == 0 and main(["plot", str(run_dir)]) == 0
    assert capsys.readouterr().out.split() == ["curves.png", "curves-2.png"]  # the first one is kept
    png = tmp_path / "c.png"
    assert main(["plot", str(run_dir), str(run_dir / "stage-n1"), "--out", str(png), "--metric", "grad_norm",
                 "--smooth", "3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(run_dir), "--out", str(png)]) == 2
    assert "c.png: exists; give another --out, or --force to replace it" in capsys.readouterr().err
    assert main(["plot", str(run_dir), "--out", str(png), "--force"]) == 0
    with pytest.raises(TTTError, match="no run logged 'grad_nrom'; logged: .*grad_norm"):
        main(["--debug", "plot", str(run_dir), "--out", str(tmp_path / "d.png"), "--metric", "grad_nrom"])


def test_percent_axes_show_small_differences_and_smoothing():
    low, high = percent_limits([96.0, 99.0, 99.5])
    assert 94 < low < 96 and 99.5 < high <= 100
    assert percent_limits([0.0, 0.0]) == (0.0, 0.5)
    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
