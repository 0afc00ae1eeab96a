"""Evaluation keeps autograd only where the inner loop needs it: without inner steps no graph of the
forward is kept (for long contexts most of the memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ttt_core.objective as objective
from ttt_core.build import build_model, build_task
from ttt_core.plugins import create_host
from ttt_core.recipe import load_recipe

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml"
NO_INNER = ["memory.learner.name='none'", "memory.learner.read_context=true", "inner.steps=0", "inner.learn_lr='none'"]


@pytest.mark.parametrize(("overrides", "graph_kept"), [([], True), (NO_INNER, False)])
def test_grad_mode_follows_the_inner_steps(monkeypatch, overrides: list[str], graph_kept: bool) -> None:
    registry = create_host().registry
    recipe = load_recipe(TINY, overrides, registry=registry)
    task = build_task(recipe, registry)
    model = build_model(recipe, task, registry)
    seen, original = [], objective.step_loss

    def recording(*args, **kwargs):
        loss, out = original(*args, **kwargs)
        seen.append(torch.is_grad_enabled() and out.logits.requires_grad)
        return loss, out

    monkeypatch.setattr(objective, "step_loss", recording)
    result = objective.evaluate(model, task, "val", 8, 4, "cpu")
    assert seen == [graph_kept, graph_kept] and 0.0 <= result["exact_match"] <= 1.0
    assert torch.is_grad_enabled()
