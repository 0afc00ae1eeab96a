import math

import pytest
import torch
import torch.nn.functional as F

from ttt_core.attention import keep_graph
from ttt_core.builtin.llama import Llama, LlamaConfig, block_forward, block_forward_prefixed, project
from ttt_core.interfaces import missing_capability

TINY = LlamaConfig(layers=3, heads=2, dim=16, mlp_ratio=2.0)


def model(config=TINY, vocab=11, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return Llama(config, vocab).to(dtype)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 130}, "option 'dim' (130) must be divisible by 'heads' (4)"),
        ({"heads": 0}, "option 'heads' must be > 0; got 0"),
        ({"layers": -1}, "option 'layers' must be > 0; got -1"),
        ({"dim": 12, "heads": 4}, "option 'dim' / 'heads' = 3 must be even for RoPE"),
        ({"rope_theta": 0.0}, "option 'rope_theta' must be > 0; got 0.0"),
        ({"mlp_ratio": 0.001}, "option 'mlp_ratio' (0.001) gives an empty MLP at dim 128"),
    ],
)
def test_config_errors_are_one_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        LlamaConfig(**kwargs)
    assert str(err.value) == message


def test_shapes_and_hidden_states():
    m = model()
    ids = torch.randint(0, 11, (2, 7))
    emb = m.embed(ids)
    out = m(emb, return_hidden=True)
    assert out.logits.shape == (2, 7, 11)
    assert len(out.hidden_states) == TINY.layers + 1
    assert all(h.shape == (2, 7, 16) for h in out.hidden_states)
    assert out.hidden_states[0] is emb
    torch.testing.assert_close(m.head(out.hidden_states[-1]), out.logits)
    assert m(emb).hidden_states is None
    assert (m.dim, m.n_layers, m.vocab_size) == (16, 3, 11)


def test_layers_run_one_at_a_time_equal_forward():
    m = model()
    emb = torch.randn(2, 6, 16)
    x = emb
    for layer in m.layers:
        x = layer(x)
    torch.testing.assert_close(m.head(x), m(emb).logits)


@pytest.mark.parametrize("kept", [False, True])
def test_block_forward_runs_different_layers_in_one_call(kept):
    m = model()
    indices = [2, 0, 1, 2]
    x = torch.randn(4, 2, 5, 16, requires_grad=True)
    mask = torch.rand(4, 2, 5) > 0.3
    positions = torch.arange(5) + torch.randint(0, 9, (4, 2, 1))  # [C, B, T]
    params = m.stacked_layer_params(torch.tensor(indices))
    with keep_graph(kept):
        batched = block_forward(params, x, mask, positions, config=m.config)
        single = torch.stack([m.layers[i](x[c], mask[c], positions[c]) for c, i in enumerate(indices)])
        torch.testing.assert_close(m.run_layers(indices, x, mask, positions), batched)
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-6)

    probe = torch.randn_like(batched)
    names = [name for name, _ in m.named_parameters()]
    layer_params = [p for _, p in m.named_parameters()] + [x]
    g_batched = torch.autograd.grad((batched * probe).sum(), layer_params, allow_unused=True)
    g_single = torch.autograd.grad((single * probe).sum(), layer_params, allow_unused=True)
    for a, b in zip(g_batched, g_single):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert g_batched[names.index("layers.0.wqkv")].abs().sum() > 0


