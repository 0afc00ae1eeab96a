"""The outer loop: meta-train, evaluate, checkpoint, resume, report.

The loop is the same for every way of running a step; how a step runs, how evaluation is split and
how checkpoints are kept is the trainer's `StepBackend` (`ttt_core.train.backends`): eager or compiled
in one process, or DeepSpeed ranks (`ttt_core.distributed.engine.DeepSpeedStep`).

Every validation scores the task's headline metric: a better score is kept as `checkpoints/best.pt`
(`train.keep_best`), and `train.patience` validations in a row without one stop the run (early
stopping). Ctrl-C or SIGTERM (one process) finish the current step, write a checkpoint and print the
command that resumes the run; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from ttt_core.build import build
from ttt_core.errors import TTTError
from ttt_core.recipe import Recipe, dumps_toml
from ttt_core.train.backends import Progress, StepBackend, StepContext, default_backend
from ttt_core.train.checkpoint import load_model_state, load_weights, write_text_atomic
from ttt_core.train.console import Console
from ttt_core.train.device import pick_device
from ttt_core.train.fast import choose_fast_settings
from ttt_core.train.rundir import (
    MetricsLog,
    check_run_dir,
    clean_stale_temporaries,
    format_metric,
    make_run_dir,
    run_info,
    versions,
    write_report,
)
from ttt_core.train.tracking import MetricsLogger, Window, open_loggers


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a checkpoint; `ttt` exits with 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Trainer:
    def __init__(
        self, recipe: Recipe, run_dir: Path, quiet: bool = False, rank: int = 0, backend: StepBackend | None = None,
        command: str | None = None, resume_command: str | None = None,
    ) -> None:
        if recipe.stages:
            raise TTTError(f"{recipe.source}: a recipe with [[stages]] trains through ttt_core.train.stages.run_stages")
        self.run_dir = Path(run_dir)
        self.quiet = quiet or rank != 0
        self.is_main = rank == 0
        self.console = Console(quiet=quiet, enabled=self.is_main)
        self.command = command if command is not None else shlex.join(sys.argv)
        self.resume_command = resume_command or f"ttt run {shlex.quote(str(self.run_dir))}"
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        self.device = pick_device(recipe.train.device)
        self.given_recipe = recipe  # what the run directory stores: "auto" is chosen again on resume
        train, note = choose_fast_settings(recipe.train, self.device, recipe.distributed.backend == "none")
        self.recipe = recipe = attrs.evolve(recipe, train=train)
        if note:
            self.console.note(note)
        built = build(recipe, self.device)
        self.task, self.model, self.optimizer = built.task, built.model, built.optimizer
        self.backend = backend if backend is not None else default_backend(recipe)
        self.backend.bind(StepContext(recipe, self.task, self.model, self.optimizer, self.device, self.run_dir, rank,
                                      console=self.console))
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        self.loggers: list[MetricsLogger] = []
        self.progress = Progress()
        self.window = Window()
        self.stop_signal: int | None = None

    # the loop's progress under the names earlier code (and tests) use
    step = property(lambda self: self.progress.step, lambda self, v: setattr(self.progress, "step", v))
    bad_steps = property(lambda self: self.progress.bad_steps, lambda self, v: setattr(self.progress, "bad_steps", v))
    elapsed = property(lambda self: self.progress.elapsed, lambda self, v: setattr(self.progress, "elapsed", v))

    # --- run directory ------------------------------------------------------------------------

    def prepare_run_dir(self) -> None:
        """Rank 0 checks the run directory and writes the recipe (other ranks never read it back)."""
        if not self.is_main:
            return
        make_run_dir(self.run_dir)
        check_run_dir(self.given_recipe, self.run_dir)
        clean_stale_temporaries(self.run_dir)
        # atomic: the other ranks of a resumed run read recipe.toml while rank 0 rewrites it
        write_text_atomic(self.run_dir / "recipe.toml", dumps_toml(self.given_recipe.resolved()))
        write_text_atomic(self.run_dir / "versions.json", json.dumps(versions(), indent=2) + "\n")

    def save(self) -> None:
        self.progress.window = self.window.state()
        self.backend.save(self.progress)

    def initialise_from(self, source: str) -> None:
        """Start from another run's weights (a new run: optimizer state and step start afresh)."""
        path, state = load_model_state(source, self.recipe.train.init_checkpoint)
        load_weights(self.model, state, path, "[train] init_from")

    def resume(self) -> bool:
        """Continue from the run directory's checkpoint (True), or start at step 0: from
        `train.init_from` if given, with a new metrics log (False)."""
        if self.backend.has_checkpoint():
            self.backend.start()
            self.progress = self.backend.load()
            self.window = Window(self.progress.window)
            self.metrics.truncate_after(self.step)
            return True
        if self.recipe.train.init_from:
            self.initialise_from(self.recipe.train.init_from)
        self.backend.start()
        self.metrics.truncate_after(0)  # rows of an earlier start of this run (killed before a checkpoint)
        return False

    # --- what is logged -------------------------------------------------------------------------

    def start_logging(self, resumed: bool) -> dict[str, Any]:
        """Open the `[logging]` loggers and tell them (and the console) what runs where."""
        info = run_info(self.model, self.device, self.command)
        info["step"] = self.step
        if self.is_main:
            self.info = info
            self.console.info(
                f"{'resuming' if resumed else 'training'} {self.run_dir}"
                + (f" at step {self.step}" if resumed else "")
                + f": {info['parameters']:,} parameters ({info['trainable_parameters']:,} trained) on {info['device']}"
            )
            self.loggers = open_loggers(self.recipe, self.run_dir, self.step if resumed else None)
            for logger in self.loggers:
                logger.start({**info, "recipe": self.recipe.resolved()})
        return info

    def log(self, split: str, record: dict[str, Any]) -> None:
        """A record to `metrics.jsonl` and every logger (the test result: to the loggers; report.json has it)."""
        if split != "test":
            self.metrics.write({"step": self.step, "split": split, "time": self.elapsed, **record})
        for logger in self.loggers:
            logger.log(split, self.step, {k: v for k, v in record.items() if k != "samples"} if split != "train" else record)

    def close_loggers(self) -> None:
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            with contextlib.suppress(Exception):
                logger.close()

    # --- the loop -----------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any] | None:
        """One outer step; None if it was skipped for a non-finite loss."""
        return self.backend.train_step(self.step)

    @contextlib.contextmanager
    def signals_checkpoint(self) -> Iterator[None]:
        """While the loop runs (one process, main thread): the first Ctrl-C / SIGTERM asks for a
        checkpoint after the current step; a second Ctrl-C stops at once."""
        if not getattr(self.backend, "checkpoints_on_signal", False) or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum: int, _frame: Any) -> None:
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum
            self.console.note(f"{signal.Signals(signum).name}: stopping after this step to write a checkpoint "
                              "(Ctrl-C again stops at once, without one)")

        previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def run(self) -> dict[str, Any]:
        self.prepare_run_dir()
        resumed = self.resume()
        try:
            self.start_logging(resumed)
            with self.signals_checkpoint():
                self.loop()
            return self.report()
        finally:
            self.close_loggers()

    def loop(self) -> None:
        train = self.recipe.train
        self.console.start_training(train.steps, self.step)
        window_start, window_samples = time.perf_counter(), 0
        try:
            while self.step < train.steps and not self.stopped_early():
                started = time.perf_counter()
                record = self.train_step()
                self.elapsed += time.perf_counter() - started
                if record is None:
                    self.bad_steps += 1
                    if self.is_main:
                        warnings.warn(f"step {self.step}: non-finite loss, step skipped ({self.bad_steps} in a row)", stacklevel=1)
                    if self.bad_steps >= train.max_bad_steps:
                        raise self.diverged()
                    self.step += 1
                    self.check_signal()
                    continue
                self.bad_steps = 0
                self.step += 1
                self.window.add(record)
                window_samples += train.batch_size
                self.console.advance(self.step)
                if self.step % train.log_every == 0 or self.step == train.steps:
                    now = time.perf_counter()
                    record = self.window.mean()
                    record["samples_per_s"] = window_samples / max(now - window_start, 1e-9)
                    window_start, window_samples = now, 0
                    self.show(record)
                    self.log("train", record)
                stop = False
                if self.step % train.eval_every == 0 or self.step == train.steps:
                    stop = self.validate()
                if stop or self.step % train.checkpoint_every == 0 or self.step == train.steps:
                    self.save()
                self.check_signal()
        finally:
            self.console.end_training()
        if self.bad_steps:  # ended inside a streak shorter than max_bad_steps: the weights are not trained
            raise self.diverged()

    def show(self, record: dict[str, Any]) -> None:
        headline = self.task.headline
        values = {"loss": f"{record['loss']:.3f}"}
        if headline in record:
            values[headline] = f"{record[headline]:.3f}"
        values["sps"] = f"{record['samples_per_s']:.0f}"
        self.console.logged(self.step, values)

    def validate(self) -> bool:
        """Evaluate on the validation split, keep the best weights; True when early stopping says stop."""
        result = self.evaluate("val", self.recipe.eval.val_samples)
        headline, p, train = self.task.headline, self.progress, self.recipe.train
        value = result.get(headline)
        better = value is not None and math.isfinite(value) and (
            p.best is None or (value > p.best if self.task.higher_is_better else value < p.best))
        if better:
            p.best, p.best_step, p.stale = value, self.step, 0
            if train.keep_best:
                self.backend.save_best(p)
        else:
            p.stale += 1
        best = f" (best {format_metric(headline, p.best)} at step {p.best_step})" if p.best is not None else ""
        self.console.result(f"step {self.step}: val loss {result['loss']:.4f} {headline} "
                            f"{format_metric(headline, value)}{'' if better else best}")
        self.log("val", result)
        if self.stopped_early():
            self.console.note(f"early stop at step {self.step}: no better val {headline} in {p.stale} validations "
                              f"(train.patience = {train.patience}); best {format_metric(headline, p.best)} at step "
                              f"{p.best_step}")
            return True
        return False

    def stopped_early(self) -> bool:
        patience = self.recipe.train.patience
        return patience is not None and self.progress.stale >= patience

    def check_signal(self) -> None:
        """After a step: if Ctrl-C / SIGTERM asked, checkpoint and stop with the resume command."""
        if self.stop_signal is None:
            return
        self.save()
        where = self.backend.last_checkpoint()
        self.console.note(f"stopped at step {self.step}; checkpoint {where[0] if where else self.run_dir}; "
                          f"resume with: {self.resume_command}")
        raise Interrupted(self.stop_signal)

    def diverged(self) -> TTTError:
        """Why the run stopped after non-finite losses, and the way on from the last checkpoint."""
        train = self.recipe.train
        streak = f"{self.bad_steps} consecutive non-finite losses"
        if self.bad_steps < train.max_bad_steps:
            streak += f" (the run ended inside the streak; train.max_bad_steps = {train.max_bad_steps})"
        lr = getattr(self.recipe["optimizer"].config, "lr", None)
        lower = f"optimizer.lr=<lower than {lr:g}>" if isinstance(lr, float) else "optimizer.lr=<lower>"
        command = f"ttt run {self.recipe.source} --out NEW_DIR"
        last = self.backend.last_checkpoint()
        if last is None:
            way_on = f"no checkpoint was saved; start again with a lower learning rate: {command} --set {lower}"
        else:
            path, step = last
            way_on = (
                f"the last checkpoint (step {step}, after a finite step) is {path}; go on from it with a lower "
                f"learning rate: {command} --set \"train.init_from='{path}'\" --set {lower}"
            )
        return TTTError(f"stopped at step {self.step}: {streak}; {way_on}")

    def evaluate(self, split: str, samples: int) -> dict[str, float]:
        return self.backend.evaluate(split, samples)

    def report(self) -> dict[str, Any]:
        test = self.evaluate("test", self.recipe.eval.samples)
        self.log("test", test)
        report = {
            "recipe": self.recipe.source,
            "steps": self.step,
            "train_time_s": round(self.elapsed, 1),
            "headline": self.task.headline,
            "higher_is_better": self.task.higher_is_better,
            "stopped_early": self.stopped_early(),
            "test": test,
        }
        if self.is_main:
            report.update({k: v for k, v in self.info.items() if k != "step"})
            write_report(self.run_dir, report, self.recipe)
        return report
