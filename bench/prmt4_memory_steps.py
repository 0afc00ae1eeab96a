"""How far each PRMT4 cell's inner loop moves its layer's memory, relative to the memory's norm.

    python bench/prmt4_memory_steps.py RUN_DIR [--batch 64] [--threads N] [--set KEY=VALUE ...]

A layer reads its memory only through RMSNorm, so only the direction of a memory token matters;
the ratio |adapted - previous| / |previous| (per token, averaged) is how much a segment rewrites
it. Run on the validation set's first batch, in the sequential order (one line per (layer, segment)
cell, segment by segment); `--set recurrence.keep_memory_norm=true` shows the same with the norm kept.
"""

from __future__ import annotations

import argparse

import torch
from ttt_plugin_rmt.prmt4 import PRMT4

from ttt_core.train.evaluate import load_run
from ttt_core.objective import step_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run_dir, None, [*args.set, "recurrence.schedule='sequential'"])
    model, task = run.built.model.eval(), run.built.task
    rows: list[tuple[int, float, float]] = []
    adapt = PRMT4._adapt

    def recording(self: PRMT4, model, layers, params, memory, *rest):
        (layer,) = layers  # sequential: one cell per call
        previous = memory[layer].detach()
        adapted = adapt(self, model, layers, params, memory, *rest)
        before, moved = previous.norm(dim=-1), (adapted[0].detach() - previous).norm(dim=-1)
        rows.append((layer, before.mean().item(), (moved / before).mean().item()))
        return adapted

    PRMT4._adapt = recording
    try:
        step_loss(model, task.batch("val", range(args.batch)).to(run.device), precision=run.recipe.train.precision)
    finally:
        PRMT4._adapt = adapt
    layers = model.backbone.n_layers
    print(f"{run.checkpoint} (step {run.step}), val, batch {args.batch}")
    print("| segment | layer | memory token norm before | moved / norm before |")
    print("|---|---|---|---|")
    for cell, (layer, norm, moved) in enumerate(rows):
        print(f"| {cell // layers} | {layer} | {norm:.3f} | {moved:.2f} |")


if __name__ == "__main__":
    main()
