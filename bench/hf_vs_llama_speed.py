"""Training samples/s of the memory-token baseline through the `hf` backbone (the deck's GPT-NeoX,
`recipes/hf_neox_ar_n1.toml`) beside the built-in `llama` (`recipes/baseline_ar_n1.toml`), in one run.

    python bench/hf_vs_llama_speed.py [--threads N] [--steps S] [--batch B] [--modes second,first]

Both recipes are the same but for the backbone (task, 8 memory tokens, K=2 inner steps, optimizer).
They train on the same batches with their steps interleaved (llama, hf, llama, hf, ...), so load from
other processes hits both alike; samples/s is batch / median step time (the first step of each is an
untimed warm-up). Needs ttt-plugin-hf (and transformers). `--set KEY=VALUE` applies to both recipes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import ours_step, time_interleaved  # noqa: E402

RECIPES = {"llama": "recipes/baseline_ar_n1.toml", "hf (gpt_neox)": "recipes/hf_neox_ar_n1.toml"}
SAME_LAYOUT = {"llama": ("memory.learner.length_buckets=1",), "hf (gpt_neox)": ()}  # both padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5, help="timed steps per backbone and mode")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--modes", default="second,first")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override for both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K=2 {' '.join(args.set)}")
    print("| grad mode | backbone | parameters | samples/s | / llama |")
    print("|---|---|---|---|---|")
    for mode in args.modes.split(","):
        steps, sizes = {}, {}
        for name, recipe in RECIPES.items():
            torch.manual_seed(0)
            steps[name], built = ours_step(mode, recipe, args.batch, SAME_LAYOUT[name] + tuple(args.set))
            sizes[name] = sum(p.numel() for p in built.model.backbone.parameters())
        seconds, _warmup = time_interleaved(steps, args.steps)
        llama = args.batch / seconds["llama"]
        for name, s in seconds.items():
            rate = args.batch / s
            print(f"| {mode} | {name} | {sizes[name]:,} | {rate:.1f} | {rate / llama:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
