"""The inner loop: second order vs finite differences, first order by hand, truncation, per-example grads."""

import math

import pytest
import torch

from ttt_core.config import InnerConfig
from ttt_core.inner import InnerLoop


def quadratic_loss(target):
    """Per-example loss sum((A s - target)^2) with a nonlinearity so second order matters."""

    def loss(state):
        s = state["w"]
        return (torch.tanh(s) * s - target).pow(2).sum(-1)

    return loss


def outer(config, w0, target, steps_seen=None):
    loop = InnerLoop(config, ["w"]).double()
    state, _stats = loop(quadratic_loss(target), {"w": w0})
    return state["w"].pow(2).sum(), loop


def test_second_order_matches_finite_differences():
    torch.manual_seed(0)
    config = InnerConfig(steps=3, lr=0.3, grad_mode="second")
    w0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 4, dtype=torch.float64)
    value, _ = outer(config, w0, target)
    (grad,) = torch.autograd.grad(value, w0)
    eps = 1e-6
    numeric = torch.zeros_like(w0)
    for index in range(w0.numel()):
        delta = torch.zeros_like(w0).view(-1)
        delta[index] = eps
        plus, _ = outer(config, (w0.detach() + delta.view_as(w0)).requires_grad_(), target)
        minus, _ = outer(config, (w0.detach() - delta.view_as(w0)).requires_grad_(), target)
        numeric.view(-1)[index] = (plus - minus) / (2 * eps)
    torch.testing.assert_close(grad, numeric, atol=1e-6, rtol=1e-6)


def test_first_order_equals_hand_derived_update():
    torch.manual_seed(1)
    config = InnerConfig(steps=1, lr=0.5, grad_mode="first")
    w0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 4, dtype=torch.float64)
    loop = InnerLoop(config, ["w"]).double()
    state, _ = loop(quadratic_loss(target), {"w": w0})
    g = torch.autograd.grad(quadratic_loss(target)({"w": w0}).sum(), w0)[0]
    torch.testing.assert_close(state["w"], w0 - 0.5 * g)
    # d(sum w1)/d w0 is the identity in first order (g is a constant), and the lr gets -sum(g)
    grad_w0, grad_lr = torch.autograd.grad(state["w"].sum(), [w0, loop.log_lr])
    torch.testing.assert_close(grad_w0, torch.ones_like(w0))
    torch.testing.assert_close(grad_lr, -(0.5 * g.sum()).reshape(1))


def test_truncated_blocks_exactly_the_early_steps():
    torch.manual_seed(2)
    w0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, dtype=torch.float64)

    def grad_of(mode, truncate=1):
        value, _ = outer(InnerConfig(steps=3, lr=0.2, grad_mode=mode, truncate=truncate), w0, target)
        return torch.autograd.grad(value, w0)[0]

    assert torch.allclose(grad_of("truncated", truncate=3), grad_of("second"))
    assert torch.allclose(grad_of("truncated", truncate=0), grad_of("first"))
    loop = InnerLoop(InnerConfig(steps=3, grad_mode="truncated", truncate=1), ["w"])
    assert [loop.create_graph(k) for k in range(3)] == [False, False, True]
    partial = grad_of("truncated", truncate=1)
    assert not torch.allclose(partial, grad_of("second")) and not torch.allclose(partial, grad_of("first"))


def test_per_example_gradients_equal_a_loop_over_examples():
    torch.manual_seed(3)
    config = InnerConfig(steps=2, lr=0.1, grad_mode="second", rule="adam")
    w0 = torch.randn(4, 5, dtype=torch.float64)
    target = torch.randn(4, 5, dtype=torch.float64)
    loop = InnerLoop(config, ["w"]).double()
    batched, _ = loop(quadratic_loss(target), {"w": w0.clone().requires_grad_()})
    for b in range(4):
        single, _ = loop(quadratic_loss(target[b : b + 1]), {"w": w0[b : b + 1].clone().requires_grad_()})
        torch.testing.assert_close(batched["w"][b], single["w"][0])


@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam"])
def test_rules_reduce_the_loss(rule):
    torch.manual_seed(4)
    config = InnerConfig(steps=5, lr=0.05 if rule != "adam" else 0.1, rule=rule, learn_lr="none")
    w0 = torch.randn(2, 6, requires_grad=True)
    target = torch.randn(2, 6)
    _, stats = InnerLoop(config, ["w"])(quadratic_loss(target), {"w": w0})
    assert stats["inner_loss"][-1] < stats["inner_loss"][0]


def test_learned_lr_shapes_and_clipping():
    loop = InnerLoop(InnerConfig(steps=3, lr=0.5, learn_lr="per_step_group"), ["a", "b"])
    assert loop.log_lr.shape == (3, 2) and math.isclose(float(loop.lr(2, 1).detach()), 0.5, rel_tol=1e-6)
    config = InnerConfig(steps=1, lr=1.0, clip_norm=0.1, learn_lr="none")
    w0 = torch.full((2, 3), 5.0, requires_grad=True)
    state, _ = InnerLoop(config, ["w"])(lambda s: s["w"].pow(2).sum(-1) * torch.tensor([1.0, 100.0]), {"w": w0})
    step = (w0 - state["w"]).norm(dim=-1)
    torch.testing.assert_close(step, torch.full((2,), 0.1), atol=1e-5, rtol=1e-5)


def test_stability_penalty_keeps_state_near_init():
    w0 = torch.zeros(1, 3, requires_grad=True)
    target = torch.ones(1, 3)
    loss = lambda s: (s["w"] - target).pow(2).sum(-1)  # noqa: E731
    free, _ = InnerLoop(InnerConfig(steps=5, lr=0.1), ["w"])(loss, {"w": w0})
    held, _ = InnerLoop(InnerConfig(steps=5, lr=0.1, stability=5.0), ["w"])(loss, {"w": w0})
    assert held["w"].norm() < free["w"].norm()


def test_single_learning_rate_is_1d_and_old_0d_checkpoints_load():
    """DeepSpeed cannot broadcast 0-dim parameters; checkpoints from before the change still load."""
    for learn_lr in ("scalar", "none"):
        loop = InnerLoop(InnerConfig(lr=0.5, learn_lr=learn_lr), ["w"])
        assert loop.log_lr.shape == (1,) and loop.lr(0, 0).dim() == 0
        loop.load_state_dict({"log_lr": torch.tensor(math.log(0.25))})
        assert loop.log_lr.shape == (1,) and math.isclose(float(loop.lr(1, 0).detach()), 0.25, rel_tol=1e-6)


def test_clipping_an_all_zero_gradient_keeps_second_order_gradients_finite() -> None:
    """A row with no real token in a segment has an inner gradient of exactly zero; differentiating
    through its clipped norm must not give NaN (sqrt's derivative at 0 is infinite)."""
    from ttt_core.inner import clip_per_example

    weight = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    grad = weight * torch.tensor([[3.0], [0.0]])  # row 1: an all-zero gradient that depends on `weight`
    (clipped,) = clip_per_example([grad], InnerConfig(steps=1, lr=1.0, clip_norm=1.0))
    (outer,) = torch.autograd.grad(clipped.sum(), weight)
    assert torch.isfinite(outer).all() and torch.equal(clipped[1], torch.zeros(2))
