"""The hf backbone against plain transformers: logits, masks, hidden states, packed rows, weight deltas."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM
from ttt_core.attention import keep_graph
from ttt_core.testing import padded_segment

from ttt_plugin_hf.backbone import HFBackbone, build_hf
from ttt_plugin_hf.config import HFConfig

ROWS = [[1, 2, 3, 4, 5, 6, 7], [9, 10, 11, 4], [2, 4, 6, 8, 10]]


def backbone_of(directory, vocab_size: int = 12, **options) -> HFBackbone:
    return build_hf(HFConfig(path=str(directory), **options), vocab_size=vocab_size).eval()


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2", "mistral", "qwen2"])
def test_logits_without_memory_equal_plain_transformers(tiny_dirs, model_type):
    """No mask, and right padding: the backbone's logits are transformers' own (same code, same weights)."""
    backbone = backbone_of(tiny_dirs[model_type])
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_dirs[model_type])).eval()
    segment = padded_segment(ROWS)
    with torch.no_grad():
        ours = backbone(backbone.embed(segment.ids)).logits
        assert torch.equal(ours, reference(input_ids=segment.ids).logits)
        ours = backbone(backbone.embed(segment.ids), segment.mask).logits
        theirs = reference(input_ids=segment.ids, attention_mask=segment.mask.long()).logits
    assert (ours - theirs)[segment.mask].abs().max() < 1e-5


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2"])
def test_padding_is_invisible_and_eager_equals_sdpa(tiny_dirs, model_type):
    """Junk under the mask changes nothing; the eager attention the inner loop uses under `keep_graph`
    gives the fused kernel's logits; hidden states are the first block's input and every block's raw
    output, the last of which `head` turns into the logits."""
    backbone = backbone_of(tiny_dirs[model_type])
    plain, padded = padded_segment(ROWS), padded_segment(ROWS, pad_width=3)
    with torch.no_grad():
        out = backbone(backbone.embed(plain.ids), plain.mask, return_hidden=True)
        junk = backbone(backbone.embed(padded.ids), padded.mask).logits[:, : plain.ids.shape[1]]
        with keep_graph():
            eager = backbone(backbone.embed(plain.ids), plain.mask).logits
        assert backbone.model.config._attn_implementation == "eager"
    real = plain.mask
    assert (junk - out.logits)[real].abs().max() < 1e-5
    assert (eager - out.logits)[real].abs().max() < 1e-5
    assert len(out.hidden_states) == backbone.n_layers + 1
    assert torch.equal(out.hidden_states[0], backbone.embed(plain.ids)) or model_type == "gpt2"  # gpt2 adds wpe
    assert torch.allclose(backbone.head(out.hidden_states[-1]), out.logits, atol=1e-6)


@pytest.mark.parametrize("model_type", ["gpt_neox", "gpt2"])
def test_packed_rows_equal_separate_rows(tiny_dirs, model_type):
    """`PackedRows`: two sequences in one row, positions restarting and attention kept within each,
    give each sequence's logits alone (gpt2's absolute positions included)."""
    backbone = backbone_of(tiny_dirs[model_type])
    a, b = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7]])
    row = torch.cat([a, b], dim=1)
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        packed = backbone(backbone.embed(row), positions=positions, segments=segments).logits
        alone = [backbone(backbone.embed(x)).logits for x in (a, b)]
    assert torch.allclose(packed, torch.cat(alone, dim=1), atol=1e-5)


def merged(backbone: HFBackbone, name: str, up: torch.Tensor, down: torch.Tensor) -> HFBackbone:
    """A copy of `backbone` whose linear map `name` has the delta `up @ down` ([q; k; v] rows for
    wqkv) merged into its weight, each family's way of storing it."""
    copied = copy.deepcopy(backbone)
    _, layer, short = name.split(".")
    module = copied._delta_module(int(layer), short)
    delta = up @ down  # [out, in]
    model_type = backbone.model.config.model_type
    with torch.no_grad():
        if model_type == "gpt2":  # Conv1D keeps its weight as [in, out]
            module.weight += delta.T
        elif model_type == "gpt_neox" and short == "wqkv":  # per head [q_h; k_h; v_h]
            heads = backbone.model.config.num_attention_heads
            hd = backbone.dim // heads
            module.weight.view(heads, 3, hd, -1).add_(delta.view(3, heads, hd, -1).transpose(0, 1))
        else:
            module.weight += delta
    return copied


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2"])
def test_weight_deltas_act_per_example_as_merged_weights(tiny_dirs, model_type):
    """`forward_with_deltas`: example b's logits are those of the model with example b's deltas merged
    into its weights (every target of layer 1, q/k/v rows in [q; k; v] order); zero deltas change nothing."""
    backbone = backbone_of(tiny_dirs[model_type])
    segment = padded_segment(ROWS[:2])
    targets = {name: shape for name, shape in backbone.delta_targets().items() if name.startswith("layers.1.")}
    torch.manual_seed(1)
    deltas = {name: (0.3 * torch.randn(2, 2, inp), 0.3 * torch.randn(2, out, 2)) for name, (out, inp) in targets.items()}
    with torch.no_grad():
        embeds = backbone.embed(segment.ids)
        ours = backbone.forward_with_deltas(embeds, segment.mask, deltas).logits
        zero = {name: (torch.zeros_like(d), torch.zeros_like(u)) for name, (d, u) in deltas.items()}
        assert torch.allclose(backbone.forward_with_deltas(embeds, segment.mask, zero).logits,
                              backbone(embeds, segment.mask).logits, atol=1e-6)
        for b in range(2):
            reference = backbone
            for name, (down, up) in deltas.items():
                reference = merged(reference, name, up[b], down[b])
            theirs = reference(reference.embed(segment.ids[b : b + 1]), segment.mask[b : b + 1]).logits[0]
            real = segment.mask[b]
            assert (ours[b] - backbone(embeds[b : b + 1], segment.mask[b : b + 1]).logits[0])[real].abs().max() > 1e-2
            assert (ours[b] - theirs)[real].abs().max() < 1e-4
    # the hooks are gone after the call
    assert all(not module._forward_hooks for module in backbone.model.modules())


