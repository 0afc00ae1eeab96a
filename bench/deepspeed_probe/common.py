"""Shared pieces of the DeepSpeed probe: a tiny meta-learning model, deterministic data, a config.

The model's forward runs a MAML-style inner loop: per-example fast weights W (a copy of the
meta-learned init `w0` with a batch dimension) take K gradient steps on a reconstruction loss of
the context (torch.autograd.grad, create_graph=second_order), then the query is read through the
adapted W. The outer loss trains enc, w0, the inner learning rate and the head.
"""
import os
import time

import torch
import torch.nn as nn

D = 8        # width
T = 6        # context length
K = 2        # inner steps


class InnerLoopNet(nn.Module):
    def __init__(self, d=D, k=K, second_order=False, lr_shape=(1,), direct=False):
        super().__init__()
        self.direct = direct   # first inner step differentiates w.r.t. the Parameter w0 itself
        self.enc = nn.Linear(d, d)
        self.w0 = nn.Parameter(torch.eye(d) + 0.05 * torch.randn(d, d))   # meta-learned init
        # learned inner lr; shape () breaks DeepSpeed's _broadcast_model (view(torch.uint8) on a 0-dim tensor)
        self.log_lr = nn.Parameter(torch.full(lr_shape, -1.0))
        self.head = nn.Linear(d, d)
        self.k = k
        self.second_order = second_order

    def forward(self, ctx, query, target):
        # ctx [B, T, d], query [B, d], target [B, d]
        b, d = ctx.shape[0], ctx.shape[-1]
        keys = self.enc(ctx)
        w = self.w0 if self.direct else self.w0.unsqueeze(0).expand(b, d, d)   # per-example fast weights
        lr = self.log_lr.exp()
        for _ in range(self.k):
            inner = ((torch.matmul(keys, w) - ctx) ** 2).mean(dim=(1, 2)).sum()   # sum over examples
            (g,) = torch.autograd.grad(inner, w, create_graph=self.second_order)
            w = w - lr * g                                  # first order: g is a constant
        pred = self.head(torch.matmul(self.enc(query).unsqueeze(1), w).squeeze(1))
        return ((pred - target) ** 2).mean()


class MemTokNet(nn.Module):
    """Baseline-TTT pattern: memory tokens [B, M, d] (from a meta-learned init) adapted by K steps of
    autograd.grad of a loss computed THROUGH a submodule (the backbone), then the query is read
    through the same backbone with the adapted memory prepended."""

    def __init__(self, d=D, k=K, m=2, second_order=False, functional=False):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(d, 2 * d), nn.Tanh(), nn.Linear(2 * d, d))
        self.mem0 = nn.Parameter(0.1 * torch.randn(m, d))
        self.log_lr = nn.Parameter(torch.full((1,), -1.0))
        self.k, self.second_order, self.functional = k, second_order, functional

    def run_backbone(self, x):
        x = x + x.mean(1, keepdim=True)   # token mixing, so memory influences every position
        if self.functional:   # weights read from the parent's forward, not through backbone.forward
            l1, l2 = self.backbone[0], self.backbone[2]
            return nn.functional.linear(torch.tanh(nn.functional.linear(x, l1.weight, l1.bias)), l2.weight, l2.bias)
        return self.backbone(x)

    def forward(self, ctx, query, target):
        b, m = ctx.shape[0], self.mem0.shape[0]
        mem = self.mem0.unsqueeze(0).expand(b, -1, -1)
        lr = self.log_lr.exp()
        for _ in range(self.k):
            h = self.run_backbone(torch.cat([mem, ctx[:, :-1]], 1))[:, m:]
            inner = ((h - ctx[:, 1:]) ** 2).mean(dim=(1, 2)).sum()       # next-step prediction
            (g,) = torch.autograd.grad(inner, mem, create_graph=self.second_order)
            mem = mem - lr * g
        out = self.run_backbone(torch.cat([mem, query.unsqueeze(1)], 1))[:, -1]
        return ((out - target) ** 2).mean()


def build(kind, second_order, lr_shape=(1,)):
    if kind in ("fastw", "param"):
        return InnerLoopNet(second_order=second_order, lr_shape=lr_shape, direct=kind == "param")
    return MemTokNet(second_order=second_order, functional=kind == "functional")


def global_batch(step, n, seed=1234):
    """The same global batch of n examples on every rank, for a given step."""
    g = torch.Generator().manual_seed(seed * 100003 + step)
    ctx = torch.randn(n, T, D, generator=g)
    query = ctx[:, 0] + 0.1 * torch.randn(n, D, generator=g)
    target = torch.tanh(ctx.mean(1)) + 0.05 * torch.randn(n, D, generator=g)
    return ctx, query, target


def shard(batch, rank, world, micro):
    """Rank r's micro-batch: rows [r*micro, (r+1)*micro) of the global batch."""
    return tuple(t[rank * micro:(rank + 1) * micro] for t in batch)


def ds_config(stage, micro, gas=1, world=1, clip=0.0, bf16=False):
    cfg = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "train_batch_size": micro * gas * world,
        "gradient_clipping": clip,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,   # needed for a client torch optimizer with ZeRO>0
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if bf16:
        cfg["bf16"] = {"enabled": True}
    return cfg


class Stamp:
    """Prints seconds since process start with rank, for timing."""
    t0 = time.time()

    @classmethod
    def log(cls, *a):
        r = os.environ.get("RANK", "-")
        print(f"[rank {r} +{time.time() - cls.t0:7.2f}s]", *a, flush=True)
