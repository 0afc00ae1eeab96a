"""Training samples/s of ours against the deck's own model (GradMemGPT, `bench/hf_reference.py`),
side by side in one process, with each step's matmul FLOPs and the machine's matmul ceiling.

    python bench/train_throughput.py [--threads N] [--steps S] [--rows deck,recipe,equal,...] [--profile]

Rows (second order, K = 2, batch 64 unless told otherwise):

    deck         the deck's GradMemGPT as its code runs it (HF GPT-NeoX, eager fp32): 1.00x
    recipe       `recipes/baseline_ar_n1.toml` as `ttt run` runs it on this machine: its
                 `compile = "auto"` and `precision = "auto"` resolved here (`ttt_core.train.fast`),
                 `length_buckets = 2`. Its model is at the deck's matmul FLOPs: llama at width 128,
                 4 layers, 4 heads; SwiGLU hidden int(0.6667 * 128) = 85, three 128x85 matrices =
                 32,640 MACs per token against the deck's two 128x128 = 32,768
    eager        the recipe opted out: eager fp32 (`--set train.compile=false
                 --set "train.precision='fp32'"`)
    padded       that without `length_buckets` (every example padded to the batch's longest)
    pairs        compile + bf16 with `pack_pairs` (two examples per row) instead of length_buckets
    mlp341       the recipes' model before 2026-12-06 (SwiGLU hidden 341: 1.85x the deck's FLOPs),
                 compile + bf16 + length_buckets

Every model trains on the same batches; their steps are interleaved (deck, recipe, ..., deck, ...)
so load from other processes hits them alike; samples/s is batch / median step time. The matmul
ceiling is timed in the same rounds: `torch.mm` at the models' GEMM shapes (`[B*T, 128] x [128, N]`
and the weight-gradient `[128, B*T] x [B*T, 128]`, B*T = batch x 41: 8 memory tokens + the padded
context) and at a large square size, fp32 and bf16. FLOPs of one training step (forward, inner loop,
outer backward) are counted by `torch.utils.flop_counter.FlopCounterMode` on the eager path with the
row's settings (the compiled step runs the same matmuls); GFLOP/s = those FLOPs / median step time,
and "of ceiling" divides by the best ceiling at the models' shapes in the row's precision.
The compiled rows' first step compiles (its time is printed, not counted). Needs `pip install
transformers` for the deck row.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ttt_core.build import build
from ttt_core.objective import autocast, step_loss
from ttt_core.recipe import load_recipe
from ttt_core.train.fast import choose_fast_settings
from ttt_core.train.functional import FunctionalStep

Step = Callable[[int], None]

RECIPE = "recipes/baseline_ar_n1.toml"
OPT_OUT = ("train.compile=false", "train.precision='fp32'")
FAST = ("train.compile=true", "train.precision='bf16'")
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    # name -> (label, recipe overrides); compile and precision come from the recipe (auto: this machine)
    "recipe": ("ours, baseline_ar_n1.toml as `ttt run` runs it here", ()),
    "eager": ("ours, baseline_ar_n1.toml opted out: eager fp32", OPT_OUT),
    "padded": ("ours, eager fp32, no length_buckets", OPT_OUT + ("memory.learner.length_buckets=1",)),
    "pairs": ("ours, compile + bf16 + pack_pairs", FAST + ("memory.learner.length_buckets=1", "memory.learner.pack_pairs=true")),
    "mlp341": ("ours, SwiGLU hidden 341 (1.85x the FLOPs), compile + bf16 + length_buckets",
               FAST + ("backbone.mlp_ratio=2.6667",)),
}
PROFILED = OPT_OUT  # what --profile profiles: the recipe's model, eager fp32


def _recipe(mode: str, recipe_path: str, batch: int, overrides: tuple[str, ...]):
    return load_recipe(recipe_path, [f"inner.grad_mode='{mode}'", "inner.steps=2", f"train.batch_size={batch}", *overrides])


def ours_step(mode: str, recipe_path: str, batch: int, overrides: tuple[str, ...] = ()) -> tuple[Step, object]:
    built = build(_recipe(mode, recipe_path, batch, overrides))

    def step(i: int) -> None:
        loss, _out = step_loss(built.model, built.task.train_batch(i, batch))
        loss.backward()
        built.optimizer.step(i)

    return step, built


def compiled_step(mode: str, recipe_path: str, batch: int, rounds: int, overrides: tuple[str, ...] = ()) -> Step:
    """Ours through the compiled functional step. The padding widths are fixed from every batch to
    be timed first, so that the timed steps never recompile (the first step of each precision
    compiles)."""
    built = build(_recipe(mode, recipe_path, batch, overrides))
    functional = FunctionalStep(built.model, compile=True)
    for i in range(rounds + 1):
        functional.pad(built.task.train_batch(i, batch))

    def step(i: int) -> None:
        functional(built.task.train_batch(i, batch))
        built.optimizer.step(i)

    return step


def hf_step(mode: str, task, vocab_size: int, batch: int, preset: str = "deck",
            model_out: list | None = None) -> Step | None:
    """The reference's training step (`hf_reference.PRESETS`), or None without transformers."""
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
    model, optimizer = build_hf(vocab_size, mode, preset)
    model.train()
    if model_out is not None:
        model_out.append(model)

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


