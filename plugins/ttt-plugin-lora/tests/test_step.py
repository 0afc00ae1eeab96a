"""The lora learner in the training step: `[train] compile`'s functional (traced) step equals eager,
and validation refuses a backbone without per-example weight deltas."""

from __future__ import annotations

import time

import attrs
import pytest
import torch
from ttt_core.episode import answer_loss
from ttt_core.errors import RecipeError
from ttt_core.recipe import build_recipe, tomllib
from ttt_core.registry import Provider, ProviderRegistry, Registry
from ttt_core.train.functional import FunctionalStep



def test_compiled_step_equals_eager(kit, make_model):
    """The whole step through `torch.compile` (full graph: no graph break in the learner), second order,
    on one layer with one inner step: backend "aot_eager" runs the traced graph without inductor's C++
    build, and tracing still costs ~5 s on one core (first order is the same graph without the double
    backward; the tiny recipe's CLI run checks inductor)."""
    episode, mode = kit.make_episode(), "second"
    options = {"grad_mode": mode, "steps": 1, "layers": 1, "targets": ["q", "v", "down"]}
    eager, traced = make_model(**options), make_model(**options)
    loss = answer_loss(eager(episode).logits, episode.target)
    loss.backward()
    start = time.perf_counter()
    torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
    f_loss, _ = FunctionalStep(traced, compile=True, backend="aot_eager")(episode)
    print(f"traced step ({mode}): {time.perf_counter() - start:.1f} s")
    assert torch.allclose(f_loss, loss.detach(), rtol=1e-6)
    named = dict(traced.named_parameters())
    for name, param in eager.named_parameters():
        grad = named[name].grad
        assert grad is not None, name
        assert (grad - param.grad).abs().max() <= 1e-5 * param.grad.abs().max().clamp_min(1e-30), name


@attrs.define
class Empty:
    pass


def test_a_backbone_without_weight_deltas_is_refused_by_validation():
    from ttt_core.builtin import ttt_register_components as builtins
    from ttt_plugin_lora.plugin import ttt_register_components as lora

    registry = Registry()
    builtins(ProviderRegistry(registry=registry, provider=Provider("builtin", "ttt-core", "0")))
    lora(ProviderRegistry(registry=registry, provider=Provider("lora", "ttt-plugin-lora", "0")))
    ProviderRegistry(registry=registry, provider=Provider("test", "ttt-test", "0")).add(
        "backbone", "plain", config=Empty, factory="json:dumps")

    def recipe(backbone: str):
        return build_recipe(tomllib.loads(
            f'[task]\nname = "ar"\n[backbone]\nname = "{backbone}"\n'
            '[memory.learner]\nname = "lora"\n[memory.writer]\nname = "identity"\n'
            '[recurrence]\nname = "single"\n[optimizer]\nname = "adamw"\n'), "x.toml", registry)

    assert recipe("llama").components["memory.learner"].name == "lora"
    with pytest.raises(RecipeError) as info:
        recipe("plain")
    assert info.value.lines == [
        "x.toml: [memory.learner] lora needs a backbone with 'weight_deltas'; backbone 'plain' does not provide it"]
