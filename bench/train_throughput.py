"""Training samples/s of the baseline model (4L/4H/128, 8 memory tokens, K=2, batch 64) per grad mode.

    python bench/train_throughput.py [--threads N] [--steps S] [--profile]

Prints one row per grad mode; `--profile` adds torch.profiler's top operators for one second-order step.
"""

from __future__ import annotations

import argparse
import time

import torch

from ttt_core.recipe import load_recipe
from ttt_core.train.build import build
from ttt_core.train.trainer import step_loss


def samples_per_second(mode: str, steps: int, recipe_path: str, batch: int) -> float:
    recipe = load_recipe(recipe_path, [f"inner.grad_mode='{mode}'", "inner.steps=2", f"train.batch_size={batch}"])
    built = build(recipe)

    def step(i: int) -> None:
        loss, _out = step_loss(built.model, built.task.train_batch(i, batch))
        loss.backward()
        built.optimizer.step(i)

    step(0)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--recipe", default="recipes/baseline_ar_n1.toml")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K=2, {args.recipe}")
    print("| grad mode | samples/s |\n|---|---|")
    for mode in ("second", "first"):
        print(f"| {mode} | {samples_per_second(mode, args.steps, args.recipe, args.batch):.1f} |")
    if args.profile:
        from torch.profiler import profile

        recipe = load_recipe(args.recipe, ["inner.grad_mode='second'"])
        built = build(recipe)
        with profile() as prof:
            loss, _ = step_loss(built.model, built.task.train_batch(0, args.batch))
            loss.backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