def time_interleaved(steps: dict, rounds: int) -> tuple[dict, dict]:
    """Median seconds per step of each, measured in alternation, and the seconds of each one's
    untimed warm-up step (compile time for a compiled step)."""
    warmup = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step(0)
        warmup[name] = time.perf_counter() - start
    times: dict = {name: [] for name in steps}
    for i in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i + 1)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, warmup


# --- FLOPs and the matmul ceiling ---------------------------------------------------------------


def count_flops(step: Callable[[], None]) -> int:
    """Matmul FLOPs (mm, bmm, addmm, attention; 2 per multiply-add) of one call of `step`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def ours_flops(mode: str, recipe_path: str, batch: int, overrides: tuple[str, ...], index: int = 1) -> int:
    """FLOPs of one eager training step of ours (the compiled step runs the same matmuls)."""
    built = build(_recipe(mode, recipe_path, batch, overrides))

    def one() -> None:
        loss, _ = step_loss(built.model, built.task.train_batch(index, batch))
        loss.backward()

    return count_flops(one)


def ceiling_shapes(batch: int, width: int) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of `[m, k] x [k, n]`: the models' GEMMs (B*T rows of width 128: the 128-wide
    projections, q/k/v together, the weight gradient) and a large square."""
    rows = batch * width
    return {f"[{rows},128]x[128,128]": (rows, 128, 128), f"[{rows},128]x[128,384]": (rows, 128, 384),
            f"[128,{rows}]x[{rows},128]": (128, rows, 128), "[2048,2048]x[2048,2048]": (2048, 2048, 2048)}


def matmul_step(shape: tuple[int, int, int], dtype: torch.dtype, seconds: float = 0.05) -> tuple[Step, list[int]]:
    """A step of `torch.mm` calls at `shape` (about `seconds` long on a quiet core; the count is fixed
    by a first timing) and a list that receives its FLOPs."""
    m, k, n = shape
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    start = time.perf_counter()
    torch.mm(a, b)
    calls = max(1, min(200, int(seconds / max(time.perf_counter() - start, 1e-6))))
    flops = [2 * m * k * n * calls]

    def step(_i: int) -> None:
        for _ in range(calls):
            torch.mm(a, b)

    return step, flops


# --- profile ------------------------------------------------------------------------------------


