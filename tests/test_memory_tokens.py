"""Memory tokens' inner objective: the context projected once for all inner steps (`FixedSuffix`)
gives the plain computation's losses and gradients, first and second order."""

from pathlib import Path

import pytest
import torch

from ttt_core.attention import keep_graph
from ttt_core.build import build
from ttt_core.builtin.memory_tokens import writer_state
from ttt_core.interfaces import FixedSuffix
from ttt_core.model import lm_loss_per_example, prefixed_logits
from ttt_core.recipe import load_recipe

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")


def plain_inner_loss(learner, state, segment):
    """The inner loss as written before any reuse: the whole `[memory; context]` through the backbone."""
    embeds = learner.backbone.embed(segment.ids)
    memory = learner.writer(writer_state(state), state["memory"], embeds, segment.mask)
    logits = prefixed_logits(learner.backbone, memory, embeds, segment.mask)
    return lm_loss_per_example(logits[:, learner.tokens - 1 : -1], segment.ids, segment.mask)


@pytest.mark.parametrize("buckets", [1, 3])
def test_inner_objective_equals_the_plain_inner_loss(buckets):
    built = build(load_recipe(TINY, [f"memory.learner.length_buckets={buckets}"]))
    learner, segment = built.model.learner, built.task.train_batch(0, 7).context
    assert isinstance(learner.backbone, FixedSuffix)  # so the objective takes the projected path
    assert segment.mask.sum(1).unique().numel() > 1  # padding present
    state = {k: v.clone().requires_grad_() for k, v in learner.init_state(7).items()}
    objective = learner.inner_objective(segment)
    with keep_graph():  # attention that can be differentiated twice, as the inner loop runs it
        fast, plain = objective(state), plain_inner_loss(learner, state, segment)
        torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-6)
        # the state's gradient, kept in the graph, and a second step on the same objective
        g_fast = torch.autograd.grad(fast.sum(), state["memory"], create_graph=True)[0]
        g_plain = torch.autograd.grad(plain.sum(), state["memory"], create_graph=True)[0]
        torch.testing.assert_close(g_fast, g_plain, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(objective({"memory": state["memory"] - g_fast}),
                                   plain_inner_loss(learner, {"memory": state["memory"] - g_plain}, segment),
                                   atol=1e-6, rtol=1e-6)
    weights = [p for name, p in built.model.backbone.named_parameters() if "layers.0" in name]
    second_fast = torch.autograd.grad(g_fast.pow(2).sum(), weights, retain_graph=True)
    second_plain = torch.autograd.grad(g_plain.pow(2).sum(), weights, retain_graph=True)
    for a, b in zip(second_fast, second_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
