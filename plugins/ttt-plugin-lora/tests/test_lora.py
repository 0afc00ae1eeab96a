"""The lora learner: adapters on the right rows, per-example independence, padding, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from ttt_core.builtin.configs import MemoryTokensConfig
from ttt_core.builtin.memory_tokens import MemoryTokens
from ttt_core.episode import answer_loss
from ttt_core.errors import TTTError
from ttt_core.model import lm_loss_per_example
from ttt_core.testing import assert_gradients_match_finite_differences

from ttt_plugin_lora.lora import A_KEY, B_KEY, FUSED

ROWS = [[1, 2, 3, 4, 5, 6], [9, 10, 11], [2, 4, 6, 8, 10]]


def perturbed_state(learner, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """The initial state moved differently for every example, so that examples differ."""
    torch.manual_seed(seed)
    return {k: (v + 0.2 * torch.randn(v.shape)).requires_grad_() for k, v in learner.init_state(batch).items()}


def merged_backbone(learner, state, b: int):
    """A copy of the backbone with example b's adapters merged into its weights (W + s B A on the role's rows)."""
    merged = copy.deepcopy(learner.backbone)
    with torch.no_grad():
        for (layer, role), (a, up) in learner.adapters(state).items():
            weight, part, parts = FUSED[role]
            w = getattr(merged.layers[layer], weight)
            rows = w.shape[0] // parts
            w[part * rows:(part + 1) * rows] += learner.scale * up[b] @ a[b]
    return merged


def test_deltas_equal_merged_weights_per_example(kit):
    """Every example runs with its own adapters on exactly its roles' rows of the fused weights."""
    learner = kit.make_learner(targets=["q", "v", "o", "gate", "down"], layers=[1])
    seg = kit.segment(ROWS)
    state = perturbed_state(learner, 3)
    logits = learner(state, seg.ids, seg.mask)
    for b in range(3):
        merged = merged_backbone(learner, state, b)
        n = int(seg.lengths[b])
        expected = merged(merged.embed(seg.ids[b:b + 1, :n])).logits[0]
        assert torch.allclose(logits[b, :n], expected, atol=1e-5), b


def test_per_example_gradients_equal_a_loop_over_examples(kit, make_model):
    """The summed inner loss gives each example the gradient it has alone, and the inner loop (with
    per-example clipping) adapts each as it would alone."""
    model = make_model()
    learner = model.learner
    seg = kit.segment(ROWS)
    state = perturbed_state(learner, 3)
    grads = torch.autograd.grad(learner.inner_loss(state, seg).sum(), list(state.values()))
    adapted, _ = model.adapt(state, seg)
    for b, row in enumerate(ROWS):
        alone = {k: v[b:b + 1].detach().requires_grad_() for k, v in state.items()}
        one = kit.segment([row])
        own = torch.autograd.grad(learner.inner_loss(alone, one).sum(), list(alone.values()))
        for g, g_alone in zip(grads, own):
            assert torch.allclose(g[b:b + 1], g_alone, atol=1e-6)
        adapted_alone, _ = model.adapt(alone, one)
        for k in adapted:
            assert torch.allclose(adapted[k][b:b + 1], adapted_alone[k], atol=1e-5), k


def test_padding_changes_nothing(kit, make_model):
    """Padding columns (junk ids under the mask) change neither the inner loop, the answer, nor the
    outer gradient (float64: equal up to rounding, not up to float32's amplified by the inner steps)."""
    model = make_model().double()
    results = []
    for pad in (0, 3):
        model.zero_grad()
        out = model(kit.make_episode(pad_width=pad))
        answer_loss(out.logits, kit.make_episode().target).backward()
        results.append((out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (logits, grads), (padded_logits, padded_grads) = results
    assert torch.allclose(logits, padded_logits, atol=1e-10)
    assert grads.keys() == padded_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], padded_grads[name], atol=1e-10), name


@pytest.mark.parametrize("options", [{"alpha": 0.0}, {"init": "lora"}], ids=["alpha-0", "B-0"])
def test_without_a_delta_the_model_is_the_backbone(kit, options):
    """alpha = 0 (at any state) and B = 0 (peft's init, at the initial state) give the backbone alone."""
    learner = kit.make_learner(**options)
    seg = kit.segment(ROWS)
    state = perturbed_state(learner, 3) if options.get("alpha") == 0.0 else learner.init_state(3)
    plain = learner.backbone(learner.backbone.embed(seg.ids), seg.mask).logits
    assert torch.equal(learner(state, seg.ids, seg.mask), plain)
    expected = lm_loss_per_example(plain[:, :-1], seg.ids[:, 1:], seg.mask[:, 1:])
    assert torch.equal(learner.inner_loss(state, seg), expected)


