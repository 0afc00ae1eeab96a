"""Recipes you can find: `ttt recipes`, `ttt cp`, shipped names in `ttt run` and `extends`, from a clone and
from an installed (non-editable) package; `ttt --version`; `ttt list` with meanings and allowed values."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ttt_core.cli import main
from ttt_core.recipe import load_recipe
from ttt_core.recipe.shipped import SHIPPED, find_shipped

ROOT = Path(__file__).resolve().parents[1]


def test_recipes_lists_descriptions_and_needed_plugins(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "  baseline_ar_n1\n      Baseline TTT (memory tokens) on N1-K4V4-S1_16-32" in out
    assert "  rmt_ar\n" in out and "needs: ttt-plugin-rmt>=0.1" in out
    assert "  baseline_ar_curriculum [2 stages]" in out and "  tiny/baseline_ar_tiny\n" in out and "  base/ar\n" in out


def test_the_clone_path_is_the_shipped_file():
    assert (ROOT / "recipes").resolve() == SHIPPED
    assert find_shipped("tiny/baseline_ar_tiny") == find_shipped("recipes/tiny/baseline_ar_tiny.toml")
    assert find_shipped("../pyproject") is None and find_shipped("nope") is None


def test_cp_copies_an_editable_recipe_that_extends_shipped_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cp", "tiny/baseline_ar_tiny", "mine.toml"]) == 0
    text = (tmp_path / "mine.toml").read_text()
    assert 'extends = ["base/ar", "base/baseline_model"]' in text
    assert load_recipe("mine.toml").resolved() == load_recipe(str(ROOT / "recipes/tiny/baseline_ar_tiny.toml")).resolved()
    assert main(["cp", "tiny/baseline_ar_tiny", "mine.toml"]) == 2
    assert "mine.toml: exists; give another destination, or --force" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    assert main(["cp", "baseline_ar_n2_from_n1", "sub"]) == 0
    copied = load_recipe("sub/baseline_ar_n2_from_n1.toml")
    assert copied.train.init_from == str(tmp_path / "runs" / "baseline_ar_n1")  # as `ttt run NAME` reads it
    assert load_recipe("baseline_ar_n2_from_n1").train.init_from == copied.train.init_from
    assert main(["cp", "baseline_ar_n9", "x.toml"]) == 2
    assert "no shipped recipe 'baseline_ar_n9' (did you mean 'baseline_ar_n2'?)" in capsys.readouterr().err


def test_extends_names_a_shipped_recipe(write):
    path = write("x.toml", 'extends = ["tiny/baseline_ar_tiny"]\n[train]\nsteps = 2\n')
    assert load_recipe(path).train.steps == 2 and load_recipe(path).train.batch_size == 8
    bad = write("y.toml", 'extends = ["tiny/baseline_ar_tinny"]\n')
    with pytest.raises(Exception, match=r"nor a shipped recipe \(did you mean 'tiny/baseline_ar_tiny'\?\)"):
        load_recipe(bad)


def test_version_and_list_with_meanings_and_ranges(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("ttt (ttt-core) ")
    assert main(["list", "train"]) == 0
    out = capsys.readouterr().out
    assert "  device: str = 'auto'  (one of: auto, cpu, cuda)\n" in out
    assert "  seed: int = 0  (in [0, 1.84467e+19])\n" in out
    assert "  patience: int | None = None  (> 0)\n      Early stopping: validations in a row" in out
    assert main(["list", "inner_learner"]) == 0
    assert "rank: int = 4  (> 0)" in capsys.readouterr().out


def test_an_installed_package_lists_runs_and_copies_its_recipes(tmp_path):
    """A wheel (not editable) of ttt-core, unpacked alone on the path, in a directory without recipes/."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "ttt_core", source / "ttt_core", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    str(source), "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TTT_DISABLE_PLUGIN_AUTOLOAD": "1"}

    def ttt(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "ttt_core.cli", *args], cwd=work, env=env, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run([sys.executable, "-c", "import ttt_core; print(ttt_core.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True).stdout
    assert where.startswith(str(site))
    assert "  tiny/baseline_ar_tiny\n" in ttt("recipes") and f"(in {site / 'ttt_core' / 'recipes'};" in ttt("recipes")
    ttt("cp", "tiny/baseline_ar_tiny", "mine.toml")
    assert ttt("validate", "mine.toml", "tiny/baseline_ar_tiny") == "ok mine.toml\nok tiny/baseline_ar_tiny\n"
