"""peft round trip: exported adapters, loaded by peft into a transformers Llama holding our backbone's
weights, give the logits of our adapted backbone (skipped only when peft is absent)."""

from __future__ import annotations

import json

import pytest
import torch

peft = pytest.importorskip("peft")

from transformers import LlamaConfig as HFLlamaConfig  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from ttt_plugin_lora.export import export_run, hf_llama_state_dict, write_adapters  # noqa: E402


def hf_llama(backbone) -> LlamaForCausalLM:
    c = backbone.config
    config = HFLlamaConfig(
        vocab_size=backbone.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim, num_hidden_layers=c.layers,
        num_attention_heads=c.heads, num_key_value_heads=c.heads, rms_norm_eps=c.norm_eps, tie_word_embeddings=False,
        max_position_embeddings=64, rope_theta=c.rope_theta,
    )
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(hf_llama_state_dict(backbone), strict=False)
    assert not unexpected and all("rotary" in name for name in missing), (missing, unexpected)
    return model


def test_peft_loads_the_adapters_and_gives_our_logits(kit, tmp_path):
    backbone = kit.tiny_backbone()
    learner = kit.make_learner(backbone, targets=["q", "k", "v", "o", "gate", "up", "down"], layers=[1], alpha=3.0)
    ids = kit.segment([[1, 2, 3, 4, 5, 6], [9, 10, 11, 4, 2, 8]]).ids
    hf = hf_llama(backbone)
    with torch.no_grad():
        plain = backbone(backbone.embed(ids)).logits
        assert torch.allclose(hf(input_ids=ids).logits, plain, atol=1e-5)  # the weights map onto transformers'
    torch.manual_seed(3)
    state = {k: v + 0.3 * torch.randn(v.shape) for k, v in learner.init_state(2).items()}  # an "adapted" state
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        ours = learner(state, ids, mask)
    directory = write_adapters(learner, state, tmp_path / "example", example=1)
    config = json.loads((directory / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["layers_to_transform"]) == (2, 3.0, [1])
    adapted = peft.PeftModel.from_pretrained(hf, str(directory)).eval()
    with torch.no_grad():
        theirs = adapted(input_ids=ids[1:]).logits[0]
    assert (theirs - plain[1]).abs().max() > 1e-2  # the adapters do something
    assert torch.allclose(theirs, ours[1], atol=1e-5)


RECIPE = """
description = "lora export test"
[task]
name = "associative_retrieval"
dataset = "N1-K4V4-S1_16-32_1M"
[backbone]
name = "llama"
layers = 1
dim = 16
heads = 2
[memory.learner]
name = "lora"
targets = ["v", "down"]
rank = 2
[memory.writer]
name = "identity"
[recurrence]
name = "single"
[inner]
steps = 1
[optimizer]
name = "adamw"
[train]
steps = 1
batch_size = 2
eval_every = 1
checkpoint_every = 1
[eval]
samples = 2
val_samples = 2
batch_size = 2
"""


def test_export_of_a_run_writes_initial_and_adapted_adapters(tmp_path):
    """`ttt-lora-export RUN OUT` on a one-step run: two adapter directories; the example's adapters
    moved away from the initial ones (the inner loop ran), and peft loads both."""
    from ttt_core.run import run_command

    recipe = tmp_path / "lora.toml"
    recipe.write_text(RECIPE)
    assert run_command(str(recipe), out=str(tmp_path / "run"), overrides=[], nproc=None, quiet=True) == 0
    initial, example = export_run(tmp_path / "run", tmp_path / "adapters", index=1)
    assert (initial.name, example.name) == ("initial", "test_1")
    from safetensors.torch import load_file

    start, adapted = load_file(str(initial / "adapter_model.safetensors")), load_file(str(example / "adapter_model.safetensors"))
    assert start.keys() == adapted.keys() == {
        f"base_model.model.model.layers.0.{module}.lora_{factor}.weight"
        for module in ("self_attn.v_proj", "mlp.down_proj") for factor in "AB"}
    assert any((start[k] - adapted[k]).abs().max() > 0 for k in start)
    for directory in (initial, example):
        from ttt_core.train.evaluate import load_run

        backbone = load_run(tmp_path / "run").built.model.backbone
        peft.PeftModel.from_pretrained(hf_llama(backbone), str(directory))
