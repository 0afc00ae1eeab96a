"""One rank of a DeepSpeed run: ``python -m ttt_core.distributed.worker RECIPE --out RUN_DIR [--set KEY=VALUE]``.

`ttt run --nproc N` starts N of these on one node; on several nodes start them with `torchrun` or the
`deepspeed` launcher (README). A rank dies with the process that started it (`die_with_parent`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from typing import NoReturn

from ttt_core.distributed.launch import LAUNCHER_PID, WORKER

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """Ask Linux to kill this rank when its parent (the launcher) dies, even by SIGKILL, which gives the
    launcher no chance to stop its ranks; exit at once if the launcher is already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the launcher's own signal handling still stops the ranks
        return
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and os.getppid() != int(launcher):  # it died before prctl took effect
        os._exit(1)


def stop_quietly_on_interrupt() -> None:
    """The launcher passes SIGINT on to its ranks when it stops them: end at once, without a
    KeyboardInterrupt traceback per rank (checkpoints are atomic: nothing is left half-written)."""
    signal.signal(signal.SIGINT, lambda signum, _frame: os._exit(128 + signum))


def exit_rank(code: int) -> NoReturn:
    """End a finished rank without running C++ static destructors: a gloo/DeepSpeed thread still
    joinable there aborts the rank now and then ("terminate called without an active exception",
    SIGABRT after a complete run). Call it once every file is written and the process group is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker_main(argv: list[str] | None = None) -> int:
    import torch

    from ttt_core.distributed.engine import DeepSpeedStep, init_process_group
    from ttt_core.distributed.launch import resolve_config
    from ttt_core.errors import TTTError
    from ttt_core.train.device import pick_device
    from ttt_core.train.rundir import resolve_run, summary
    from ttt_core.train.trainer import Trainer

    parser = argparse.ArgumentParser(
        prog=f"python -m {WORKER}",
        description="One rank of a DeepSpeed run (started by `ttt run --nproc N`, torchrun or the deepspeed launcher).",
    )
    parser.add_argument("recipe", help="a recipe .toml, or a run directory to resume")
    parser.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher; LOCAL_RANK is used
    args = parser.parse_args(argv)
    # torch deprecation notices from inside DeepSpeed's ZeRO collectives, once per rank: not actionable here
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        recipe, run_dir = resolve_run(args.recipe, args.out, args.overrides)
        if recipe.distributed.backend != "deepspeed":
            raise TTTError(f"{recipe.source}: [distributed] backend is '{recipe.distributed.backend}', not 'deepspeed'")
        device = pick_device(recipe.train.device)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        config = resolve_config(recipe, world, run_dir)  # every config problem before the process group starts
        init_process_group(recipe, device)
        report = Trainer(recipe, run_dir, quiet=args.quiet, rank=rank, backend=DeepSpeedStep(config, world)).run()
        if rank == 0:
            print(summary(run_dir, report))
        import torch.distributed as dist

        dist.destroy_process_group()
        return 0
    except TTTError as exc:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        get_error_handler().record_exception(exc)  # the launcher's failure report shows the message
        print("\n".join(f"[rank {rank}] {line}" for line in exc.lines), file=sys.stderr)
        return 2


if __name__ == "__main__":
    die_with_parent()
    stop_quietly_on_interrupt()
    from torch.distributed.elastic.multiprocessing.errors import record

    exit_rank(record(worker_main)())
