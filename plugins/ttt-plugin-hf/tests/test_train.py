"""The hf backbone in the framework: tiny models of each family train with memory tokens and rmt4,
the second-order gradient against finite differences, and a run exported and loaded back."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from ttt_core.build import build
from ttt_core.builtin.configs import MemoryTokensConfig, SingleConfig
from ttt_core.builtin.memory_tokens import MemoryTokens
from ttt_core.builtin.single import SingleSegment
from ttt_core.builtin.writers import IdentityWriter
from ttt_core.config import InnerConfig
from ttt_core.episode import Episode, answer_loss
from ttt_core.model import MetaModel
from ttt_core.objective import step_loss
from ttt_core.recipe import load_recipe
from ttt_core.testing import assert_gradients_match_finite_differences, padded_segment

from ttt_plugin_hf.backbone import HFBackbone, build_hf
from ttt_plugin_hf.config import HFConfig

HAS_RMT = importlib.util.find_spec("ttt_plugin_rmt") is not None
HAS_LORA = importlib.util.find_spec("ttt_plugin_lora") is not None


def recipe_text(path, recurrence: str = "single", learner: str = 'name = "memory_tokens"\ntokens = 2',
                dataset: str = "N1-K4V4-S1_16-32_1M") -> str:
    return f"""
description = "hf test"
[task]
name = "associative_retrieval"
dataset = "{dataset}"
[backbone]
name = "hf"
path = "{path}"
[memory.learner]
{learner}
[memory.writer]
name = "identity"
[recurrence]
name = "{recurrence}"
[inner]
steps = 1
grad_mode = "second"
clip_norm = 2.0
[optimizer]
name = "adamw"
lr = 1e-2
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


def train_steps(tmp_path, text: str, steps: int = 2) -> list[float]:
    """Build the recipe and take `steps` outer steps; the backbone's weights must move."""
    (tmp_path / "r.toml").write_text(text)
    built = build(load_recipe(tmp_path / "r.toml"))
    backbone = built.model.backbone
    assert isinstance(backbone, HFBackbone)
    before = [p.detach().clone() for p in backbone.parameters()]
    losses = []
    for step in range(steps):
        loss, _ = step_loss(built.model, built.task.train_batch(step, 2))
        loss.backward()
        built.optimizer.step(step)
        built.model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses), losses
    assert all(not torch.equal(a, b) for a, b in zip(before, backbone.parameters()))
    return losses


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2"])
def test_memory_tokens_train_second_order(tiny_dirs, tmp_path, model_type):
    train_steps(tmp_path, recipe_text(tiny_dirs[model_type]))


@pytest.mark.skipif(not HAS_RMT, reason="rmt4 is ttt-plugin-rmt's")
@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2"])
def test_rmt4_trains(tiny_dirs, tmp_path, model_type):
    train_steps(tmp_path, recipe_text(tiny_dirs[model_type], "rmt4", dataset="N2-K4V4-S2_16-32_1M"))


@pytest.mark.skipif(not HAS_RMT, reason="rmt is ttt-plugin-rmt's")
def test_rmt_trains_on_the_last_blocks_output(tiny_dirs, tmp_path):
    """rmt carries the last block's raw output (`return_hidden`) as the next segment's memory."""
    text = recipe_text(tiny_dirs["gpt_neox"], "rmt", dataset="N2-K4V4-S2_16-32_1M")
    text = text.replace('[memory.learner]\nname = "memory_tokens"\ntokens = 2\n[memory.writer]\nname = "identity"\n', "")
    train_steps(tmp_path, text.replace('name = "rmt"', 'name = "rmt"\nmemory_tokens = 2'))


@pytest.mark.skipif(not HAS_LORA, reason="lora is ttt-plugin-lora's")
@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "gpt2"])
def test_lora_memory_trains(tiny_dirs, tmp_path, model_type):
    """Per-example weight deltas: q, v (rows of gpt_neox's and gpt2's fused wqkv) and down."""
    learner = 'name = "lora"\ntargets = ["q", "v", "down"]\nrank = 2'
    train_steps(tmp_path, recipe_text(tiny_dirs[model_type], learner=learner), steps=1)


