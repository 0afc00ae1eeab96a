"""Padding tokens change neither the outputs of real tokens nor the state they leave behind."""

from __future__ import annotations

import torch

from ttt_plugin_layers import TTTLayerConfig
from ttt_plugin_layers.convert import load_reference_model
from ttt_plugin_layers.layer import TTTLayer

TOL32 = 1e-5


def scatter_padded(ids: torch.Tensor, keep: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place row b of `ids` at the positions `keep[b]` of a `width`-wide padded batch."""
    padded = torch.full((ids.shape[0], width), 0, dtype=ids.dtype)
    mask = torch.zeros(ids.shape[0], width, dtype=torch.bool)
    for b, cols in enumerate(keep):
        padded[b, cols] = ids[b, : len(cols)]
        mask[b, cols] = True
    return padded, mask


@torch.no_grad()
def test_left_right_and_inner_padding_leave_real_logits_unchanged(model_case: dict) -> None:
    model = load_reference_model(model_case["config"], model_case["state_dict"]).eval()
    ids = model_case["input_ids"]
    lens = [37, 21]
    width = 50
    keep = [list(range(width - lens[0], width)),  # left padding by 13 (not a multiple of 16)
            [c for c in range(width) if c not in {0, 4, 5, 17}][: lens[1]]]  # holes, then right padding
    padded, mask = scatter_padded(ids, keep, width)
    out = model(padded, attention_mask=mask)
    for b in range(2):
        alone = model(ids[b : b + 1, : lens[b]])
        assert (out[b, keep[b]] - alone[0]).abs().max() <= TOL32
    assert out[~mask].abs().max() == 0


@torch.no_grad()
def test_generation_continues_each_example_after_padded_prefill(model_case: dict) -> None:
    """A left-padded batch of prompts of different lengths, then decoding or a multi-token chunk."""
    model = load_reference_model(model_case["config"], model_case["state_dict"]).eval()
    ids = model_case["input_ids"]
    lens = [19, 30]
    padded, mask = scatter_padded(ids, [list(range(30 - n, 30)) for n in lens], 30)
    _, cache = model(padded, attention_mask=mask, return_cache=True)
    nxt = torch.stack([ids[0, 19:29], ids[1, 30:40]])
    decoded = torch.cat([model(nxt[:, t : t + 1], cache, return_cache=True)[0] for t in range(1)], 1)
    outs = []
    for t in range(3):  # token by token (examples at different mini-batch positions) ...
        out, cache = model(nxt[:, t : t + 1], cache, return_cache=True)
        outs.append(out)
    out, cache = model(nxt[:, 3:], cache, return_cache=True)  # ... then a 7-token chunk
    outs.append(out)
    got = torch.cat(outs, dim=1)
    for b, n in enumerate(lens):
        want = model(torch.cat([ids[b : b + 1, :n], nxt[b : b + 1]], 1))[0, n:]
        assert (got[b] - want).abs().max() <= TOL32
    assert (decoded[:, 0] - got[:, 0]).abs().max() == 0


def test_masked_tokens_do_not_write_to_the_fast_weights() -> None:
    torch.manual_seed(0)
    layer = TTTLayer(TTTLayerConfig(hidden_size=32, num_heads=2, mini_batch_size=8, inner="mlp",
                                    share_qk=True, use_gate=True)).double()
    x = torch.randn(2, 21, 32, dtype=torch.float64)
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[0, 13:] = False  # example 0 has 13 real tokens, then 8 padding tokens
    out, state = layer(x, mask=mask, return_state=True)
    out0, state0 = layer(x[:1, :13], return_state=True)
    assert (out[0, :13] - out0[0]).abs().max() <= 1e-12
    assert int(state.fast.pos[0]) == 13 % 8 and int(state.fast.pos[1]) == 21 % 8
    for name, p in state0.fast.params.items():
        assert (state.fast.params[name][0] - p[0]).abs().max() <= 1e-12
        assert (state.fast.grads[name][0] - state0.fast.grads[name][0]).abs().max() <= 1e-12
    assert (state.conv[0] - state0.conv[0]).abs().max() <= 1e-12


def test_padding_token_in_decoding_is_a_no_op() -> None:
    torch.manual_seed(0)
    layer = TTTLayer(TTTLayerConfig(hidden_size=32, num_heads=2, mini_batch_size=8, share_qk=True)).double()
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    _, state = layer(x[:, :7], return_state=True)  # position 7 = last of the mini-batch: a fold is due
    _, skipped = layer(x[:, 7:8], state, mask=torch.tensor([[False], [True]]), return_state=True)
    _, stepped = layer(x[:, 7:8], state, return_state=True)
    assert int(skipped.fast.pos[0]) == 7 and int(skipped.fast.pos[1]) == 0
    for name in state.fast.params:
        assert torch.equal(skipped.fast.params[name][0], state.fast.params[name][0])
        assert torch.equal(skipped.fast.grads[name][0], state.fast.grads[name][0])
        assert (skipped.fast.params[name][1] - stepped.fast.params[name][1]).abs().max() <= 1e-12
    assert torch.equal(skipped.conv[0], state.conv[0])


def test_effective_weights_are_what_the_last_token_read_with() -> None:
    torch.manual_seed(0)
    layer = TTTLayer(TTTLayerConfig(hidden_size=32, num_heads=2, mini_batch_size=8)).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    captured = {}
    original = layer._inner

    def spy(fast, q, *args):  # record the queries and pre-LayerNorm readouts of the inner model
        Z, new = original(fast, q, *args)
        captured.update(q=q, Z=Z)
        return Z, new

    layer._inner = spy
    _, state = layer(x, return_state=True)
    eff = state.fast.effective(layer.token_eta_table())
    q_last = captured["q"][:, :, -1:]
    assert (q_last @ eff["W1"] + eff["b1"] - captured["Z"][:, :, -1:]).abs().max() <= 1e-12
