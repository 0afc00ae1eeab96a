"""Learner `none` with `read_context`: the read is the backbone on [context; query] per example, the
context's padding squeezed out, so each row's answer equals its own unpadded sequence's."""

from __future__ import annotations

import pytest
import torch

from ttt_core.builtin.configs import IdentityWriterConfig, LlamaConfig, NoMemoryConfig
from ttt_core.builtin.llama import Llama
from ttt_core.builtin.no_memory import NoMemory
from ttt_core.builtin.writers import IdentityWriter
from ttt_core.episode import Segment, join_context


def learner(read_context: bool) -> NoMemory:
    torch.manual_seed(0)
    backbone = Llama(LlamaConfig(layers=2, dim=16, heads=2), vocab_size=13).double()
    return NoMemory(NoMemoryConfig(read_context=read_context), backbone=backbone,
                    writer=IdentityWriter(IdentityWriterConfig(), dim=16))


CONTEXTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
QUERIES = [[1, 2], [2, 1, 3], [4]]


def test_join_context_squeezes_the_context_padding() -> None:
    context, query = Segment.from_lists(CONTEXTS), Segment.from_lists(QUERIES)
    ids, mask, index = join_context(context, query.ids, query.mask)
    for b, (c, q) in enumerate(zip(CONTEXTS, QUERIES)):
        assert ids[b][mask[b]].tolist() == c + q
        assert ids[b, index[b, : len(q)]].tolist() == q
    assert not mask[:, -1].all()  # right-padded: the widest row ends in its own tokens or padding


def test_each_row_reads_as_its_own_unpadded_sequence() -> None:
    model = learner(read_context=True)
    context, query = Segment.from_lists(CONTEXTS), Segment.from_lists(QUERIES)
    logits = model({}, query.ids, query.mask, context=context)
    assert logits.shape[:2] == query.ids.shape
    for b, (c, q) in enumerate(zip(CONTEXTS, QUERIES)):
        alone = torch.tensor([c + q])
        expected = model.backbone(model.backbone.embed(alone), torch.ones_like(alone, dtype=torch.bool)).logits
        torch.testing.assert_close(logits[b, : len(q)], expected[0, len(c):])


def test_the_context_reaches_the_answer_only_when_read() -> None:
    query = Segment.from_lists(QUERIES)
    one, other = Segment.from_lists(CONTEXTS), Segment.from_lists([[12, 11, 10, 9, 8], [7, 6], [5, 4, 3]])
    blind, reading = learner(read_context=False), learner(read_context=True)
    torch.testing.assert_close(blind({}, query.ids, query.mask, context=one), blind({}, query.ids, query.mask, context=other))
    assert not torch.allclose(reading({}, query.ids, query.mask, context=one), reading({}, query.ids, query.mask, context=other))


def test_read_context_without_a_context_is_one_clear_error() -> None:
    query = Segment.from_lists(QUERIES)
    with pytest.raises(ValueError, match="read_context"):
        learner(read_context=True)({}, query.ids, query.mask)
