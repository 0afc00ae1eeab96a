"""The components this plugin registers with ttt-core (imported only when one is built).

- backbone `ttt_lm`: `TTTLMBackbone`, the paper's LM behind the core's `Backbone` contract;
- inner learners `ttt_linear` / `ttt_mlp`: `TTTMemory`, a TTT layer's inner model used as the
  fast-weight memory of the core's meta-learning loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from ttt_core.episode import Segment
from ttt_core.interfaces import Backbone, BackboneOutput, InnerLearner, State

from ttt_plugin_layers.config import TTTLMConfig, TTTMemoryConfig
from ttt_plugin_layers.functional import layer_norm
from ttt_plugin_layers.inner import INNER
from ttt_plugin_layers.model import TTTModel


class TTTLMBackbone(nn.Module, Backbone):
    """`TTTModel` behind the `Backbone` contract: embeddings in, logits out, blocks as `layers`; with
    per-example low-rank weight deltas on its linear maps (`WeightDeltas`, for LoRA memory)."""

    def __init__(self, config: TTTLMConfig, vocab_size: int) -> None:
        super().__init__()
        self.model = TTTModel(config.model_config(vocab_size))
        self.dim, self.n_layers, self.vocab_size = config.dim, config.layers, vocab_size

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.blocks

    def embed(self, ids: Tensor) -> Tensor:
        return self.model.embed(ids)

    def head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(self.model.norm(hidden))

    def forward(self, embeds: Tensor, mask: Tensor | None = None, return_hidden: bool = False) -> BackboneOutput:
        trunk = self.model.forward_embeddings(embeds, attention_mask=mask, return_hidden=return_hidden)
        return BackboneOutput(self.model.lm_head(trunk.hidden), trunk.hidden_states)

    def delta_targets(self) -> dict[str, tuple[int, int]]:
        """`WeightDeltas`: each block's linear maps by role, `"layers.{i}.{role}"` -> `(out, in)`: the TTT
        layer's q, k (absent in the mamba variant, whose k is a conv of q's projection), v, o projections
        and the SwiGLU's gate, up, down."""
        targets = {}
        for i, block in enumerate(self.model.blocks):
            for role, linear in self._linears(block).items():
                targets[f"layers.{i}.{role}"] = tuple(linear.weight.shape)
        return targets

    @staticmethod
    def _linears(block: nn.Module) -> dict[str, nn.Linear]:
        ttt, mlp = block.ttt, block.mlp
        linears = {"q": ttt.q_proj, "k": getattr(ttt, "k_proj", None), "v": ttt.v_proj, "o": ttt.o_proj,
                   "gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}
        return {role: linear for role, linear in linears.items() if linear is not None}

    def forward_with_deltas(self, embeds: Tensor, mask: Tensor | None, deltas: dict[str, tuple[Tensor, Tensor]],
                            return_hidden: bool = False) -> BackboneOutput:
        """`forward` with each named weight W replaced, for example b, by W + up[b] @ down[b]
        (`deltas[name] = (down [B, r, in], up [B, out, r])`, names from `delta_targets`)."""
        unknown = sorted(set(deltas) - set(self.delta_targets()))
        if unknown:
            raise KeyError(f"no linear weight {unknown}; the ttt_lm backbone's are layers.<i>.<role> for roles "
                           "q, k (transformer variant), v, o, gate, up, down")
        per_block: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in self.model.blocks]
        for name, delta in deltas.items():
            _, layer, role = name.split(".")
            per_block[int(layer)][role] = delta
        trunk = self.model.forward_embeddings(embeds, attention_mask=mask, return_hidden=return_hidden, deltas=per_block)
        return BackboneOutput(self.model.lm_head(trunk.hidden), trunk.hidden_states)


class TTTMemory(nn.Module, InnerLearner):
    """A TTT layer's inner model (per head) as the memory of the core's inner loop.

    Write (`inner_loss`, minimised by the core's inner loop): the TTT reconstruction loss of the
    context tokens, `lr_j * 0.5*||LN(f(k_j)) - (v_j - k_j)||^2` with the learned per-token gate
    `lr_j = base_lr*sigmoid(x_j.w + b)/head_dim`, averaged over real tokens. Read (`forward`): each
    query token adds `o_proj(LN(q + LN(f(q))))` to its embedding before the backbone runs.
    """

    def __init__(self, config: TTTMemoryConfig, inner: str, *, backbone: nn.Module, writer: nn.Module) -> None:
        super().__init__()
        if list(writer.parameters()) or writer.init_state(1):
            raise ValueError(f"ttt_{inner} reads its memory through the TTT readout, not through a memory writer; "
                             "use the 'identity' writer")
        d, H = backbone.dim, config.heads
        if d % H:
            raise ValueError(f"backbone width {d} is not divisible by heads {H}")
        self.backbone, self.config, self.inner = backbone, config, INNER[inner]
        f = d // H
        hidden = f if inner == "linear" else config.mlp_expansion * f
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.lr_proj = nn.Linear(d, H)
        self.W1 = nn.Parameter(torch.randn(H, f, hidden) * config.init_std)
        self.b1 = nn.Parameter(torch.zeros(H, hidden))
        if inner == "mlp":
            self.W2 = nn.Parameter(torch.randn(H, hidden, f) * config.init_std)
            self.b2 = nn.Parameter(torch.zeros(H, f))
        self.ttt_norm_weight = nn.Parameter(torch.ones(H, f))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(H, f))
        self.post_norm = nn.LayerNorm(d, eps=1e-6)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.lr_proj):
            nn.init.normal_(lin.weight, 0.0, config.init_std)
        nn.init.zeros_(self.lr_proj.bias)

    def init_state(self, batch_size: int) -> State:
        state = {}
        for name in self.inner.names:
            p = getattr(self, name)
            p = p[:, None, :] if name.startswith("b") else p
            state[name] = p.expand(batch_size, *p.shape)
        return state

    def _heads(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        return x.view(B, T, self.config.heads, d // self.config.heads).transpose(1, 2)

    def _ln(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.ttt_norm_weight[:, None], self.ttt_norm_bias[:, None], self.config.ttt_norm_eps)

    def _embed(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Token embeddings, and their RMS-normalised copy the TTT layer sees (as in a block)."""
        x = self.backbone.embed(ids)
        return x, x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)

    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        _, x = self._embed(segment.ids)
        k, v = self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        per_token = 0.5 * (self._ln(self.inner.apply(state, k)) - (v - k)).square().sum(-1)  # [B, H, T]
        lr = self.config.base_lr * torch.sigmoid(self.lr_proj(x)).transpose(1, 2) / k.shape[-1]
        mask = segment.mask[:, None, :].to(per_token.dtype)
        return (lr * per_token * mask).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1.0)

    def read(self, state: State, x: Tensor) -> Tensor:
        """The memory's answer for every token of `x [B, T, d]`: `[B, T, d]`."""
        q = self._heads(self.q_proj(x))
        r = q + self._ln(self.inner.apply(state, q))
        return self.o_proj(self.post_norm(r.transpose(1, 2).flatten(2)))

    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        x, x_normed = self._embed(ids)
        return self.backbone(x + self.read(state, x_normed), mask).logits
