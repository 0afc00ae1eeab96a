"""The loss of one outer step and the evaluation of a model: what every step backend and `ttt eval`
share. It depends on the model and the episode only, never on the training loop (`ttt_core.train`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ttt_core.episode import answer_loss
from ttt_core.model import MetaModel


def autocast(precision: str, device: torch.device | str):
    """`[train] precision`: a no-op context for "fp32", bfloat16 autocast for "bf16"."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


def step_loss(model: MetaModel, episode, denominator=None, *, forward=None, precision: str = "fp32") -> tuple[torch.Tensor, Any]:
    """Outer loss of one batch (plus the inner loss if the recipe asks for it).

    `forward` runs the model (a DeepSpeed engine wraps it); `denominator`: see `answer_loss`;
    `precision`: `[train] precision` (the backward runs in the dtypes its forward chose).
    """
    with autocast(precision, episode.context.ids.device):
        out = (forward or model)(episode)
        loss = answer_loss(out.logits, episode.target, denominator)
    return with_inner_term(model, loss, out), out


def with_inner_term(model: MetaModel, loss: torch.Tensor, out: Any) -> torch.Tensor:
    """`loss` plus the inner loss weighted by `[inner] outer_weight`, when the recipe asks for it."""
    if "outer_term" in out.stats:
        loss = loss + model.inner.config.outer_weight * out.stats["outer_term"]
    return loss


def is_finite(loss: torch.Tensor, out: Any) -> bool:
    """Whether the outer loss and the inner losses of a step are all finite (else the step is skipped)."""
    inner = out.stats.get("inner_loss")
    return bool(torch.isfinite(loss)) and (inner is None or bool(torch.isfinite(inner).all()))


def evaluate_totals(
    model: MetaModel, task, split: str, samples: int, batch_size: int, device, shard: tuple[int, int] = (0, 1),
    precision: str = "fp32", progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[dict[str, float], int]:
    """Summed loss and metrics over a fixed held-out set (batches `rank::world` for `shard`), and the
    number of samples. The inner loop still needs autograd; a model without inner steps is evaluated
    without it, so that no graph of its forward is kept (for long contexts most of the memory: a
    TTT-Linear LM's 250 rows of 1k tokens took 23 GB). `progress` wraps the batches (a bar)."""
    rank, world = shard
    was_training = model.training
    model.eval()
    grad_mode = torch.enable_grad if model.inner.config.steps else torch.no_grad
    totals: dict[str, float] = {}
    count = 0
    batches = task.eval_batches(split, samples, batch_size)
    for index, episode in enumerate(progress(batches) if progress is not None else batches):
        if index % world != rank:
            continue
        episode = episode.to(device)
        with grad_mode():
            loss, out = step_loss(model, episode, precision=precision)
        batch = episode.batch_size
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * batch
        for name, values in task.metrics(out.logits.detach(), episode).items():
            totals[name] = totals.get(name, 0.0) + float(values.float().sum())
        count += batch
        model.zero_grad(set_to_none=True)
    model.train(was_training)
    return totals, count


def mean_of_totals(totals: dict[str, float], count: int) -> dict[str, float]:
    return {name: total / count for name, total in totals.items()} | {"samples": count}


def evaluate(
    model: MetaModel, task, split: str, samples: int, batch_size: int, device, precision: str = "fp32",
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[str, float]:
    """Mean loss and metrics over a fixed held-out set."""
    totals = evaluate_totals(model, task, split, samples, batch_size, device, precision=precision, progress=progress)
    return mean_of_totals(*totals)
