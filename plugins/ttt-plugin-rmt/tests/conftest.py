"""Tiny models and hand-made episodes for the rmt / rmt4 tests (ttt-core and this plugin only)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest

# Tiny tensors: intra-op threads only add synchronisation on a machine shared with other jobs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from ttt_core.builtin.configs import LlamaConfig, MemoryTokensConfig  # noqa: E402
from ttt_core.builtin.llama import Llama  # noqa: E402
from ttt_core.builtin.memory_tokens import MemoryTokens  # noqa: E402
from ttt_core.builtin.writers import IdentityWriter  # noqa: E402
from ttt_core.config import InnerConfig  # noqa: E402
from ttt_core.episode import Episode, Segment  # noqa: E402
from ttt_core.model import MetaModel  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB = 12
Rows = Sequence[Sequence[int]]


def make_episode(segments: Sequence[Rows], query: Rows, target: Rows, pad_width: int = 0) -> Episode:
    """An episode from per-segment rows of token ids (ids >= 1; 0 is padding).

    `pad_width` adds that many padding columns to every segment and to the context, with junk ids
    under the mask, so a test can check that padding changes nothing.
    """

    def pad(segment: Segment) -> Segment:
        if not pad_width:
            return segment
        b = segment.ids.shape[0]
        ids = torch.cat([segment.ids, torch.full((b, pad_width), 7)], dim=1)
        return Segment(ids, torch.cat([segment.mask, torch.zeros(b, pad_width, dtype=torch.bool)], dim=1))

    rows = len(query)
    context = [[t for seg in segments for t in seg[r]] for r in range(rows)]
    return Episode(
        segments=tuple(pad(Segment.from_lists(seg)) for seg in segments),
        context=pad(Segment.from_lists(context)),
        query=Segment.from_lists(query),
        target=Segment.from_lists(target),
    )


@pytest.fixture
def make_model() -> Callable[..., MetaModel]:
    """`make_model(recurrence_factory, grad_mode=..., steps=...)`: a 2-layer width-16 model, seeded."""

    def make(recurrence: Callable[[torch.nn.Module], torch.nn.Module], grad_mode: str = "second", steps: int = 2) -> MetaModel:
        torch.manual_seed(0)
        backbone = Llama(LlamaConfig(layers=2, dim=16, heads=2), VOCAB)
        with torch.no_grad():  # larger than the GPT-2 init, so that every path's influence is far above rounding
            for weight in backbone.parameters():
                if weight.dim() == 2:
                    weight.normal_(0.0, 0.3)
        writer = IdentityWriter(None, dim=16)
        learner = MemoryTokens(MemoryTokensConfig(tokens=3, init_std=0.5), backbone=backbone, writer=writer)
        inner = InnerConfig(steps=steps, lr=0.5, grad_mode=grad_mode, clip_norm=2.0)
        return MetaModel(backbone, learner, writer, recurrence(backbone), inner)

    return make


@pytest.fixture
def episode() -> Episode:
    """Two rows, two context segments of different lengths per row, a query and a 2-token answer."""
    return make_episode(
        segments=[[[1, 2, 3, 4, 5], [6, 7, 8]], [[9, 10, 11], [2, 4, 6, 8, 10, 1]]],
        query=[[3, 1], [5, 9, 2]],
        target=[[4, 5], [6, 7]],
    )


@pytest.fixture
def episode_of() -> Callable[..., Episode]:
    """`make_episode` for the test modules (they do not import conftest)."""
    return make_episode
