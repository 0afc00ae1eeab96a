"""How one optimizer step runs, evaluation is split and checkpoints are kept: the trainer's part that
varies between one process (eager or compiled) and several DeepSpeed ranks.

The trainer (`ttt_core.train.trainer.Trainer`) owns the loop (steps, skipped steps, logging,
evaluation and checkpoint cadence, reports); it hands its built objects to a `StepBackend` once
(`bind`), starts it once the weights are final (`start`: after `train.init_from`), then asks it for
steps, evaluations and checkpoints. `EagerStep` and `CompiledStep` (one process, `checkpoints/last.pt`)
live here; `ttt_core.distributed.engine.DeepSpeedStep` is the DeepSpeed one.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from ttt_core.errors import TTTError, first_line
from ttt_core.objective import autocast, evaluate, is_finite, step_loss
from ttt_core.recipe import Recipe
from ttt_core.train.checkpoint import BEST, PLAIN, keep_step_copy, load_checkpoint, load_weights, save_atomic


@attrs.define
class Progress:
    """What a checkpoint records of the loop besides the weights."""

    step: int = 0
    bad_steps: int = 0
    elapsed: float = 0.0
    best: float | None = None
    """The best validation headline metric so far (None: not validated yet)."""
    best_step: int | None = None
    stale: int = 0
    """Validations since the best one (early stopping counts these)."""
    window: dict[str, Any] = attrs.field(factory=dict)
    """The sums of the logging window not logged yet (`ttt_core.train.tracking.Window.state`)."""

    def extra(self) -> dict[str, Any]:
        """What a checkpoint stores besides step, bad_steps and elapsed."""
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale, "window": self.window}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        """From a checkpoint's keys (one written before best tracking has none of the extras)."""
        return cls(state["step"], state["bad_steps"], state["elapsed"], state.get("best"), state.get("best_step"),
                   state.get("stale", 0), state.get("window") or {})


@attrs.define
class StepContext:
    """The built run a backend works on."""

    recipe: Recipe
    task: Any
    model: torch.nn.Module
    optimizer: Any
    device: torch.device
    run_dir: Path
    rank: int = 0
    console: Any = None
    """The run's `ttt_core.train.console.Console` (evaluation bars, compile notes); None: silent."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@runtime_checkable
class StepBackend(Protocol):
    def bind(self, context: StepContext) -> None:
        """Take the built run (before any weights are loaded)."""

    def start(self) -> None:
        """The weights are final (`train.init_from` loaded, or the fresh ones): get ready to train."""

    def has_checkpoint(self) -> bool: ...

    def last_checkpoint(self) -> tuple[Path, int] | None:
        """(location, step) of the last complete checkpoint, or None."""

    def load(self) -> Progress:
        """Restore weights, optimizer, RNG from the last checkpoint; the loop's progress."""

    def save(self, progress: Progress) -> None: ...

    def save_best(self, progress: Progress) -> None:
        """Keep the current weights as `checkpoints/best.pt` (rank 0 writes; progress.best is their score)."""

    def train_step(self, step: int) -> dict[str, Any] | None:
        """One optimizer step: its record of metrics, or None if it was skipped for a non-finite loss."""

    def evaluate(self, split: str, samples: int) -> dict[str, float]: ...


def to_float(value: torch.Tensor | float) -> float | list[float]:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.dim() else float(value)
    return value


PLAIN_KEYS = ("step", "bad_steps", "elapsed", "model", "optimizer", "torch_rng")


