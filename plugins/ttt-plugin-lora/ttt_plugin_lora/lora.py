"""The `lora` inner learner: low-rank adapters on the backbone's linear maps as per-example fast weights.

For each adapted role (q, k, v, o, gate, up, down) the state holds ``A [B, L, r, in]`` and
``B [B, L, out, r]`` (L chosen layers), copies of the meta-learned initial value. The inner loop adapts
them on the context's next-token loss through the backbone with ``W + (alpha / r) B[b] A[b]`` in place
of each adapted weight (the backbone's `WeightDeltas`: one einsum pair per adapted weight, for the whole
batch); the query is then read through the same adapted backbone.

Roles are located in the backbone's `delta_targets` by name: a backbone that names its weights by
role (``layers.<i>.q``, as ``ttt_lm`` does) gets the adapter on that weight; LLaMA's fused weights
(``wqkv`` = [q; k; v], ``w_gate_up`` = [gate; up]) get it on their rows for the role, as a delta on
the fused weight whose other rows are zero. Several roles of one fused weight stack their ranks
(``down = [A_q; A_v]``, ``up`` block-diagonal), which is exactly the sum of their deltas.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from ttt_core.builtin.memory_tokens import WRITER, writer_state
from ttt_core.episode import Segment
from ttt_core.errors import TTTError
from ttt_core.interfaces import InnerLearner, State
from ttt_core.model import lm_loss_per_example

from ttt_plugin_lora.lora_config import LoRAConfig

FUSED: dict[str, tuple[str, int, int]] = {
    "q": ("wqkv", 0, 3), "k": ("wqkv", 1, 3), "v": ("wqkv", 2, 3), "o": ("wo", 0, 1),
    "gate": ("w_gate_up", 0, 2), "up": ("w_gate_up", 1, 2), "down": ("w_down", 0, 1),
}
"""LLaMA's weights (`ttt_core.builtin.llama`): role -> (weight, which row block, how many blocks)."""

A_KEY, B_KEY = "lora_A.", "lora_B."


class Site(NamedTuple):
    """Where one role's adapter sits in one layer: rows ``part * out .. (part + 1) * out`` of the
    backbone's delta target ``weight`` (``parts`` blocks of ``out`` rows), input width ``inp``."""

    weight: str
    part: int
    parts: int
    out: int
    inp: int


