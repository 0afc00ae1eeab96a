"""Curricula in one run: [[stages]] validated up front, stage k starts from stage k-1, resume skips finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ttt_core.cli import main
from ttt_core.errors import RecipeError
from ttt_core.recipe import dumps_toml, load_recipe, tomllib
from ttt_core.train.checkpoint import load_checkpoint
from ttt_core.train.stages import run_stages, stage_recipes
from ttt_core.train.trainer import Trainer

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "curriculum_ar_tiny.toml")
QUICK = ["eval.samples=8", "eval.val_samples=8", "train.checkpoint_every=1"]


def train_records(directory: Path) -> list[dict]:
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_stages_are_recipes_with_their_overrides():
    recipe = load_recipe(TINY)
    first, second = recipe.stages
    assert (first.name, first.steps, second.name, second.steps) == ("n1", 4, "n2", 4)
    assert first.recipe["task"].config.pairs == 1 and second.recipe["task"].config.pairs == 2
    assert second.recipe["optimizer"].config.lr == 3e-4 and first.recipe["optimizer"].config.lr != 3e-4
    assert second.recipe.train.steps == 4 and second.recipe.train.init_from is None
    # the stored recipe reads back as the same stages
    again = tomllib.loads(dumps_toml(recipe.resolved()))
    assert again["stages"] == [s.table() for s in recipe.stages]


def test_every_stage_is_validated_and_inherited_problems_reported_once(write):
    path = write("bad.toml", f"""
        extends = ["{Path(TINY).as_posix()}"]
        [backbone]
        dimm = 3
        [[stages]]
        name = "b"
        steps = 2
        set = {{ "task.datset" = "x", "train.steps" = 5 }}
        [[stages]]
        name = "c"
        steps = 1
        set = {{ "train.init_from" = "elsewhere" }}
    """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.lines == [
        f"{path}: [backbone] unknown option 'dimm' (did you mean 'dim'?)",
        f"{path}: stage 'b': cannot set 'train.steps' (use the stage's 'steps')",
        f"{path}: stage 'b': [task] unknown option 'datset' (did you mean 'dataset'?)",
        f"{path}: stage 'c': cannot set 'train.init_from' (a later stage starts from the previous stage's weights)",
    ]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ("[]", "[stages] expected one or more [[stages]] tables"),
        ("[{name='a', steps=1}, {name='a', steps=1}]", "[stages] stage 'a': the name is used twice"),
        ("[{name='../x', steps=1}]", "[stages] stage 1: 'name' must be a string of letters"),
        ("[{name='a', steps=1.5}]", "[stages] stage 'a': 'steps' must be a positive integer; got float 1.5"),
        ("[{name='a', steps=1, sett={}}]", "[stages] stage 1: unknown option 'sett' (did you mean 'set'?)"),
    ],
)
def test_bad_stage_tables(stages, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(TINY, [f"stages={stages}"])
    assert message in str(info.value)


def test_stage_two_starts_from_stage_one(tmp_path):
    recipe = load_recipe(TINY, QUICK)
    run_dir = tmp_path / "run"
    run_stages(recipe, run_dir, quiet=True)
    (_, _, dir1), (_, staged2, dir2) = stage_recipes(recipe, run_dir)
    assert staged2.train.init_from == str(dir1)
    stored = tomllib.loads((dir2 / "recipe.toml").read_text())
    assert stored["train"]["init_from"] == str(dir1) and stored["task"]["dataset"].startswith("N2-")
    # a fresh stage-2 trainer starts exactly from stage 1's final weights
    fresh = Trainer(staged2, tmp_path / "fresh", quiet=True)
    fresh.resume()
    final1 = load_checkpoint(dir1 / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(fresh.model.state_dict()[k], v) for k, v in final1.items())
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["n1", "n2"]
    assert "| n2 | 4 |" in (run_dir / "report.md").read_text()


def test_resume_skips_finished_stages_and_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    recipe = load_recipe(TINY, QUICK)
    run_stages(recipe, tmp_path / "straight", quiet=True)

    run_dir = tmp_path / "split"
    original = Trainer.train_step
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 4 + 2 + 1:  # the third step of stage 2
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stages(recipe, run_dir, quiet=True)
    monkeypatch.setattr(Trainer, "train_step", original)
    stage1_metrics = (run_dir / "stage-n1" / "metrics.jsonl").read_text()
    assert not (run_dir / "stage-n2" / "report.json").exists()

    assert main(["run", str(run_dir), "--quiet"]) == 0  # resume from the run directory
    err = capsys.readouterr().err
    assert "stage n1: finished earlier" in err
    assert (run_dir / "stage-n1" / "metrics.jsonl").read_text() == stage1_metrics  # not retrained
    for stage in ("stage-n1", "stage-n2"):
        split = [r["loss"] for r in train_records(run_dir / stage)]
        assert split == [r["loss"] for r in train_records(tmp_path / "straight" / stage)]  # bit for bit
    assert main(["eval", str(run_dir), "--split", "val"]) == 0  # a curriculum evaluates its last stage
    assert '"step": 4' in capsys.readouterr().out
