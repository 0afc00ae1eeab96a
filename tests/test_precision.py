"""`[train] precision = "bf16"`: the step runs its matmuls in bfloat16 and still computes the fp32
step's gradients up to bfloat16 rounding, eagerly and through the functional (compiled) step."""

import json
from pathlib import Path

import pytest
import torch

from ttt_core.errors import RecipeError
from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.train.functional import FunctionalStep
from ttt_core.objective import autocast, step_loss
from ttt_core.train.trainer import Trainer

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")


def gradients(precision: str, functional: bool, overrides: list[str]) -> tuple[float, dict[str, torch.Tensor]]:
    built = build(load_recipe(TINY, overrides))
    episode = built.task.train_batch(0, 8)
    if functional:
        with autocast(precision, "cpu"):
            torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
            loss, _ = FunctionalStep(built.model, compile=True, backend="aot_eager")(episode)
    else:
        loss, _ = step_loss(built.model, episode, precision=precision)
        loss.backward()
    return float(loss.detach()), {name: p.grad for name, p in built.model.named_parameters()}


@pytest.mark.parametrize(
    "mode, functional", [("second", False), ("first", False), ("second", True)], ids=["second", "first", "compiled"]
)
def test_bf16_gradients_match_fp32_up_to_rounding(mode, functional):
    overrides = [f"inner.grad_mode='{mode}'", "backbone.layers=1"]
    loss32, grads32 = gradients("fp32", False, overrides)
    loss16, grads16 = gradients("bf16", functional, overrides)
    assert loss16 != loss32  # bfloat16 really ran: fp32 would agree to ~1e-7
    assert loss16 == pytest.approx(loss32, rel=1e-3)
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == torch.float32, name  # the optimizer sees float32 gradients
        cosine = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
        assert cosine > 0.999, (name, float(cosine))


def test_bf16_matmuls_run_in_bfloat16():
    built = build(load_recipe(TINY, ["backbone.layers=1"]))
    dtypes = []
    hook = built.model.backbone.lm_head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    step_loss(built.model, built.task.train_batch(0, 4), precision="bf16")
    step_loss(built.model, built.task.train_batch(0, 4))
    hook.remove()
    assert dtypes[0] == torch.bfloat16 and dtypes[-1] == torch.float32


def test_bf16_training_lowers_the_loss(tmp_path):
    recipe = load_recipe(TINY, ["train.precision='bf16'", "train.steps=30", "train.eval_every=30",
                                "eval.samples=16", "eval.val_samples=16"])
    Trainer(recipe, tmp_path, quiet=True).run()
    records = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    losses = [json.loads(r)["loss"] for r in records]
    assert losses[-1] < losses[0]


def test_unknown_precision_is_refused():
    with pytest.raises(RecipeError, match="precision"):
        load_recipe(TINY, ["train.precision='fp16'"])
