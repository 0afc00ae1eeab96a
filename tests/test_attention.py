import pytest
import torch
import torch.nn.functional as F

from ttt_core import attention
from ttt_core.attention import causal_attention, graph_kept, keep_graph


def qkv(*shape, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=dtype, requires_grad=requires_grad) for _ in range(3)]


def right_padding_mask(lengths, t):
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]


def test_keep_graph_is_scoped_and_nestable():
    assert not graph_kept()
    with keep_graph():
        assert graph_kept()
        with keep_graph(False):
            assert not graph_kept()
        assert graph_kept()
    assert not graph_kept()


@pytest.mark.parametrize("padded", [False, True])
def test_math_path_matches_sdpa(padded):
    q, k, v = qkv(3, 4, 9, 16)
    mask = right_padding_mask([9, 5, 1], 9) if padded else None
    fused = causal_attention(q, k, v, mask)
    with keep_graph():
        math = causal_attention(q, k, v, mask)
    torch.testing.assert_close(math, fused, atol=1e-5, rtol=1e-5)


def test_padding_never_produces_nan_and_real_rows_ignore_pads():
    q, k, v = qkv(2, 2, 6, 8)
    mask = torch.tensor([[True] * 3 + [False] * 3, [False] * 6])  # second row fully padded
    for kept in (False, True):
        with keep_graph(kept):
            out = causal_attention(q, k, v, mask)
        assert torch.isfinite(out).all()
        short = causal_attention(q[:1, :, :3], k[:1, :, :3], v[:1, :, :3])
        torch.testing.assert_close(out[:1, :, :3], short, atol=1e-5, rtol=1e-5)


def test_extra_leading_dims_and_mask_broadcast():
    q, k, v = qkv(2, 3, 4, 5, 8)  # [C, B, H, T, hd]
    mask = right_padding_mask([5, 4, 2], 5).expand(2, 3, 5)
    out = causal_attention(q, k, v, mask)
    for c in range(2):
        torch.testing.assert_close(out[c], causal_attention(q[c], k[c], v[c], mask[c]))


def test_fused_kernel_outside_math_inside(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    q, k, v = qkv(1, 1, 4, 8)
    causal_attention(q, k, v)
    assert len(calls) == 1
    with keep_graph():
        causal_attention(q, k, v)
    assert len(calls) == 1


@pytest.mark.parametrize("padded", [False, True])
def test_math_path_double_backward(padded):
    q, k, v = qkv(2, 2, 5, 4, requires_grad=True)
    mask = right_padding_mask([5, 3], 5) if padded else None
    with keep_graph():
        out = causal_attention(q, k, v, mask)
    grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v), create_graph=True)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), (q, k, v))
    assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in second)


def test_math_path_gradcheck_float64():
    q, k, v = qkv(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = right_padding_mask([3], 4)

    def f(q, k, v):
        with keep_graph():
            return causal_attention(q, k, v, mask)

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (q, k, v), fast_mode=True)
