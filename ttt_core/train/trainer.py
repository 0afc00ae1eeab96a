"""The outer loop: meta-train, evaluate, checkpoint, resume, report."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ttt_core.errors import TTTError
from ttt_core.episode import answer_loss
from ttt_core.model import MetaModel
from ttt_core.recipe import Recipe, dumps_toml
from ttt_core.build import build
from ttt_core.train.checkpoint import load_checkpoint, load_model_state, save_atomic, write_text_atomic

# Options that may change when a run is resumed: they do not change what has been computed so far.
# (`init_from` only matters when a run starts: a resumed run loads its own checkpoint; `compile`
# computes the same gradients, up to float rounding.)
RESUMABLE_CHANGES = {
    ("train", k) for k in ("steps", "eval_every", "checkpoint_every", "log_every", "threads", "init_from", "compile")
} | {
    ("distributed", "timeout_s")
}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def versions() -> dict[str, str]:
    from ttt_core.plugins import default_host

    found = {"python": platform.python_version(), "torch": torch.__version__}
    found.update(default_host().versions())
    return found


def _flat(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ, ignoring those that may change on resume."""
    a, b = _flat(old), _flat(new)
    return sorted(
        ".".join(k) for k in set(a) | set(b) if a.get(k) != b.get(k) and k[:2] not in RESUMABLE_CHANGES
    )


