"""The meta-learned model: backbone + inner learner + writer + inner loop, and the outer loss."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from ttt_core.episode import Episode, Segment
from ttt_core.inner import InnerLoop
from ttt_core.interfaces import State

@dataclasses.dataclass(frozen=True)
class ReadOutput:
    """What a recurrence returns: answer logits ``[B, Tt, V]`` (aligned with ``episode.target``,
    see `ttt_core.episode.answer_logits_inputs`) and inner-loop statistics.

    A frozen dataclass, not attrs: dynamo cannot trace a frozen attrs ``__init__`` (it calls
    ``object.__setattr__.__get__``), and the compiled training step builds this inside its graph."""

    logits: Tensor
    stats: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def lm_loss_per_example(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Next-token loss ``[B]``: ``logits[:, t]`` predicts ``ids[:, t]`` (logits are pre-shifted)."""
    losses = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")
    weights = mask.to(losses.dtype)
    return (losses * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def prefixed_logits(backbone: nn.Module, prefix: Tensor, embeds: Tensor, mask: Tensor) -> Tensor:
    """Logits over ``[prefix; embeds]`` ``[B, M + T, V]``: memory tokens read as always-real positions
    in front of the (right-padded) sequence."""
    full_mask = torch.cat([mask.new_ones(mask.shape[0], prefix.shape[1]), mask], dim=1)
    return backbone(torch.cat([prefix, embeds], dim=1), full_mask).logits


class MetaModel(nn.Module):
    """Everything the outer optimiser trains, and the adapt / read calls recurrences use."""

    def __init__(self, backbone: nn.Module, learner: nn.Module, writer: nn.Module, recurrence: nn.Module, inner_config) -> None:
        super().__init__()
        self.backbone = backbone
        self.learner = learner
        self.writer = writer
        self.recurrence = recurrence
        self.inner = InnerLoop(inner_config, groups=list(learner.init_state(1)))

    def init_state(self, batch_size: int) -> State:
        return self.learner.init_state(batch_size)

    def adapt(self, state: State, segment: Segment) -> tuple[State, dict[str, Tensor]]:
        if not state:  # a learner without fast weights (`none`): nothing to adapt
            return state, {}
        return self.inner(lambda s: self.learner.inner_loss(s, segment), state)

    def read(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        with record_function("ttt.read"):  # a named range in torch.profiler traces; ~free otherwise
            return self.learner(state, ids, mask, context)

    def forward(self, episode: Episode) -> ReadOutput:
        return self.recurrence(self, episode)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """backbone / memory (initial fast weights: learner and writer) / meta (inner lrs, recurrence)."""
        groups = {
            "backbone": list(self.backbone.parameters()),
            "memory": [*self.learner_own_parameters(), *self.writer.parameters()],
            "meta": [*self.inner.parameters(), *self.recurrence.parameters()],
        }
        return {name: params for name, params in groups.items() if params}

    def learner_own_parameters(self) -> list[nn.Parameter]:
        """The learner's parameters that are not the backbone's or the writer's (it holds both)."""
        shared = {id(p) for p in self.backbone.parameters()} | {id(p) for p in self.writer.parameters()}
        return [p for p in self.learner.parameters() if id(p) not in shared]
