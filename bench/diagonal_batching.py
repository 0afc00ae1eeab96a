"""PRMT4 time per forward (inference) and per training step, diagonal vs sequential schedule.

    python bench/diagonal_batching.py [--threads N] [--segments 4,8,16,32] [--train-segments 4,8]

The model is `recipes/prmt4_ar.toml` (llama 4 layers, 4 heads, width 128, 8 memory tokens per layer,
K = 2 inner steps, second order when training). Episodes are synthetic: fixed-length context
segments of `--length` tokens, a 6-token query and a 5-token answer. Both schedules run on the same
model and the same episode, alternating, and the median of `--repeats` runs is reported, in wall
seconds and in CPU seconds of this process (on a shared machine the CPU time, with one thread, is
the steadier measure of the work: wall time also counts time slices given to other processes); the
largest logit difference between them is printed as a check that they computed the same thing.

Inference: batch 1, eval mode (the inner loop runs without create_graph). Training: one forward and
backward (second order) at `--batch` (the recipe's 64); the optimizer step is left out (it is the
same for both schedules).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import attrs
import torch

from ttt_core.episode import Episode, Segment, answer_loss
from ttt_core.recipe import load_recipe
from ttt_core.build import build

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "prmt4_ar.toml"


def synthetic_episode(segments: int, length: int, batch: int, vocab: int, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    full = lambda n: Segment(torch.randint(1, vocab, (batch, n), generator=g), torch.ones(batch, n, dtype=torch.bool))  # noqa: E731
    context = [full(length) for _ in range(segments)]
    return Episode(tuple(context), full(segments * length), full(6), full(5))


def timed(model, episode: Episode, schedule: str, train: bool) -> tuple[float, float, torch.Tensor]:
    """Wall and CPU seconds of one forward (and backward when training) under `schedule`."""
    model.recurrence.config = attrs.evolve(model.recurrence.config, schedule=schedule)
    model.zero_grad(set_to_none=True)
    wall, cpu = time.perf_counter(), time.process_time()
    out = model(episode)
    if train:
        answer_loss(out.logits, episode.target).backward()
    return time.perf_counter() - wall, time.process_time() - cpu, out.logits.detach()


def compare(model, episode: Episode, train: bool, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds per schedule, and the largest logit difference between them."""
    model.train(train)
    timed(model, episode, "diagonal", train)  # warm-up (allocator, lazy init)
    wall: dict[str, list[float]] = {"sequential": [], "diagonal": []}
    cpu: dict[str, list[float]] = {"sequential": [], "diagonal": []}
    logits = {}
    for _ in range(repeats):
        for schedule in wall:
            w, c, logits[schedule] = timed(model, episode, schedule, train)
            wall[schedule].append(w)
            cpu[schedule].append(c)
    result = {f"{kind}_{s}": statistics.median(times[s]) for kind, times in (("wall", wall), ("cpu", cpu)) for s in wall}
    return result | {"diff": float((logits["sequential"] - logits["diagonal"]).abs().max())}


def bmm_scaling() -> None:
    """Does one bmm over 4 cells (4 layers' weights) cost less than 4 one-cell bmms? (CPU time)"""
    def per_call_us(f, n: int = 300) -> float:
        for _ in range(10):
            f()
        start = time.process_time()
        for _ in range(n):
            f()
        return (time.process_time() - start) / n * 1e6

    print("| rows x in x out | 1 cell (us) | 4 cells (us) | 4 x 1 cell (us) |\n|---|---|---|---|")
    for rows, d_in, d_out in ((16, 128, 1024), (40, 128, 384), (40, 512, 128)):
        x, w = torch.randn(4, rows, d_in), torch.randn(4, d_out, d_in)
        one = per_call_us(lambda: torch.bmm(x[:1], w[:1].transpose(1, 2)))
        four = per_call_us(lambda: torch.bmm(x, w.transpose(1, 2)))
        print(f"| {rows} x {d_in} x {d_out} | {one:.0f} | {four:.0f} | {4 * one:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--segments", default="4,8,16,32", help="segment counts for batch-1 inference")
    parser.add_argument("--train-segments", default="4,8", help="segment counts for the training step ('' for none)")
    parser.add_argument("--length", type=int, default=32, help="tokens per context segment")
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-repeats", type=int, default=1)
    parser.add_argument("--bmm", action="store_true", help="only time bmm over 1 and 4 cells")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bmm:
        return bmm_scaling()
    recipe = load_recipe(RECIPE, [f"recurrence.global_tokens={max(args.length, 1)}"])
    built = build(recipe)
    model, vocab = built.model, built.task.tokenizer.vocab_size
    inner = recipe.inner
    print(f"PRMT4, {recipe['backbone'].config.layers} layers, width {recipe['backbone'].config.dim}, "
          f"{recipe['recurrence'].config.memory_tokens} memory tokens/layer, K={inner.steps} ({inner.grad_mode} order "
          f"when training), segments of {args.length} tokens, torch threads {torch.get_num_threads()}\n")
    print("| mode | batch | segments | sequential wall (s) | diagonal wall (s) | speed-up wall | "
          "sequential CPU (s) | diagonal CPU (s) | speed-up CPU | max logit diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [("inference (eval)", 1, int(s), False, args.repeats) for s in args.segments.split(",") if s]
    rows += [("training step (fwd+bwd)", args.batch, int(s), True, args.train_repeats)
             for s in args.train_segments.split(",") if s]
    for mode, batch, segments, train, repeats in rows:
        episode = synthetic_episode(segments, args.length, batch, vocab)
        r = compare(model, episode, train, repeats)
        print(f"| {mode} | {batch} | {segments} | {r['wall_sequential']:.3f} | {r['wall_diagonal']:.3f} | "
              f"{r['wall_sequential'] / r['wall_diagonal']:.2f}x | {r['cpu_sequential']:.3f} | {r['cpu_diagonal']:.3f} | "
              f"{r['cpu_sequential'] / r['cpu_diagonal']:.2f}x | {r['diff']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
