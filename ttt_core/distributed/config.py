"""The `[deepspeed]` table: checked against the recipe before any process starts, then completed.

Imports no torch and no deepspeed, so `ttt validate` checks it. Two stages:

- `check(table, batch_size, clip_norm)`: every problem that does not depend on the number of ranks
  (unknown keys, refused blocks, ZeRO stage 3, explicit values that contradict the recipe).
- `resolve(table, batch_size, clip_norm, world_size)`: the same checks plus the batch arithmetic for
  `world_size` ranks, then the config handed to `deepspeed.initialize`, with the values the recipe owns
  filled in ("auto" or left out) and the defaults that DeepSpeed gets wrong for us written explicitly.

The recipe owns the batch (`[train] batch_size` is the global batch of one optimizer step), the
optimizer, its learning rates and schedule (`[optimizer]`) and gradient clipping (the outer optimizer's
`clip_norm`). DeepSpeed owns the rest: ZeRO stage 0-2, precision (`bf16`, `torch_autocast`), logging.
"""

from __future__ import annotations

from pathlib import PurePath, PureWindowsPath
from typing import Any

from ttt_core.errors import did_you_mean

# Top-level keys DeepSpeed 0.19.8 reads during deepspeed.initialize (recorded by
# bench/deepspeed_probe/config_keys.py). DeepSpeed silently ignores any other key, so a typo such as
# `gradient_cliping` would train with the default clipping of 1.0: we refuse unknown keys ourselves.
DEEPSPEED_VERSION_CHECKED = "0.19.8"
KNOWN_KEYS = frozenset(
    """
    activation_checkpointing aio autotuning bf16 bfloat16 checkpoint comet comms_logger
    communication_data_type compile csv_monitor data_efficiency data_parallel_size data_types
    dataloader_drop_last datastates_ckpt disable_allgather disable_python_gc dump_state expert_parallel
    flops_profiler fp16 gradient_accumulation_steps gradient_allreduce_op gradient_clipping
    gradient_predivide_factor hybrid_engine log_level managed_gradient_accumulation memory_breakdown
    optimizer pipeline prescale_gradients scheduler seq_parallel_communication_data_type
    sequence_parallel_size steps_per_print tensor_parallel tensorboard timers torch_autocast
    train_batch_size train_micro_batch_size_per_gpu use_data_before_expert_parallelism vocabulary_size
    wall_clock_breakdown wandb weight_quantization zero_allow_untested_optimizer
    zero_force_ds_cpu_optimizer zero_optimization
    """.split()
)
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
AUTO_KEYS = (*BATCH_KEYS, "gradient_clipping")
REFUSED = {
    "optimizer": "the recipe's [optimizer] builds the optimizer (DeepSpeed would silently ignore this block)",
    "scheduler": "the recipe's [optimizer] owns the learning-rate schedule",
    "fp16": "the inner loop's gradients are not loss-scaled, and fp16 does not run on CPU; "
    'use "bf16" or "torch_autocast" (bfloat16)',
}
STAGE3 = (
    "zero_optimization.stage = 3 is not supported: ZeRO-3 releases a layer's weights after its forward, "
    "which breaks the inner loop's autograd.grad graph (second order fails with \"mat2 must be a matrix\"); "
    "use stage 0, 1 or 2"
)


# Blocks that write files: the path they are given is taken inside the run directory
# (`place_outputs`), so that a run's monitor output stays with its run.
OUTPUT_PATHS = {"csv_monitor": "output_path", "tensorboard": "output_path", "flops_profiler": "output_file"}
DEFAULT_OUTPUT = "monitor"  # RUN/monitor/ when a monitor names no output_path
REMOTE_MONITORS = {
    "wandb": "it writes outside the run directory (./wandb) and to a remote service",
    "comet": "it writes outside the run directory and to a remote service",
}


def _enabled(block: Any) -> bool:
    return isinstance(block, dict) and block.get("enabled", False) is not False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _autos(value: Any, path: str) -> list[str]:
    """Dotted paths of "auto" values that are not recipe-owned top-level keys."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _autos(v, f"{path}.{k}" if path else str(k))]
    return [path] if value == "auto" and path not in AUTO_KEYS else []


def zero_stage(table: dict[str, Any]) -> int:
    zero = table.get("zero_optimization", {})
    return zero.get("stage", 0) if isinstance(zero, dict) else 0


def _structure_problems(table: dict[str, Any]) -> list[str]:
    problems = []
    for key in table:
        if key in REFUSED and (key != "fp16" or _enabled(table[key])):
            problems.append(f"'{key}' is not allowed: {REFUSED[key]}")
        elif key not in KNOWN_KEYS:
            problems.append(
                f"unknown option '{key}'{did_you_mean(key, KNOWN_KEYS)} "
                f"(DeepSpeed {DEEPSPEED_VERSION_CHECKED} would ignore it silently)"
            )
    problems += _output_problems(table)
    zero = table.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append("zero_optimization must be a table")
    else:
        stage = zero.get("stage", 0)
        if stage == 3:
            problems.append(STAGE3)
        elif not _is_int(stage) or stage not in (0, 1, 2):
            problems.append(f"zero_optimization.stage must be 0, 1 or 2; got {stage!r}")
    for path in _autos(table, ""):
        problems.append(f"{path} = \"auto\": only {', '.join(AUTO_KEYS)} may be \"auto\" (the recipe owns them)")
    return problems + _type_problems(table)


def _output_problems(table: dict[str, Any]) -> list[str]:
    """Monitors that would write outside the run directory."""
    problems = []
    for block, reason in REMOTE_MONITORS.items():
        if _enabled(table.get(block)):
            problems.append(f"'{block}' is not supported: {reason}; use csv_monitor or tensorboard (kept in the run directory)")
    for block, key in OUTPUT_PATHS.items():
        value = table.get(block, {}).get(key) if isinstance(table.get(block), dict) else None
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            problems.append(f"{block}.{key} must be a path relative to the run directory; got {value!r}")
        elif PurePath(value).is_absolute() or PureWindowsPath(value).is_absolute() or ".." in PurePath(value).parts:
            problems.append(f"{block}.{key} = '{value}': give a path inside the run directory (relative, without '..')")
    return problems


def place_outputs(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """`config` with every enabled monitor's output inside `run_dir` (its relative path, or `monitor/`);
    DeepSpeed's default would be the working directory."""
    config = dict(config)
    for block, key in OUTPUT_PATHS.items():
        settings = config.get(block)
        if not _enabled(settings):
            continue
        given = settings.get(key) or ("" if block == "flops_profiler" else DEFAULT_OUTPUT)
        if given:  # the flops profiler prints to stdout unless given a file
            config[block] = {**settings, key: str(PurePath(run_dir) / given)}
    return config