@pytest.mark.parametrize("shared", [False, True], ids=["own-suffix", "shared-suffix"])
@pytest.mark.parametrize("kept", [False, True])
def test_prefixed_block_equals_the_block_on_the_concatenation(kept, shared):
    """Outputs after a prefix, from a suffix projected once (and shared by the batch), equal the plain
    block's outputs there; so do the gradients, including second order through the prefix."""
    m = model()
    params = m.stacked_layer_params(torch.tensor([1, 0]))
    prefix = torch.randn(2, 3, 4, 16, requires_grad=True)
    suffix = torch.randn(2, 1 if shared else 3, 6, 16, requires_grad=True)
    with keep_graph(kept):
        plain = block_forward(params, torch.cat([prefix, suffix.expand(2, 3, 6, 16)], 2), config=m.config)[:, :, 4:]
        prefixed = block_forward_prefixed(params, prefix, project(params, suffix, 4, config=m.config), config=m.config)
    torch.testing.assert_close(prefixed, plain, atol=1e-6, rtol=1e-6)
    probe = torch.randn_like(plain)
    inputs = [prefix, suffix, *params.values()]
    g_plain = torch.autograd.grad((plain * probe).sum(), inputs, create_graph=kept)
    g_prefixed = torch.autograd.grad((prefixed * probe).sum(), inputs, create_graph=kept)
    for a, b in zip(g_prefixed, g_plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    if kept:  # the inner loop's case: the gradient w.r.t. the prefix, differentiated again
        w = params["wqkv"]
        second = [torch.autograd.grad(g[0].pow(2).sum(), w, retain_graph=True)[0] for g in (g_prefixed, g_plain)]
        torch.testing.assert_close(second[0], second[1], atol=1e-5, rtol=1e-5)


def test_rope_tables_equal_the_tables_built_per_forward_and_grow_when_too_short():
    """The cached RoPE tables give the logits of tables built from the positions in each forward
    (the path a forward with explicit positions takes), also past the rows a model starts with."""
    m = model()
    ids = torch.randint(0, 11, (2, 9))
    emb, mask = m.embed(ids), torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    positions = torch.arange(9)
    torch.testing.assert_close(m(emb, mask).logits, m(emb, mask, positions=positions).logits, atol=0, rtol=0)
    rows = m.rope_cos.shape[0]
    long = torch.randn(1, rows + 5, 16)
    torch.testing.assert_close(m(long).logits, m(long, positions=torch.arange(rows + 5)).logits, atol=0, rtol=0)
    assert m.rope_cos.shape[0] == 2 * rows
    assert "rope_cos" not in m.state_dict()  # a function of the config: checkpoints do not carry it


@pytest.mark.parametrize("kept", [False, True])
def test_forward_prefixed_equals_forward_on_the_concatenation(kept):
    """A suffix projected once (`project_suffix`) behind a prefix gives `forward`'s logits on the
    concatenation, padding included, and the same gradients: first order w.r.t. prefix, suffix and
    weights, and second order through the prefix's gradient (the inner loop's case)."""
    m = model()
    prefix = torch.randn(2, 3, 16, requires_grad=True)
    embeds = torch.randn(2, 5, 16, requires_grad=True)
    mask = torch.tensor([[True] * 8, [True] * 6 + [False] * 2])
    with keep_graph(kept):
        plain = m(torch.cat([prefix, embeds], 1), mask).logits
        prefixed = m.forward_prefixed(prefix, m.project_suffix(embeds, 3), mask).logits
    torch.testing.assert_close(prefixed, plain, atol=1e-6, rtol=1e-6)
    probe = torch.randn_like(plain) * mask[..., None]
    inputs = [prefix, embeds, *(p for name, p in m.named_parameters() if name != "tok_embeddings.weight")]
    g_plain = torch.autograd.grad((plain * probe).sum(), inputs, create_graph=kept)
    g_prefixed = torch.autograd.grad((prefixed * probe).sum(), inputs, create_graph=kept)
    for a, b in zip(g_prefixed, g_plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    if kept:
        w = m.layers[0].wqkv
        second = [torch.autograd.grad(g[0].pow(2).sum(), w, retain_graph=True)[0] for g in (g_prefixed, g_plain)]
        torch.testing.assert_close(second[0], second[1], atol=1e-5, rtol=1e-5)
    assert missing_capability(m, "fixed_suffix") is None


def test_stacked_layer_params_shapes():
    m = model()
    params = m.stacked_layer_params()
    assert params["wqkv"].shape == (3, 48, 16)
    assert params["w_down"].shape == (3, 16, 32)
    assert m.stacked_layer_params([1])["attn_norm"].shape == (1, 16)


@pytest.mark.parametrize("kept", [False, True])
def test_right_padding_does_not_change_real_positions(kept):
    m = model()
    ids = torch.randint(0, 11, (2, 9))
    lengths = torch.tensor([9, 4])
    mask = torch.arange(9)[None] < lengths[:, None]
    garbage = torch.where(mask, ids, torch.randint(0, 11, ids.shape))
    with keep_graph(kept):
        padded = m(m.embed(garbage), mask, return_hidden=True)
        short = m(m.embed(ids[1:, :4]), return_hidden=True)
        full = m(m.embed(ids[:1]))
    assert torch.isfinite(padded.logits).all()
    torch.testing.assert_close(padded.logits[1, :4], short.logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.hidden_states[2][1, :4], short.hidden_states[2][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.logits[:1], full.logits, atol=1e-5, rtol=1e-5)


def _meta_loss(m, memory, ids):
    """One MAML inner step on prefixed memory tokens, then the query loss (second order)."""
    emb = m.embed(ids)
    with keep_graph():
        logits = m(torch.cat([memory, emb], 1)).logits[:, memory.shape[1] : -1]
        inner = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        (grad,) = torch.autograd.grad(inner, memory, create_graph=True)
    adapted = memory - 1.0 * grad
    logits = m(torch.cat([adapted, emb[:, :3]], 1)).logits
    return logits.pow(2).mean()


def test_double_backward_through_the_whole_model():
    m = model()
    memory = torch.randn(2, 4, 16, requires_grad=True)
    ids = torch.randint(0, 11, (2, 6))
    loss = _meta_loss(m, memory, ids)
    grads = torch.autograd.grad(loss, [memory, m.layers[0].wqkv, m.layers[2].w_down])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_second_order_gradient_matches_finite_differences():
    m = model(LlamaConfig(layers=1, heads=2, dim=8, mlp_ratio=1.0), vocab=5, dtype=torch.float64)
    ids = torch.randint(0, 5, (1, 4))
    memory = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda mem: _meta_loss(m, mem, ids), (memory,))


def test_init_is_gpt2_like():
    m = model(LlamaConfig(layers=4, dim=128))
    assert abs(m.tok_embeddings.weight.std().item() - 0.02) < 2e-3
    assert abs(m.layers[0].wqkv.std().item() - 0.02) < 2e-3
    assert abs(m.layers[3].wo.std().item() - 0.02 / math.sqrt(8)) < 1e-3
    assert torch.equal(m.layers[1].mlp_norm, torch.ones(128))
    ids = torch.randint(0, 11, (4, 16))
    loss = F.cross_entropy(m(m.embed(ids)).logits.flatten(0, 1), ids.flatten())
    assert abs(loss.item() - math.log(11)) < 0.05  # near-uniform predictions at init


def test_tied_embeddings_share_the_weight():
    m = model(LlamaConfig(layers=1, heads=2, dim=16, tie_embeddings=True))
    assert m.lm_head.weight is m.tok_embeddings.weight
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in model(LlamaConfig(layers=1, heads=2, dim=16)).parameters()) - 11 * 16


def test_four_layer_width_128_trains_stably():
    torch.manual_seed(0)
    m = Llama(LlamaConfig(layers=4, heads=4, dim=128), vocab_size=32)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        start = torch.randint(0, 32, (8, 1))
        ids = (start + torch.arange(16)) % 32  # next token = current + 1
        loss = F.cross_entropy(m(m.embed(ids[:, :-1])).logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.1 < losses[0]


def test_weight_deltas_equal_the_merged_weights_per_example():
    """`forward_with_deltas`: example b runs with W + up[b] @ down[b] on the named linear layers; a
    zero delta is `forward` exactly; gradients reach the deltas."""
    from ttt_core.interfaces import missing_capability

    m = model()
    assert missing_capability(m, "weight_deltas") is None
    assert m.delta_targets()["layers.1.w_gate_up"] == tuple(m.layers[1].w_gate_up.shape)
    torch.manual_seed(1)
    ids = torch.randint(0, 11, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    embeds = m.embed(ids)
    names = ["layers.0.wqkv", "layers.1.w_gate_up", "layers.2.w_down", "layers.2.wo"]
    deltas = {}
    for name in names:
        out, inp = m.delta_targets()[name]
        deltas[name] = (torch.randn(2, 3, inp) * 0.1, (torch.randn(2, out, 3) * 0.1).requires_grad_())
    zero = {name: (down, torch.zeros_like(up)) for name, (down, up) in deltas.items()}
    assert torch.equal(m.forward_with_deltas(embeds, mask, zero).logits, m(embeds, mask).logits)
    logits = m.forward_with_deltas(embeds, mask, deltas).logits
    for b in range(2):
        merged = model()
        with torch.no_grad():
            for name, (down, up) in deltas.items():
                _, i, weight = name.split(".")
                getattr(merged.layers[int(i)], weight).add_(up[b] @ down[b])
        alone = merged(embeds[b : b + 1], mask[b : b + 1]).logits[0]
        torch.testing.assert_close(logits[b][mask[b]], alone[mask[b]], atol=1e-5, rtol=1e-5)
    logits[mask].sum().backward()
    assert all(up.grad is not None and up.grad.abs().sum() > 0 for _, up in deltas.values())
    with pytest.raises(KeyError, match="no linear weight"):
        m.forward_with_deltas(embeds, mask, {"layers.9.wo": deltas["layers.2.wo"]})
