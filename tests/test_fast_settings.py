"""`[train] compile = "auto"`, `precision = "auto"`: what a run gets, and the one line saying so."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

from ttt_core.cli import main
from ttt_core.config import TrainConfig
from ttt_core.errors import RecipeError
from ttt_core.recipe import load_recipe
from ttt_core.train import fast
from ttt_core.train.fast import COMPILE_MIN_STEPS, choose_fast_settings

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")
CPU = torch.device("cpu")


@pytest.fixture
def machine(monkeypatch):
    """A CPU whose compiler and bf16 support the test decides."""

    def set_machine(compiler: bool, bf16: bool) -> None:
        monkeypatch.setattr(fast, "compiler_found", lambda device: (compiler, "g++ found" if compiler else "no C++ compiler"))
        monkeypatch.setattr(fast, "bf16_native", lambda device: (bf16, "CPU with AVX512-BF16" if bf16 else "CPU without"))

    return set_machine


def test_nothing_auto_changes_nothing_and_says_nothing():
    train = TrainConfig(compile=True, precision="fp32")
    assert choose_fast_settings(train, CPU, single_process=True) == (train, None)


@pytest.mark.parametrize("compiler, bf16, steps, single, want_compile, want_precision", [
    (True, True, COMPILE_MIN_STEPS, True, True, "bf16"),
    (False, True, COMPILE_MIN_STEPS, True, False, "bf16"),           # no compiler
    (True, False, COMPILE_MIN_STEPS, True, True, "fp32"),            # no native bf16
    (True, True, COMPILE_MIN_STEPS - 1, True, False, "bf16"),        # too short to win a compile back
    (True, True, COMPILE_MIN_STEPS, False, False, "bf16"),           # DeepSpeed ranks step eagerly
])
def test_auto_picks_by_machine_and_run(machine, compiler, bf16, steps, single, want_compile, want_precision):
    machine(compiler, bf16)
    train, note = choose_fast_settings(TrainConfig(steps=steps, compile="auto", precision="auto"), CPU, single)
    assert (train.compile, train.precision) == (want_compile, want_precision)
    assert note.startswith("auto settings: compile ") and f"precision {want_precision}" in note
    assert ("--set train.compile=false" in note) == want_compile
    assert ("train.precision='fp32'" in note) == (want_precision == "bf16")


def test_this_machine_answers_without_error():
    for found, what in (fast.compiler_found(CPU), fast.bf16_native(CPU)):
        assert isinstance(found, bool) and what


def test_recipes_take_auto_and_refuse_other_values(tmp_path):
    assert load_recipe(TINY, ["train.compile='auto'", "train.precision='auto'"]).train.compile == "auto"
    with pytest.raises(RecipeError, match="true, false or"):
        load_recipe(TINY, ["train.compile='yes'"])
    with pytest.raises(RecipeError, match="fp32, bf16, auto"):
        load_recipe(TINY, ["train.precision='fp16'"])


def test_a_run_says_what_auto_chose_and_keeps_auto_in_its_recipe(tmp_path, capsys, machine):
    machine(True, False)
    run = tmp_path / "run"
    assert main(["run", TINY, "--out", str(run), "--quiet", "--set", "train.steps=2", "--set", "train.compile='auto'",
                 "--set", "train.precision='auto'", "--set", "eval.samples=8", "--set", "eval.val_samples=8"]) == 0
    err = capsys.readouterr().err
    assert f"auto settings: compile off (2 steps < {COMPILE_MIN_STEPS}" in err and "precision fp32" in err
    assert attrs.asdict(load_recipe(str(run / "recipe.toml")).train)["compile"] == "auto"  # chosen again on resume