def _type_problems(table: dict[str, Any]) -> list[str]:
    problems = []
    for key in BATCH_KEYS:
        value = table.get(key, "auto")
        if value != "auto" and not (_is_int(value) and value > 0):
            problems.append(f"{key} must be a positive integer or \"auto\"; got {value!r}")
    clip = table.get("gradient_clipping", "auto")
    if clip != "auto" and not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip >= 0):
        problems.append(f"gradient_clipping must be a number >= 0 or \"auto\"; got {clip!r}")
    return problems


def _explicit(table: dict[str, Any], key: str) -> Any:
    value = table.get(key, "auto")
    return None if value == "auto" else value


def _conflicts(table: dict[str, Any], batch_size: int, clip_norm: float | None, world_size: int | None) -> list[str]:
    """Explicit values that contradict the recipe (or, given a world size, each other)."""
    conflicts = []
    total = _explicit(table, "train_batch_size")
    if total is not None and total != batch_size:
        conflicts.append(f"train_batch_size = {total} but [train] batch_size = {batch_size}")
    clip = _explicit(table, "gradient_clipping")
    if clip is not None and float(clip) != float(clip_norm or 0.0):
        conflicts.append(f"gradient_clipping = {clip} but [optimizer] clip_norm = {clip_norm}")
    micro, gas = _explicit(table, "train_micro_batch_size_per_gpu"), _explicit(table, "gradient_accumulation_steps")
    if micro is not None and gas is not None and world_size is not None and micro * gas * world_size != batch_size:
        conflicts.append(
            f"train_micro_batch_size_per_gpu x gradient_accumulation_steps x ranks = {micro} x {gas} x {world_size} "
            f"but [train] batch_size = {batch_size}"
        )
    elif batch_size % ((micro or 1) * (gas or 1)):
        named = " x ".join(f"{k} = {v}" for k, v in (("train_micro_batch_size_per_gpu", micro),
                                                      ("gradient_accumulation_steps", gas)) if v)
        conflicts.append(f"{named} does not divide [train] batch_size = {batch_size}")
    problems = []
    if conflicts:
        problems.append("contradicts the recipe: " + "; ".join(conflicts) + ' (write "auto" or leave them out)')
    elif world_size is not None and batch_size % ((micro or gas or 1) * world_size):
        per_rank = f"train_micro_batch_size_per_gpu = {micro}" if micro else f"gradient_accumulation_steps = {gas or 1}"
        problems.append(
            f"[train] batch_size = {batch_size} does not split over {world_size} ranks x {per_rank}; "
            f"use a batch size divisible by {(micro or gas or 1) * world_size}"
        )
    return problems


def check(table: dict[str, Any], batch_size: int, clip_norm: float | None, world_size: int | None = None) -> list[str]:
    """Every problem of the table, one message each (without the `FILE: [deepspeed]` prefix)."""
    problems = _structure_problems(table)
    if not _type_problems(table):  # the arithmetic needs well-typed values
        problems += _conflicts(table, batch_size, clip_norm, world_size)
    return problems


def resolve(table: dict[str, Any], batch_size: int, clip_norm: float | None, world_size: int) -> dict[str, Any]:
    """The config for `deepspeed.initialize` on `world_size` ranks; ValueError lists the problems."""
    problems = check(table, batch_size, clip_norm, world_size)
    if problems:
        raise ValueError("\n".join(problems))
    config = {k: v for k, v in table.items() if k not in AUTO_KEYS}
    micro, gas = _explicit(table, "train_micro_batch_size_per_gpu"), _explicit(table, "gradient_accumulation_steps")
    if micro is None:
        gas = gas or 1
        micro = batch_size // (world_size * gas)
    elif gas is None:
        gas = batch_size // (world_size * micro)
    config.update(
        train_batch_size=batch_size,
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=gas,
        # DeepSpeed's default is 1.0, not "off": always write the recipe's value (0 = off)
        gradient_clipping=float(clip_norm or 0.0),
    )
    config.setdefault("zero_optimization", {"stage": 0})
    config.setdefault("steps_per_print", 10**9)  # the trainer logs; DeepSpeed's own print every 10 steps
    config.setdefault("zero_allow_untested_optimizer", True)  # a plugin's outer optimizer may be any torch one
    return config
