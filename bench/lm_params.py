"""Parameter counts of recipes' models (built on CPU, no training): checks that compared models are of equal size.

usage: python bench/lm_params.py recipes/transformer_lm.toml recipes/ttt_linear_lm.toml recipes/ttt_mlp_lm.toml
"""

from __future__ import annotations

import sys

from ttt_core.recipe import load_recipe
from ttt_core.train.build import build_model, build_task


def main(paths: list[str]) -> None:
    counts = {}
    for path in paths:
        recipe = load_recipe(path)
        model = build_model(recipe, build_task(recipe))
        counts[path] = sum(p.numel() for p in model.parameters())
    reference = next(iter(counts.values()))
    for path, n in counts.items():
        print(f"{path}: {n:,} parameters ({100 * (n / reference - 1):+.2f}% vs {paths[0]})")


if __name__ == "__main__":
    main(sys.argv[1:])
