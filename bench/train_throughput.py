"""Training samples/s of the baseline model (4L/4H/128, 8 memory tokens, K=2, batch 64) per grad mode,
ours side by side with a straightforward Hugging Face transformers implementation.

    python bench/train_throughput.py [--threads N] [--steps S] [--profile] [--no-hf] [--compile] [--bf16]

Both models train on the same batches; their steps are interleaved (ours, HF, ours, HF, ...) so that
load from other processes hits both alike, and samples/s is batch / median step time. The HF row
needs `pip install transformers` (a bench-only dependency); without it the row is skipped.
`--profile` prints where one second-order step of ours spends its time: the ranges
`ttt.inner.forward`, `ttt.inner.backward`, `ttt.read`, `outer.backward` and the top operators.
`--compile` adds ours with `[train] compile = true` (the outer gradient as one `torch.compile`d
functional program, `ttt_core.train.functional`) to the interleaved steps; its compile time (the
warm-up step) is printed separately and not counted in samples/s. `--bf16` adds every model again
under bfloat16 autocast (ours: `[train] precision = "bf16"`; HF the same way), so each row can be
read against HF in float32 and HF in the same precision.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.train.functional import FunctionalStep
from ttt_core.objective import autocast, step_loss

Step = Callable[[int], None]


def ours_step(mode: str, recipe_path: str, batch: int, overrides: tuple[str, ...] = ()) -> tuple[Step, object]:
    recipe = load_recipe(
        recipe_path, [f"inner.grad_mode='{mode}'", "inner.steps=2", f"train.batch_size={batch}", *overrides]
    )
    built = build(recipe)

    def step(i: int) -> None:
        loss, _out = step_loss(built.model, built.task.train_batch(i, batch))
        loss.backward()
        built.optimizer.step(i)

    return step, built


def compiled_step(mode: str, recipe_path: str, batch: int, rounds: int, overrides: tuple[str, ...] = ()) -> Step:
    """Ours through the compiled functional step. The padding widths are fixed from every batch to
    be timed first, so that the timed steps never recompile (the first step of each precision
    compiles)."""
    recipe = load_recipe(
        recipe_path, [f"inner.grad_mode='{mode}'", "inner.steps=2", f"train.batch_size={batch}", *overrides]
    )
    built = build(recipe)
    functional = FunctionalStep(built.model, compile=True)
    for i in range(rounds + 1):
        functional.pad(built.task.train_batch(i, batch))

    def step(i: int) -> None:
        functional(built.task.train_batch(i, batch))
        built.optimizer.step(i)

    return step


def hf_step(mode: str, task, vocab_size: int, batch: int) -> Step | None:
    try:
        from hf_reference import build_hf
    except ImportError:  # run as a module or from elsewhere
        try:
            from bench.hf_reference import build_hf
        except ImportError:
            return None
    try:
        import transformers  # noqa: F401
    except ImportError:
        return None
    model, optimizer = build_hf(vocab_size, mode)
    model.train()

    def step(i: int) -> None:
        loss = model(task.train_batch(i, batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def in_bf16(step: Step) -> Step:
    """`step` under bfloat16 autocast (`[train] precision = "bf16"`)."""

    def run(i: int) -> None:
        with autocast("bf16", "cpu"):
            step(i)

    return run


def time_interleaved(steps: dict[str, Step], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per step of each, measured in alternation, and the seconds of each one's
    untimed warm-up step (compile time for a compiled step)."""
    warmup = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step(0)
        warmup[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i + 1)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, warmup


def profile_ours(recipe_path: str, batch: int, rows: int = 20) -> None:
    from torch.profiler import profile, record_function

    step, built = ours_step("second", recipe_path, batch)
    step(0)
    with profile() as prof:
        loss, _ = step_loss(built.model, built.task.train_batch(1, batch))
        with record_function("outer.backward"):
            loss.backward()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    print(f"\nprofile of one second-order step (ours): {total / 1e3:.0f} ms of CPU self time")
    for name in ("ttt.inner.forward", "ttt.inner.backward", "ttt.read", "outer.backward"):
        events = [e for e in averages if e.key == name]
        if events:
            print(f"  {name:20s} {events[0].cpu_time_total / 1e3:8.1f} ms  ({events[0].count} calls)")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and mode")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--recipe", default="recipes/baseline_ar_n1.toml")
    parser.add_argument("--modes", default="second,first")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face reference")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add ours with [train] compile = true")
    parser.add_argument("--bf16", action="store_true",
                        help="add every model again under bfloat16 autocast ([train] precision = \"bf16\"; HF too)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for ours, e.g. backbone.mlp_ratio=2.6667 (GPT-NeoX's MLP FLOPs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K=2, {args.recipe} {' '.join(args.set)}")
    print("| grad mode | model | precision | samples/s | / HF fp32 | / HF same precision |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        ours, built = ours_step(mode, args.recipe, args.batch, tuple(args.set))
        models = {"ours eager": ours}
        if args.compile:
            models["ours compiled"] = compiled_step(mode, args.recipe, args.batch, args.steps, tuple(args.set))
        hf = None if args.no_hf else hf_step(mode, built.task, built.model.backbone.vocab_size, args.batch)
        if hf is not None:
            models["HF"] = hf
        steps = {(name, "fp32"): step for name, step in models.items()}
        if args.bf16:
            steps |= {(name, "bf16"): in_bf16(step) for name, step in models.items()}
        seconds, warmup = time_interleaved(steps, args.steps)
        rate = {key: args.batch / s for key, s in seconds.items()}
        for (name, precision), samples in rate.items():
            hf32, hf_same = rate.get(("HF", "fp32")), rate.get(("HF", precision))
            cells = [mode, name, precision, f"{samples:.1f}",
                     f"{samples / hf32:.2f}x" if hf32 else "", f"{samples / hf_same:.2f}x" if hf_same else ""]
            print("| " + " | ".join(cells) + " |", flush=True)
        if args.compile:
            compiles = ", ".join(f"{p} {warmup[(n, p)] - seconds[(n, p)]:.0f} s" for n, p in steps if n == "ours compiled")
            print(f"({mode}: compile time, untimed warm-up step minus a step: {compiles})")
        if hf is None:
            print("(HF skipped: " + ("--no-hf)" if args.no_hf else "pip install transformers)"))
    if args.profile:
        profile_ours(args.recipe, args.batch)


if __name__ == "__main__":
    main()
