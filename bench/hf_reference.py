"""The deck's own model, GradMemGPT, written with Hugging Face transformers: the speed reference
`bench/train_throughput.py` times ours against, side by side.

`deck` (the reference of the tables, issue 22): GPT-NeoX with vocabulary 128, width 128, 4 layers,
4 heads, a 128-wide GELU MLP, rotary embeddings on a quarter of each head (`rotary_pct` 0.25),
attention and MLP in parallel off the same input (`use_parallel_residual`), eager attention (double
backward works through it), no attention mask (right padding with pad id 0: causal attention never
lets a real position see the padding after it); 8 memory-token embeddings prefixed through
`inputs_embeds`; K = 2 inner SGD steps at a fixed lr 1.0 on the context's next-token loss, each
example's memory gradient clipped to norm 1.0, `torch.autograd.grad(create_graph=True)` (second
order); then `[memory; query]`, the answer loss, the outer backward and AdamW at 1e-4. 432,384
parameters (431,360 in the LM, 1,024 in the memory). The model is called as a black box each time:
what one writes without a framework.

`neox4d`: the reference of the earlier sessions' tables (intermediate 512, sequential residual, an
attention mask, a learned inner lr, clip 2.0, AdamW 1e-3); `bench/speed_ceiling.py` keeps it so that
its recorded numbers stay reproducible.

Needs `pip install transformers` (a bench-only dependency, not one of ttt-core's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_core.episode import Episode, answer_logits_inputs, answer_loss, gather_answer_logits

PRESETS: dict[str, dict] = {
    "deck": dict(vocab_size=128, intermediate=128, rotary_pct=0.25, parallel_residual=True, attention_mask=False,
                 learn_lr=False, clip_norm=1.0, lr=1e-4),
    "neox4d": dict(vocab_size=None, intermediate=512, rotary_pct=0.25, parallel_residual=True, attention_mask=True,
                   learn_lr=True, clip_norm=2.0, lr=1e-3),
}
"""`neox4d` is what the earlier reference built: transformers' GPT-NeoX defaults (rotary_pct 0.25,
parallel residual) with `intermediate_size = 4 * dim` and the task's vocabulary."""


class HFMemoryTokens(nn.Module):
    """GPT-NeoX LM + meta-learned memory tokens + inner SGD on the memory."""

    def __init__(self, vocab_size: int, *, layers: int = 4, heads: int = 4, dim: int = 128, intermediate: int = 128,
                 rotary_pct: float = 0.25, parallel_residual: bool = True, attention_mask: bool = False,
                 tokens: int = 8, inner_steps: int = 2, inner_lr: float = 1.0, learn_lr: bool = False,
                 clip_norm: float | None = 1.0, grad_mode: str = "second") -> None:
        super().__init__()
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=intermediate, rotary_pct=rotary_pct, use_parallel_residual=parallel_residual,
            max_position_embeddings=512, attn_implementation="eager",
        )
        self.lm = GPTNeoXForCausalLM(config)
        self.tokens = tokens
        self.memory = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        log_lr = torch.tensor([math.log(inner_lr)])
        if learn_lr:
            self.log_lr = nn.Parameter(log_lr)
        else:
            self.register_buffer("log_lr", log_lr)
        self.attention_mask = attention_mask
        self.inner_steps, self.clip_norm, self.grad_mode = inner_steps, clip_norm, grad_mode

    def _logits(self, memory: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        embeds = torch.cat([memory, self.lm.get_input_embeddings()(ids)], dim=1)
        if not self.attention_mask:  # right padding: causal attention alone keeps real positions off it
            return self.lm(inputs_embeds=embeds).logits
        full_mask = torch.cat([mask.new_ones(mask.shape[0], self.tokens), mask], dim=1).long()
        return self.lm(inputs_embeds=embeds, attention_mask=full_mask).logits

    def inner_loss(self, memory: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Per-example mean next-token loss of the context; the last memory token predicts ids[0]."""
        logits = self._logits(memory, ids, mask)[:, self.tokens - 1 : -1]
        losses = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        weights = mask.float()
        return (losses * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, episode: Episode) -> Tensor:
        """Outer loss of one batch."""
        context = episode.context
        memory = self.memory.unsqueeze(0).expand(episode.batch_size, -1, -1)
        second = self.training and self.grad_mode == "second"
        for _ in range(self.inner_steps):
            loss = self.inner_loss(memory, context.ids, context.mask)
            (grad,) = torch.autograd.grad(loss.sum(), memory, create_graph=second)
            if not second:
                grad = grad.detach()
            if self.clip_norm is not None:
                norm = grad.flatten(1).norm(dim=1)
                grad = grad * (self.clip_norm / (norm + 1e-6)).clamp(max=1.0)[:, None, None]
            memory = memory - self.log_lr.exp() * grad
        ids, mask, positions = answer_logits_inputs(episode)
        logits = self._logits(memory, ids, mask)[:, self.tokens :]
        return answer_loss(gather_answer_logits(logits, positions), episode.target)


def build_hf(vocab_size: int, grad_mode: str, preset: str = "deck") -> tuple[HFMemoryTokens, torch.optim.Optimizer]:
    """The `preset` reference model and its AdamW; `vocab_size` is the task's (the deck's own 128
    when the preset fixes it: the task's ids must fit)."""
    options = dict(PRESETS[preset])
    vocab, lr = options.pop("vocab_size") or vocab_size, options.pop("lr")
    if vocab < vocab_size:
        raise ValueError(f"the task's vocabulary ({vocab_size}) does not fit the {preset} model's ({vocab})")
    model = HFMemoryTokens(vocab, grad_mode=grad_mode, **options)
    return model, torch.optim.AdamW(model.parameters(), lr=lr)
