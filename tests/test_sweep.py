"""`ttt run --sweep`: the grid of runs, one directory each named by its values, a summary table, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ttt_core.cli import main
from ttt_core.errors import TTTError
from ttt_core.sweep import grid, parse_sweeps, split_values

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")
QUICK = ["--set", "eval.samples=8", "--set", "eval.val_samples=8", "--set", "train.steps=2", "--set", "train.eval_every=2"]


def test_values_and_names():
    assert split_values("1e-3, 3e-4") == ["1e-3", "3e-4"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"] and split_values("'a,b',c") == ["'a,b'", "c"]
    runs = grid(parse_sweeps(["optimizer.lr=1e-3,3e-4", "train.seed=0,1"]))
    assert [name for name, _ in runs] == ["lr=1e-3,seed=0", "lr=1e-3,seed=1", "lr=3e-4,seed=0", "lr=3e-4,seed=1"]
    assert runs[1][1] == ["optimizer.lr=1e-3", "train.seed=1"]
    assert grid(parse_sweeps(["a.x=1", "b.x=2"]))[0][0] == "a.x=1,b.x=2"
    with pytest.raises(TTTError, match="expected KEY=V1,V2"):
        parse_sweeps(["optimizer.lr"])


def test_a_2x2_sweep_runs_every_combination_and_summarises(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["run", TINY, "--out", str(out), "--quiet", *QUICK, "--sweep", "optimizer.lr=1e-3,3e-4", "--sweep", "train.seed=0,1"]
    assert main(args) == 0
    table = capsys.readouterr().out.split("| run |", 1)[1]
    for name in ("lr=1e-3,seed=0", "lr=1e-3,seed=1", "lr=3e-4,seed=0", "lr=3e-4,seed=1"):
        report = json.loads((out / name / "report.json").read_text())
        assert report["steps"] == 2
        assert f"| {name} | done | 2 |" in table
    stored = "\n".join((out / name / "recipe.toml").read_text() for name in ("lr=3e-4,seed=1",))
    assert "lr = 0.0003" in stored and "seed = 1" in stored
    assert (out / "sweep.md").read_text().endswith(table.split("\n", 2)[2]) and len(json.loads((out / "sweep.json").read_text())) == 4
    assert main(args) == 0  # again: nothing trains
    assert capsys.readouterr().out.count("| done earlier |") == 4


def test_a_parallel_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["run", TINY, "--out", str(out), *QUICK, "--sweep", "train.seed=0,1", "--parallel", "2"]) == 0
    captured = capsys.readouterr()
    assert "| seed=0 | done | 2 |" in captured.out and "| seed=1 | done | 2 |" in captured.out
    assert "step 2: val loss" in (out / "seed=1" / "sweep.log").read_text()