class LocalStep(ABC):
    """One process: the loss and gradients of a subclass, evaluation of the whole set,
    `checkpoints/last.pt`."""

    context: StepContext
    checkpoints_on_signal = True
    """Ctrl-C / SIGTERM: the trainer finishes the step and writes a checkpoint (one process only)."""

    def bind(self, context: StepContext) -> None:
        self.context = context
        self.checkpoint_path = context.run_dir / PLAIN

    def start(self) -> None:
        pass

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def last_checkpoint(self) -> tuple[Path, int] | None:
        if not self.has_checkpoint():
            return None
        return self.checkpoint_path, load_checkpoint(self.checkpoint_path).get("step")

    def save(self, progress: Progress) -> None:
        if not self.context.is_main:
            return
        c = self.context
        state = {
            "step": progress.step,
            "bad_steps": progress.bad_steps,
            "elapsed": progress.elapsed,
            "model": c.model.state_dict(),
            "optimizer": c.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "recipe": c.recipe.resolved(),
            **progress.extra(),
        }
        save_atomic(state, self.checkpoint_path)
        keep_step_copy(self.checkpoint_path, progress.step, c.recipe.train.keep_last)

    def save_best(self, progress: Progress) -> None:
        if not self.context.is_main:
            return
        save_best(self.context, progress)

    def load(self) -> Progress:
        path, c = self.checkpoint_path, self.context
        state = load_checkpoint(path)
        missing = [key for key in PLAIN_KEYS if not isinstance(state, dict) or key not in state]
        if missing:
            raise TTTError(f"{path}: not a checkpoint of a ttt run (missing {', '.join(missing)})")
        load_weights(c.model, state, path, "the checkpoint")
        try:
            c.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise TTTError(
                f"{path}: its optimizer state does not fit this recipe's optimizer ({first_line(exc)}; a checkpoint "
                f"of an earlier version groups parameters differently); continue from its weights with a fresh "
                f"optimizer: ttt run {c.recipe.source} --out NEW_DIR --set \"train.init_from='{c.run_dir}'\""
            ) from None
        return Progress.from_state(state)

    def evaluate(self, split: str, samples: int) -> dict[str, float]:
        c = self.context
        return evaluate(c.model, c.task, split, samples, c.recipe.eval.batch_size, c.device, c.recipe.train.precision,
                        progress=eval_progress(c, split, samples))

    @abstractmethod
    def _loss(self, episode) -> tuple[torch.Tensor, Any]:
        """(outer loss, model output) of one batch."""

    def train_step(self, step: int) -> dict[str, Any] | None:
        c = self.context
        episode = c.task.train_batch(step, c.recipe.train.batch_size).to(c.device)
        loss, out = self._loss(episode)
        finite = is_finite(loss, out)
        if finite:
            self._backward(loss)
            stats = c.optimizer.step(step)
            finite = math.isfinite(stats["grad_norm"])
        if not finite:
            c.optimizer.optimizer.zero_grad(set_to_none=True)
            return None
        metrics = c.task.metrics(out.logits.detach(), episode)
        record = {"loss": float(loss.detach()), **{k: float(v.float().mean()) for k, v in metrics.items()}, **stats}
        record.update({k: to_float(v) for k, v in out.stats.items() if k != "outer_term"})
        return record

    def _backward(self, loss: torch.Tensor) -> None:
        """Put the gradients of a finite loss into `.grad` (none to do where `_loss` already did)."""


class EagerStep(LocalStep):
    """The outer loss by the model's forward, its gradient by `loss.backward()`."""

    def _loss(self, episode) -> tuple[torch.Tensor, Any]:
        return step_loss(self.context.model, episode, precision=self.context.recipe.train.precision)

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()


SHAPE_SCAN = 100
"""Batches whose widths the compiled step takes before its first step. It pads every batch to the
widest seen, and each new width compiles again (minutes on a CPU); the first batches' widest covers
almost every later one (`length_buckets` groups and pairs round up to a multiple of 4 or 8)."""


class CompiledStep(LocalStep):
    """`[train] compile`: loss and gradients in one compiled functional call (`train.functional`)."""

    def start(self) -> None:
        from ttt_core.train.functional import FunctionalStep

        if getattr(self, "functional", None) is None:
            self.functional = FunctionalStep(self.context.model, compile=True)
            self.compiled = False
            c = self.context
            for i in range(SHAPE_SCAN):  # padding widths for all of them now: one compile, not one per new width
                self.functional.pad(c.task.train_batch(i, c.recipe.train.batch_size))

    def train_step(self, step: int) -> dict[str, Any] | None:
        """The first step compiles (minutes on CPU): say so, and how long it took."""
        if self.compiled:
            return super().train_step(step)
        console = self.context.console
        if console is not None:
            console.note("compiling the training step (torch.compile; the first step takes minutes on a CPU) ...")
        started = time.perf_counter()
        record = super().train_step(step)
        self.compiled = True
        if console is not None:
            console.note(f"compiled the training step in {time.perf_counter() - started:.1f} s")
        return record

    def _loss(self, episode) -> tuple[torch.Tensor, Any]:
        with autocast(self.context.recipe.train.precision, self.context.device):
            return self.functional(episode)


def eval_progress(context: StepContext, split: str, samples: int):
    """The evaluation bar of the run's console (None without one)."""
    console = context.console
    if console is None:
        return None
    return lambda batches: console.evaluating(batches, split, samples, context.recipe.eval.batch_size)


def save_best(context: StepContext, progress: Progress) -> None:
    """`checkpoints/best.pt`: the weights and where they scored (no optimizer: it starts runs, is evaluated)."""
    state = {
        "step": progress.step,
        "model": {k: v.detach().to("cpu") for k, v in context.model.state_dict().items()},
        "metric": context.task.headline,
        "value": progress.best,
        "recipe": context.recipe.resolved(),
    }
    save_atomic(state, context.run_dir / BEST)


def default_backend(recipe: Recipe) -> StepBackend:
    return CompiledStep() if recipe.train.compile else EagerStep()

