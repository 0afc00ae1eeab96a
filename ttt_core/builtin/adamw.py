"""AdamW over parameter groups, warmup then constant or cosine decay, gradient clipping."""

from __future__ import annotations

import math
from typing import Any

import torch

from ttt_core.builtin.configs import AdamWConfig
from ttt_core.interfaces import OuterOptimizer


def schedule_factor(step: int, config: AdamWConfig, total_steps: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class AdamW(OuterOptimizer):
    def __init__(self, config: AdamWConfig, *, model: torch.nn.Module, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        lrs = {"backbone": config.backbone_lr, "memory": config.memory_lr, "meta": config.meta_lr}
        groups = []
        for name, params in model.param_groups().items():
            lr = lrs.get(name) or config.lr
            if name == "backbone":  # no weight decay on norms and biases
                decay = [p for p in params if p.dim() >= 2]
                no_decay = [p for p in params if p.dim() < 2]
                groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": config.weight_decay})
                groups.append({"name": name + "_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
            else:
                groups.append({"name": name, "params": params, "lr": lr, "weight_decay": 0.0})
        groups = [g for g in groups if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(config.betas))
        self.base_lrs = [g["lr"] for g in groups]

    def step(self, step: int) -> dict[str, float]:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm or float("inf"))
        factor = schedule_factor(step, self.config, self.total_steps)
        if not torch.isfinite(grad_norm):  # never step on NaN/inf: the trainer skips this batch
            self.optimizer.zero_grad(set_to_none=True)
            return {"lr": self.base_lrs[0] * factor, "grad_norm": float(grad_norm)}
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"lr": self.base_lrs[0] * factor, "grad_norm": float(grad_norm)}

    def lr_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: schedule_factor(step, self.config, self.total_steps)
        )

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
        # moments saved for a parameter that has since changed shape but not size (the inner loop's
        # single learning rate went from 0-dim to (1,)) take the parameter's shape
        for param, param_state in self.optimizer.state.items():
            for key, value in param_state.items():
                if key != "step" and torch.is_tensor(value) and value.shape != param.shape and value.numel() == param.numel():
                    param_state[key] = value.reshape(param.shape)
