"""Does the functional (optionally compiled) outer gradient equal eager `loss.backward()`, and how
long does compiling it (the whole second-order step) take?

    python bench/compiled_step.py [--modes second,first] [--batch 64] [--threads 1] [--no-compile] [--profile] [--bf16] [--set KEY=VALUE]

Builds the model twice from the same recipe and seed, runs one step's gradient eagerly and through
`ttt_core.train.functional.FunctionalStep` (uncompiled, then compiled) on the same batches, and prints
the largest relative error per parameter (max |g - g_eager| / max |g_eager|) and the compile time.
`--profile` then profiles one more compiled step: the share of the GEMMs (`aten::mm`/`bmm`/`addmm`,
which inductor leaves to MKL) against the generated C++ kernels, each kernel by name
(inductor's `cpp.enable_kernel_profile`). `--bf16` runs every variant under bfloat16 autocast
(`[train] precision = "bf16"`), so the errors are then bf16 against bf16 eager.
"""

from __future__ import annotations

import argparse
import time

import torch

from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.train.functional import FunctionalStep
from ttt_core.objective import autocast, step_loss


def relative_errors(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        name: float((p.grad - reference[name]).abs().max() / reference[name].abs().max().clamp_min(1e-30))
        for name, p in model.named_parameters()
    }


def eager_grads(built, episode, precision: str) -> tuple[float, dict[str, torch.Tensor]]:
    built.model.zero_grad(set_to_none=True)
    loss, _ = step_loss(built.model, episode, precision=precision)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in built.model.named_parameters()}


def profile_step(step: FunctionalStep, episode, precision: str, rows: int = 15) -> None:
    from torch.profiler import profile

    with autocast(precision, "cpu"):
        step(episode)
        with profile() as prof:
            step(episode)
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    gemm = sum(e.self_cpu_time_total for e in averages if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))
    print(f"profile of one compiled step: {total / 1e3:.0f} ms CPU self time, GEMMs {gemm / 1e3:.0f} ms "
          f"({100 * gemm / total:.0f}%)")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))


def check(mode: str, recipe_path: str, batch: int, compile: bool, batches: int, profile: bool = False,
          precision: str = "fp32", extra: tuple[str, ...] = ()) -> None:
    overrides = [f"inner.grad_mode='{mode}'", "inner.steps=2", f"train.batch_size={batch}", *extra]
    eager = build(load_recipe(recipe_path, overrides))
    functional = build(load_recipe(recipe_path, overrides))
    variants = {"functional": FunctionalStep(functional.model)}
    if compile:
        variants["compiled"] = FunctionalStep(build(load_recipe(recipe_path, overrides)).model, compile=True)
    for i in range(batches):
        episode = eager.task.train_batch(i, batch)
        loss, reference = eager_grads(eager, episode, precision)
        for name, step in variants.items():
            step.model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            with autocast(precision, "cpu"):
                f_loss, _ = step(episode)
            seconds = time.perf_counter() - start
            errors = relative_errors(step.model, reference)
            worst = max(errors, key=errors.get)
            print(
                f"{mode:6s} batch {i} (context width {episode.context.ids.shape[1]}) {name:10s} "
                f"{seconds:7.2f} s  loss {f_loss:.6f} vs eager {loss:.6f}  "
                f"max rel grad error {errors[worst]:.2e} ({worst})",
                flush=True,
            )
    if profile and compile:
        profile_step(variants["compiled"], episode, precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="recipes/baseline_ar_n1.toml")
    parser.add_argument("--modes", default="second,first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=2, help="batches checked (the first compiles)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-compile", action="store_true", help="check the uncompiled functional path only")
    parser.add_argument("--profile", action="store_true", help="profile one compiled step afterwards")
    parser.add_argument("--bf16", action="store_true", help="every variant under bfloat16 autocast")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. backbone.mlp_ratio=0.6667 (the deck's MLP FLOPs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        from torch._inductor import config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # each generated kernel in the profile
    for mode in args.modes.split(","):
        check(mode, args.recipe, args.batch, not args.no_compile, args.batches, args.profile,
              "bf16" if args.bf16 else "fp32", tuple(args.set))


if __name__ == "__main__":
    main()
