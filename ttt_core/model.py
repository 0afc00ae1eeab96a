"""The meta-learned model: backbone + inner learner + writer + recurrence + inner loop, and the outer loss."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_core.episode import Episode, Segment
from ttt_core.inner import InnerLoop, profiled
from ttt_core.interfaces import OwnsMemory, State

@dataclasses.dataclass(frozen=True)
class ReadOutput:
    """What a recurrence returns: answer logits ``[B, Tt, V]`` (aligned with ``episode.target``,
    see `ttt_core.episode.answer_logits_inputs`) and inner-loop statistics.

    A frozen dataclass, not attrs: dynamo cannot trace a frozen attrs ``__init__`` (it calls
    ``object.__setattr__.__get__``), and the compiled training step builds this inside its graph."""

    logits: Tensor
    stats: dict[str, Tensor] = dataclasses.field(default_factory=dict)


def lm_loss_per_example(logits: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Next-token loss ``[B]``: ``logits[:, t]`` predicts ``ids[:, t]`` (logits are pre-shifted).
    Computed in at least float32 (float64 stays float64, for gradient checks)."""
    losses = F.cross_entropy(logits.transpose(1, 2).to(torch.promote_types(logits.dtype, torch.float32)), ids, reduction="none")
    weights = mask.to(losses.dtype)
    return (losses * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def prefixed_logits(backbone: nn.Module, prefix: Tensor, embeds: Tensor, mask: Tensor) -> Tensor:
    """Logits over ``[prefix; embeds]`` ``[B, M + T, V]``: memory tokens read as always-real positions
    in front of the (right-padded) sequence."""
    full_mask = torch.cat([mask.new_ones(mask.shape[0], prefix.shape[1]), mask], dim=1)
    return backbone(torch.cat([prefix, embeds], dim=1), full_mask).logits


class MetaModel(nn.Module):
    """Everything the outer optimiser trains, and the adapt / read calls recurrences use.

    ``inner`` is the inner loop (`ttt_core.inner.InnerLoop`): the recipe's ``[inner]`` config, the
    grad-mode logic and the switch to `torch.func` gradients, with learned learning rates for the
    learner's state groups only. A model whose learner has no state (``none``: rmt, prmt4, LM
    backbones with their own TTT layers) therefore carries no inner-loop parameters; a recurrence
    that runs its own steps (PRMT4) owns its rates and runs them through ``inner.run``."""

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
        return self.inner(self.learner.inner_objective(segment), state)

    def read(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        with profiled("ttt.read"):
            return self.learner(state, ids, mask, context)

    def forward(self, episode: Episode) -> ReadOutput:
        return self.recurrence(self, episode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints from when rmt and prmt recipes built a memory learner they never ran: its
        # weights have no place in a model whose learner has none
        shared = {id(p) for p in self.backbone.parameters()} | {id(p) for p in self.writer.parameters()}
        if all(id(p) in shared for p in self.learner.parameters()):
            own = {prefix + "learner." + k for k in self.learner.state_dict()}
            for key in [k for k in state_dict if k.startswith(prefix + "learner.") and k not in own]:
                del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """backbone / memory (the initial fast weights every component reports: learner, writer,
        recurrence) / meta (inner learning rates, the recurrence's other parameters, anything else)."""
        backbone = list(self.backbone.parameters())
        taken = {id(p) for p in backbone}
        writer_own = {id(p) for p in self.writer.parameters()}
        memory: list[nn.Parameter] = []
        for component, default, exclude in (
            (self.learner, self.learner.parameters, taken | writer_own),  # it holds both
            (self.writer, self.writer.parameters, taken),
            (self.recurrence, lambda: [], taken),
        ):
            reported = component.memory_parameters() if isinstance(component, OwnsMemory) else default()
            for p in reported:
                if id(p) not in exclude and id(p) not in {id(q) for q in memory}:
                    memory.append(p)
        taken |= {id(p) for p in memory}
        meta: list[nn.Parameter] = []
        for p in [*self.inner.parameters(), *self.recurrence.parameters(), *self.parameters()]:
            if id(p) not in taken:
                meta.append(p)
                taken.add(id(p))
        groups = {"backbone": backbone, "memory": memory, "meta": meta}
        return {name: params for name, params in groups.items() if params}
