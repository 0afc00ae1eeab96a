"""[logging]: window means in metrics.jsonl, TensorBoard event files, plugin loggers through the hook."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from ttt_core import hookimpl
from ttt_core.errors import TTTError
from ttt_core.recipe import load_recipe
from ttt_core.train.tracking import Window
from ttt_core.train.trainer import Trainer

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")
QUICK = ["eval.samples=8", "eval.val_samples=8", "train.eval_every=100"]


def train_records(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def test_window_means_and_last_learning_rate():
    window = Window()
    window.add({"loss": 1.0, "lr": 0.1, "inner_loss": [1.0, 3.0], "flag": True})
    window.add({"loss": 3.0, "lr": 0.2, "inner_loss": [3.0, 5.0]})
    assert Window(window.state()).mean() == {"loss": 2.0, "lr": 0.2, "inner_loss": [2.0, 4.0]}
    assert window.mean()["loss"] == 2.0 and window.count == 0


def test_logged_training_metrics_are_window_means_and_tensorboard_reads_them(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    every = Trainer(load_recipe(TINY, ["train.steps=4", "train.log_every=1", *QUICK]), tmp_path / "a", quiet=True)
    every.run()
    windowed = load_recipe(TINY, ["train.steps=4", "train.log_every=2", "logging.tensorboard=true", *QUICK])
    Trainer(windowed, tmp_path / "b", quiet=True).run()
    per_step, means = train_records(tmp_path / "a"), train_records(tmp_path / "b")
    assert [r["step"] for r in means] == [2, 4]
    for record, (x, y) in zip(means, [per_step[0:2], per_step[2:4]]):
        assert record["loss"] == pytest.approx((x["loss"] + y["loss"]) / 2, rel=1e-12)
        assert record["lr"] == y["lr"]
    events = EventAccumulator(str(tmp_path / "b" / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [2, 4]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in means], rel=1e-6)
    assert "val/exact_match" in events.Tags()["scalars"] and "test/loss" in events.Tags()["scalars"]
    assert events.Scalars("model/parameters")[0].value == sum(p.numel() for p in every.model.parameters())


def test_missing_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    recipe = load_recipe(TINY, ["train.steps=1", "logging.tensorboard=true", *QUICK])
    with pytest.raises(TTTError, match=r"pip install 'ttt-core\[tensorboard\]'"):
        Trainer(recipe, tmp_path / "run", quiet=True).run()


class ListLogger:
    def __init__(self, options, run_dir, recipe):
        self.calls, self.options = [], options
        LOGGERS.append(self)

    def start(self, info):
        self.calls.append(("start", info["parameters"], info["device"]))

    def log(self, split, step, values):
        self.calls.append((split, step, values["loss"]))

    def close(self):
        self.calls.append(("close",))


LOGGERS: list[ListLogger] = []


def test_a_plugin_logger_receives_every_record(tmp_path, monkeypatch):
    import ttt_core.plugins as plugins

    plugin = types.SimpleNamespace(__name__="listlog", ttt_metrics_loggers=hookimpl(lambda: {"list": ListLogger}))
    host = plugins.create_host(extra_plugins=(("listlog", plugin),))
    monkeypatch.setattr(plugins, "default_host", lambda: host)
    LOGGERS.clear()
    recipe = load_recipe(TINY, ["train.steps=2", "train.log_every=1", "train.eval_every=2", "logging.loggers.list={ tag = 'x' }",
                                *QUICK])
    Trainer(recipe, tmp_path / "run", quiet=True).run()
    (logger,) = LOGGERS
    assert logger.options == {"tag": "x"}
    assert [c[:2] for c in logger.calls] == [("start", logger.calls[0][1]), ("train", 1), ("train", 2), ("val", 2),
                                             ("test", 2), ("close",)]
    assert logger.calls[0][2] == "cpu"
    bad = load_recipe(TINY, ["train.steps=1", "logging.loggers.lisst={}", *QUICK])
    with pytest.raises(TTTError, match=r"no installed plugin provides a logger 'lisst' \(did you mean 'list'\?\); available: list"):
        Trainer(bad, tmp_path / "bad", quiet=True).run()
