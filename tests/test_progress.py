"""What a run shows: plain lines without carriage returns off a terminal, validation lines with --quiet,
evaluation bars on a terminal, the compile note of the first compiled step."""

from __future__ import annotations

import io
from pathlib import Path

from ttt_core.cli import main
from ttt_core.train.backends import CompiledStep, LocalStep
from ttt_core.train.console import Console, duration

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")
QUICK = ["--set", "eval.samples=8", "--set", "eval.val_samples=8", "--set", "train.steps=4", "--set", "train.log_every=2",
         "--set", "train.eval_every=2"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_plain_lines(tmp_path, capsys):
    assert main(["run", TINY, "--out", str(tmp_path / "run"), *QUICK]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out and "\r" not in err
    lines = err.splitlines()
    assert any(line.startswith("step 2/4 (50%) loss ") and " sps " in line and " eta " in line for line in lines), err
    assert any(line.startswith("step 4/4 (100%) loss ") for line in lines), err
    assert "parameters (" in err and " on cpu" in err
    assert "step 2: val loss " in out and "step 4: val loss " in out


def test_quiet_keeps_the_validation_lines(tmp_path, capsys):
    assert main(["run", TINY, "--out", str(tmp_path / "run"), "--quiet", *QUICK]) == 0
    out, err = capsys.readouterr()
    assert "step 2: val loss " in out and "step 4/4" not in err and err == ""


def test_on_a_terminal_evaluation_shows_a_bar():
    stream = Terminal()
    console = Console(stream=stream)
    assert list(console.evaluating(iter(range(3)), "val", 30, 10)) == [0, 1, 2]
    assert stream.getvalue().startswith("\rval:   0%") and "0/3 [" in stream.getvalue()  # a bar, cleared at the end
    quiet = Terminal()
    assert list(Console(quiet=True, stream=quiet).evaluating(iter(range(3)), "val", 30, 10)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    assert duration(75) == "1m15s" and duration(3725) == "1h02m"


def test_the_first_compiled_step_says_it_compiles_and_how_long(monkeypatch):
    notes = []
    console = Console(stream=io.StringIO())
    monkeypatch.setattr(console, "note", notes.append)
    monkeypatch.setattr(LocalStep, "train_step", lambda self, step: {"loss": 1.0})
    step = CompiledStep()
    step.context, step.compiled = type("Context", (), {"console": console})(), False
    step.train_step(0)
    step.train_step(1)
    assert len(notes) == 2 and notes[0].startswith("compiling the training step")
    assert notes[1].startswith("compiled the training step in ") and notes[1].endswith(" s")
