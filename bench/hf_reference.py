"""A straightforward Hugging Face transformers implementation of the baseline TTT model, for speed
comparison only: `bench/train_throughput.py` times it side by side with ours.

GPT-NeoX 4L/4H/128 (intermediate 512, eager attention so double backward works), 8 memory-token
embeddings prefixed through `inputs_embeds`, K inner SGD steps (learned scalar learning rate,
per-example clip by norm as in the baseline recipe) on the context's next-token loss with
`torch.autograd.grad(create_graph=...)` on the memory, then `[memory; query]` and the answer loss.
This is what one writes without a framework: the model is called as a black box each time.

Needs `pip install transformers` (a bench-only dependency, not one of ttt-core's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttt_core.episode import Episode, answer_logits_inputs, answer_loss, gather_answer_logits


class HFMemoryTokens(nn.Module):
    """GPT-NeoX LM + meta-learned memory tokens + inner SGD on the memory."""

    def __init__(self, vocab_size: int, *, layers: int = 4, heads: int = 4, dim: int = 128, tokens: int = 8,
                 inner_steps: int = 2, inner_lr: float = 1.0, clip_norm: float | None = 2.0,
                 grad_mode: str = "second") -> None:
        super().__init__()
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * dim, max_position_embeddings=512, attn_implementation="eager",
        )
        self.lm = GPTNeoXForCausalLM(config)
        self.tokens = tokens
        self.memory = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.log_lr = nn.Parameter(torch.tensor([math.log(inner_lr)]))
        self.inner_steps, self.clip_norm, self.grad_mode = inner_steps, clip_norm, grad_mode

    def _logits(self, memory: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        embeds = torch.cat([memory, self.lm.get_input_embeddings()(ids)], dim=1)
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


def build_hf(vocab_size: int, grad_mode: str, lr: float = 1e-3) -> tuple[HFMemoryTokens, torch.optim.Optimizer]:
    model = HFMemoryTokens(vocab_size, grad_mode=grad_mode)
    return model, torch.optim.AdamW(model.parameters(), lr=lr)
