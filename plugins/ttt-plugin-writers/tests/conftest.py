"""Tiny models and hand-made episodes for the writer tests (ttt-core and this plugin only)."""

from __future__ import annotations

import os
import types
from collections.abc import Sequence

import pytest

# Tiny tensors: intra-op threads only add synchronisation on a machine shared with other jobs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from ttt_core.builtin.configs import LlamaConfig, MemoryTokensConfig, SingleConfig  # noqa: E402
from ttt_core.builtin.llama import Llama  # noqa: E402
from ttt_core.builtin.memory_tokens import MemoryTokens  # noqa: E402
from ttt_core.builtin.single import SingleSegment  # noqa: E402
from ttt_core.config import InnerConfig  # noqa: E402
from ttt_core.episode import Episode  # noqa: E402
from ttt_core.model import MetaModel  # noqa: E402
from ttt_core.testing import padded_segment  # noqa: E402

from ttt_plugin_writers.cross_attention import CrossAttentionWriter  # noqa: E402
from ttt_plugin_writers.mlp import MLPWriter  # noqa: E402
from ttt_plugin_writers.writer_config import CrossAttentionConfig, MLPWriterConfig  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB = 12
DIM = 16
WRITERS = {
    "cross_attention": lambda **o: CrossAttentionWriter(CrossAttentionConfig(heads=2, init_out_std=0.3, **o), dim=DIM),
    "mlp": lambda **o: MLPWriter(MLPWriterConfig(hidden=8, init_out_std=0.3, **o), dim=DIM),
}
Rows = Sequence[Sequence[int]]


def make_model(writer: str = "cross_attention", grad_mode: str = "second", steps: int = 2, recurrence=None,
               **options: object) -> MetaModel:
    """A 1-layer width-16 llama with 3 memory tokens and the named writer, seeded; weights larger than
    the GPT-2 init so that every path's influence is far above rounding."""
    torch.manual_seed(0)
    backbone = Llama(LlamaConfig(layers=1, dim=DIM, heads=2, mlp_ratio=2.0), VOCAB)
    with torch.no_grad():
        for weight in backbone.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3)
    built = WRITERS[writer](**options)
    learner = MemoryTokens(MemoryTokensConfig(tokens=3, init_std=0.5), backbone=backbone, writer=built)
    inner = InnerConfig(steps=steps, lr=0.5, grad_mode=grad_mode, clip_norm=5.0, learn_lr="per_group")
    return MetaModel(backbone, learner, built, recurrence or SingleSegment(SingleConfig()), inner)


segment = padded_segment


CONTEXT = [[1, 2, 3, 4, 5, 6], [9, 10, 11], [2, 4, 6, 8, 10]]
QUERY = [[3, 1], [5, 9, 2], [4]]
TARGET = [[4, 5], [6, 7], [8, 1]]


def make_episode(rows: Sequence[int] = (0, 1, 2), pad_width: int = 0) -> Episode:
    """One context segment (also split in two for recurrences), a query and a 2-token answer."""
    context = segment([CONTEXT[r] for r in rows], pad_width)
    halves = (segment([CONTEXT[r][:2] for r in rows], pad_width), segment([CONTEXT[r][2:] for r in rows], pad_width))
    return Episode(segments=halves, context=context, query=segment([QUERY[r] for r in rows]),
                   target=segment([TARGET[r] for r in rows]))


@pytest.fixture
def kit() -> types.SimpleNamespace:
    """The helpers above (a conftest is not importable by name under --import-mode=importlib)."""
    return types.SimpleNamespace(make_model=make_model, make_episode=make_episode, segment=segment, WRITERS=WRITERS)
