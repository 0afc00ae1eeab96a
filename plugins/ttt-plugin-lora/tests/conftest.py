"""Tiny models and hand-made episodes for the lora tests (ttt-core and this plugin only)."""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Sequence

import pytest

# Tiny tensors: intra-op threads only add synchronisation on a machine shared with other jobs.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from ttt_core.builtin.configs import LlamaConfig, SingleConfig  # noqa: E402
from ttt_core.builtin.llama import Llama  # noqa: E402
from ttt_core.builtin.single import SingleSegment  # noqa: E402
from ttt_core.builtin.writers import IdentityWriter  # noqa: E402
from ttt_core.config import InnerConfig  # noqa: E402
from ttt_core.episode import Episode  # noqa: E402
from ttt_core.model import MetaModel  # noqa: E402
from ttt_core.testing import padded_segment  # noqa: E402

from ttt_plugin_lora.lora import LoRA  # noqa: E402
from ttt_plugin_lora.lora_config import LoRAConfig  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB = 12
DIM = 16
Rows = Sequence[Sequence[int]]


def tiny_backbone(seed: int = 0, layers: int = 2) -> Llama:
    """2 layers, width 16, weights larger than the GPT-2 init so that every path's influence on the
    output is far above float rounding."""
    torch.manual_seed(seed)
    backbone = Llama(LlamaConfig(layers=layers, dim=DIM, heads=2, mlp_ratio=2.0), VOCAB)
    with torch.no_grad():
        for weight in backbone.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3)
    return backbone


def make_learner(backbone: torch.nn.Module | None = None, **options: object) -> LoRA:
    options = {"targets": ["q", "v", "o", "up", "down"], "rank": 2, "alpha": 2.0, "init_std": 0.3, **options}
    backbone = tiny_backbone() if backbone is None else backbone
    return LoRA(LoRAConfig(**options), backbone=backbone, writer=IdentityWriter(None, dim=backbone.dim))


@pytest.fixture
def make_model() -> Callable[..., MetaModel]:
    """`make_model(grad_mode=..., steps=..., layers=..., **lora options)`: a tiny single-segment model, seeded."""

    def make(grad_mode: str = "second", steps: int = 2, layers: int = 2, **options: object) -> MetaModel:
        learner = make_learner(tiny_backbone(layers=layers), **options)
        inner = InnerConfig(steps=steps, lr=0.5, grad_mode=grad_mode, clip_norm=5.0)
        return MetaModel(learner.backbone, learner, learner.writer, SingleSegment(SingleConfig()), inner)

    return make


segment = padded_segment


CONTEXT = [[1, 2, 3, 4, 5, 6], [9, 10, 11], [2, 4, 6, 8, 10]]
QUERY = [[3, 1], [5, 9, 2], [4]]
TARGET = [[4, 5], [6, 7], [8, 1]]


def make_episode(rows: Sequence[int] = (0, 1, 2), pad_width: int = 0) -> Episode:
    """One context segment, a query and a 2-token answer for the chosen rows of the table above."""
    context = segment([CONTEXT[r] for r in rows], pad_width)
    return Episode(segments=(context,), context=context, query=segment([QUERY[r] for r in rows]),
                   target=segment([TARGET[r] for r in rows]))


@pytest.fixture
def episode() -> Episode:
    return make_episode()


@pytest.fixture
def kit() -> types.SimpleNamespace:
    """The helpers above (a conftest is not importable by name under --import-mode=importlib)."""
    return types.SimpleNamespace(VOCAB=VOCAB, tiny_backbone=tiny_backbone, make_learner=make_learner, segment=segment,
                                 make_episode=make_episode)
