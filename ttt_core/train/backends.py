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
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch

from ttt_core.errors import TTTError, first_line
from ttt_core.objective import autocast, evaluate, is_finite, step_loss
from ttt_core.recipe import Recipe
from ttt_core.train.checkpoint import PLAIN, load_checkpoint, load_weights, save_atomic


@attrs.define
class Progress:
    """What a checkpoint records of the loop besides the weights."""

    step: int = 0
    bad_steps: int = 0
    elapsed: float = 0.0


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
        }
        save_atomic(state, self.checkpoint_path)

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
        return Progress(state["step"], state["bad_steps"], state["elapsed"])

    def evaluate(self, split: str, samples: int) -> dict[str, float]:
        c = self.context
        return evaluate(c.model, c.task, split, samples, c.recipe.eval.batch_size, c.device, c.recipe.train.precision)

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


class CompiledStep(LocalStep):
    """`[train] compile`: loss and gradients in one compiled functional call (`train.functional`)."""

    def start(self) -> None:
        from ttt_core.train.functional import FunctionalStep

        if getattr(self, "functional", None) is None:
            self.functional = FunctionalStep(self.context.model, compile=True)

    def _loss(self, episode) -> tuple[torch.Tensor, Any]:
        with autocast(self.context.recipe.train.precision, self.context.device):
            return self.functional(episode)


def default_backend(recipe: Recipe) -> StepBackend:
    return CompiledStep() if recipe.train.compile else EagerStep()

