"""The functional outer gradient (`[train] compile`) equals eager `loss.backward()`."""

import json
import os
from pathlib import Path

import pytest
import torch

from ttt_core.errors import RecipeError, TTTError
from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.train import backends
from ttt_core.train import functional as functional_module
from ttt_core.train.functional import FunctionalStep, pad_segment, parameter_slots
from ttt_core.objective import step_loss
from ttt_core.train.trainer import Trainer

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")


def eager_and_functional(overrides: list[str], compile: bool = False, backend: str | None = None):
    """The same model twice (same seed) and one batch: eager gradients, and a FunctionalStep."""
    eager, functional = build(load_recipe(TINY, overrides)), build(load_recipe(TINY, overrides))
    episode = eager.task.train_batch(0, 8)
    loss, out = step_loss(eager.model, episode)
    loss.backward()
    if compile:
        torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
    step = FunctionalStep(functional.model, compile=compile, backend=backend)
    f_loss, f_out = step(episode)
    return eager.model, functional.model, (loss, out), (f_loss, f_out)


@pytest.mark.parametrize(
    "overrides",
    [
        ["inner.grad_mode='second'"],
        ["inner.grad_mode='first'"],
        ["inner.grad_mode='truncated'", "inner.steps=3"],
        ["inner.grad_mode='second'", "inner.stability=0.1", "inner.outer_weight=0.5", "inner.learn_lr='per_step'"],
        ["inner.grad_mode='second'", "backbone.tie_embeddings=true", "inner.rule='momentum'"],
    ],
    ids=["second", "first", "truncated", "stability-outer-weight", "tied-momentum"],
)
def test_functional_gradients_equal_eager(overrides, assert_same_gradients):
    eager, functional, (loss, out), (f_loss, f_out) = eager_and_functional(overrides)
    assert torch.allclose(f_loss, loss.detach(), rtol=1e-6)
    assert torch.allclose(f_out.logits, out.logits.detach(), rtol=1e-5, atol=1e-6)
    assert set(f_out.stats) == {k for k in out.stats if k != "outer_term"}
    assert_same_gradients(eager, functional, tol=1e-5)
    # functional_call swapped every parameter back: the model still holds its own Parameters
    assert all(isinstance(p, torch.nn.Parameter) for p in functional.parameters())
    assert functional.learner.backbone is functional.backbone


def test_parameter_slots_swap_each_attribute_once_and_reach_tied_weights():
    model = build(load_recipe(TINY, ["backbone.tie_embeddings=true"])).model
    slots = parameter_slots(model)
    assert slots["backbone.lm_head.weight"] == "backbone.tok_embeddings.weight"  # tied: a second module
    assert not any(slot.startswith("learner.backbone.") for slot in slots)  # the same module, another path
    assert set(slots.values()) == set(dict(model.named_parameters()))


def test_padding_is_masked_out():
    built = build(load_recipe(TINY, []))
    episode = built.task.train_batch(0, 8)
    step = FunctionalStep(built.model)
    step.widths["context"] = episode.context.ids.shape[1] + 5
    padded = step.pad(episode)
    assert padded.context.ids.shape[1] == episode.context.ids.shape[1] + 5
    assert torch.equal(pad_segment(episode.context, 3).ids, episode.context.ids)  # never narrower
    loss, _ = step_loss(built.model, episode)
    padded_loss, _ = step_loss(built.model, padded)
    assert torch.allclose(padded_loss, loss, rtol=1e-6)


def test_compile_with_deepspeed_is_refused():
    with pytest.raises(RecipeError, match=r"\[train\] compile = true runs the single-process trainer only"):
        load_recipe(TINY, ["train.compile=true", "distributed.backend='deepspeed'"])


