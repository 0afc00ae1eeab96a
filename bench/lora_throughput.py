"""Training samples/s of the LoRA learner against memory tokens on the same backbone (the deck's
4L/4H/128 llama, K = 2 inner steps, batch 64), steps interleaved in one process.

    python bench/lora_throughput.py [--threads N] [--steps S] [--modes second,first] [--bf16]
        [--lora-set KEY=VALUE ...] [--tokens-set KEY=VALUE ...]

The two models are built from recipes/lora_ar_n1.toml (1,024 fast parameters: rank-1 adapters on v
and o of the top two layers) and recipes/baseline_ar_n1.toml (8 memory tokens: 1,024), and train on the
same batches; their steps alternate (lora, tokens, lora, tokens, ...) so that load from other processes
hits both alike. samples/s is batch / median step time. `--lora-set` overrides the lora recipe (e.g.
`memory.learner.rank=8`) to see how the rate moves with the adapters' size. Needs ttt-plugin-lora.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import in_bf16, ours_step, time_interleaved  # noqa: E402

LORA = "recipes/lora_ar_n1.toml"
TOKENS = "recipes/baseline_ar_n1.toml"
TOKENS_SAME_BACKBONE = ("backbone.mlp_ratio=2.6667", "memory.learner.length_buckets=1")  # lora_ar_n1's


def fast_parameters(learner: torch.nn.Module) -> int:
    """Fast weights per example: the lora learner counts its own; memory tokens are its `memory`."""
    count = getattr(learner, "fast_parameters", None)
    return count() if count is not None else learner.memory.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and mode")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--modes", default="second,first")
    parser.add_argument("--bf16", action="store_true", help="add both again under bfloat16 autocast")
    parser.add_argument("--lora-set", action="append", default=[], metavar="KEY=VALUE", help="override for the lora recipe")
    parser.add_argument("--tokens-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for the memory-token recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K=2, "
          f"lora: {LORA} {' '.join(args.lora_set)}; memory tokens: {TOKENS} {' '.join(args.tokens_set)}")
    print("| grad mode | learner | fast params | precision | samples/s | lora / tokens |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        lora, lora_built = ours_step(mode, LORA, args.batch, tuple(args.lora_set))
        tokens, tokens_built = ours_step(mode, TOKENS, args.batch, TOKENS_SAME_BACKBONE + tuple(args.tokens_set))
        sizes = {"lora": fast_parameters(lora_built.model.learner), "memory tokens": fast_parameters(tokens_built.model.learner)}
        steps = {("lora", "fp32"): lora, ("memory tokens", "fp32"): tokens}
        if args.bf16:
            steps |= {(name, "bf16"): in_bf16(step) for (name, _), step in list(steps.items())}
        seconds, _warmup = time_interleaved(steps, args.steps)
        rate = {key: args.batch / s for key, s in seconds.items()}
        for (name, precision), samples in rate.items():
            ratio = samples / rate[("memory tokens", precision)]
            cells = [mode, name, f"{sizes[name]:,}", precision, f"{samples:.1f}", f"{ratio:.2f}x" if name == "lora" else ""]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