def locate(targets: dict[str, tuple[int, int]], layer: int, role: str) -> Site:
    """The site of `role` in block `layer` among a backbone's `delta_targets`."""
    own = f"layers.{layer}.{role}"
    if own in targets:
        out, inp = targets[own]
        return Site(own, 0, 1, out, inp)
    fused, part, parts = FUSED[role]
    name = f"layers.{layer}.{fused}"
    if name in targets:
        out, inp = targets[name]
        return Site(name, part, parts, out // parts, inp)
    known = ", ".join(sorted(t for t in targets if t.startswith(f"layers.{layer}."))) or "none"
    raise TTTError(f"[memory.learner] lora: the backbone has no weight for role '{role}' in layer {layer} "
                   f"(its weights there: {known})")


class LoRA(nn.Module, InnerLearner):
    """Low-rank adapters per example, adapted on the context's next-token loss (with optional memory
    tokens prefixed, adapted alongside and passed through the writer as `memory_tokens` does)."""

    def __init__(self, config: LoRAConfig, *, backbone: nn.Module, writer: nn.Module) -> None:
        super().__init__()
        self.backbone, self.writer, self.config = backbone, writer, config
        self.tokens = config.tokens
        self.scale = config.alpha / config.rank
        if not self.tokens and (list(writer.parameters()) or writer.init_state(1)):
            raise TTTError("[memory.writer] the lora learner uses a writer only for its memory tokens; "
                           "with memory.learner.tokens = 0 use the 'identity' writer")
        layers = list(range(backbone.n_layers)) if config.layers is None else list(config.layers)
        if max(layers) >= backbone.n_layers:
            raise TTTError(f"[memory.learner] lora: layers {layers} reach past the backbone's {backbone.n_layers}")
        self.layers = layers
        targets = backbone.delta_targets()
        self.sites = {(layer, role): locate(targets, layer, role) for layer in layers for role in config.targets}
        first = {role: self.sites[layers[0], role] for role in config.targets}
        r, std = config.rank, config.init_std
        self.lora_A = nn.ParameterDict({
            role: nn.Parameter(torch.randn(len(layers), r, site.inp) * std) for role, site in first.items()})
        self.lora_B = nn.ParameterDict({
            role: nn.Parameter(torch.randn(len(layers), site.out, r) * std if config.init == "balanced"
                               else torch.zeros(len(layers), site.out, r))
            for role, site in first.items()})
        if self.tokens:
            self.memory = nn.Parameter(torch.randn(self.tokens, backbone.dim) * config.token_init_std)

    def init_state(self, batch_size: int) -> State:
        state: State = {}
        for role in self.config.targets:
            state[A_KEY + role] = self.lora_A[role].unsqueeze(0).expand(batch_size, -1, -1, -1)
            state[B_KEY + role] = self.lora_B[role].unsqueeze(0).expand(batch_size, -1, -1, -1)
        if self.tokens:
            state["memory"] = self.memory.unsqueeze(0).expand(batch_size, -1, -1)
            state.update({WRITER + k: v for k, v in self.writer.init_state(batch_size).items()})
        return state

    def fast_parameters(self) -> int:
        """Fast weights per example (the learner's own; a writer's are not counted)."""
        return sum(p.numel() for p in self.lora_A.values()) + sum(p.numel() for p in self.lora_B.values()) + (
            self.memory.numel() if self.tokens else 0)

    def adapters(self, state: State) -> dict[tuple[int, str], tuple[Tensor, Tensor]]:
        """(layer, role) -> (A ``[B, r, in]``, B ``[B, out, r]``) of `state`, unscaled (peft's layout)."""
        return {(layer, role): (state[A_KEY + role][:, j], state[B_KEY + role][:, j])
                for j, layer in enumerate(self.layers) for role in self.config.targets}

    def deltas(self, state: State) -> dict[str, tuple[Tensor, Tensor]]:
        """The backbone's `forward_with_deltas` argument: per adapted weight (down, up), the roles of a
        fused weight stacked along the rank with zero blocks elsewhere."""
        by_weight: dict[str, list[tuple[Site, Tensor, Tensor]]] = {}
        for (layer, role), (a, b) in self.adapters(state).items():
            site = self.sites[layer, role]
            by_weight.setdefault(site.weight, []).append((site, a, b * self.scale))
        deltas = {}
        for weight, entries in by_weight.items():
            down = torch.cat([a for _, a, _ in entries], dim=1) if len(entries) > 1 else entries[0][1]
            parts = entries[0][0].parts
            if parts == 1:
                deltas[weight] = (down, entries[0][2])
                continue
            blocks = []
            for part in range(parts):
                row_out = entries[0][0].out
                blocks.append(torch.cat([b if site.part == part else b.new_zeros(b.shape[0], row_out, b.shape[2])
                                         for site, _, b in entries], dim=2))
            deltas[weight] = (down, torch.cat(blocks, dim=1))
        return deltas

    def _logits(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None) -> Tensor:
        """Logits over ``[memory; ids]`` (no memory unless `tokens`) through the adapted backbone."""
        embeds = self.backbone.embed(ids)
        if self.tokens:
            context_emb = None if context is None else (embeds if ids is context.ids else self.backbone.embed(context.ids))
            memory = self.writer(writer_state(state), state["memory"], context_emb,
                                 None if context is None else context.mask)
            embeds = torch.cat([memory, embeds], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], self.tokens), mask], dim=1)
        return self.backbone.forward_with_deltas(embeds, mask, self.deltas(state)).logits

    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        logits = self._logits(state, segment.ids, segment.mask, segment)
        if self.tokens:  # the last memory position predicts the first token
            return lm_loss_per_example(logits[:, self.tokens - 1 : -1], segment.ids, segment.mask)
        return lm_loss_per_example(logits[:, :-1], segment.ids[:, 1:], segment.mask[:, 1:])

    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        """Logits where position t predicts ids[t + 1]."""
        return self._logits(state, ids, mask, context if self.writer.read_context else None)[:, self.tokens :]


def build_lora(config: LoRAConfig, *, backbone: nn.Module, writer: nn.Module, **_: object) -> LoRA:
    """Registry factory."""
    return LoRA(config, backbone=backbone, writer=writer)
