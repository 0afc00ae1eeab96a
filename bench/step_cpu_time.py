"""CPU seconds of one outer step (forward + backward, no optimiser step) of any recipe, one thread.

    python bench/step_cpu_time.py RECIPE[,key=value,...] [RECIPE...] [--steps S] [--batch B]

CPU time of this process (`time.process_time`) rather than wall time: on a machine whose cores are
shared with other jobs, wall time mostly measures the others. Compares recurrences side by side, e.g.
`bench/step_cpu_time.py recipes/baseline_ar_n2.toml recipes/rmt_ar.toml recipes/rmt4_ar.toml`.
"""

from __future__ import annotations

import argparse
import time

import torch

from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.objective import step_loss


def cpu_seconds_per_step(spec: str, steps: int, batch: int) -> tuple[float, float]:
    """(first step, mean of the next `steps`) CPU seconds for `RECIPE[,override,...]`."""
    path, *overrides = spec.split(",")
    built = build(load_recipe(path, overrides))
    times = []
    for i in range(steps + 1):
        episode = built.task.train_batch(i, batch)
        start = time.process_time()
        loss, _ = step_loss(built.model, episode)
        loss.backward()
        times.append(time.process_time() - start)
        built.model.zero_grad(set_to_none=True)
    return times[0], sum(times[1:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for spec in args.recipes:
        first, mean = cpu_seconds_per_step(spec, args.steps, args.batch)
        print(f"{spec}: {mean:.2f} CPU s/step (mean of {args.steps}; first {first:.2f})", flush=True)


if __name__ == "__main__":
    main()
