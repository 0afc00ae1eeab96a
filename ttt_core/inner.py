"""The differentiable inner loop every learner reuses.

K steps of gradient descent on a per-example loss over a *state* (``dict`` of fast weights, each
with a leading batch dimension). One ``autograd.grad`` of the summed loss gives every example its
own gradient, because examples never share fast weights.

Grad modes:
    first      the update ``s - lr * g`` keeps ``s`` and ``lr`` in the graph but detaches ``g``:
               cheap, and the learned inner learning rate still receives a gradient.
    second     full MAML: ``g`` is computed with ``create_graph=True``.
    truncated  second order for the last ``truncate`` steps, first order before them.

With ``InnerLoop.functional`` the step gradients come from ``torch.func.grad`` instead (same values):
the compiled training step (``ttt_core.train.functional``) is a ``torch.func`` transform that
``autograd.grad`` does not compose with. ``step_gradients`` makes that choice, for the inner loop
here and for recurrences that run their own.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from ttt_core.attention import keep_graph
from ttt_core.config import InnerConfig
from ttt_core.interfaces import State

LossFn = Callable[[State], Tensor]


Objective = Callable[[State], tuple[Tensor, Any]]


def step_gradients(
    objective: Objective, state: State, *, functional: bool, create_graph: bool, retain_graph: bool
) -> tuple[State, Any]:
    """Gradients of `objective(state) -> (scalar, aux)` w.r.t. every tensor of `state`, and `aux`:
    one inner step's, for `InnerLoop` and for recurrences that run their own inner loop (prmt4).

    `functional`: by `torch.func.grad`, which composes with an outer `torch.func.grad` and
    `torch.compile` (`autograd.grad` does neither); the graph is then always kept, and first order
    detaches the result afterwards so the outer gradient does not flow through it. Otherwise by
    `torch.autograd.grad`, keeping the graph only when `create_graph`."""
    if functional:
        with keep_graph():
            return torch.func.grad(objective, has_aux=True)(state)
    with keep_graph() if create_graph else contextlib.nullcontext():
        total, aux = objective(state)
        with record_function("ttt.inner.backward"):
            grads = torch.autograd.grad(total, list(state.values()), create_graph=create_graph, retain_graph=retain_graph)
    return dict(zip(state, grads)), aux


# --- update rules: pure functions of (param, grad, lr, buffers, step) -> (new param, new buffers)


def sgd(param: Tensor, grad: Tensor, lr: Tensor, buffers: dict, step: int, config: InnerConfig):
    return param - lr * grad, buffers


def momentum(param: Tensor, grad: Tensor, lr: Tensor, buffers: dict, step: int, config: InnerConfig):
    velocity = grad if "v" not in buffers else config.momentum * buffers["v"] + grad
    return param - lr * velocity, {"v": velocity}


def adam(param: Tensor, grad: Tensor, lr: Tensor, buffers: dict, step: int, config: InnerConfig):
    m = (1 - config.beta1) * grad + (config.beta1 * buffers["m"] if "m" in buffers else 0)
    v = (1 - config.beta2) * grad * grad + (config.beta2 * buffers["v"] if "v" in buffers else 0)
    m_hat = m / (1 - config.beta1 ** (step + 1))
    v_hat = v / (1 - config.beta2 ** (step + 1))
    return param - lr * m_hat / (v_hat.sqrt() + config.eps), {"m": m, "v": v}


RULES = {"sgd": sgd, "momentum": momentum, "adam": adam}


def per_example_sq_norm(tensors: Sequence[Tensor]) -> Tensor:
    """``[B]`` squared global L2 norm over all tensors, per example (leading dim)."""
    return torch.stack([t.reshape(t.shape[0], -1).pow(2).sum(1) for t in tensors]).sum(0)


def per_example_norm(tensors: Sequence[Tensor]) -> Tensor:
    return per_example_sq_norm(tensors).sqrt()


def clip_per_example(grads: list[Tensor], config: InnerConfig) -> list[Tensor]:
    if config.clip_value is not None:
        grads = [g.clamp(-config.clip_value, config.clip_value) for g in grads]
    if config.clip_norm is not None:
        scale = (config.clip_norm / (per_example_norm(grads) + 1e-6)).clamp(max=1.0)
        grads = [g * scale.view(-1, *([1] * (g.dim() - 1))) for g in grads]
    return grads


# which axes the learned log learning rate has, per `learn_lr` mode
LR_AXES: dict[str, tuple[str, ...]] = {
    "none": (),
    "scalar": (),
    "per_step": ("step",),
    "per_group": ("group",),
    "per_step_group": ("step", "group"),
}


def lr_shape(config: InnerConfig, groups: int) -> tuple[int, ...]:
    """Shape of the log learning rates. A single rate is ``(1,)``, never 0-dim: DeepSpeed cannot
    broadcast 0-dim parameters (``deepspeed.initialize`` fails viewing them as bytes)."""
    sizes = {"step": max(config.steps, 1), "group": groups}
    return tuple(sizes[axis] for axis in LR_AXES[config.learn_lr]) or (1,)


class InnerLoop(nn.Module):
    """K differentiable steps over a state, with learned (positive) inner learning rates."""

    def __init__(self, config: InnerConfig, groups: Sequence[str]) -> None:
        super().__init__()
        self.config = config
        self.groups = list(groups)
        log_lr = torch.full(lr_shape(config, len(self.groups)), math.log(config.lr))
        if config.learn_lr == "none":
            self.register_buffer("log_lr", log_lr)
        else:
            self.log_lr = nn.Parameter(log_lr)  # exp keeps the learning rate positive
        self.functional = False
        """Compute step gradients with `torch.func.grad` instead of `torch.autograd.grad`: needed when
        the outer gradient is itself a `torch.func` transform (`ttt_core.train.functional`)."""

    def lr(self, step: int, group: int) -> Tensor:
        position = {"step": step, "group": group}
        index = tuple(position[axis] for axis in LR_AXES[self.config.learn_lr]) or (0,)
        return self.log_lr[index].exp()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before the single learning rate became shape (1,) hold a 0-dim one
        key = prefix + "log_lr"
        if key in state_dict and state_dict[key].dim() == 0 and self.log_lr.shape == (1,):
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def create_graph(self, step: int) -> bool:
        """Second order only while training: evaluation needs the adapted state, not its graph."""
        if not self.training:
            return False
        mode, steps = self.config.grad_mode, self.config.steps
        return mode == "second" or (mode == "truncated" and step >= steps - self.config.truncate)

    def _objective(self, loss_fn: LossFn, state: State, initial: State, keys: list[str]) -> tuple[Tensor, Tensor]:
        """Per-example inner objective ``[B]`` (loss plus stability term) and the plain mean loss."""
        with record_function("ttt.inner.forward"):
            per_example = loss_fn(state)
        outer_term = per_example.mean()
        if self.config.stability:
            drift = [state[k] - initial[k] for k in keys]
            per_example = per_example + self.config.stability * per_example_sq_norm(drift)
        return per_example, outer_term

    def _step_grads(
        self, loss_fn: LossFn, state: State, initial: State, keys: list[str], create_graph: bool
    ) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        def objective(s: State) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            per_example, outer_term = self._objective(loss_fn, s, initial, keys)
            return per_example.sum(), (per_example, outer_term)

        grads, (per_example, outer_term) = step_gradients(
            objective, {k: state[k] for k in keys}, functional=self.functional, create_graph=create_graph,
            retain_graph=create_graph or bool(self.config.outer_weight),
        )
        return tuple(grads[k] for k in keys), per_example, outer_term

    def forward(self, loss_fn: LossFn, state: State) -> tuple[State, dict[str, Tensor]]:
        """Adapt `state` on `loss_fn` (per-example losses ``[B]``); return it and statistics."""
        config = self.config
        keys = list(state)
        missing = [k for k in keys if k not in self.groups]
        if missing:
            raise KeyError(f"state keys {missing} are not inner-loop groups {self.groups}")
        initial = dict(state)
        buffers: dict[str, dict] = {k: {} for k in keys}
        rule = RULES[config.rule]
        losses, grad_norms = [], []
        outer_terms = []
        for step in range(config.steps):
            create_graph = self.create_graph(step)
            grads, per_example, outer_term = self._step_grads(loss_fn, state, initial, keys, create_graph)
            if config.outer_weight:
                outer_terms.append(outer_term)
            if not create_graph:
                grads = tuple(g.detach() for g in grads)
            grads = clip_per_example(list(grads), config)
            new_state = {}
            for k, grad in zip(keys, grads):
                lr = self.lr(step, self.groups.index(k))
                new_state[k], buffers[k] = rule(state[k], grad, lr, buffers[k], step, config)
            state = new_state
            losses.append(per_example.detach().mean())
            grad_norms.append(per_example_norm([g.detach() for g in grads]).mean())
        stats: dict[str, Tensor] = {}
        if losses:
            stats["inner_loss"] = torch.stack(losses)
            stats["inner_grad_norm"] = torch.stack(grad_norms)
        stats["memory_norm"] = per_example_norm([v.detach() for v in state.values()]).mean()
        if outer_terms:
            stats["outer_term"] = torch.stack(outer_terms).mean()  # in the graph: added to the outer loss
        return state, stats
