"""How far the compiled bf16 second-order step could go on this CPU (the target: 2x the reference's samples/s).

    python bench/speed_ceiling.py [--threads N] [--steps S] [--hf-first]

Times, interleaved in one process on the same batches (`train_throughput.time_interleaved`), the
baseline model's compiled bf16 second-order step: with a 4d SwiGLU MLP (`backbone.mlp_ratio=4.0`,
1.33x the reference's matmul FLOPs), as the recipe has it (`mlp_ratio` 8/3: three
128x341 matrices against GPT-NeoX's two 128x512), with two examples per row in the context pass
(`[memory.learner] pack_pairs`), and on contexts of one fixed length (`N1-K4V4-S1_24-24`: the same
mean real length as 16-32 and no padding at all, the bound of what removing padding can give), beside
the Hugging Face reference of that session (`hf_reference.PRESETS["neox4d"]`: a 4d GELU MLP, not the
deck's model) in float32 and bf16 on the padded 16-32 batches. The ratios move with the
order of the models in the process (`--hf-first` puts HF first), so run both orders.
"""

from __future__ import annotations

import argparse

import torch
from train_throughput import compiled_step, hf_step, in_bf16, ours_step, time_interleaved

RECIPE = "recipes/baseline_ar_n1.toml"
# the recipe's model of the session this measured (2026-11-24): SwiGLU hidden 341, no length groups
THEN = ("backbone.mlp_ratio=2.6667", "memory.learner.length_buckets=1")
VARIANTS = {
    "ours, SwiGLU 4d (1.33x the reference's MLP FLOPs)": THEN + ("backbone.mlp_ratio=4.0",),
    "ours, the recipe's model (MLP at GPT-NeoX's FLOPs)": THEN,
    "ours, the recipe's model, pack_pairs": THEN + ("memory.learner.pack_pairs=true",),
    "ours, the recipe's model on 24-24 contexts (no padding)": THEN + ("task.dataset='N1-K4V4-S1_24-24_1M'",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hf-first", action="store_true", help="time HF before ours in each round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _, built = ours_step("second", RECIPE, args.batch, THEN)
    hf = {}
    for precision in ("fp32", "bf16"):
        step = hf_step("second", built.task, built.model.backbone.vocab_size, args.batch, "neox4d")
        if step is None:
            raise SystemExit("the HF reference needs `pip install transformers`")
        hf[f"HF {precision}, padded 16-32"] = step if precision == "fp32" else in_bf16(step)
    ours = {f"{name}, compiled bf16": in_bf16(compiled_step("second", RECIPE, args.batch, args.steps, overrides))
            for name, overrides in VARIANTS.items()}
    steps = hf | ours if args.hf_first else ours | hf
    seconds, _ = time_interleaved(steps, args.steps)
    hf32 = seconds["HF fp32, padded 16-32"]
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K=2, second order, "
          f"{'HF' if args.hf_first else 'ours'} first")
    print("| model | samples/s | / HF fp32 | / 117 samples/s |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        rate = args.batch / s
        print(f"| {name} | {rate:.1f} | {hf32 / s:.2f}x | {rate / 117:.2f}x |")


if __name__ == "__main__":
    main()
