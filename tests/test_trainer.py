"""The trainer on a tiny recipe: smoke, resume == uninterrupted, checkpoints, bad input."""

import json
from pathlib import Path

import pytest
import torch

from ttt_core.cli import main
from ttt_core.errors import TTTError
from ttt_core.recipe import load_recipe
from ttt_core.train.checkpoint import load_checkpoint, save_atomic
from ttt_core.train.plot import run_labels
from ttt_core.train.trainer import Trainer

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")


def train(run_dir, *overrides):
    recipe = load_recipe(TINY, list(overrides))
    return Trainer(recipe, run_dir, quiet=True).run()


def losses(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["split"] == "train"]


def test_smoke_loss_goes_down(tmp_path):
    report = train(tmp_path / "run", "train.steps=40", "train.log_every=1", "optimizer.lr=3e-3", "train.eval_every=40")
    records = losses(tmp_path / "run")
    first, last = sum(r["loss"] for r in records[:5]) / 5, sum(r["loss"] for r in records[-5:]) / 5
    assert last < first - 0.3
    assert (tmp_path / "run" / "report.md").read_text().count("|") > 10
    assert set(report["test"]) == {"loss", "exact_match", "samples"}


def test_resume_equals_uninterrupted(tmp_path):
    common = ["train.log_every=1", "train.checkpoint_every=3", "inner.grad_mode='second'"]
    train(tmp_path / "straight", "train.steps=6", *common)
    train(tmp_path / "split", "train.steps=3", *common)
    train(tmp_path / "split", "train.steps=6", *common)  # resumes at step 3
    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert [r["step"] for r in split] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in split] == [r["loss"] for r in straight]  # bit for bit
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_of_another_recipe_is_refused(tmp_path):
    train(tmp_path / "run", "train.steps=2")
    with pytest.raises(TTTError) as info:
        train(tmp_path / "run", "train.steps=2", "backbone.layers=1")
    assert str(info.value) == (
        f"{tmp_path / 'run'}: this run directory was made by another recipe (differs in: backbone.layers); "
        "use another --out or resume it as it is"
    )


def test_atomic_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    path.write_bytes(b"garbage")
    with pytest.raises(TTTError, match="corrupt or unreadable checkpoint"):
        load_checkpoint(path)


def test_non_finite_losses_skip_then_stop(tmp_path, monkeypatch):
    import ttt_core.train.backends as backends

    real = backends.step_loss
    calls = {"n": 0}

    def poisoned(model, episode, **kwargs):
        loss, out = real(model, episode, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 2 else loss), out

    monkeypatch.setattr(backends, "step_loss", poisoned)
    with pytest.warns(UserWarning, match="non-finite loss, step skipped"):
        with pytest.raises(TTTError, match=r"stopped at step \d+: 3 consecutive non-finite losses"):
            train(tmp_path / "run", "train.steps=20", "train.max_bad_steps=3", "train.checkpoint_every=1")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2


def test_cli_eval_and_plot(tmp_path, capsys):
    train(tmp_path / "run", "train.steps=2")
    capsys.readouterr()  # the validation lines
    assert main(["eval", str(tmp_path / "run"), "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["samples"] == 16
    assert main(["eval", str(tmp_path / "run"), "--set", "task.dataset=N2-K4V4-S2_16-32_1M"]) == 0
    assert json.loads(capsys.readouterr().out)["overrides"] == ["task.dataset=N2-K4V4-S2_16-32_1M"]
    png = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "run"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_labels_tell_same_named_runs_apart():
    runs = [Path("runs/a/stage-n1"), Path("runs/b/stage-n1"), Path("runs/c")]
    assert run_labels(runs) == ["a/stage-n1", "b/stage-n1", "c"]


def test_init_from_starts_a_new_run_from_old_weights(tmp_path):
    train(tmp_path / "stage1", "train.steps=2")
    recipe = load_recipe(TINY, ["train.steps=1", f"train.init_from='{tmp_path / 'stage1'}'"])
    trainer = Trainer(recipe, tmp_path / "stage2", quiet=True)
    trainer.prepare_run_dir()
    assert trainer.resume() is False and trainer.step == 0
    old = load_checkpoint(tmp_path / "stage1" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in old.items())
    bad = load_recipe(TINY, ["backbone.layers=1", f"train.init_from='{tmp_path / 'stage1'}'"])
    with pytest.raises(TTTError, match="init_from does not fit this recipe's model"):
        Trainer(bad, tmp_path / "stage3", quiet=True).resume()


def test_non_finite_gradients_never_reach_the_parameters(tmp_path):
    recipe = load_recipe(TINY)
    trainer = Trainer(recipe, tmp_path / "run", quiet=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    stats = trainer.optimizer.step(0)
    assert stats["grad_norm"] != stats["grad_norm"]  # NaN reported
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_resume_a_checkpoint_with_a_0d_inner_lr(tmp_path):
    """Runs saved before the single inner learning rate became shape (1,) still resume."""
    train(tmp_path / "run", "train.steps=2")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    state["model"]["inner.log_lr"] = state["model"]["inner.log_lr"].reshape(())
    for param_state in state["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if param_state[key].shape == (1,):
                param_state[key] = param_state[key].reshape(())
    save_atomic(state, path)
    train(tmp_path / "run", "train.steps=3")
    assert [r["step"] for r in losses(tmp_path / "run")][-1] == 3
