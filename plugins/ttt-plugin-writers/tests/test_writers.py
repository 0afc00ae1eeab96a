"""The writers: per-example fast weights, padding, read modes, second order, the compiled step."""

from __future__ import annotations

import pytest
import torch
from ttt_core.episode import answer_loss
from ttt_core.registry import Provider, ProviderRegistry, Registry
from ttt_core.testing import assert_gradients_match_finite_differences
from ttt_core.train.functional import FunctionalStep

WRITERS = ("cross_attention", "mlp")


def adapted(model, episode):
    state = model.init_state(episode.batch_size)
    state, _ = model.adapt(state, episode.context)
    return state


def assert_per_example(model, kit) -> None:
    """Adapting a batch gives each example the state (and the answer) it gets alone."""
    batch = kit.make_episode()
    together, logits = adapted(model, batch), model(batch).logits
    assert any(k.startswith("writer.") for k in together)
    for row in range(batch.batch_size):
        alone_episode = kit.make_episode(rows=(row,))
        alone = adapted(model, alone_episode)
        for key, value in alone.items():
            torch.testing.assert_close(together[key][row : row + 1], value, rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(logits[row : row + 1], model(alone_episode).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("writer", WRITERS)
def test_per_example_adaptation_equals_a_loop_over_examples(kit, writer):
    model = kit.make_model(writer).eval()
    assert_per_example(model, kit)
    state = adapted(model, kit.make_episode())
    fast = [v for k, v in state.items() if k.startswith("writer.")]
    assert all(not torch.allclose(v[0], v[1]) for v in fast)  # each example wrote its own weights


def test_fast_weights_shared_across_the_batch_fail_the_per_example_check(kit, monkeypatch):
    """The deck's NeuralMemory kept one copy of the writer per batch: the check above must catch it."""
    model = kit.make_model("cross_attention").eval()
    original = model.writer.forward

    def shared(state, memory, context, mask):
        state = {k: v.mean(0, keepdim=True).expand_as(v) for k, v in state.items()}
        return original(state, memory, context, mask)

    monkeypatch.setattr(model.writer, "forward", shared)
    with pytest.raises(AssertionError):
        assert_per_example(model, kit)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("read_context", [False, True])
def test_padding_changes_nothing(kit, writer, read_context):
    model = kit.make_model(writer, read_context=read_context)
    plain, padded = kit.make_episode(), kit.make_episode(pad_width=4)
    torch.testing.assert_close(model(plain).logits, model(padded).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("writer", WRITERS)
def test_read_context_decides_whether_the_read_sees_the_context(kit, writer):
    episode = kit.make_episode()
    other = kit.segment([[11, 10, 9, 8], [1, 1, 1], [3, 3, 5, 5, 6]])
    for read_context, differs in ((False, False), (True, True)):
        model = kit.make_model(writer, read_context=read_context).eval()
        state = adapted(model, episode)
        ids, mask = episode.query.ids, episode.query.mask
        same = torch.allclose(model.read(state, ids, mask, episode.context), model.read(state, ids, mask, other))
        assert same != differs, read_context


@pytest.mark.parametrize("writer", WRITERS)
def test_second_order_gradient_matches_finite_differences(kit, writer):
    """Outer gradient through two second-order inner steps vs central differences, in float64."""
    model = kit.make_model(writer).double()
    episode = kit.make_episode()
    fast = model.writer.memory_parameters()
    params = [fast[0], fast[-1], model.learner.memory, model.inner.log_lr]

    def loss() -> torch.Tensor:
        return answer_loss(model(episode).logits, episode.target)

    assert_gradients_match_finite_differences(loss, params)


@pytest.mark.parametrize("writer", WRITERS)
def test_rmt4_writes_segment_by_segment(kit, writer):
    """The writer's fast weights are carried from segment to segment like the memory tokens."""
    RMT4 = pytest.importorskip("ttt_plugin_rmt.rmt4").RMT4
    config = pytest.importorskip("ttt_plugin_rmt.rmt_config").RMT4Config(segmenting="task")
    model = kit.make_model(writer, recurrence=RMT4(config))
    episode = kit.make_episode()
    loss = answer_loss(model(episode).logits, episode.target)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.writer.memory_parameters())


@pytest.mark.parametrize("writer", WRITERS)
def test_compiled_step_equals_eager(kit, writer):
    """The training step traced by `torch.compile` (backend aot_eager: no C++ build) equals eager."""
    episode = kit.make_episode()
    eager, traced = kit.make_model(writer, steps=1), kit.make_model(writer, steps=1)
    loss = answer_loss(eager(episode).logits, episode.target)
    loss.backward()
    torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
    f_loss, _ = FunctionalStep(traced, compile=True, backend="aot_eager")(episode)
    torch.testing.assert_close(f_loss, loss.detach(), rtol=1e-6, atol=1e-6)
    named = dict(traced.named_parameters())
    for name, param in eager.named_parameters():
        if param.grad is None:
            continue
        grad = named[name].grad
        assert grad is not None, name
        assert (grad - param.grad).abs().max() <= 1e-5 * param.grad.abs().max().clamp_min(1e-30), name


def test_both_writers_are_registered_with_aliases_and_refuse_bad_options():
    from ttt_core.builtin import ttt_register_components as builtins
    from ttt_plugin_writers.plugin import ttt_register_components as writers
    from ttt_plugin_writers.writer_config import CrossAttentionConfig, MLPWriterConfig

    registry = Registry()
    builtins(ProviderRegistry(registry=registry, provider=Provider("builtin", "ttt-core", "0")))
    writers(ProviderRegistry(registry=registry, provider=Provider("writers", "ttt-plugin-writers", "0")))
    assert registry["memory_writer"].get("neural_memory").name == "cross_attention"
    assert registry["memory_writer"].get("memory_mlp").name == "mlp"
    with pytest.raises(ValueError, match="distinct names"):
        CrossAttentionConfig(fast=("q", "x"))
    with pytest.raises(ValueError):
        MLPWriterConfig(activation="swish")


def test_memory_parameters_are_the_fast_weights_initial_values(kit):
    model = kit.make_model("cross_attention", fast=("k", "v"), rounds=1)
    assert [p.shape for p in model.writer.memory_parameters()] == [(16, 16), (16, 16)]
    groups = model.param_groups()
    memory_ids = {id(p) for p in groups["memory"]}
    assert all(id(p) in memory_ids for p in model.writer.memory_parameters())
    assert id(model.writer.rounds[0].qkv) in {id(p) for p in groups["meta"]}
    assert set(model.init_state(2)) == {"memory", "writer.k", "writer.v"}
