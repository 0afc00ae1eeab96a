"""Malformed inputs to `ttt run`, `ttt eval`, `ttt plot` and `ttt data`: each is one line on stderr and exit 2.

Each row of `CASES` is (what is wrong, how it is made, a substring of the expected line). The maker
gets a fresh copy of a trained tiny run (`run`: 2 steps, `checkpoints/last.pt`), a checkpoint of
another model (`other`), a scratch directory and pytest's monkeypatch, and returns the `ttt`
arguments; the row runs the real entry point `ttt_core.cli.main`.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch

from ttt_core.cli import main
from ttt_core.recipe import load_recipe
from ttt_core.train.checkpoint import load_checkpoint, save_atomic
from ttt_core.train.trainer import Trainer

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "recipes" / "tiny" / "baseline_ar_tiny.toml")
QUICK = ["eval.samples=8", "eval.val_samples=8"]


class Setup(NamedTuple):
    run: Path  # a trained run directory of TINY (2 steps), a copy of its own
    other: Path  # checkpoints/last.pt of TINY with backbone.layers=1
    tmp: Path
    monkeypatch: pytest.MonkeyPatch


class Evil:
    """Unpickling this runs `exec`, which creates `target`: a checkpoint that would write a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').close()",))


def evil_checkpoint(path: Path, target: Path) -> Path:
    torch.save({"model": {}, "step": 1, "payload": Evil(target)}, path)
    return path


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def rewrite_checkpoint(path: Path, change: Callable[[dict], dict]) -> None:
    save_atomic(change(load_checkpoint(path)), path)


def failing_open(under: Path, code: int):
    """`open` that fails with `code` for files under `under` (root ignores chmod: this stands in for a
    read-only or full disk)."""
    real = open

    def fake(file, *args, **kwargs):
        if str(file).startswith(str(under)):
            raise OSError(code, os.strerror(code), str(file))
        return real(file, *args, **kwargs)

    return fake


def read_only_run_dir(s: Setup) -> list[str]:
    import ttt_core.train.checkpoint as checkpoint_module

    s.monkeypatch.setattr(checkpoint_module, "open", failing_open(s.run, errno.EROFS), raising=False)
    return ["run", str(s.run), "--quiet"]


def full_disk_at_checkpoint(s: Setup) -> list[str]:
    import ttt_core.train.checkpoint as checkpoint_module

    def no_space(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    s.monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    return ["run", TINY, "--out", str(s.tmp / "full"), "--quiet", *sets("train.steps=1", *QUICK)]


def corrupt_metrics_line(s: Setup) -> Path:
    path = s.run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["{not json", *lines]) + "\n")
    return path