@pytest.mark.parametrize("model_type, eps, rtol", [("gpt2", 1e-6, 1e-6), ("gpt_neox", 1e-4, 1e-3)])
def test_second_order_gradient_matches_finite_differences(tiny_dirs, model_type, eps, rtol):
    """Two second-order inner steps on memory tokens in float64: the outer gradient of the memory's
    initial value and of backbone weights (inside the inner loop's gradient too, so through the eager
    attention's double backward) against central differences. GPT-2's eager attention runs in the
    input's precision and meets the core's tight check; GPT-NeoX's (like Llama's) takes its softmax
    in float32, whose rounding limits differences to about 1e-4 (first order misses by ~0.1 here)."""
    backbone = build_hf(HFConfig(path=str(tiny_dirs[model_type])), vocab_size=12).double()
    learner = MemoryTokens(MemoryTokensConfig(tokens=2, init_std=0.3), backbone=backbone,
                           writer=IdentityWriter(None, dim=backbone.dim)).double()
    inner = InnerConfig(steps=2, lr=0.5, grad_mode="second", learn_lr="none")
    model = MetaModel(backbone, learner, learner.writer, SingleSegment(SingleConfig()), inner).double()
    context = padded_segment([[1, 2, 3, 4, 5], [6, 7, 8]], pad_width=1)
    episode = Episode(segments=(context,), context=context, query=padded_segment([[3, 1], [5]]),
                      target=padded_segment([[4, 5], [6, 7]]))
    layer = backbone.layers[1]
    qkv, down = {"gpt2": ("attn.c_attn", "mlp.c_proj"), "gpt_neox": ("attention.query_key_value", "mlp.dense_4h_to_h")}[model_type]
    params = [learner.memory, layer.get_submodule(qkv).weight, layer.get_submodule(down).bias]
    assert_gradients_match_finite_differences(lambda: answer_loss(model(episode).logits, episode.target), params,
                                              eps=eps, rtol=rtol)


def test_a_run_exports_and_loads_in_plain_transformers(tiny_dirs, tmp_path):
    """`ttt-hf-export RUN`: the run's trained backbone, saved with save_pretrained, gives the run's
    logits in plain transformers and loads back as an hf backbone."""
    from ttt_core.run import run_command
    from ttt_core.train.evaluate import load_run

    from ttt_plugin_hf.export import main

    (tmp_path / "r.toml").write_text(recipe_text(tiny_dirs["gpt_neox"]))
    assert run_command(str(tmp_path / "r.toml"), out=str(tmp_path / "run"), overrides=[], quiet=True) == 0
    assert main([str(tmp_path / "run")]) == 0
    trained = load_run(tmp_path / "run").built.model.backbone.eval()
    original = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["gpt_neox"]))
    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "hf")).eval()
    assert exported.config.vocab_size == trained.vocab_size == 70  # the task's characters
    ids = torch.tensor([[5, 9, 30, 2, 41]])
    with torch.no_grad():
        ours = trained(trained.embed(ids)).logits
        assert torch.allclose(exported(input_ids=ids).logits, ours, atol=1e-6)
        again = build_hf(HFConfig(path=str(tmp_path / "run" / "hf")), vocab_size=70).eval()
        assert torch.allclose(again(again.embed(ids)).logits, ours, atol=1e-6)
    moved = exported.get_submodule("gpt_neox.layers.0.attention.dense").weight
    assert not torch.equal(moved, original.get_submodule("gpt_neox.layers.0.attention.dense").weight)


def test_compiled_step_equals_eager(tiny_dirs, tmp_path):
    """`[train] compile`: the functional step traced by dynamo (the attention switch and the hooks
    included), second order, gives eager's loss and gradients; backend "aot_eager" skips inductor's
    C++ build (~5 s of tracing on one core)."""
    from ttt_core.train.functional import FunctionalStep

    (tmp_path / "r.toml").write_text(recipe_text(tiny_dirs["gpt_neox"]))
    eager, traced = (build(load_recipe(tmp_path / "r.toml")) for _ in range(2))
    episode = eager.task.train_batch(0, 2)
    loss, _ = step_loss(eager.model, episode)
    loss.backward()
    torch.compiler.reset()  # dynamo keeps 8 compiled steps per process
    f_loss, _ = FunctionalStep(traced.model, compile=True, backend="aot_eager")(episode)
    assert torch.allclose(f_loss, loss.detach(), rtol=1e-6)
    named = dict(traced.model.named_parameters())
    for name, param in eager.model.named_parameters():
        # float32 rounding of two different op orders: relative to each gradient (the inner rate's is ~1e-4)
        assert (named[name].grad - param.grad).abs().max() <= 1e-4 * param.grad.abs().max().clamp_min(1e-30), name