def test_weight_deltas_refuse_unknown_names(tiny_dirs):
    backbone = backbone_of(tiny_dirs["gpt2"])
    with pytest.raises(KeyError, match=r"layers.<i>.\{wqkv, o, up, down\}"):
        backbone.forward_with_deltas(backbone.embed(torch.tensor([[1, 2]])), None,
                                     {"layers.0.q": (torch.zeros(1, 1, 16), torch.zeros(1, 16, 1))})


def test_vocabulary_is_the_tasks_and_freeze_options(tiny_dirs):
    """A saved model with 12 ids becomes one with the task's 20 (old rows kept); freeze leaves the
    embeddings, or everything, out of the outer loop's gradients."""
    original = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["gpt_neox"]))
    backbone = backbone_of(tiny_dirs["gpt_neox"], vocab_size=20, freeze="embeddings")
    assert backbone.vocab_size == 20 and backbone.model.get_output_embeddings().out_features == 20
    assert torch.equal(backbone.model.get_input_embeddings().weight[:12], original.get_input_embeddings().weight)
    frozen = {name for name, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"model.gpt_neox.embed_in.weight"}
    assert not any(p.requires_grad for p in backbone_of(tiny_dirs["gpt2"], freeze="all").parameters())
    # gpt2 ties its head to the token embedding: both frozen, with the position embedding
    gpt2 = backbone_of(tiny_dirs["gpt2"], freeze="embeddings")
    assert {n for n, p in gpt2.named_parameters() if not p.requires_grad} == {
        "model.transformer.wte.weight", "model.transformer.wpe.weight"}
    assert not gpt2.model.get_output_embeddings().weight.requires_grad


def test_sdpa_refuses_a_kept_graph(tiny_dirs):
    from ttt_core.errors import TTTError

    backbone = backbone_of(tiny_dirs["llama"], attention="sdpa")
    with keep_graph(), pytest.raises(TTTError, match="attention = 'sdpa' has no double backward"):
        backbone(backbone.embed(torch.tensor([[1, 2]])))
