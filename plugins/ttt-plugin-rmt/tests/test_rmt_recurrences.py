"""rmt and rmt4 on hand-made episodes: truncation, carried memory, padding, chunks, no adaptation on the query."""

from __future__ import annotations

import pytest
import torch
from ttt_core.builtin.configs import SingleConfig
from ttt_core.builtin.single import SingleSegment
from ttt_core.episode import Segment, answer_loss

from ttt_plugin_rmt.rmt import RMT
from ttt_plugin_rmt.rmt4 import RMT4
from ttt_plugin_rmt.rmt_config import RMT4Config, RMTConfig
from ttt_plugin_rmt.segmenting import chunks

SCHEMES = ("rmt", "rmt4")


def recurrence(scheme: str, **options):
    """A factory `backbone -> recurrence` for `make_model`."""
    if scheme == "rmt":
        return lambda backbone: RMT(RMTConfig(memory_tokens=3, init_std=0.5, **options), backbone=backbone)
    return lambda backbone: RMT4(RMT4Config(**options))


def initial_memory(model, scheme: str) -> torch.Tensor:
    """The learned initial memory: rmt's own, or the memory-token learner's for rmt4."""
    return model.recurrence.memory if scheme == "rmt" else model.learner.memory


def record_embeddings(backbone) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Make every `backbone.embed` call return a fresh leaf, recorded with the ids it embedded."""
    records, embed = [], backbone.embed

    def recorded(ids):
        out = embed(ids).detach().requires_grad_()
        records.append((ids, out))
        return out

    backbone.embed = recorded
    return records


def count_adapt_calls(model) -> list[Segment]:
    seen, adapt = [], model.adapt

    def counted(state, segment):
        seen.append(segment)
        return adapt(state, segment)

    model.adapt = counted
    return seen


# --- truncated backpropagation -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    "k2, reached",  # whether the query loss reaches (initial memory, segment 0, segment 1); S = 3
    [(1, (False, False, True)), (2, (False, True, True)), (3, (True, True, True)), (None, (True, True, True))],
)
def test_k2_stops_the_gradient_exactly_there(make_model, episode, scheme, k2, reached) -> None:
    model = make_model(recurrence(scheme, k2=k2), grad_mode="second")
    records = record_embeddings(model.backbone)
    answer_loss(model(episode).logits, episode.target).backward()

    def segment_grad(index: int) -> float:
        ids = episode.segments[index].ids
        leaves = [e for i, e in records if i is ids]
        assert leaves, f"segment {index} was never embedded"
        return sum(float(e.grad.abs().sum()) for e in leaves if e.grad is not None)

    init = initial_memory(model, scheme).grad
    init_grad = 0.0 if init is None else float(init.abs().sum())
    assert (init_grad > 0, segment_grad(0) > 0, segment_grad(1) > 0) == reached


# --- memory carried, query only read -----------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_first_segment_reaches_the_query_through_memory(make_model, episode_of, scheme) -> None:
    model = make_model(recurrence(scheme))
    query, target = [[3, 1], [5, 9, 2]], [[4, 5], [6, 7]]
    last = [[6, 7, 8], [2, 4, 6, 8]]
    a = model(episode_of([[[1, 2, 3, 4], [9, 10]], last], query, target)).logits
    b = model(episode_of([[[4, 3, 2, 1], [11, 1]], last], query, target)).logits
    # every row's answer depends on its first segment: memory was not reset at the second one
    assert (a - b).abs().flatten(1).amax(1).min() > 1e-4


def test_rmt4_adapts_on_each_context_segment_and_never_on_the_query(make_model, episode) -> None:
    model = make_model(recurrence("rmt4"))
    seen = count_adapt_calls(model)
    out = model(episode)
    assert seen == list(episode.segments)
    assert out.stats["inner_loss"].shape == (2,)  # K steps, averaged over segments
    assert out.stats["segment_inner_loss"].shape == (2,)  # one per context segment
    assert out.logits.shape == (2, 2, 12)


def test_rmt_runs_no_inner_loop(make_model, episode) -> None:
    model = make_model(recurrence("rmt"))
    seen = count_adapt_calls(model)
    assert model(episode).logits.shape == (2, 2, 12) and seen == []


def test_rmt4_with_task_segments_is_the_single_recurrence_walking_segments(make_model, episode) -> None:
    rmt4 = make_model(recurrence("rmt4"))(episode).logits
    single = make_model(lambda backbone: SingleSegment(SingleConfig(split="segments")))(episode).logits
    torch.testing.assert_close(rmt4, single, rtol=0, atol=1e-6)


def test_rmt_write_equals_each_row_run_alone(make_model, episode) -> None:
    model = make_model(recurrence("rmt"))
    backbone, rmt = model.backbone, model.recurrence
    memory = rmt.initial_memory(2) + torch.randn(2, 3, 16)  # rows with different memories
    segment = episode.segments[0]
    written = rmt.write(backbone, memory, segment)
    for row in range(2):
        ids = segment.ids[row, : int(segment.lengths[row])]
        alone = torch.cat([memory[row], backbone.embed(ids), memory[row]])[None]
        expected = backbone(alone, return_hidden=True).hidden_states[-1][0, -3:]
        torch.testing.assert_close(written[row], expected, rtol=0, atol=1e-5)


# --- padding and chunks ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("segmenting", ["task", "chunks"])
def test_padding_changes_nothing(make_model, episode_of, scheme, segmenting) -> None:
    model = make_model(recurrence(scheme, segmenting=segmenting, chunk_size=3))
    rows = dict(segments=[[[1, 2, 3, 4, 5], [6, 7]], [[9, 10, 11], [2, 4, 6, 8, 10]]], query=[[3, 1], [5, 9, 2]], target=[[4, 5], [6, 7]])
    plain = model(episode_of(**rows)).logits
    padded = model(episode_of(**rows, pad_width=5)).logits
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_chunks_a_row_does_not_depend_on_longer_rows(make_model, episode_of, scheme) -> None:
    """The short row has empty chunks in the batch: its memory must pass them unchanged."""
    model = make_model(recurrence(scheme, segmenting="chunks", chunk_size=3))
    short = dict(segments=[[[1, 2, 3, 4]]], query=[[3, 1]], target=[[4, 5]])
    batch = dict(segments=[[[1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11, 1, 2, 3]]], query=[[3, 1], [5, 9]], target=[[4, 5], [6, 7]])
    alone = model(episode_of(**short)).logits
    together = model(episode_of(**batch)).logits
    torch.testing.assert_close(together[:1], alone, rtol=0, atol=1e-5)


def test_chunks_cover_the_context_in_order() -> None:
    context = Segment.from_lists([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]])
    parts = chunks(context, 3)
    assert [p.ids.shape[1] for p in parts] == [3, 3, 1]
    for row in range(2):
        tokens = [int(t) for p in parts for t in p.ids[row][p.mask[row]]]
        assert tokens == context.ids[row][context.mask[row]].tolist()
    assert [bool(p.mask[1].any()) for p in parts] == [True, False, False]
    assert chunks(Segment.from_lists([[], []]), 3) == ()
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        chunks(context, 0)


def test_chunks_mode_cuts_at_chunk_size(make_model, episode) -> None:
    model = make_model(recurrence("rmt4", segmenting="chunks", chunk_size=4))
    seen = count_adapt_calls(model)
    model(episode)
    assert [s.ids.shape[1] for s in seen] == [4, 4, 1]  # longest context row: 3 + 6 = 9 tokens