class MetricsLog:
    """metrics.jsonl: one JSON object per line; truncated to the checkpoint's step on resume."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def _to_float(value: torch.Tensor | float) -> float | list[float]:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.dim() else float(value)
    return value


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


def evaluate_totals(
    model: MetaModel, task, split: str, samples: int, batch_size: int, device, shard: tuple[int, int] = (0, 1),
    precision: str = "fp32",
) -> tuple[dict[str, float], int]:
    """Summed loss and metrics over a fixed held-out set (batches `rank::world` for `shard`), and the
    number of samples. The inner loop still needs autograd."""
    rank, world = shard
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for index, episode in enumerate(task.eval_batches(split, samples, batch_size)):
        if index % world != rank:
            continue
        episode = episode.to(device)
        loss, out = step_loss(model, episode, precision=precision)
        batch = episode.batch_size
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * batch
        for name, values in task.metrics(out.logits.detach(), episode).items():
            totals[name] = totals.get(name, 0.0) + float(values.float().sum())
        count += batch
        model.zero_grad(set_to_none=True)
    model.train(was_training)
    return totals, count


def evaluate(
    model: MetaModel, task, split: str, samples: int, batch_size: int, device, precision: str = "fp32"
) -> dict[str, float]:
    """Mean loss and metrics over a fixed held-out set."""
    totals, count = evaluate_totals(model, task, split, samples, batch_size, device, precision=precision)
    return {name: total / count for name, total in totals.items()} | {"samples": count}


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path, quiet: bool = False, rank: int = 0) -> None:
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
        self.functional_step = None
        if recipe.train.compile:
            from ttt_core.train.functional import FunctionalStep

            self.functional_step = FunctionalStep(self.model, compile=True)
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        self.step = 0
        self.bad_steps = 0
        self.elapsed = 0.0

    # --- run directory ------------------------------------------------------------------------

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def prepare_run_dir(self) -> None:
        """Rank 0 checks the run directory and writes the recipe (other ranks never read it back)."""
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        check_run_dir(self.recipe, self.run_dir, self.has_checkpoint())
        # atomic: the other ranks of a resumed run read recipe.toml while rank 0 rewrites it
        write_text_atomic(self.run_dir / "recipe.toml", dumps_toml(self.recipe.resolved()))
        write_text_atomic(self.run_dir / "versions.json", json.dumps(versions(), indent=2) + "\n")

    def save(self) -> None:
        if not self.is_main:
            return
        state = {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "recipe": self.recipe.resolved(),
        }
        save_atomic(state, self.checkpoint_path)

    def initialise_from(self, source: str) -> None:
        """Start from another run's weights (a new run: optimizer state and step start afresh)."""
        path, state = load_model_state(source)
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as exc:
            raise TTTError(f"{path}: [train] init_from does not fit this recipe's model: {str(exc).splitlines()[0]}") from None

    def resume(self) -> bool:
        if not self.has_checkpoint():
            if self.recipe.train.init_from:
                self.initialise_from(self.recipe.train.init_from)
            return False
        state = load_checkpoint(self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.bad_steps, self.elapsed = state["step"], state["bad_steps"], state["elapsed"]
        self.metrics.truncate_after(self.step)
        return True

    # --- the loop -----------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any] | None:
        """One outer step; None if it was skipped for a non-finite loss."""
        train = self.recipe.train
        episode = self.task.train_batch(self.step, train.batch_size).to(self.device)
        if self.functional_step is not None:  # loss and gradients in one compiled call
            with autocast(train.precision, self.device):
                loss, out = self.functional_step(episode)
        else:
            loss, out = step_loss(self.model, episode, precision=train.precision)
        inner = out.stats.get("inner_loss")
        finite = torch.isfinite(loss) and (inner is None or bool(torch.isfinite(inner).all()))
        if finite:
            if self.functional_step is None:
                loss.backward()
            stats = self.optimizer.step(self.step)
            finite = math.isfinite(stats["grad_norm"])
        if not finite:
            self.optimizer.optimizer.zero_grad(set_to_none=True)
            return None
        metrics = self.task.metrics(out.logits.detach(), episode)
        record = {"loss": float(loss.detach()), **{k: float(v.float().mean()) for k, v in metrics.items()}, **stats}
        record.update({k: _to_float(v) for k, v in out.stats.items() if k != "outer_term"})
        return record

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
                    raise TTTError(
                        f"stopped at step {self.step}: {self.bad_steps} consecutive non-finite losses; "
                        f"the last good checkpoint is {self.checkpoint_location()}"
                    )
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
        return self.report()

    def checkpoint_location(self) -> Path:
        return self.checkpoint_path

    def evaluate(self, split: str, samples: int) -> dict[str, float]:
        return evaluate(self.model, self.task, split, samples, self.recipe.eval.batch_size, self.device,
                        self.recipe.train.precision)

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


def check_run_dir(recipe: Recipe, run_dir: Path, has_checkpoint: bool) -> None:
    """Refuse to resume a run directory that another recipe made."""
    stored = run_dir / "recipe.toml"
    if not (stored.exists() and has_checkpoint):
        return
    from ttt_core.recipe import tomllib

    old = tomllib.loads(stored.read_text())
    diff = recipe_differences(old, tomllib.loads(dumps_toml(recipe.resolved())))  # same TOML types
    if diff:
        raise TTTError(
            f"{run_dir}: this run directory was made by another recipe (differs in: "
            f"{', '.join(diff)}); use another --out or resume it as it is"
        )


def write_report(run_dir: Path, report: dict[str, Any], recipe: Recipe) -> None:
    (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    task = recipe.data.get("task", {})
    dataset = task.get("dataset", task.get("name", "?"))
    headline = report.get("headline", "exact_match")
    lines = [
        f"# {run_dir.name}",
        "",
        f"| recipe | dataset | steps | train time (s) | test samples | test loss | test {metric_label(headline)} |",
        "|---|---|---|---|---|---|---|",
        f"| {recipe.source} | {dataset} | {report['steps']} | {report['train_time_s']} | "
        f"{report['test']['samples']} | {report['test']['loss']:.4f} | {format_metric(headline, report['test'][headline])} |",
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(lines))



PERCENT_METRICS = ("exact_match", "accuracy")


def metric_label(name: str) -> str:
    """`exact_match` -> `exact match (%)`, `bits_per_byte` -> `bits per byte`."""
    return name.replace("_", " ") + (" (%)" if name in PERCENT_METRICS else "")


def format_metric(name: str, value: float) -> str:
    return f"{100 * value:.2f}" if name in PERCENT_METRICS else f"{value:.4f}"
