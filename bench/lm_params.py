"""Parameter counts of recipes' models, and optionally seconds per training step (CPU, one thread).

usage: python bench/lm_params.py [--steps N] recipes/transformer_lm.toml recipes/ttt_linear_lm.toml recipes/ttt_mlp_lm.toml
"""

from __future__ import annotations

import argparse
import time

import torch

from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.objective import step_loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--steps", type=int, default=0, help="time this many training steps (the first is warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference = None
    for path in args.recipes:
        recipe = load_recipe(path)
        built = build(recipe, "cpu")
        n = sum(p.numel() for p in built.model.parameters())
        reference = reference or n
        line = f"{path}: {n:,} parameters ({100 * (n / reference - 1):+.2f}% vs {args.recipes[0]})"
        times = []
        for step in range(args.steps):
            episode = built.task.train_batch(step, recipe.train.batch_size)
            started = time.perf_counter()
            loss, _ = step_loss(built.model, episode)
            loss.backward()
            built.optimizer.step(step)
            times.append(time.perf_counter() - started)
        if len(times) > 1:
            line += f"; {sum(times[1:]) / len(times[1:]):.2f} s/step (batch {recipe.train.batch_size}, after 1 warm-up)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