@pytest.mark.parametrize("mode", ["second", "first"])
def test_traced_step_equals_eager(mode, assert_same_gradients):
    """The whole step through `torch.compile` (dynamo + AOTAutograd, full graph, no graph break):
    backend "aot_eager" runs the traced graph without inductor's C++ codegen, which takes minutes."""
    eager, functional, (loss, _), (f_loss, _) = eager_and_functional(
        [f"inner.grad_mode='{mode}'", "backbone.layers=1"], compile=True, backend="aot_eager"
    )
    assert torch.allclose(f_loss, loss.detach(), rtol=1e-6)
    assert_same_gradients(eager, functional, tol=1e-5)


def trainer_losses(run_dir: Path, overrides: list[str]) -> list[dict]:
    Trainer(load_recipe(TINY, overrides), run_dir, quiet=True).run()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


COMMON = ["inner.grad_mode='second'", "backbone.layers=1", "train.steps=2", "train.log_every=1",
          "train.eval_every=2", "eval.samples=8", "eval.val_samples=8"]


def assert_same_records(eager: list[dict], compiled: list[dict]) -> None:
    assert [(r["step"], r["split"]) for r in compiled] == [(r["step"], r["split"]) for r in eager]
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_trainer_with_compile_trains_like_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(functional_module, "BACKEND", "aot_eager")
    eager = trainer_losses(tmp_path / "eager", COMMON)
    compiled = trainer_losses(tmp_path / "compiled", [*COMMON, "train.compile=true"])
    assert_same_records(eager, compiled)


def test_the_compiled_step_takes_its_widths_before_the_first_step(tmp_path, monkeypatch):
    """Each new padding width compiles the step again (minutes on a CPU): the widths of the first
    batches are taken before the first step, so a run compiles once, not once per wider batch."""
    monkeypatch.setattr(functional_module, "BACKEND", "aot_eager")
    torch.compiler.reset()
    trainer = Trainer(load_recipe(TINY, [*COMMON, "train.compile=true", "memory.learner.length_buckets=2"]),
                      tmp_path / "run", quiet=True)
    trainer.backend.start()
    widths = dict(trainer.backend.functional.widths)
    assert widths["context"] == max(trainer.task.train_batch(i, 8).context.ids.shape[1] for i in range(backends.SHAPE_SCAN))
    for step in range(3):
        trainer.backend.train_step(step)
    assert trainer.backend.functional.widths == widths


@pytest.mark.skipif(
    not os.environ.get("TTT_TEST_INDUCTOR"),
    reason="inductor builds C++ for every fused kernel of the step (a cold compile of the baseline "
    "model's first-order step took 46 s on a quiet 2-core CPU, many minutes under load): TTT_TEST_INDUCTOR=1",
)
def test_trainer_with_inductor_trains_like_eager(tmp_path):
    eager = trainer_losses(tmp_path / "eager", COMMON)
    compiled = trainer_losses(tmp_path / "compiled", [*COMMON, "train.compile=true"])
    assert_same_records(eager, compiled)


def test_untraceable_component_is_refused_with_a_clear_error(monkeypatch):
    """A component calling `torch.autograd.grad` itself cannot be traced: `[train] compile` says so."""
    built = build(load_recipe(TINY, []))
    recurrence = type(built.model.recurrence)
    forward = recurrence.forward

    def forward_with_autograd(self, model, episode):
        out = forward(self, model, episode)
        torch.autograd.grad(out.logits.sum(), model.backbone.tok_embeddings.weight, create_graph=True)
        return out

    monkeypatch.setattr(recurrence, "forward", forward_with_autograd)
    torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
    step = FunctionalStep(built.model, compile=True, backend="aot_eager")
    with pytest.raises(TTTError, match=r"cannot be traced .*autograd\.grad.*set train\.compile = false"):
        step(built.task.train_batch(0, 4))


def test_missing_cpp_compiler_is_refused_before_training(monkeypatch):
    """Inductor needs a C++ compiler on CPU: without one `[train] compile` stops at once, saying so."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    built = build(load_recipe(TINY, []))
    with pytest.raises(TTTError, match="inductor needs a C\\+\\+ compiler"):
        FunctionalStep(built.model, compile=True)
