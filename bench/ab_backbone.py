"""Same-process A/B of the backbone code: another checkout's `llama.py` / `attention.py` against this one.

    git worktree add /tmp/old <commit>      # or: git archive <commit> | tar -x -C /tmp/old
    python bench/ab_backbone.py /tmp/old [--threads 1] [--mode second] [--steps 5]

Timing two checkouts in separate processes on a shared machine measures the load, not the code; here
both run in one process on the same weights and batches, their steps alternating, so the ratio holds
under load. Only the backbone is swapped (the inner loop, learner and trainer are this checkout's).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import ttt_core.attention as attention
from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.objective import step_loss


def _load(name: str, path: Path, replace: tuple[tuple[str, str], ...] = ()) -> types.ModuleType:
    source = path.read_text()
    for old, new in replace:
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def old_backbone(model: torch.nn.Module, checkout: Path) -> torch.nn.Module:
    """A copy of `model` whose backbone runs the other checkout's forward code."""
    old_attention = _load("ab_old_attention", checkout / "ttt_core/attention.py")
    old_attention._KEEP_GRAPH = attention._KEEP_GRAPH  # the inner loop sets this checkout's flag
    llama = _load(
        "ab_old_llama",
        checkout / "ttt_core/builtin/llama.py",
        (("from ttt_core.attention import", "from ab_old_attention import"),),
    )
    model = copy.deepcopy(model)
    model.backbone.forward = types.MethodType(llama.Llama.forward, model.backbone)
    for layer in model.backbone.layers:
        layer.forward = types.MethodType(llama.LlamaBlock.forward, layer)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="root of the other checkout")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mode", default="second")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--recipe", default="recipes/baseline_ar_n1.toml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    built = build(load_recipe(args.recipe, [f"inner.grad_mode='{args.mode}'"]))
    models = {"old": old_backbone(built.model, args.checkout), "new": built.model}

    def step(model: torch.nn.Module, i: int) -> float:
        loss, _ = step_loss(model, built.task.train_batch(i, args.batch))
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    print("first-step losses (should agree):", {name: step(m, 0) for name, m in models.items()})
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.steps):
        for name, model in models.items():
            start = time.perf_counter()
            step(model, i + 1)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    rates = ", ".join(f"{name} {args.batch / s:.1f} samples/s" for name, s in median.items())
    rounds = " ".join(f"{o / n:.2f}" for o, n in zip(times["old"], times["new"]))
    print(f"{args.mode}, {args.threads} threads: {rates}; new/old {median['old'] / median['new']:.2f}x (per round: {rounds})")


if __name__ == "__main__":
    main()