def test_balanced_init_moves_both_factors_in_one_step(kit):
    """With the balanced init the first inner gradient reaches A and B; with B = 0 it reaches B only."""
    seg = kit.segment(ROWS)
    for init, a_moves in (("balanced", True), ("lora", False)):
        learner = kit.make_learner(init=init)
        state = {k: v.detach().requires_grad_() for k, v in learner.init_state(3).items()}
        grads = dict(zip(state, torch.autograd.grad(learner.inner_loss(state, seg).sum(), list(state.values()))))
        assert all(grads[k].abs().sum() > 0 for k in grads if k.startswith(B_KEY))
        assert all(bool(grads[k].abs().sum() > 0) == a_moves for k in grads if k.startswith(A_KEY)), init


def test_second_order_gradient_matches_finite_differences(make_model, episode):
    """Outer gradient through two second-order inner steps vs central differences, in float64."""
    model = make_model(grad_mode="second", steps=2, targets=["v", "up"]).double()
    params = [model.learner.lora_A["v"], model.learner.lora_B["up"], model.inner.log_lr]

    def loss() -> torch.Tensor:
        return answer_loss(model(episode).logits, episode.target)

    assert_gradients_match_finite_differences(loss, params)


def test_first_order_keeps_the_initial_adapters_and_rates_in_the_graph(make_model, episode):
    model = make_model(grad_mode="first")
    answer_loss(model(episode).logits, episode.target).backward()
    learner = model.learner
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*learner.lora_A.values(), *learner.lora_B.values()])
    assert model.inner.log_lr.grad is not None


def test_memory_tokens_alongside_read_as_the_memory_tokens_learner(kit):
    """With tokens and alpha = 0 the learner is the memory-token learner; the adapters and the tokens
    both receive inner gradients otherwise."""
    backbone = kit.tiny_backbone()
    learner = kit.make_learner(backbone, tokens=2, alpha=0.0)
    tokens = MemoryTokens(MemoryTokensConfig(tokens=2), backbone=backbone, writer=learner.writer)
    with torch.no_grad():
        tokens.memory.copy_(learner.memory)
    seg = kit.segment(ROWS)
    assert torch.allclose(learner.inner_loss(learner.init_state(3), seg), tokens.inner_loss(tokens.init_state(3), seg))
    assert torch.allclose(learner(learner.init_state(3), seg.ids, seg.mask), tokens(tokens.init_state(3), seg.ids, seg.mask))
    both = kit.make_learner(backbone, tokens=2)
    state = {k: v.detach().requires_grad_() for k, v in both.init_state(3).items()}
    grads = torch.autograd.grad(both.inner_loss(state, seg).sum(), list(state.values()))
    assert "memory" in state and all(g.abs().sum() > 0 for g in grads)
    assert both.fast_parameters() == 2 * 16 + sum(p.numel() for p in both.parameters() if p.dim() == 3)


def test_unknown_layer_and_missing_role_are_refused(kit):
    with pytest.raises(TTTError, match=r"layers \[0, 5\] reach past the backbone's 2"):
        kit.make_learner(layers=[0, 5])

    class OnlyQ(torch.nn.Module):
        n_layers, dim = 1, 16

        def delta_targets(self):
            return {"layers.0.q": (16, 16)}

    with pytest.raises(TTTError, match=r"no weight for role 'v' in layer 0 \(its weights there: layers.0.q\)"):
        kit.make_learner(OnlyQ(), targets=["q", "v"])


def test_fast_parameter_count_of_the_ar_recipe(kit):
    """The count quoted in recipes/lora_ar_n1.toml: rank 1 on v and o in layers 2, 3 of the deck's
    4L/128 backbone is the 8 memory tokens' 1,024."""
    from ttt_core.builtin.configs import LlamaConfig
    from ttt_core.builtin.llama import Llama

    backbone = Llama(LlamaConfig(layers=4, dim=128, heads=4, mlp_ratio=2.6667), 16)
    learner = kit.make_learner(backbone, targets=["v", "o"], layers=[2, 3], rank=1)
    assert learner.fast_parameters() == 1024 == 8 * 128


def test_bf16_autocast_trains_close_to_float32(make_model, episode):
    """Under bfloat16 autocast (`[train] precision = "bf16"`) the step runs, the state stays float32,
    and the loss is float32's to bf16 rounding."""
    model = make_model(grad_mode="second")
    loss32 = answer_loss(model(episode).logits, episode.target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(episode)
        loss16 = answer_loss(out.logits, episode.target)
    loss16.backward()
    assert torch.isfinite(loss16) and abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.learner.lora_A.values())
