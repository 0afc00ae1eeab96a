"""Two examples per row (`ttt_core.packing`, `[memory.learner] pack_pairs`) and length groups
(`length_buckets`): same results as the padded layout, first and second order, eager and through the
functional (compiled) step."""

from pathlib import Path

import pytest
import torch

from ttt_core.builtin.configs import LlamaConfig
from ttt_core.builtin.llama import Llama
from ttt_core.episode import Segment
from ttt_core.model import prefixed_logits
from ttt_core.packing import packed_prefixed_logits, plan_buckets, plan_pairs
from ttt_core.recipe import load_recipe
from ttt_core.build import build
from ttt_core.train.functional import FunctionalStep
from ttt_core.objective import step_loss

TINY = str(Path(__file__).parents[1] / "recipes" / "tiny" / "baseline_ar_tiny.toml")


def right_padded_mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("lengths", [[5, 1, 3, 4], [7, 2, 2, 6, 1]], ids=["even", "odd"])
def test_plan_places_every_real_position_once(lengths):
    prefix, mask = 2, right_padded_mask(lengths)
    b, t = mask.shape
    plan = plan_pairs(mask, prefix)
    rows, width = plan.mask.shape
    assert rows == (b + 1) // 2
    # longest with shortest: [7, 1], [6, 2], [2] -> 9 + 3 = 12 positions at most (prefix 2 each)
    assert width == max(sorted(lengths)[i] + sorted(lengths)[b - 1 - i] for i in range(b // 2)) + 2 * prefix
    real = torch.cat([torch.ones(b, prefix, dtype=torch.bool), mask], 1).view(-1)
    flat = torch.arange(b * (prefix + t))
    packed_at = plan.gather[plan.mask.view(-1)]
    assert sorted(packed_at.tolist()) == flat[real].tolist()  # each real position exactly once
    assert torch.equal(plan.gather[plan.scatter[real]], flat[real])  # scatter inverts gather
    example = flat[real] // (prefix + t)
    assert torch.equal(plan.segments.view(-1)[plan.scatter[real]], example)
    assert torch.equal(plan.positions.view(-1)[plan.scatter[real]], flat[real] % (prefix + t))
    assert (plan.segments[~plan.mask] == -1).all()


def test_plan_width_at_least_and_a_multiple():
    mask = right_padded_mask([5, 1, 3, 4])  # pairs (5, 1) and (4, 3) behind 2: 11 positions
    assert plan_pairs(mask, 2).mask.shape == (2, 11)
    assert plan_pairs(mask, 2, multiple=8).mask.shape == (2, 16)
    assert plan_pairs(mask, 2, min_width=20, multiple=8).mask.shape == (2, 24)
    assert plan_pairs(mask, 2, min_width=13).mask.shape == (2, 13)


def test_packed_logits_equal_padded():
    torch.manual_seed(0)
    backbone = Llama(LlamaConfig(layers=2, heads=2, dim=16), vocab_size=11)
    mask = right_padded_mask([6, 2, 5, 3, 1])
    embeds, prefix = torch.randn(5, 6, 16), torch.randn(5, 3, 16)
    padded = prefixed_logits(backbone, prefix, embeds, mask)
    packed = packed_prefixed_logits(backbone, prefix, embeds, plan_pairs(mask, 3, min_width=20))
    real = torch.cat([torch.ones(5, 3, dtype=torch.bool), mask], 1)
    assert torch.allclose(packed[real], padded[real], atol=1e-5)


def two_models(overrides: list[str], layout: str = "memory.learner.pack_pairs=true"):
    """The tiny baseline twice from one seed, the second with `layout` (`pack_pairs`), and an odd batch."""
    plain = build(load_recipe(TINY, overrides))
    packed = build(load_recipe(TINY, [*overrides, layout]))
    return plain, packed, plain.task.train_batch(0, 7)


BUCKETS = "memory.learner.length_buckets=3"


@pytest.mark.parametrize("grad_mode,layout", [("second", "pairs"), ("first", "pairs"), ("second", "buckets")])
def test_packed_training_step_equals_padded(grad_mode, layout, assert_same_gradients):
    plain, packed, episode = two_models([f"inner.grad_mode='{grad_mode}'"],
                                        BUCKETS if layout == "buckets" else "memory.learner.pack_pairs=true")
    losses = []
    for built in (plain, packed):
        loss, out = step_loss(built.model, episode)
        loss.backward()
        losses.append((loss.detach(), out.stats["inner_loss"].detach()))
    assert torch.allclose(losses[0][0], losses[1][0], rtol=1e-6)
    assert torch.allclose(losses[0][1], losses[1][1], rtol=1e-6)
    assert_same_gradients(plain.model, packed.model, tol=1e-5)


def test_functional_step_packs_at_a_width_that_only_grows(assert_same_gradients):
    plain, packed, episode = two_models(["inner.grad_mode='second'"])
    loss, _ = step_loss(plain.model, episode)
    loss.backward()
    torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
    step = FunctionalStep(packed.model, compile=True, backend="aot_eager")
    f_loss, _ = step(episode)
    assert torch.allclose(f_loss, loss.detach(), rtol=1e-6)
    assert_same_gradients(plain.model, packed.model, tol=1e-5)
    width = step.widths["context.packed"]
    assert width % 8 == 0 and width >= plan_pairs(episode.context.mask, packed.model.learner.tokens).mask.shape[1]
    narrow = Segment(episode.context.ids[:, :3], episode.context.mask[:, :3])
    assert step._pad_and_pack("context", narrow).packing.mask.shape[1] == width  # never narrower


def test_buckets_group_by_length():
    mask = right_padded_mask([5, 1, 3, 4, 2, 7, 6])
    plan = plan_buckets(mask, 3)
    assert plan.sizes == (3, 2, 2) and plan.widths == (7, 4, 2)  # [7, 6, 5], [4, 3], [2, 1]
    assert plan.order.tolist() == [5, 6, 0, 3, 2, 4, 1]
    assert torch.equal(plan.order[plan.inverse], torch.arange(7))
    assert plan_buckets(mask, 3, min_widths=(0, 5, 0), multiple=4).widths == (7, 7, 4)  # at most T = 7


def test_functional_step_with_buckets_equals_padded(assert_same_gradients):
    plain, packed, episode = two_models(["inner.grad_mode='second'"], BUCKETS)
    loss, _ = step_loss(plain.model, episode)
    loss.backward()
    torch.compiler.reset()
    step = FunctionalStep(packed.model, compile=True, backend="aot_eager")
    f_loss, _ = step(episode)
    assert torch.allclose(f_loss, loss.detach(), rtol=1e-6)
    assert_same_gradients(plain.model, packed.model, tol=1e-5)
    widths = step.widths["context.packed"]
    narrow = Segment(episode.context.ids[:, :3], episode.context.mask[:, :3])
    assert step._pad_and_pack("context", narrow).packing.widths == widths  # never narrower


def test_pairs_and_buckets_exclude_each_other():
    with pytest.raises(Exception, match="choose one"):
        build(load_recipe(TINY, ["memory.learner.pack_pairs=true", BUCKETS]))


def test_pack_pairs_is_off_by_default():
    built = build(load_recipe(TINY))
    context = built.task.train_batch(0, 4).context
    assert built.model.learner.pack(context) is context
