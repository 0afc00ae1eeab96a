"""Best and last-N checkpoints, early stopping, a checkpoint on Ctrl-C / SIGTERM that resumes bit for
bit, and `train.init_checkpoint` (a run's best or last; a curriculum stage from the previous best)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from ttt_core.cli import main
from ttt_core.recipe import load_recipe
from ttt_core.train.checkpoint import load_checkpoint
from ttt_core.train.stages import run_stages
from ttt_core.train.trainer import Interrupted, Trainer

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "recipes" / "tiny" / "baseline_ar_tiny.toml")
CURRICULUM = str(ROOT / "recipes" / "tiny" / "curriculum_ar_tiny.toml")
QUICK = ["eval.samples=8", "eval.val_samples=8", "train.log_every=1"]


def scripted_val(monkeypatch, scores: list[float]) -> None:
    """Validation returns these exact-match scores in turn (the test split is evaluated for real)."""
    real, values = Trainer.evaluate, iter(scores)

    def evaluate(self, split, samples):
        if split != "val":
            return real(self, split, samples)
        return {"loss": 1.0, "exact_match": next(values), "samples": samples}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_best_and_last_n_are_kept_and_older_ones_pruned(tmp_path, monkeypatch):
    scripted_val(monkeypatch, [0.1, 0.4, 0.2, 0.3, 0.4, 0.35])
    run_dir = tmp_path / "run"
    overrides = ["train.steps=6", "train.eval_every=1", "train.checkpoint_every=1", "train.keep_last=3", *QUICK]
    report = Trainer(load_recipe(TINY, overrides), run_dir, quiet=True).run()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step4.pt", "step5.pt", "step6.pt"]
    assert os.path.samefile(run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "step6.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert (best["step"], best["value"], best["metric"]) == (2, 0.4, "exact_match")  # a tie does not replace it
    assert report["best_val"]["step"] == 2 and report["final_val"]["exact_match"] == 0.35
    text = (run_dir / "report.md").read_text()
    assert "| 40.00 (step 2) | 35.00 (step 6) |" in text and "- parameters: " in text and "- device: cpu" in text
    # keep_last back to 1 on resume: the step copies go
    scripted_val(monkeypatch, [0.0])
    Trainer(load_recipe(TINY, [*overrides, "train.steps=7", "train.keep_last=1"]), run_dir, quiet=True).run()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_early_stopping_stops_and_a_rerun_does_not_train_on(tmp_path, monkeypatch, capsys):
    scripted_val(monkeypatch, [0.1, 0.3, 0.2, 0.25, 0.9])
    run_dir = tmp_path / "run"
    overrides = ["train.steps=20", "train.eval_every=1", "train.checkpoint_every=100", "train.patience=2", *QUICK]
    report = Trainer(load_recipe(TINY, overrides), run_dir, quiet=True).run()
    assert report["steps"] == 4 and report["stopped_early"] is True
    assert "early stop at step 4: no better val exact_match in 2 validations" in capsys.readouterr().err
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 4
    assert "4 (early stop)" in (run_dir / "report.md").read_text()
    again = Trainer(load_recipe(TINY, overrides), run_dir, quiet=True).run()
    assert again["steps"] == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_writes_a_checkpoint_and_the_run_resumes_bit_for_bit(tmp_path, monkeypatch, capsys, signum):
    common = ["train.steps=5", "train.checkpoint_every=100", "train.eval_every=100", "inner.grad_mode='second'", *QUICK]
    Trainer(load_recipe(TINY, common), tmp_path / "straight", quiet=True).run()
    original = Trainer.train_step
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # ignored under nohup

    def signalled(self):
        if self.step == 2:
            os.kill(os.getpid(), signum)  # arrives inside step 3, which still completes
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", signalled)
    run_dir = tmp_path / "split"
    with pytest.raises(Interrupted):
        Trainer(load_recipe(TINY, common), run_dir, quiet=True).run()
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"stopped at step 3; checkpoint {run_dir / 'checkpoints' / 'last.pt'}; resume with: ttt run {run_dir}" in err
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers given back
    assert main(["run", str(run_dir), "--quiet"]) == 0  # the printed command
    straight, split = records(tmp_path / "straight"), records(run_dir)
    assert [r["loss"] for r in split if r["split"] == "train"] == [r["loss"] for r in straight if r["split"] == "train"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_checkpoint_best_and_a_stage_from_the_previous_best(tmp_path, monkeypatch):
    scripted_val(monkeypatch, [0.5, 0.1, 0.5, 0.5] + [0.1] * 4)  # the best of stage n1 is its step 1
    overrides = ["train.eval_every=1", "train.init_checkpoint='best'", *QUICK]
    recipe = load_recipe(CURRICULUM, overrides)
    starts = {}
    real_resume = Trainer.resume

    def resume(self):
        resumed = real_resume(self)
        starts[self.run_dir.name] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return resumed

    monkeypatch.setattr(Trainer, "resume", resume)
    run_stages(recipe, tmp_path / "cur", quiet=True)
    best = load_checkpoint(tmp_path / "cur" / "stage-n1" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "cur" / "stage-n1" / "checkpoints" / "last.pt")
    assert best["step"] == 1 and last["step"] == 4
    assert all(torch.equal(best["model"][k], v) for k, v in starts["stage-n2"].items())
    assert not all(torch.equal(last["model"][k], v) for k, v in starts["stage-n2"].items())
