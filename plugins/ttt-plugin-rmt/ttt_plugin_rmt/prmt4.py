"""PRMT4: layer-wise (parallel) RMT with test-time training, run along diagonals.

Every backbone layer l owns M memory tokens. The context segments s = 0..S-1 and the query (s = S)
make a grid of cells (l, s); cell (l, s) does

    reference   y = layer_l([mem_{l,s-1}; h_{l-1,s}]),   h_{l,s} = y at the segment's positions
    adapt       K inner steps on  MSE(layer_l([m; G_l[:T]]) at the segment's positions, h_{l,s}) / MS(h_{l,s})
                                  + w_l * ||m - mem_{l,s-1}||^2,    m starting at mem_{l,s-1}
                -> mem_{l,s}                                         (not on the query)

and the head reads h_{L-1,S}. With `lm_inner_weight` w, the inner loss of each of the top
`lm_inner_layers` layers (default: the top layer alone) also gets w * the segment's next-token loss
of head(layer_l([m; h_{l-1,s}])), the shared head on that layer's own output: a write keyed by
content whose target is the next character.

The MSE is divided by the (detached) mean square of the target, per example: hidden states are
~0.02 at init, so a plain MSE gives inner gradients ~1e-4 and a memory that an inner learning rate of
1 never moves; the relative error makes the learning rate scale-free.

`G_l` are learned "global" tokens: token i stands in for position i of
any segment, so the memory (the only thing that differs between segments) must hold what the layer
needs to reproduce the segment's outputs. Attention is causal, so position i of the reconstruction
sees only m and G_l[0..i]: truncating G_l to the segment's width is exact, and padded positions (of
shorter rows) are left out of the MSE.

Cell (l, s) needs only (l-1, s) (its input) and (l, s-1) (its memory), so all cells on an
anti-diagonal l + s = t are independent. The diagonal schedule runs each of them in one batched
call (the backbone's `LayerBlocks` over stacked layer weights, segments right-padded to a common width, the inner
loop batched over cells too): L + S waves for L x (S + 1) cells. The sequential schedule runs the
cells one by one with each layer's own weights; it is the reference the diagonal one must match.

PRMT4 uses neither a memory learner nor a writer (it registers with `slots=()`: it owns its per-layer
memory). Each batch of cells runs its inner steps through the core loop (`model.inner.run`): PRMT4
supplies the loss and the state; [inner] gives steps, rule, grad_mode / truncate, clip_value /
clip_norm, outer_weight and the initial inner learning rate (learned per layer, and per step when
learn_lr has a step axis).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_core.config import InnerConfig
from ttt_core.errors import TTTError
from ttt_core.episode import Episode, answer_logits_inputs, gather_answer_logits
from ttt_core.inner import LR_AXES, InnerLoss, InnerStats, RateAxes, register_log_lr
from ttt_core.interfaces import LayerBlocks, Recurrence, State, missing_capability
from ttt_core.model import MetaModel, ReadOutput
from ttt_plugin_rmt.prmt4_config import PRMT4Config

Cell = tuple[int, int]  # (layer, segment); segment == number of context segments is the query


def diagonal_waves(layers: int, segments: int) -> list[list[Cell]]:
    """Cells grouped by l + s, layers ascending within a wave; `segments` counts the query too."""
    return [
        [(layer, t - layer) for layer in range(max(0, t - segments + 1), min(layers - 1, t) + 1)]
        for t in range(layers + segments - 1)
    ]


def sequential_cells(layers: int, segments: int) -> list[list[Cell]]:
    """One cell per call: every layer of segment 0, then of segment 1, ... (the reference order)."""
    return [[(layer, s)] for s in range(segments) for layer in range(layers)]


def _pad_time(x: Tensor, width: int) -> Tensor:
    """Right-pad dim 1 (time) of `[B, T]` or `[B, T, d]` to `width` with zeros / False."""
    pad = width - x.shape[1]
    if pad == 0:
        return x
    return F.pad(x, (0, 0, 0, pad)) if x.dim() == 3 else F.pad(x, (0, pad), value=False)


class PRMT4(nn.Module, Recurrence):
    """Per-layer memory adapted by reconstruction, cells run along diagonals (or one by one)."""

    def __init__(self, config: PRMT4Config, *, backbone: nn.Module, inner: InnerConfig, **context: object) -> None:
        super().__init__()
        lacking = missing_capability(backbone, "layer_blocks")
        if lacking is not None:
            raise TTTError(
                f"recurrence 'prmt4' runs the llama backbone's blocks (capability layer_blocks); backbone "
                f"{type(backbone).__name__} lacks it: {lacking}"
            )
        if config.lm_inner_layers > backbone.n_layers:
            raise TTTError(
                f"prmt4: lm_inner_layers = {config.lm_inner_layers} is more than the backbone's {backbone.n_layers} layers"
            )
        if inner.stability:
            raise TTTError(
                "recurrence 'prmt4' learns its own per-layer stability weight: set [recurrence] stability, "
                "not [inner] stability"
            )
        self.config = config
        layers, tokens, dim = backbone.n_layers, config.memory_tokens, backbone.dim
        self.memory = nn.Parameter(torch.randn(layers, tokens, dim) * config.init_std)
        self.global_tokens = nn.Parameter(torch.randn(layers, config.global_tokens, dim) * config.init_std)
        # per-layer (and per-step, if the recipe asks) inner learning rates, positive through exp
        steps = max(inner.steps, 1) if "step" in LR_AXES[inner.learn_lr] else 1
        self.rate_axes = RateAxes({"layer": layers, "step": steps})
        register_log_lr(self, inner, self.rate_axes)
        self.log_stability = nn.Parameter(torch.full((layers,), math.log(config.stability)))
        if config.token_lr:  # gate of each position's error; sigmoid(3) = 0.95 at init
            self.token_lr_weight = nn.Parameter(torch.zeros(layers, dim))
            self.token_lr_bias = nn.Parameter(torch.full((layers,), 3.0))

    def memory_parameters(self) -> list[nn.Parameter]:
        """The initial per-layer memory (the optimiser's "memory" group); the global tokens, rates and
        weights are meta-parameters."""
        return [self.memory]

    # --- one call: a group of cells (one wave, or a single cell) ---------------------------------

    def _layer_params(self, model: MetaModel, layers: range, stacked: dict[str, Tensor] | None) -> dict[str, Tensor]:
        """Block weights of `layers` with a leading cell dim: slices of the stacked weights (diagonal)
        or the one layer's own weights (sequential)."""
        if stacked is not None:
            return {name: w[layers.start : layers.stop] for name, w in stacked.items()}
        (layer,) = layers
        return model.backbone.layer_params(layer)

    def _run_cells(
        self,
        model: MetaModel,
        cells: list[Cell],
        params: dict[str, Tensor],
        hidden: list[Tensor],
        masks: list[Tensor],
        ids: list[Tensor],
        memory: list[Tensor],
        query: int,
        stats: InnerStats,
    ) -> None:
        """Reference pass of every cell, then the inner loop of the context cells, in place on
        `hidden` (per segment: the latest layer's output) and `memory` (per layer: the latest)."""
        tokens = self.config.memory_tokens
        widths = [hidden[s].shape[1] for _, s in cells]
        width = max(widths)
        inputs = torch.stack([_pad_time(hidden[s], width) for _, s in cells])
        real = torch.stack([_pad_time(masks[s], width) for _, s in cells])  # [C, B, W]
        # no key mask: memory comes first and padding last, so under causal attention a real position
        # never sees a padded one (padded positions hold finite garbage that nothing real reads)
        blocks: LayerBlocks = model.backbone
        y = blocks.block_forward_prefixed(
            params, torch.stack([memory[l] for l, _ in cells]), blocks.project(params, inputs, tokens)
        )
        for c, (_, s) in enumerate(cells):
            hidden[s] = y[c, :, : widths[c]]
        adapt = [c for c, (_, s) in enumerate(cells) if s != query]
        if not adapt or model.inner.config.steps == 0:
            return
        a = slice(adapt[0], adapt[-1] + 1)  # the query cell, if any, is the first: the rest is contiguous
        layers = range(cells[adapt[0]][0], cells[adapt[-1]][0] + 1)
        w = max(widths[a])  # the query may be wider than the context segments (and the global tokens)
        lm_ids = None  # the segments of the cells with a next-token inner loss: the last ones (layers ascend)
        first_lm_layer = model.backbone.n_layers - self.config.lm_inner_layers
        lm_cells = [c for c in adapt if cells[c][0] >= first_lm_layer] if self.config.lm_inner_weight else []
        if lm_cells:
            lm_ids = torch.stack([F.pad(ids[cells[c][1]], (0, w - widths[c])) for c in lm_cells])
        adapted = self._adapt(
            model, layers, {k: p[a] for k, p in params.items()}, memory, inputs[a, :, :w], y[a, :, :w], real[a, :, :w],
            lm_ids, stats,
        )
        for layer, m in zip(layers, adapted.unbind(0)):
            memory[layer] = m

    def _adapt(
        self,
        model: MetaModel,
        layers: range,
        params: dict[str, Tensor],
        memory: list[Tensor],
        inputs: Tensor,
        target: Tensor,
        real: Tensor,
        lm_ids: Tensor | None,
        stats: InnerStats,
    ) -> Tensor:
        """K inner steps for C cells at once: memory `[C, B, M, d]` reconstructing `target [C, B, W, d]`,
        the layers' outputs for `inputs [C, B, W, d]`; the last k cells also predict the next token of
        their segments `lm_ids [k, B, W]` when that is given (lm_inner_weight, lm_inner_layers).

        The state is a fresh stack of the previous memories, so its gradient excludes the path through
        the target (which was computed from the same previous memories)."""
        blocks: LayerBlocks = model.backbone
        cells, batch, width = real.shape
        anchor = torch.stack([memory[l] for l in layers])
        stand_in = self.global_tokens[layers.start : layers.stop, :width].unsqueeze(1)  # [C, 1, W, d]
        if self.config.reconstruct_from != "global":  # position i gets the input (or output) at i - 1
            before = inputs if self.config.reconstruct_from == "shifted" else target
            stand_in = stand_in + F.pad(before, (0, 0, 1, 0))[:, :, :width]
        # the stand-in's queries, keys and values are the same for every inner step (and, for the
        # global tokens alone, for every example)
        glob = blocks.project(params, stand_in, self.config.memory_tokens)
        stability = self.log_stability[layers.start : layers.stop].exp().view(cells, 1)
        weights = real.to(target.dtype)
        count = weights.sum(-1).clamp_min(1.0)
        # the target's mean square over real positions: the loss is the relative squared error, so the
        # inner learning rate does not depend on the hidden states' scale (~0.02 at init, grows later)
        scale = ((target.detach().pow(2).mean(-1) * weights).sum(-1) / count).clamp_min(1e-12)
        if self.config.token_lr:
            normed = target * torch.rsqrt(target.pow(2).mean(-1, keepdim=True) + blocks.norm_eps)
            gate = torch.einsum("cbwd,cd->cbw", normed, self.token_lr_weight[layers.start : layers.stop])
            weights = weights * torch.sigmoid(gate + self.token_lr_bias[layers.start : layers.stop].view(cells, 1, 1))
        if lm_ids is not None:
            k = lm_ids.shape[0]
            lm_params = {name: p[-k:] for name, p in params.items()}
            lm_inputs = blocks.project(lm_params, inputs[-k:], self.config.memory_tokens)
            pairs = real[-k:, :, 1:] & real[-k:, :, :-1]  # position i predicts the real token i + 1
            pair_count = pairs.sum(-1).clamp_min(1)

        def with_next_token_loss(memory: Tensor, loss: Tensor) -> Tensor:
            """`loss` plus the next-token term of the top k cells (after the stability term)."""
            out_lm = blocks.block_forward_prefixed(lm_params, memory[-k:], lm_inputs)
            nll = F.cross_entropy(
                blocks.head(out_lm[:, :, :-1]).flatten(0, 1).transpose(1, 2),
                lm_ids[:, :, 1:].flatten(0, 1), reduction="none",
            ).view_as(pairs)
            lm = (nll * pairs).sum(-1) / pair_count  # [k, B]
            return torch.cat([loss[:-k], loss[-k:] + self.config.lm_inner_weight * lm])

        def inner_loss(state: State) -> InnerLoss:
            out = blocks.block_forward_prefixed(params, state["memory"], glob)
            error = ((out - target).pow(2).mean(-1) * weights).sum(-1)
            mse = error / (count * scale)  # [C, B]: MSE / mean square of target
            if lm_ids is None:
                return InnerLoss(mse)
            return InnerLoss(mse, lambda loss: with_next_token_loss(state["memory"], loss))

        def rate(step: int, key: str) -> Tensor:
            return self.log_lr[self.rate_axes.index(layer=slice(layers.start, layers.stop), step=step)].exp().view(cells, 1, 1, 1)

        def keep_norm(state: Tensor, previous: Tensor) -> Tensor:  # the forward is blind to the scale
            return state * (previous.norm(dim=-1, keepdim=True) / state.norm(dim=-1, keepdim=True).clamp_min(1e-12))

        adapted = model.inner.run(
            inner_loss, {"memory": anchor}, rate, stats, anchor=stability, lead=2,
            after_update=keep_norm if self.config.keep_memory_norm else None,
        )
        return adapted["memory"]

    # --- the whole grid --------------------------------------------------------------------------

    def forward(self, model: MetaModel, episode: Episode) -> ReadOutput:
        backbone = model.backbone
        query_ids, query_mask, positions = answer_logits_inputs(episode)
        longest = max([0, *(s.ids.shape[1] for s in episode.segments)])
        if longest > self.config.global_tokens:
            raise TTTError(
                f"prmt4: a context segment of {longest} tokens is longer than [recurrence] global_tokens = "
                f"{self.config.global_tokens}"
            )
        batch, layers, query = episode.batch_size, backbone.n_layers, len(episode.segments)
        # the query is the last "segment" (no Segment built here: dynamo cannot construct the frozen class)
        ids = [*(s.ids for s in episode.segments), query_ids]
        masks = [*(s.mask for s in episode.segments), query_mask]
        hidden = [backbone.embed(x) for x in ids]
        memory = [self.memory[l].expand(batch, -1, -1) for l in range(layers)]
        diagonal = self.config.schedule == "diagonal"
        groups = (diagonal_waves if diagonal else sequential_cells)(layers, len(ids))
        stacked = backbone.stacked_layer_params() if diagonal else None
        stats = InnerStats(model.inner.config.steps)
        for cells in groups:
            params = self._layer_params(model, range(cells[0][0], cells[-1][0] + 1), stacked)
            self._run_cells(model, cells, params, hidden, masks, ids, memory, query, stats)
        logits = backbone.head(hidden[query])
        return ReadOutput(logits=gather_answer_logits(logits, positions), stats=stats.result(memory, outer="sum_over_steps"))
