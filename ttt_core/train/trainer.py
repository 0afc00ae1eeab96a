"""The outer loop: meta-train, evaluate, checkpoint, resume, report.

The loop is the same for every way of running a step; how a step runs, how evaluation is split and
how checkpoints are kept is the trainer's `StepBackend` (`ttt_core.train.backends`): eager or compiled
in one process, or DeepSpeed ranks (`ttt_core.distributed.engine.DeepSpeedStep`).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ttt_core.build import build
from ttt_core.errors import TTTError
from ttt_core.recipe import Recipe, dumps_toml
from ttt_core.train.backends import Progress, StepBackend, StepContext, default_backend
from ttt_core.train.checkpoint import load_model_state, load_weights, write_text_atomic
from ttt_core.train.device import pick_device
from ttt_core.train.rundir import (
    MetricsLog,
    check_run_dir,
    clean_stale_temporaries,
    make_run_dir,
    versions,
    write_report,
)


class Trainer:
    def __init__(
        self, recipe: Recipe, run_dir: Path, quiet: bool = False, rank: int = 0, backend: StepBackend | None = None
    ) -> None:
        if recipe.stages:
            raise TTTError(f"{recipe.source}: a recipe with [[stages]] trains through ttt_core.train.stages.run_stages")
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.quiet = quiet or rank != 0
        self.is_main = rank == 0
        if recipe.train.threads:
            torch.set_num_threads(recipe.train.threads)
        self.device = pick_device(recipe.train.device)
        built = build(recipe, self.device)
        self.task, self.model, self.optimizer = built.task, built.model, built.optimizer
        self.backend = backend if backend is not None else default_backend(recipe)
        self.backend.bind(StepContext(recipe, self.task, self.model, self.optimizer, self.device, self.run_dir, rank))
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        self.step = 0
        self.bad_steps = 0
        self.elapsed = 0.0

    # --- run directory ------------------------------------------------------------------------

    def prepare_run_dir(self) -> None:
        """Rank 0 checks the run directory and writes the recipe (other ranks never read it back)."""
        if not self.is_main:
            return
        make_run_dir(self.run_dir)
        check_run_dir(self.recipe, self.run_dir)
        clean_stale_temporaries(self.run_dir)
        # atomic: the other ranks of a resumed run read recipe.toml while rank 0 rewrites it
        write_text_atomic(self.run_dir / "recipe.toml", dumps_toml(self.recipe.resolved()))
        write_text_atomic(self.run_dir / "versions.json", json.dumps(versions(), indent=2) + "\n")

    def save(self) -> None:
        self.backend.save(Progress(self.step, self.bad_steps, self.elapsed))

    def initialise_from(self, source: str) -> None:
        """Start from another run's weights (a new run: optimizer state and step start afresh)."""
        path, state = load_model_state(source)
        load_weights(self.model, state, path, "[train] init_from")

    def resume(self) -> bool:
        """Continue from the run directory's checkpoint (True), or start at step 0: from
        `train.init_from` if given, with a new metrics log (False)."""
        if self.backend.has_checkpoint():
            self.backend.start()
            progress = self.backend.load()
            self.step, self.bad_steps, self.elapsed = progress.step, progress.bad_steps, progress.elapsed
            self.metrics.truncate_after(self.step)
            return True
        if self.recipe.train.init_from:
            self.initialise_from(self.recipe.train.init_from)
        self.backend.start()
        self.metrics.truncate_after(0)  # rows of an earlier start of this run (killed before a checkpoint)
        return False

    # --- the loop -----------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any] | None:
        """One outer step; None if it was skipped for a non-finite loss."""
        return self.backend.train_step(self.step)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        self.prepare_run_dir()
        resumed = self.resume()
        train = self.recipe.train
        if resumed and self.is_main and not self.quiet:
            print(f"resuming {self.run_dir} at step {self.step}", file=sys.stderr)
        bar = tqdm(total=train.steps, initial=self.step, disable=self.quiet, dynamic_ncols=True, desc="train")
        window_start, window_samples = time.perf_counter(), 0
        headline = self.task.headline
        while self.step < train.steps:
            started = time.perf_counter()
            record = self.train_step()
            self.elapsed += time.perf_counter() - started
            if record is None:
                self.bad_steps += 1
                if self.is_main:
                    warnings.warn(f"step {self.step}: non-finite loss, step skipped ({self.bad_steps} in a row)", stacklevel=1)
                if self.bad_steps >= train.max_bad_steps:
                    bar.close()
                    raise self.diverged()
                self.step += 1
                continue
            self.bad_steps = 0
            self.step += 1
            window_samples += train.batch_size
            bar.update(1)
            if self.step % train.log_every == 0 or self.step == train.steps:
                now = time.perf_counter()
                record["samples_per_s"] = window_samples / max(now - window_start, 1e-9)
                window_start, window_samples = now, 0
                bar.set_postfix(loss=f"{record['loss']:.3f}", **{headline: f"{record[headline]:.3f}"},
                                sps=f"{record['samples_per_s']:.0f}")
                self.metrics.write({"step": self.step, "split": "train", "time": self.elapsed, **record})
            if self.step % train.eval_every == 0 or self.step == train.steps:
                result = self.evaluate("val", self.recipe.eval.val_samples)
                if not self.quiet:
                    bar.write(f"step {self.step}: val loss {result['loss']:.4f} {headline} {result[headline]:.4f}")
                self.metrics.write({"step": self.step, "split": "val", "time": self.elapsed, **result})
            if self.step % train.checkpoint_every == 0 or self.step == train.steps:
                self.save()
        bar.close()
        if self.bad_steps:  # ended inside a streak shorter than max_bad_steps: the weights are not trained
            raise self.diverged()
        return self.report()

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
        report = {
            "recipe": self.recipe.source,
            "steps": self.step,
            "train_time_s": round(self.elapsed, 1),
            "headline": self.task.headline,
            "test": test,
        }
        if self.is_main:
            write_report(self.run_dir, report, self.recipe)
        return report
