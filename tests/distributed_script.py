"""Launched by test_distributed.py under torch.distributed.run: trains several configurations of a
recipe, one DeepSpeed engine after another in one process group (engines are cheap to make, process
groups are not), and writes each run's metrics.

    python -m torch.distributed.run --standalone --nproc-per-node N distributed_script.py SPEC_JSON

SPEC_JSON: {"recipe": PATH, "root": DIR, "out": FILE, "runs": {NAME: [OVERRIDE, ...]},
"poison": {NAME: [STEP, ...]}}; each run trains in ROOT/NAME; rank 0 writes {NAME: [metrics records]}
to OUT. In a poisoned run, the last rank's loss is NaN at those (0-based) optimizer steps.
"""

import json
import os
import sys
from pathlib import Path

from ttt_core.distributed import engine
from ttt_core.distributed.engine import DeepSpeedStep, init_process_group
from ttt_core.distributed.launch import resolve_config
from ttt_core.distributed.worker import exit_rank
from ttt_core.recipe import load_recipe
from ttt_core.train.trainer import Trainer

real_step_loss = engine.step_loss


def poisoned(step_loss, steps):
    """`step_loss` whose loss is NaN on the given calls (one call per optimizer step without accumulation)."""
    calls = iter(range(10**9))

    def wrapped(*args, **kwargs):
        loss, out = step_loss(*args, **kwargs)
        return (loss * float("nan") if next(calls) in steps else loss), out

    return wrapped


def main() -> None:
    spec = json.loads(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = {}
    for index, (name, overrides) in enumerate(spec["runs"].items()):
        recipe = load_recipe(spec["recipe"], overrides)
        config = resolve_config(recipe, world)
        if index == 0:
            import torch

            init_process_group(recipe, torch.device("cpu"))
        run_dir = Path(spec["root"]) / name
        poison = spec.get("poison", {}).get(name, []) if rank == world - 1 else []
        engine.step_loss = poisoned(real_step_loss, poison)
        Trainer(recipe, run_dir, quiet=True, rank=rank, backend=DeepSpeedStep(config, world)).run()
        if rank == 0:
            results[name] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if rank == 0:
        Path(spec["out"]).write_text(json.dumps(results))
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_rank(0)  # as the worker does (a gloo thread may abort the process in C++ static destructors)
