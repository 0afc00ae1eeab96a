"""`ttt run --nproc N RECIPE`: check what can be checked without processes (the DeepSpeed config for
N ranks, also through DeepSpeed's own parser; the run directory; a checkpoint's world size), then start
N ranks on this node through `torch.distributed.run` (standalone, no restarts). Each rank runs
``python -m ttt_core.distributed.worker RECIPE --out RUN_DIR``; several nodes start that same module
with the `deepspeed` launcher or `torchrun` (README).

Faults: a rank that dies or raises ends its process; the launcher stops the others within seconds. A
rank that hangs is bounded by `[distributed] timeout_s` (DeepSpeed's own groups included). The ranks
die with the launcher: SIGTERM, SIGINT or SIGHUP stop them through the launcher, and a launcher killed
outright (SIGKILL) takes them along through the parent-death signal each rank asks for (`worker`).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

from ttt_core.distributed import config as deepspeed_config
from ttt_core.errors import TTTError, first_line
from ttt_core.recipe import Recipe
from ttt_core.train.checkpoint import checkpoint_dir, has_checkpoint, read_marker
from ttt_core.train.device import pick_device
from ttt_core.train.rundir import check_run_dir, make_run_dir

WORKER = "ttt_core.distributed.worker"
LAUNCHER_PID = "TTT_LAUNCHER_PID"  # tells a rank which process it must not outlive
# DeepSpeed's pydantic config classes -> the [deepspeed] key they validate, for error messages
BLOCKS = {
    "DeepSpeedZeroConfig": "zero_optimization",
    "DeepSpeedBF16Config": "bf16",
    "DeepSpeedFP16Config": "fp16",
    "DeepSpeedActivationCheckpointingConfig": "activation_checkpointing",
    "DeepSpeedFlopsProfilerConfig": "flops_profiler",
    "DeepSpeedCommsConfig": "comms_logger",
}


def _use_cpu_accelerator(recipe: Recipe) -> bool:
    """DeepSpeed picks its accelerator when first imported: tell it before that."""
    cpu = pick_device(recipe.train.device).type == "cpu"
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    return cpu


def import_deepspeed(recipe: Recipe):
    _use_cpu_accelerator(recipe)
    try:
        import deepspeed
    except ImportError as exc:
        raise TTTError(
            f"{recipe.source}: [distributed] backend = \"deepspeed\" needs DeepSpeed ({exc}): "
            "pip install 'ttt-core[deepspeed]'"
        ) from None
    if os.environ.get("TTT_DEBUG", "") in ("", "0"):
        deepspeed.utils.logger.setLevel(logging.WARNING)
    return deepspeed


def resolve_config(recipe: Recipe, world_size: int, run_dir: Path | None = None) -> dict[str, Any]:
    """The config for `deepspeed.initialize` on `world_size` ranks, checked by our rules (see
    `ttt_core.distributed.config`) and by DeepSpeed's own parser; TTTError lists every problem. With
    `run_dir`, monitors write inside it."""
    prefix = f"{recipe.source}: [deepspeed]"
    clip_norm = getattr(recipe["optimizer"].config, "clip_norm", None)
    try:
        config = deepspeed_config.resolve(recipe.deepspeed or {}, recipe.train.batch_size, clip_norm, world_size)
    except ValueError as exc:
        raise TTTError(*(f"{prefix} {line}" for line in str(exc).splitlines())) from None
    if run_dir is not None:
        config = deepspeed_config.place_outputs(config, str(run_dir))
    import_deepspeed(recipe)
    import deepspeed.comm
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = config
    if not deepspeed.comm.is_initialized():  # DeepSpeed then assumes one rank: give it a batch for one
        parsed = dict(config, train_batch_size=config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"])
    try:
        DeepSpeedConfig(parsed)
    except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, DeepSpeedConfigError, ValueError, ...
        errors = getattr(exc, "errors", None)
        if callable(errors):
            block = BLOCKS.get(getattr(exc, "title", ""), getattr(exc, "title", "?"))
            lines = [f"{block}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()]
        else:
            lines = [f"DeepSpeed rejects the config: {type(exc).__name__}: {first_line(exc)}"]
        raise TTTError(*(f"{prefix} {line}" for line in lines)) from None
    return config


def check_resume_world(recipe: Recipe, run_dir: Path, world_size: int) -> None:
    marker = read_marker(checkpoint_dir(run_dir))
    if marker and marker["world_size"] != world_size and marker["zero_stage"] > 0:
        raise TTTError(
            f"{run_dir}: the checkpoint at step {marker['step']} was saved by {marker['world_size']} ranks with ZeRO "
            f"stage {marker['zero_stage']}, whose optimizer state DeepSpeed cannot re-partition; resume it with "
            f"--nproc {marker['world_size']}"
        )


def launch(recipe: Recipe, run_dir: Path, recipe_arg: str, overrides: list[str], nproc: int, quiet: bool) -> int:
    """`ttt run --nproc N`: check, then run N ranks of the worker on this node."""
    if nproc < 1:
        raise TTTError(f"--nproc must be >= 1; got {nproc}")
    resolve_config(recipe, nproc, run_dir)
    if Path(run_dir).exists():
        make_run_dir(run_dir)  # says so if --out names a file
        check_run_dir(recipe, run_dir)
    check_resume_world(recipe, run_dir, nproc)

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # the ranks import the same ttt_core as this process (a source checkout may shadow an install)
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    os.environ[LAUNCHER_PID] = str(os.getpid())
    if nproc > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun would set, without its banner
    worker_args = [recipe_arg, "--out", str(run_dir), *(a for o in overrides for a in ("--set", o))]
    if quiet:
        worker_args.append("--quiet")
    argv = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--max-restarts", "0",
            "-m", WORKER, *worker_args]
    # torch's agent turns these signals into SignalException once it starts the ranks, stops them, and
    # re-raises; before that, the same exception from our own handler (no rank to stop yet)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    for sig in previous:
        signal.signal(sig, _raise_signal)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        raise TTTError(*failure_lines(exc, run_dir, nproc)) from None
    except (SignalException, KeyboardInterrupt) as exc:
        name = signal.Signals(exc.sigval).name if isinstance(exc, SignalException) else "SIGINT"
        raise TTTError(f"{run_dir}: stopped by {name}; the ranks were stopped", checkpoint_line(run_dir, nproc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _raise_signal(signum: int, _frame: Any) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException

    raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))


def checkpoint_line(run_dir: Path, nproc: int) -> str:
    marker = read_marker(checkpoint_dir(run_dir)) if has_checkpoint(run_dir) else None
    if marker is None:
        return f"{run_dir}: no checkpoint was completed"
    return (
        f"{run_dir}: last complete checkpoint: step {marker['step']} ({checkpoint_dir(run_dir) / marker['tag']}); "
        f"resume with: ttt run {run_dir} --nproc {nproc}"
    )


def failure_lines(exc, run_dir: Path, nproc: int) -> list[str]:
    """What failed first (not the ranks the launcher then stopped), and where the run can resume from."""
    failures = sorted(exc.failures.items())
    causes = [(r, f) for r, f in failures if not (f.exitcode < 0 and f.signal_name() == "SIGTERM")] or failures
    lines = []
    for rank, failure in causes:
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
        generic = message.startswith(("Signal ", "To enable traceback"))  # torch's text when there is no error file
        detail = message.strip().splitlines()[0] if message.strip() and not generic else ""
        for ours in ("TTTError: ", "RecipeError: ", "PluginError: ", "RegistryError: "):  # already user-facing
            detail = detail.removeprefix(ours)
        lines.append(f"{run_dir}: rank {rank} {how}{': ' + detail if detail else ''}")
    if len(causes) < nproc:
        lines[-1] += "; the other ranks were stopped"
    lines.append(checkpoint_line(run_dir, nproc))
    return lines
