"""What a run directory guarantees when runs are killed, repeated, mixed up or diverge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from ttt_core.cli import main
from ttt_core.errors import TTTError
from ttt_core.recipe import load_recipe
from ttt_core.train.checkpoint import load_checkpoint
from ttt_core.train.rundir import resolve_run, write_report
from ttt_core.train.trainer import Trainer

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "recipes" / "tiny" / "baseline_ar_tiny.toml")
CURRICULUM = str(ROOT / "recipes" / "tiny" / "curriculum_ar_tiny.toml")
QUICK = ["eval.samples=8", "eval.val_samples=8", "train.log_every=1"]


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def strict_json(text: str):
    """json.loads without the NaN/Infinity extension Python accepts and other readers do not."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


# --- checkpoints never run code ---------------------------------------------------------------------


class WritesAFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def test_a_checkpoint_that_would_write_a_file_is_refused(tmp_path):
    path, target = tmp_path / "evil.pt", tmp_path / "written"
    torch.save({"model": {}, "payload": WritesAFile(target)}, path)
    with pytest.raises(TTTError) as info:
        load_checkpoint(path)
    assert info.value.lines == [f"{path}: refused: loading this checkpoint would call exec, which is not plain data"]
    assert not target.exists()


def test_what_we_save_loads_weights_only(tmp_path):
    Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), tmp_path / "run", quiet=True).run()
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "torch_rng", "recipe", "step"} <= set(state)


# --- a run directory belongs to one recipe ------------------------------------------------------------


def test_a_curriculum_directory_refuses_another_recipe(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", CURRICULUM, "--out", str(run_dir), "--quiet", *sets(*QUICK)]) == 0
    stored = (run_dir / "recipe.toml").read_text()
    capsys.readouterr()
    assert main(["run", CURRICULUM, "--out", str(run_dir), "--quiet", *sets(*QUICK, "backbone.layers=1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made by another recipe (differs in: backbone.layers" in err[0], err
    assert "finished earlier" not in "\n".join(err)
    assert (run_dir / "recipe.toml").read_text() == stored  # not overwritten


def interrupt_at(monkeypatch, step: int) -> None:
    """Make the trainer die (as if killed) when it reaches `step`."""
    original = Trainer.train_step

    def killed(self):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", killed)


def test_a_run_killed_before_its_first_checkpoint_starts_its_metrics_anew(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    overrides = ["train.steps=4", "train.checkpoint_every=100", *QUICK]
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_recipe(TINY, overrides), run_dir, quiet=True).run()
    monkeypatch.undo()
    assert [r["step"] for r in records(run_dir)] == [1, 2]
    Trainer(load_recipe(TINY, overrides), run_dir, quiet=True).run()
    assert [r["step"] for r in records(run_dir) if r["split"] == "train"] == [1, 2, 3, 4]  # no step twice


def test_a_directory_without_checkpoint_refuses_another_recipe(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_recipe(TINY, ["train.steps=4", "train.checkpoint_every=100", *QUICK]), run_dir, quiet=True).run()
    monkeypatch.undo()
    assert not (run_dir / "checkpoints").exists()
    with pytest.raises(TTTError, match=r"made by another recipe \(differs in: backbone\.layers\)"):
        Trainer(load_recipe(TINY, ["train.steps=4", "backbone.layers=1", *QUICK]), run_dir, quiet=True).run()


def test_a_run_older_than_an_option_resumes(tmp_path):
    """A run stored before an option existed resumes: the option's default is no difference."""
    run_dir = tmp_path / "run"
    assert main(["run", TINY, "--out", str(run_dir), "--quiet", *sets("train.steps=2", *QUICK)]) == 0
    stored = run_dir / "recipe.toml"
    stored.write_text(re.sub(r"(?m)^length_buckets = 1\n", "", stored.read_text()))
    assert "length_buckets" not in stored.read_text()
    assert main(["run", str(run_dir), "--quiet", *sets("train.steps=3")]) == 0
    assert records(run_dir)[-1]["step"] == 3


def test_a_directory_holding_only_a_recipe_is_taken_over(tmp_path):
    """A run stopped before its first step left no results: another recipe may use the directory."""
    run_dir = tmp_path / "run"
    Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), run_dir, quiet=True).prepare_run_dir()
    Trainer(load_recipe(TINY, ["train.steps=1", "backbone.layers=1", *QUICK]), run_dir, quiet=True).run()
    assert "layers = 1" in (run_dir / "recipe.toml").read_text()


def test_a_run_stopped_inside_its_first_step_is_taken_over(tmp_path):
    """Getting ready to train (the resume check) leaves an empty metrics log: still no results."""
    run_dir = tmp_path / "run"
    first = Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), run_dir, quiet=True)
    first.prepare_run_dir()
    first.resume()
    Trainer(load_recipe(TINY, ["train.steps=1", "backbone.layers=1", *QUICK]), run_dir, quiet=True).run()
    assert "layers = 1" in (run_dir / "recipe.toml").read_text()