CASES = [
    # --- held-out sets smaller than asked for ---
    ("run: eval.samples beyond the test set",
     lambda s: ["run", TINY, "--out", str(s.tmp / "r"), "--quiet", *sets("eval.samples=1000000000")],
     "[eval] samples = 1000000000, but the task's test set has"),
    ("eval: eval.val_samples beyond the validation set",
     lambda s: ["eval", str(s.run), "--split", "val", *sets("eval.val_samples=1000000000")],
     "[eval] val_samples = 1000000000, but the task's val set has"),
    # --- devices ---
    ("run: device = 'cuda' without CUDA",
     lambda s: ["run", TINY, "--out", str(s.tmp / "r"), "--quiet", *sets("train.device='cuda'")],
     "[train] device = 'cuda' but CUDA is not available on this machine"),
    ("eval: device = 'cuda' without CUDA",
     lambda s: ["eval", str(s.run), *sets("train.device='cuda'")],
     "[train] device = 'cuda' but CUDA is not available on this machine"),
    # --- checkpoints that are not ours, or not of this model ---
    ("eval: a checkpoint without 'model'",
     lambda s: (torch.save({"step": 3}, s.tmp / "x.pt"), ["eval", str(s.run), "--checkpoint", str(s.tmp / "x.pt")])[1],
     "not a ttt checkpoint (it holds no 'model' state dict)"),
    ("eval: a checkpoint that is a plain tensor",
     lambda s: (torch.save(torch.zeros(3), s.tmp / "t.pt"), ["eval", str(s.run), "--checkpoint", str(s.tmp / "t.pt")])[1],
     "not a ttt checkpoint (it holds no 'model' state dict)"),
    ("eval: a checkpoint of another model",
     lambda s: ["eval", str(s.run), "--checkpoint", str(s.other)],
     "the checkpoint does not fit this recipe's model: Error(s) in loading state_dict"),
    ("eval: a checkpoint file of garbage",
     lambda s: ((s.tmp / "g.pt").write_bytes(b"garbage"), ["eval", str(s.run), "--checkpoint", str(s.tmp / "g.pt")])[1],
     "corrupt or unreadable checkpoint"),
    ("eval: a checkpoint whose unpickling would write a file",
     lambda s: ["eval", str(s.run), "--checkpoint", str(evil_checkpoint(s.tmp / "evil.pt", s.tmp / "pwned"))],
     "refused: loading this checkpoint would call exec, which is not plain data"),
    ("eval: --checkpoint names a missing file",
     lambda s: ["eval", str(s.run), "--checkpoint", str(s.tmp / "missing.pt")],
     "missing.pt: checkpoint not found"),
    ("eval: not a run directory",
     lambda s: ["eval", str(s.tmp)],
     "not a run directory (no recipe.toml)"),
    ("init_from: a checkpoint without 'model'",
     lambda s: (torch.save({"step": 3}, s.tmp / "x.pt"),
                ["run", TINY, "--out", str(s.tmp / "r"), "--quiet", *sets(f"train.init_from='{s.tmp / 'x.pt'}'")])[1],
     "not a ttt checkpoint (it holds no 'model' state dict)"),
    ("init_from: a checkpoint of another model",
     lambda s: ["run", TINY, "--out", str(s.tmp / "r"), "--quiet", *sets(f"train.init_from='{s.other}'")],
     "[train] init_from does not fit this recipe's model"),
    ("init_from: a checkpoint whose unpickling would write a file",
     lambda s: ["run", TINY, "--out", str(s.tmp / "r"), "--quiet",
                *sets(f"train.init_from='{evil_checkpoint(s.tmp / 'evil.pt', s.tmp / 'pwned')}'")],
     "refused: loading this checkpoint would call exec"),
    ("init_from: a directory without a checkpoint",
     lambda s: ["run", TINY, "--out", str(s.tmp / "r"), "--quiet", *sets(f"train.init_from='{s.tmp}'")],
     "no checkpoint here (neither checkpoints/last.pt nor a DeepSpeed checkpoint)"),
    ("resume: checkpoints/last.pt without 'model' and optimizer",
     lambda s: (torch.save({"step": 2}, s.run / "checkpoints" / "last.pt"), ["run", str(s.run), "--quiet"])[1],
     "not a checkpoint of a ttt run (missing bad_steps, elapsed, model, optimizer, torch_rng)"),
    ("resume: checkpoints/last.pt of another model",
     lambda s: (rewrite_checkpoint(s.run / "checkpoints" / "last.pt",
                                   lambda c: {**c, "model": load_checkpoint(s.other)["model"]}),
                ["run", str(s.run), "--quiet"])[1],
     "last.pt: the checkpoint does not fit this recipe's model"),
    ("resume: an optimizer state of another optimizer",
     lambda s: (rewrite_checkpoint(s.run / "checkpoints" / "last.pt",
                                   lambda c: {**c, "optimizer": {"state": {}, "param_groups": []}}),
                ["run", str(s.run), "--quiet"])[1],
     "its optimizer state does not fit this recipe's optimizer"),
    ("resume: optimizer groups laid out otherwise (an earlier version's checkpoint)",
     lambda s: (rewrite_checkpoint(s.run / "checkpoints" / "last.pt",
                                   lambda c: {**c, "optimizer": {**c["optimizer"], "param_groups": c["optimizer"]["param_groups"][:-1]}}),
                ["run", str(s.run), "--quiet"])[1],
     "continue from its weights with a fresh optimizer: ttt run"),
    ("resume: checkpoints/last.pt whose unpickling would write a file",
     lambda s: (evil_checkpoint(s.run / "checkpoints" / "last.pt", s.tmp / "pwned"), ["run", str(s.run), "--quiet"])[1],
     "refused: loading this checkpoint would call exec"),
    ("eval: a DeepSpeed marker that is not JSON",
     lambda s: ((s.run / "checkpoints" / "last.pt").unlink(), (s.run / "checkpoints" / "deepspeed").mkdir(),
                (s.run / "checkpoints" / "deepspeed" / "last.json").write_text("{"), ["eval", str(s.run)])[3],
     "last.json: unreadable checkpoint marker"),
    # --- the run directory ---
    ("run: --out names a file",
     lambda s: ((s.tmp / "file").write_text("x"), ["run", TINY, "--out", str(s.tmp / "file"), "--quiet"])[1],
     "--out names a file, not a directory"),
    ("run: --out below a file",
     lambda s: ((s.tmp / "file").write_text("x"), ["run", TINY, "--out", str(s.tmp / "file" / "run"), "--quiet"])[1],
     "cannot create the run directory"),
    ("run: a read-only run directory",
     read_only_run_dir,
     "recipe.toml: cannot write (permission denied or read-only file system)"),
    ("run: the disk fills up while saving a checkpoint",
     full_disk_at_checkpoint,
     ".pt: cannot write (no space left on the device)"),  # best.pt, at the first validation
    ("run: a run directory of another recipe",
     lambda s: ["run", TINY, "--out", str(s.run), "--quiet", *sets("backbone.layers=1")],
     "this run directory was made by another recipe (differs in: backbone.layers,"),
    ("run: a directory without recipe.toml to resume",
     lambda s: ["run", str(s.tmp)],
     "not a run directory (no recipe.toml)"),
    ("resume: metrics.jsonl with a bad line before the last",
     lambda s: (corrupt_metrics_line(s), ["run", str(s.run), "--quiet", *sets("train.steps=3")])[1],
     "metrics.jsonl: line 1 is not a JSON record"),
    ("plot: metrics.jsonl with a bad line before the last",
     lambda s: (corrupt_metrics_line(s), ["plot", str(s.run), "--out", str(s.tmp / "c.png")])[1],
     "metrics.jsonl: line 1 is not a JSON record"),
    ("data: --write for a task that cannot export",
     lambda s: ["data", str(ROOT / "recipes" / "tiny" / "transformer_lm_tiny.toml"), "--write", str(s.tmp / "x.jsonl")],
     "transformer_lm_tiny.toml: task 'lm_text' cannot write datasets (it has no export)"),
    ("plot: a directory without metrics",
     lambda s: ["plot", str(s.tmp), "--out", str(s.tmp / "c.png")],
     "no metrics.jsonl"),
]


def train(run_dir: Path, *overrides: str) -> None:
    Trainer(load_recipe(TINY, [*QUICK, *overrides]), run_dir, quiet=True).run()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    train(root / "run", "train.steps=2")
    train(root / "other", "train.steps=1", "backbone.layers=1")
    return root


@pytest.fixture
def setup(trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Setup(run, trained / "other" / "checkpoints" / "last.pt", scratch, monkeypatch)


@pytest.mark.parametrize(("what", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line(what, make, expected, setup, capsys):
    argv = make(setup)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (what, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]
    assert not (setup.tmp / "pwned").exists()  # no checkpoint ran code


def test_the_table_lists_enough_cases():
    assert len(CASES) >= 25
