"""Where a run's metrics go besides `metrics.jsonl` (the source of truth): TensorBoard and the loggers
plugins provide (W&B, MLflow, ...), configured by the recipe's `[logging]` table.

Training records are means over the logging window (`train.log_every` steps), not one batch:
`Window` sums each step's record and gives the means when a record is logged; learning rates are
their last value. A checkpoint stores the window's sums, so a resumed run logs the same means.

A plugin adds loggers through the hook `ttt_metrics_loggers` (`ttt_core.hookspecs`): a mapping from a
name to a factory `factory(options, run_dir, recipe) -> MetricsLogger`; a recipe turns one on with a
table `[logging.loggers.NAME]` whose keys are the logger's options.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ttt_core.errors import TTTError, did_you_mean, first_line

TENSORBOARD_DIR = "tensorboard"


@runtime_checkable
class MetricsLogger(Protocol):
    """What the trainer calls on a logger, on rank 0 only."""

    def start(self, info: dict[str, Any]) -> None:
        """The run starts (or resumes): parameter count, device, command, recipe, step."""

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        """One record: split is "train", "val" or "test"; values are numbers (a list is logged per index)."""

    def close(self) -> None:
        """The run ended or stopped: flush."""


def last_value_key(name: str) -> bool:
    """Learning rates are logged as their value at the logging step, not a window mean."""
    return name == "lr" or name.endswith("_lr")


class Window:
    """Sums of the training records since the last logged one."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.sums: dict[str, Any] = dict(state.get("sums", {}))
        self.count: int = state.get("count", 0)

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}

    def add(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, list)):
                continue
            old = self.sums.get(key)
            if last_value_key(key) or old is None:
                self.sums[key] = list(value) if isinstance(value, list) else value
            elif isinstance(value, list) and isinstance(old, list) and len(old) == len(value):
                self.sums[key] = [a + b for a, b in zip(old, value)]
            elif isinstance(value, (int, float)) and isinstance(old, (int, float)):
                self.sums[key] = old + value
            else:  # a list whose length changed: keep the newest
                self.sums[key] = value
        self.count += 1

    def mean(self) -> dict[str, Any]:
        """The window's means (learning rates: the last value); empties the window."""
        n = max(self.count, 1)
        out: dict[str, Any] = {}
        for key, value in self.sums.items():
            if last_value_key(key):
                out[key] = value
            elif isinstance(value, list):
                out[key] = [v / n for v in value]
            else:
                out[key] = value / n
        self.sums, self.count = {}, 0
        return out


# --- loggers --------------------------------------------------------------------------------------


class TensorBoardLogger:
    """Event files under `RUN/tensorboard` (`tensorboard --logdir runs`); a resumed run drops the events
    after its checkpoint's step, as `metrics.jsonl` does."""

    def __init__(self, run_dir: Path, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises this when the tensorboard package is missing
            raise TTTError(
                f"[logging] tensorboard = true needs the tensorboard package ({first_line(exc)}): "
                "pip install 'ttt-core[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), purge_step=resume_step)

    def start(self, info: dict[str, Any]) -> None:
        text = "\n".join(f"- **{k}**: {v}" for k, v in info.items() if k != "recipe")
        self.writer.add_text("run", text, info.get("step", 0))
        if "parameters" in info:
            self.writer.add_scalar("model/parameters", info["parameters"], info.get("step", 0))

    def log(self, split: str, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, (int, float)) and math.isfinite(item):
                        self.writer.add_scalar(f"{split}/{key}/{index}", item, step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


LoggerFactory = Callable[[dict[str, Any], Path, Any], MetricsLogger]


def plugin_loggers() -> dict[str, tuple[str, LoggerFactory | str]]:
    """name -> (distribution, factory) of every logger the loaded plugins provide."""
    from ttt_core.plugins import default_host

    host = default_host()
    found: dict[str, tuple[str, LoggerFactory | str]] = {}
    for impl in host.manager.hook.ttt_metrics_loggers.get_hookimpls():
        provider = next((p.distribution for p in host.plugins if p.name == impl.plugin_name), impl.plugin_name)
        try:
            provided = impl.function()
        except Exception as exc:  # noqa: BLE001 - a plugin's hook
            raise TTTError(f"{provider}: ttt_metrics_loggers failed: {type(exc).__name__}: {first_line(exc)}") from None
        for name, factory in (provided or {}).items():
            if name in found:
                raise TTTError(f"logger '{name}' is provided by both {found[name][0]} and {provider}")
            found[name] = (provider, factory)
    return found


def _resolve(factory: LoggerFactory | str, name: str) -> LoggerFactory:
    if not isinstance(factory, str):
        return factory
    module, _, attribute = factory.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise TTTError(f"logger '{name}': cannot import {factory} ({first_line(exc)})") from None


def open_loggers(recipe: Any, run_dir: Path, resume_step: int | None) -> list[MetricsLogger]:
    """The loggers `[logging]` asks for (none: an empty list)."""
    config = recipe.logging
    loggers: list[MetricsLogger] = []
    if config.tensorboard:
        loggers.append(TensorBoardLogger(run_dir, resume_step))
    if config.loggers:
        available = plugin_loggers()
        for name, options in config.loggers.items():
            if name not in available:
                known = ", ".join(sorted(available)) or "none (install a plugin that provides one)"
                raise TTTError(f"[logging] loggers.{name}: no installed plugin provides a logger '{name}'"
                               f"{did_you_mean(name, list(available))}; available: {known}")
            try:
                loggers.append(_resolve(available[name][1], name)(dict(options), Path(run_dir), recipe))
            except TTTError:
                raise
            except Exception as exc:  # noqa: BLE001 - a plugin's logger
                raise TTTError(f"[logging] loggers.{name}: the logger failed to start: "
                               f"{type(exc).__name__}: {first_line(exc)}") from None
    return loggers
