"""The Triton dual forms of TTT-Linear and TTT-MLP equal the torch path (Triton interpreter on CPU).

The interpreter is slow, so the shapes are tiny: 2 examples, 2 heads of 16, mini-batch 16.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton_kernels is imported
pytest.importorskip("triton")

import attrs  # noqa: E402
import torch  # noqa: E402

from ttt_plugin_layers import TTTLayerConfig  # noqa: E402
from ttt_plugin_layers.layer import TTTLayer  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a GPU")


def make_layer(dtype: torch.dtype, inner: str = "linear") -> TTTLayer:
    torch.manual_seed(0)
    config = TTTLayerConfig(hidden_size=32, num_heads=2, mini_batch_size=16, inner=inner, kernel="torch")
    layer = TTTLayer(config).to(dtype)
    with torch.no_grad():  # move the parameters that start at 0/1 so that bugs cannot hide
        for p, mean in ((layer.token_scale, 0.0), (layer.b1, 0.0), (layer.ttt_norm_weight, 1.0),
                        (layer.ttt_norm_bias, 0.0), (layer.lr_proj.bias, 0.0), (getattr(layer, "b2", None), 0.0)):
            if p is not None:
                p.normal_(mean, 0.2)
    return layer


def use(layer: TTTLayer, kernel: str) -> TTTLayer:
    layer.config = attrs.evolve(layer.config, kernel=kernel)
    return layer


def chunks(layer: TTTLayer, x: torch.Tensor, bounds: list[int]) -> tuple[torch.Tensor, object]:
    state, outs = None, []
    for a, b in zip(bounds, bounds[1:]):
        out, state = layer(x[:, a:b], state, return_state=True)
        outs.append(out)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("inner", ["linear", "mlp"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_triton_equals_torch_with_partial_minibatches(dtype: torch.dtype, tol: float, inner: str) -> None:
    layer = make_layer(dtype, inner)
    x = torch.randn(2, 37, 32, dtype=dtype)
    bounds = [0, 5, 37]  # a chunk ending mid-mini-batch, then one starting there (saved gradient sums)
    with torch.no_grad():
        want, want_state = chunks(use(layer, "torch"), x, bounds)
        got, got_state = chunks(use(layer, "triton"), x, bounds)
    assert (got - want).abs().max() <= tol
    for name in layer.inner.names:
        assert (got_state.fast.params[name] - want_state.fast.params[name]).abs().max() <= tol
        assert (got_state.fast.grads[name] - want_state.fast.grads[name]).abs().max() <= tol
    assert torch.equal(got_state.fast.pos, want_state.fast.pos)


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_triton_path_backward_recomputes_exactly(inner: str) -> None:
    layer = make_layer(torch.float64, inner)
    x = torch.randn(2, 32, 32, dtype=torch.float64)
    params = list(layer.parameters())
    want = torch.autograd.grad(use(layer, "torch")(x).square().sum(), params)
    got = torch.autograd.grad(use(layer, "triton")(x).square().sum(), params)
    assert max((a - b).abs().max().item() for a, b in zip(got, want)) <= 1e-10


def test_auto_uses_torch_on_cpu_and_triton_when_asked() -> None:
    layer = make_layer(torch.float32)
    q = torch.zeros(1, 2, 16, 16)
    assert not use(layer, "auto")._use_triton(q, None)
    assert use(layer, "triton")._use_triton(q, None)
    assert not use(layer, "triton")._use_triton(q, torch.tensor([3]))  # padding: torch path