def test_a_relative_init_from_given_by_set_survives_a_resume(tmp_path, monkeypatch):
    """`--set train.init_from=runs/a` is relative to the working directory; the run directory stores it,
    and resuming that directory must still find runs/a, not RUN/runs/a."""
    monkeypatch.chdir(tmp_path)
    Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), Path("runs/a"), quiet=True).run()
    recipe = load_recipe(TINY, ["train.steps=1", "train.init_from='runs/a'", *QUICK])
    Trainer(recipe, Path("runs/b"), quiet=True).prepare_run_dir()  # stopped before its first checkpoint
    resumed, run_dir = resolve_run("runs/b", None, [])
    assert Path(resumed.train.init_from) == tmp_path / "runs" / "a"
    Trainer(resumed, run_dir, quiet=True).run()


def test_a_save_on_a_full_disk_fails_in_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    import ttt_core.train.checkpoint as checkpoint_module

    run_dir = tmp_path / "run"
    Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), run_dir, quiet=True).run()

    def no_space(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    with pytest.raises(TTTError) as info:
        Trainer(load_recipe(TINY, ["train.steps=2", *QUICK]), run_dir, quiet=True).run()
    assert info.value.lines == [f"{run_dir / 'checkpoints' / 'last.pt'}: cannot write (no space left on the device)"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 1  # the previous one, intact


def test_stale_temporary_files_of_a_killed_save_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), run_dir, quiet=True).run()
    stale = [run_dir / "checkpoints" / ".last.pt.tmp", run_dir / ".recipe.toml.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    Trainer(load_recipe(TINY, ["train.steps=2", *QUICK]), run_dir, quiet=True).run()
    assert not any(path.exists() for path in stale)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2


# --- metrics.jsonl cut short -----------------------------------------------------------------------


def test_a_truncated_last_metrics_line_is_dropped_on_resume_and_plot(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(load_recipe(TINY, ["train.steps=2", *QUICK]), run_dir, quiet=True).run()
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "split": "tra')  # killed in mid-write
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["run", str(run_dir), "--quiet", *sets("train.steps=3")]) == 0
    assert [r["step"] for r in records(run_dir) if r["split"] == "train"] == [1, 2, 3]


# --- non-finite losses -----------------------------------------------------------------------------


def poison(monkeypatch, bad) -> None:
    """Training losses (not evaluation) are NaN at the 0-based steps for which `bad(step)` is true."""
    import ttt_core.train.backends as backends

    real, calls = backends.step_loss, iter(range(10**9))

    def poisoned(model, episode, **kwargs):
        loss, out = real(model, episode, **kwargs)
        return (loss * float("nan") if bad(next(calls)) else loss), out

    monkeypatch.setattr(backends, "step_loss", poisoned)


def run_cli(capsys, run_dir: Path, *overrides: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["run", TINY, "--out", str(run_dir), "--quiet", *sets(*QUICK, *overrides)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.filterwarnings("ignore:step .* non-finite loss")
def test_a_run_whose_every_step_was_skipped_fails(tmp_path, monkeypatch, capsys):
    """max_bad_steps = 10 > steps = 3: the run still ends in an error, not in a report."""
    poison(monkeypatch, lambda step: True)
    code, err = run_cli(capsys, tmp_path / "run", "train.steps=3", "train.max_bad_steps=10")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("stopped at step 3: 3 consecutive non-finite losses (the run ended inside the streak")
    assert not (tmp_path / "run" / "report.json").exists()


@pytest.mark.filterwarnings("ignore:step .* non-finite loss")
def test_a_run_ending_inside_a_bad_streak_fails(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, lambda step: step >= 2)
    code, err = run_cli(capsys, tmp_path / "run", "train.steps=4", "train.max_bad_steps=3")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("stopped at step 4: 2 consecutive non-finite losses (the run ended inside the streak")


@pytest.mark.filterwarnings("ignore:step .* non-finite loss")
def test_the_stop_message_names_the_last_checkpoint_and_the_way_on(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    poison(monkeypatch, lambda step: step >= 3)
    code, err = run_cli(capsys, run_dir, "train.steps=20", "train.max_bad_steps=3", "train.checkpoint_every=2",
                        "optimizer.lr=0.001")
    assert code == 2 and len(err) == 1, err
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert err[0] == (
        f"stopped at step 5: 3 consecutive non-finite losses; the last checkpoint (step 2, after a finite step) is "
        f"{checkpoint}; go on from it with a lower learning rate: ttt run {TINY} --out NEW_DIR "
        f"--set \"train.init_from='{checkpoint}'\" --set optimizer.lr=<lower than 0.001>"
    )
    assert load_checkpoint(checkpoint)["step"] == 2
    # the way on works as written
    monkeypatch.undo()
    init_from = re.search(r"--set \"(train\.init_from='[^']+')\"", err[0]).group(1)
    code, _ = run_cli(capsys, tmp_path / "new", "train.steps=1", init_from, "optimizer.lr=0.0005")
    assert code == 0


@pytest.mark.filterwarnings("ignore:step .* non-finite loss")
def test_the_stop_message_without_a_checkpoint_names_none(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, lambda step: step >= 1)
    code, err = run_cli(capsys, tmp_path / "run", "train.steps=20", "train.max_bad_steps=2", "train.checkpoint_every=10")
    assert code == 2 and len(err) == 1, err
    assert err[0].endswith(
        f"no checkpoint was saved; start again with a lower learning rate: ttt run {TINY} --out NEW_DIR "
        "--set optimizer.lr=<lower than 0.001>"
    ), err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_report_json_is_strict_json_even_with_a_nan_metric(tmp_path):
    recipe = load_recipe(TINY)
    report = {"recipe": TINY, "steps": 1, "train_time_s": 0.1, "headline": "exact_match",
              "test": {"loss": float("nan"), "exact_match": float("inf"), "samples": 8}}
    write_report(tmp_path, report, recipe)
    assert strict_json((tmp_path / "report.json").read_text())["test"] == {"loss": None, "exact_match": None, "samples": 8}
    assert "| n/a | n/a |" in (tmp_path / "report.md").read_text()


def test_eval_takes_a_checkpoint_that_records_no_step(tmp_path, capsys):
    run_dir = tmp_path / "run"
    Trainer(load_recipe(TINY, ["train.steps=1", *QUICK]), run_dir, quiet=True).run()
    weights = tmp_path / "weights.pt"
    torch.save({"model": load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]}, weights)
    assert main(["eval", str(run_dir), "--checkpoint", str(weights)]) == 0
    assert '"step": null' in capsys.readouterr().out
