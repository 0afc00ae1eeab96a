"""Registration with ttt-core and the registered components (skipped without ttt-core)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ttt_core")

import torch  # noqa: E402
from ttt_core.episode import Segment  # noqa: E402
from ttt_core.plugins import create_host  # noqa: E402

from ttt_plugin_layers import plugin  # noqa: E402
from ttt_plugin_layers.config import TTTLMConfig, TTTMemoryConfig  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    return create_host(extra_plugins=(("layers", plugin),)).registry


def test_plugin_module_imports_no_torch() -> None:
    code = "import sys, ttt_plugin_layers.plugin; print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_components_are_registered(registry) -> None:
    assert registry["backbone"].get("ttt_lm").config is TTTLMConfig
    assert registry["backbone"].get("ttt_model").name == "ttt_lm"
    for name in ("ttt_linear", "ttt_mlp"):
        assert registry["inner_learner"].get(name).config is TTTMemoryConfig


@pytest.mark.parametrize("variant", ["transformer", "mamba"])
def test_ttt_lm_backbone(registry, variant: str) -> None:
    torch.manual_seed(0)
    config = TTTLMConfig(layers=2, dim=32, heads=2, inner="mlp", variant=variant, mini_batch_size=8)
    backbone = registry["backbone"].get("ttt_lm").build(config, vocab_size=40)
    assert (backbone.dim, backbone.n_layers, backbone.vocab_size, len(backbone.layers)) == (32, 2, 40, 2)
    ids = torch.randint(0, 40, (2, 21))
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[1, 15:] = False
    out = backbone(backbone.embed(ids), mask, return_hidden=True)
    assert out.logits.shape == (2, 21, 40) and len(out.hidden_states) == 3
    alone = backbone(backbone.embed(ids[1:, :15])).logits
    assert (out.logits[1, :15] - alone[0]).abs().max() <= 1e-5
    assert torch.allclose(backbone.head(out.hidden_states[-1])[mask], out.logits[mask], atol=1e-6)
    # the core's Backbone and BackboneOutput, and none of the optional capabilities (it declares none)
    from ttt_core.interfaces import Backbone, BackboneOutput, missing_capability

    assert isinstance(backbone, Backbone) and isinstance(out, BackboneOutput)
    assert registry["backbone"].get("ttt_lm").provides == ("weight_deltas",)
    assert missing_capability(backbone, "packed_rows") == "its forward() takes no positions, segments"
    assert missing_capability(backbone, "weight_deltas") is None


@pytest.mark.parametrize("variant", ["transformer", "mamba"])
def test_ttt_lm_weight_deltas_equal_the_merged_weights_per_example(registry, variant: str) -> None:
    """`forward_with_deltas`: example b runs with W + up[b] @ down[b] on the named linear maps (the
    padded row too); zero deltas are `forward` exactly; gradients reach the deltas."""
    import copy

    torch.manual_seed(0)
    config = TTTLMConfig(layers=2, dim=16, heads=2, inner="linear", variant=variant, mini_batch_size=4)
    backbone = registry["backbone"].get("ttt_lm").build(config, vocab_size=20)
    targets = backbone.delta_targets()
    assert ("layers.0.k" in targets) == (variant == "transformer")
    assert targets["layers.1.down"] == tuple(backbone.model.blocks[1].mlp.down_proj.weight.shape)
    ids = torch.randint(0, 20, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    embeds = backbone.embed(ids)
    deltas = {}
    for name in ("layers.0.q", "layers.0.o", "layers.1.v", "layers.1.gate", "layers.1.down"):
        out, inp = targets[name]
        deltas[name] = (torch.randn(2, 3, inp) * 0.3, (torch.randn(2, out, 3) * 0.3).requires_grad_())
    zero = {name: (down, torch.zeros_like(up)) for name, (down, up) in deltas.items()}
    assert torch.equal(backbone.forward_with_deltas(embeds, mask, zero).logits, backbone(embeds, mask).logits)
    logits = backbone.forward_with_deltas(embeds, mask, deltas).logits
    for b, n in ((0, 9), (1, 6)):
        merged = copy.deepcopy(backbone)
        with torch.no_grad():
            for name, (down, up) in deltas.items():
                _, layer, role = name.split(".")
                merged._linears(merged.model.blocks[int(layer)])[role].weight += up[b] @ down[b]
        alone = merged(merged.embed(ids[b:b + 1, :n])).logits[0]
        assert (logits[b, :n] - alone).abs().max() <= 1e-5, (variant, b)
    logits[mask].sum().backward()
    assert all(up.grad is not None and up.grad.abs().sum() > 0 for _, up in deltas.values())
    with pytest.raises(KeyError, match="no linear weight"):
        backbone.forward_with_deltas(embeds, mask, {"layers.5.q": deltas["layers.0.q"]})


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_ttt_memory_learner_writes_and_reads(registry, name: str) -> None:
    torch.manual_seed(0)
    backbone = registry["backbone"].get("llama").build(registry["backbone"].get("llama").config(layers=1, dim=32, heads=2), vocab_size=30)
    writer = registry["memory_writer"].get("identity").build(registry["memory_writer"].get("identity").config(), dim=32)
    learner = registry["inner_learner"].get(name).build(TTTMemoryConfig(heads=2), backbone=backbone, writer=writer)
    state = learner.init_state(3)
    context = Segment.from_lists([[1, 2, 3, 4], [5, 6], [7, 8, 9]])
    loss = learner.inner_loss(state, context)
    assert loss.shape == (3,)
    grads = torch.autograd.grad(loss.sum(), list(state.values()), create_graph=True)
    # a small step goes downhill (the LayerNorm of the tiny initial f(k) makes the loss stiff)
    adapted = {n: s - 1e-4 * g for (n, s), g in zip(state.items(), grads)}
    assert learner.inner_loss(adapted, context).mean() < loss.mean()
    query = Segment.from_lists([[1, 2], [3, 4], [5, 6]])
    logits = learner(adapted, query.ids, query.mask)
    assert logits.shape == (3, 2, 30)
    logits.sum().backward()  # second order: reaches the initial fast weights through the update
    assert learner.W1.grad is not None and learner.W1.grad.abs().sum() > 0
