"""Small N1 probes for PRMT4 vs the baseline (see plugins/ttt-plugin-rmt/PRMT4.md, "Why PRMT4 does not learn N1").

    python bench/prmt4_probe.py grad  recipes/prmt4_ar_n1.toml [--set overrides ...]
    python bench/prmt4_probe.py train recipes/prmt4_ar_n1.toml 200 [overrides ...]

Both shrink the recipe to llama 2 layers, width 64, 4 heads, batch 32 (overridable).
`grad`: at init, the answer loss, the norm of d(answer loss)/d(every embedding call's output), and
how much the answer logits change (relative) when every row gets another row's context.
`train`: plain outer loop, printing mean loss / exact match / inner stats every 25 steps.
"""

from __future__ import annotations

import sys
import time

import attrs
import torch

from ttt_core.episode import Segment, answer_loss
from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.objective import step_loss

SMALL = ["backbone.layers=2", "backbone.dim=64", "backbone.heads=4", "train.batch_size=32", "optimizer.warmup_steps=20"]


def grad_probe(path: str, overrides: list[str]) -> None:
    recipe = load_recipe(path, SMALL + overrides)
    built = build(recipe)
    model, task = built.model.train(), built.task
    episode = task.train_batch(0, recipe.train.batch_size)
    embeds, embed = [], model.backbone.embed

    def recording(ids):
        out = embed(ids)
        out.retain_grad()
        embeds.append(out)
        return out

    model.backbone.embed = recording
    loss = answer_loss(model(episode).logits, episode.target)
    loss.backward()
    model.backbone.embed = embed
    print("answer loss", round(float(loss.detach()), 4))
    for e in embeds:
        print("  embed", tuple(e.shape), "grad norm", None if e.grad is None else round(float(e.grad.norm()), 4))

    def roll(s: Segment) -> Segment:
        return Segment(torch.roll(s.ids, 1, 0), torch.roll(s.mask, 1, 0))

    other = attrs.evolve(episode, segments=tuple(roll(s) for s in episode.segments), context=roll(episode.context))
    model.eval()
    a, b = model(episode).logits.detach(), model(other).logits.detach()
    print("relative logit change under another row's context", round(float((a - b).norm() / (a - a.mean(0)).norm()), 4))


def train_probe(path: str, steps: int, overrides: list[str]) -> None:
    recipe = load_recipe(path, SMALL + [f"train.steps={steps}"] + overrides)
    built = build(recipe)
    model, task, optimizer = built.model.train(), built.task, built.optimizer
    start, losses, accs = time.time(), [], []
    for step in range(steps):
        episode = task.train_batch(step, recipe.train.batch_size)
        loss, out = step_loss(model, episode)
        loss.backward()
        stats = optimizer.step(step)
        losses.append(float(loss.detach()))
        accs.append(float(task.metrics(out.logits.detach(), episode)["exact_match"].float().mean()))
        if (step + 1) % 25 == 0:
            inner = {k: [round(float(x), 3) for x in out.stats[k]] for k in ("inner_loss", "inner_grad_norm") if k in out.stats}
            print(f"{step + 1} loss {sum(losses) / 25:.3f} exact {sum(accs) / 25:.3f} grad_norm {stats['grad_norm']:.3f} "
                  f"{inner} {(time.time() - start) / (step + 1):.2f} s/step", flush=True)
            losses, accs = [], []


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, path, *rest = sys.argv[1:]
    if mode == "grad":
        grad_probe(path, rest)
    else:
        train_probe(path, int(rest[0]), rest[1:])