def profile_ours(recipe_path: str, batch: int, overrides: tuple[str, ...], rows: int = 25) -> None:
    from torch.profiler import profile, record_function

    step, built = ours_step("second", recipe_path, batch, overrides)
    step(0)
    with profile(record_shapes=True) as prof:
        loss, _ = step_loss(built.model, built.task.train_batch(1, batch))
        with record_function("outer.backward"):
            loss.backward()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    gemm = sum(e.self_cpu_time_total for e in averages if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))
    print(f"\nprofile of one second-order step of ours ({' '.join(overrides)}): {total / 1e3:.0f} ms of CPU "
          f"self time, GEMMs {gemm / 1e3:.0f} ms ({100 * gemm / max(total, 1):.0f}%)")
    for name in ("ttt.inner.forward", "ttt.inner.backward", "ttt.read", "outer.backward"):
        events = [e for e in averages if e.key == name]
        if events:
            print(f"  {name:20s} {events[0].cpu_time_total / 1e3:8.1f} ms  ({events[0].count} calls)")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows))


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--mode", default="second", choices=("second", "first"))
    parser.add_argument("--rows", default="deck,recipe,eager,padded,pairs,mlp341",
                        help=f"which rows: deck, {', '.join(ROWS)}")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the matmul ceiling")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one more eager step per row)")
    parser.add_argument("--profile", action="store_true", help="then profile one eager step of ours at the deck's FLOPs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override for every row of ours, e.g. train.compile=false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n != "deck" and n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from deck, {', '.join(ROWS)}")
    extra = tuple(args.set)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, K=2, {args.mode} order, "
          f"{args.steps} interleaved steps, {args.recipe} {' '.join(extra)}", flush=True)

    torch.manual_seed(0)
    task = build(_recipe(args.mode, args.recipe, args.batch, extra)).task
    width = max(task.train_batch(i, args.batch).context.ids.shape[1] for i in range(args.steps + 1)) + 8
    steps: dict[str, Step] = {}
    labels: dict[str, str] = {}
    precision: dict[str, str] = {}
    flops: dict[str, int] = {}
    deck_models: list = []
    compiled: list[str] = []
    for name in names:
        torch.manual_seed(0)
        if name == "deck":
            step = hf_step(args.mode, task, 128, args.batch, "deck", deck_models)
            if step is None:
                print("(deck row skipped: pip install transformers)")
                continue
            steps[name], labels[name], precision[name] = step, "the deck's GradMemGPT (HF GPT-NeoX), eager fp32", "fp32"
            if not args.no_flops:
                flops[name] = count_flops(lambda: deck_models[0](task.train_batch(1, args.batch)).backward())
                deck_models[0].zero_grad(set_to_none=True)
            continue
        label, overrides = ROWS[name]
        overrides = overrides + extra
        train, _note = choose_fast_settings(_recipe(args.mode, args.recipe, args.batch, overrides).train,
                                            torch.device("cpu"), single_process=True)
        if train.compile:
            steps[name] = compiled_step(args.mode, args.recipe, args.batch, args.steps, overrides)
            compiled.append(name)
        else:
            steps[name] = ours_step(args.mode, args.recipe, args.batch, overrides)[0]
        if train.precision == "bf16":
            steps[name] = in_bf16(steps[name])
        labels[name] = f"{label} ({'compiled' if train.compile else 'eager'} {train.precision})"
        precision[name] = train.precision
        if not args.no_flops:
            flops[name] = ours_flops(args.mode, args.recipe, args.batch, overrides)
    ceiling: dict[tuple[str, str], list[int]] = {}
    if not args.no_ceiling:
        for shape_name, shape in ceiling_shapes(args.batch, width).items():
            for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                steps[f"mm {dtype_name} {shape_name}"], ceiling[(dtype_name, shape_name)] = matmul_step(shape, dtype)

    seconds, warmup = time_interleaved(steps, args.steps)

    gflops: dict[tuple[str, str], float] = {key: f[0] / seconds[f"mm {key[0]} {key[1]}"] / 1e9 for key, f in ceiling.items()}
    if gflops:
        print("\nmatmul ceiling (torch.mm, GFLOP/s, timed in the same rounds):")
        print("| shape | fp32 | bf16 |")
        print("|---|---|---|")
        for shape_name in ceiling_shapes(args.batch, width):
            print(f"| {shape_name} | {gflops[('fp32', shape_name)]:.1f} | {gflops[('bf16', shape_name)]:.1f} |")
    model_shapes = [s for s in ceiling_shapes(args.batch, width) if not s.startswith("[2048")]
    best = {p: max(gflops[(p, s)] for s in model_shapes) for p in ("fp32", "bf16")} if gflops else {}
    deck = seconds.get("deck")
    print("\n| row | samples/s | / deck | GFLOP per step | GFLOP/s | of ceiling at these shapes |")
    print("|---|---|---|---|---|---|")
    for name in labels:
        rate = args.batch / seconds[name]
        achieved = flops[name] / seconds[name] / 1e9 if name in flops else None
        cells = [labels[name], f"{rate:.1f}", f"{deck / seconds[name]:.2f}x" if deck else "",
                 f"{flops[name] / 1e9:.2f}" if name in flops else "",
                 f"{achieved:.1f}" if achieved else "",
                 f"{100 * achieved / best[precision[name]]:.0f}% ({precision[name]})" if achieved and best else ""]
        print("| " + " | ".join(cells) + " |", flush=True)
    if compiled:
        print("(compile time, untimed first step minus a step: "
              + ", ".join(f"{n} {warmup[n] - seconds[n]:.0f} s" for n in compiled) + ")")
    if args.profile:
        profile_ours(args.recipe, args.batch, PROFILED + extra)


if __name__ == "__main__":
    main()
