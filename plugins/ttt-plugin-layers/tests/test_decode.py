"""Decoding, chunked prefill and padding give the logits of one full forward pass."""

from __future__ import annotations

import attrs
import pytest
import torch

from ttt_plugin_layers import TTTLayerConfig
from ttt_plugin_layers.convert import load_reference_model
from ttt_plugin_layers.layer import TTTLayer
from ttt_plugin_layers.model import TTTModel

TOL32 = 1e-5


def reference_model(case: dict, dtype: torch.dtype = torch.float32) -> TTTModel:
    return load_reference_model(case["config"], case["state_dict"], dtype=dtype).eval()


def run_chunks(model: TTTModel, ids: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    assert sum(sizes) == ids.shape[1]
    cache, outs, start = None, [], 0
    for n in sizes:
        out, cache = model(ids[:, start : start + n], cache, return_cache=True)
        outs.append(out)
        start += n
    return torch.cat(outs, dim=1)


@torch.no_grad()
def test_decode_token_by_token_equals_full_forward(model_case: dict) -> None:
    model = reference_model(model_case)
    ids = model_case["input_ids"][:, :40]  # 2.5 mini-batches
    full = model(ids)
    decoded = run_chunks(model, ids, [1] * ids.shape[1])
    assert (decoded - full).abs().max() <= TOL32


@torch.no_grad()
def test_chunked_prefill_at_odd_offsets_then_decode(model_case: dict) -> None:
    model = reference_model(model_case)
    ids = model_case["input_ids"]  # 64 tokens
    full = model(ids)
    sizes = [7, 13, 2, 19, 5] + [1] * 18  # chunk boundaries at 7, 20, 22, 41, 46: none a multiple of 16
    assert (run_chunks(model, ids, sizes) - full).abs().max() <= TOL32


@torch.no_grad()
def test_decode_is_exact_in_float64(model_case: dict) -> None:
    model = reference_model(model_case, torch.float64)
    ids = model_case["input_ids"][:, :35]
    full = model(ids)
    assert (run_chunks(model, ids, [3, 17, 1, 1, 13]) - full).abs().max() <= 1e-12


@pytest.mark.parametrize("inner", ["linear", "mlp"])
@pytest.mark.parametrize("mamba", [False, True], ids=["transformer", "mamba"])
def test_layer_state_carries_gradients(inner: str, mamba: bool) -> None:
    """Chunked prefill through a layer keeps the graph: outer gradients equal the full pass's."""
    torch.manual_seed(0)
    cfg = TTTLayerConfig(hidden_size=32, num_heads=2, mini_batch_size=8, inner=inner, share_qk=mamba, use_gate=mamba)
    layer = TTTLayer(cfg).double()
    x = torch.randn(2, 27, 32, dtype=torch.float64)
    full = layer(x)
    g_full = torch.autograd.grad(full.square().sum(), list(layer.parameters()))
    state, outs = None, []
    for a, b in [(0, 5), (5, 6), (6, 19), (19, 27)]:
        out, state = layer(x[:, a:b], state, return_state=True)
        outs.append(out)
    chunked = torch.cat(outs, dim=1)
    assert (chunked - full).abs().max() <= 1e-12
    g_chunk = torch.autograd.grad(chunked.square().sum(), list(layer.parameters()))
    assert max((a - b).abs().max().item() for a, b in zip(g_full, g_chunk)) <= 1e-10


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_chunked_evaluation_of_long_inputs_is_exact(inner: str) -> None:
    """`chunk_size` (how long inputs are cut inside the layer) changes nothing, gradients included."""
    torch.manual_seed(0)
    cfg = TTTLayerConfig(hidden_size=32, num_heads=2, mini_batch_size=8, inner=inner, share_qk=True, use_gate=True,
                         chunk_size=0)
    one_pass = TTTLayer(cfg).double()
    chunked = TTTLayer(attrs.evolve(cfg, chunk_size=16)).double()
    chunked.load_state_dict(one_pass.state_dict())
    x = torch.randn(2, 53, 32, dtype=torch.float64, requires_grad=True)
    outs = [layer(x) for layer in (one_pass, chunked)]
    assert (outs[0] - outs[1]).abs().max() <= 1e-12
    grads = [torch.autograd.grad(o.square().sum(), [x, *layer.parameters()]) for o, layer in zip(outs, (one_pass, chunked))]
    assert max((a - b).abs().max().item() for a, b in zip(*grads)) <= 1e-10
