"""The standard recipe tables every recipe has, and validators for component configs.

Imports no torch: `ttt validate` structures these without building a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from ttt_core.errors import did_you_mean


def one_of(*choices: str) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: value must be one of `choices` (with a did-you-mean)."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(
                f"option '{attribute.name}' must be one of {', '.join(choices)}; "
                f"got '{value}'{did_you_mean(str(value), choices)}"
            )

    check.allowed = f"one of: {', '.join(choices)}"  # type: ignore[attr-defined]  # for `ttt list`
    return check


def _finite(attribute: attrs.Attribute, value: Any) -> None:
    """nan and inf (TOML's `nan`, `inf`, and overflowing literals such as 1e400) compare as neither
    small nor large: refuse them before any bound is checked."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"option '{attribute.name}' must be a finite number; got {value}")


def positive(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _finite(attribute, value)
    if value is not None and value <= 0:
        raise ValueError(f"option '{attribute.name}' must be > 0; got {value}")


def non_negative(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _finite(attribute, value)
    if value is not None and value < 0:
        raise ValueError(f"option '{attribute.name}' must be >= 0; got {value}")


positive.allowed = "> 0"  # type: ignore[attr-defined]
non_negative.allowed = ">= 0"  # type: ignore[attr-defined]


def in_range(low: float, high: float) -> Callable[[Any, attrs.Attribute, Any], None]:
    """attrs validator: low <= value <= high (integers or finite numbers)."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        _finite(attribute, value)
        if not low <= value <= high:
            raise ValueError(f"option '{attribute.name}' must be in [{low}, {high}]; got {value}")

    shown = [str(x) if isinstance(x, int) and x < 10**6 else f"{x:g}" for x in (low, high)]
    check.allowed = f"in [{shown[0]}, {shown[1]}]"  # type: ignore[attr-defined]
    return check


def _bool_or_auto(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"option '{attribute.name}' must be true, false or \"auto\"; got {value!r}")


_bool_or_auto.allowed = 'true, false or "auto"'  # type: ignore[attr-defined]


SEED_MAX = 2**64 - 1
"""The largest seed `torch.manual_seed` accepts."""


@attrs.define
class TrainConfig:
    """[train]: the outer loop."""

    steps: int = attrs.field(default=1000, validator=positive)
    batch_size: int = attrs.field(default=64, validator=positive)
    seed: int = attrs.field(default=0, validator=in_range(0, SEED_MAX))
    eval_every: int = attrs.field(default=500, validator=positive)
    checkpoint_every: int = attrs.field(default=500, validator=positive)
    log_every: int = attrs.field(default=10, validator=positive)
    max_bad_steps: int = attrs.field(default=20, validator=positive)
    """Consecutive steps with a non-finite loss before the run stops."""
    device: str = attrs.field(default="auto", validator=one_of("auto", "cpu", "cuda"))
    threads: int | None = attrs.field(default=None, validator=positive)
    """CPU threads for torch (None: torch's default)."""
    init_from: str | None = None
    """A checkpoint (file or run directory) whose model weights start this run: curriculum stages."""
    init_checkpoint: str = attrs.field(default="last", validator=one_of("last", "best"))
    """Which checkpoint of the `init_from` run directory: its last, or its best by validation."""
    keep_last: int = attrs.field(default=1, validator=positive)
    """Checkpoints kept: `checkpoints/last.pt`, and with N > 1 also the N newest as `stepS.pt`."""
    keep_best: bool = True
    """Keep `checkpoints/best.pt`: the weights of the best validation headline metric so far."""
    patience: int | None = attrs.field(default=None, validator=positive)
    """Early stopping: validations in a row without a better headline before the run stops (None: never)."""
    compile: bool | str = attrs.field(default=False, validator=_bool_or_auto)
    """Compute each step's outer gradient as one `torch.compile`d functional program
    (`ttt_core.train.functional`): inductor fuses the elementwise work of the inner loop's double
    backward. Single process only; the first steps compile (minutes on CPU, cached for later runs).
    "auto": on for one process with a compiler and at least 500 steps (`ttt_core.train.fast`)."""
    precision: str = attrs.field(default="fp32", validator=one_of("fp32", "bf16", "auto"))
    """"bf16": forward, inner loop and evaluation under `torch.autocast(bfloat16)`, so matmuls and
    attention run in bfloat16 (faster GEMMs on a CPU with AVX512-BF16 or AMX, and on GPUs);
    parameters, optimizer state, inner fast weights and losses stay float32. "auto": bf16 where
    the device computes in bfloat16 natively, else fp32."""


@attrs.define
class EvalConfig:
    """[eval]: held-out evaluation."""

    samples: int = attrs.field(default=2000, validator=positive)
    """Test samples for the final report."""
    val_samples: int = attrs.field(default=500, validator=positive)
    """Validation samples evaluated every `train.eval_every` steps."""
    batch_size: int = attrs.field(default=250, validator=positive)


def _logger_tables(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    for name, options in value.items():
        if not isinstance(options, dict):
            raise ValueError(f"option '{attribute.name}.{name}' must be a table of the logger's options "
                             f"([logging.loggers.{name}])")


@attrs.define
class LoggingConfig:
    """[logging]: where metrics go besides `metrics.jsonl` (always written)."""

    tensorboard: bool = False
    """Write TensorBoard event files to RUN/tensorboard (needs pip install 'ttt-core[tensorboard]')."""
    loggers: dict[str, Any] = attrs.field(factory=dict, validator=_logger_tables)
    """Plugin loggers (hook `ttt_metrics_loggers`) by name, each with its options:
    `[logging.loggers.NAME]` (an empty table for none)."""


@attrs.define
class DistributedConfig:
    """[distributed]: how many processes and through what."""

    backend: str = attrs.field(default="none", validator=one_of("none", "deepspeed"))
    deepspeed_config: str | None = None
    """A DeepSpeed JSON file (relative to the recipe) used instead of an embedded [deepspeed] table."""
    timeout_s: float = attrs.field(default=600.0, validator=positive)
    """Seconds a rank waits in a collective before it gives up: bounds the wait on a hung rank (a rank
    that dies is noticed by the launcher within seconds). Must exceed the slowest step or evaluation."""


@attrs.define
class InnerConfig:
    """[inner]: the differentiable inner loop shared by every learner (see `ttt_core.inner`)."""

    steps: int = attrs.field(default=2, validator=non_negative)
    lr: float = attrs.field(default=1.0, validator=positive)
    """Initial inner learning rate (learned afterwards unless learn_lr = "none")."""
    rule: str = attrs.field(default="sgd", validator=one_of("sgd", "momentum", "adam"))
    momentum: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))
    beta1: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0))
    beta2: float = attrs.field(default=0.999, validator=in_range(0.0, 1.0))
    eps: float = attrs.field(default=1e-8, validator=positive)
    grad_mode: str = attrs.field(default="first", validator=one_of("first", "second", "truncated"))
    """first: gradients detached (cheap), second: full MAML, truncated: second order for the last
    `truncate` steps only."""
    truncate: int = attrs.field(default=1, validator=non_negative)
    learn_lr: str = attrs.field(
        default="scalar", validator=one_of("none", "scalar", "per_step", "per_group", "per_step_group")
    )
    clip_value: float | None = attrs.field(default=None, validator=positive)
    clip_norm: float | None = attrs.field(default=None, validator=positive)
    """Per-example gradient clipping by global norm over the state."""
    stability: float = attrs.field(default=0.0, validator=non_negative)
    """Weight of ||state - initial state||^2 added to the inner loss."""
    outer_weight: float = attrs.field(default=0.0, validator=non_negative)
    """Weight of the mean inner loss added to the outer loss."""
