"""The differentiable inner loop every learner and recurrence reuses.

K steps of gradient descent on a per-example loss over a *state* (``dict`` of fast weights, each
with leading example dims). One ``autograd.grad`` of the summed loss gives every example its own
gradient, because examples never share fast weights.

`InnerLoop.run` is the loop: an objective, a state, learning rates (`RateAxes` + `register_log_lr`:
a table along the axes the caller has, e.g. step and state group for a learner, layer and step for
PRMT4), the stability anchor, per-example clipping, the update rule and statistics (`InnerStats`).
`InnerLoop.forward` runs it for the learner (`MetaModel.adapt`); PRMT4 runs it for batches of
(layer, segment) cells, whose state has two leading example dims (cell, batch).

Grad modes:
    first      the update ``s - lr * g`` keeps ``s`` and ``lr`` in the graph but detaches ``g``:
               cheap, and the learned inner learning rate still receives a gradient.
    second     full MAML: ``g`` is computed with ``create_graph=True``.
    truncated  second order for the last ``truncate`` steps, first order before them.

With ``InnerLoop.functional`` the step gradients come from ``torch.func.grad`` instead (same values):
the compiled training step (``ttt_core.train.functional``) is a ``torch.func`` transform that
``autograd.grad`` does not compose with. ``step_gradients`` makes that choice for every step of
`InnerLoop.run`, which learners and recurrences with their own objective (prmt4) all run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import attrs
import torch
from torch import Tensor, nn
from torch.profiler import record_function as _record_function

from ttt_core.attention import keep_graph
from ttt_core.config import InnerConfig
from ttt_core.interfaces import State

LossFn = Callable[[State], Tensor]


Objective = Callable[[State], tuple[Tensor, Any]]


def profiled(name: str):
    """A named range in torch.profiler traces; nothing under torch.compile, whose tracer drops the
    range and warns once per run (`[train] compile`)."""
    return contextlib.nullcontext() if torch.compiler.is_compiling() else _record_function(name)

def step_gradients(
    objective: Objective, state: State, *, functional: bool, create_graph: bool, retain_graph: bool
) -> tuple[State, Any]:
    """Gradients of `objective(state) -> (scalar, aux)` w.r.t. every tensor of `state`, and `aux`:
    one step of `InnerLoop.run`.

    `functional`: by `torch.func.grad`, which composes with an outer `torch.func.grad` and
    `torch.compile` (`autograd.grad` does neither); the graph is then always kept, and first order
    detaches the result afterwards so the outer gradient does not flow through it. Otherwise by
    `torch.autograd.grad`, keeping the graph only when `create_graph`."""
    if functional:
        with keep_graph():
            return torch.func.grad(objective, has_aux=True)(state)
    with keep_graph() if create_graph else contextlib.nullcontext():
        total, aux = objective(state)
        with profiled("ttt.inner.backward"):
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


def per_example_sq_norm(tensors: Sequence[Tensor], lead: int = 1) -> Tensor:
    """Squared global L2 norm over all tensors, per example: the first `lead` dims index examples
    (``[B]`` for a learner's state, ``[C, B]`` for PRMT4's cells of a batch)."""
    return torch.stack([t.reshape(*t.shape[:lead], -1).pow(2).sum(-1) for t in tensors]).sum(0)


def per_example_norm(tensors: Sequence[Tensor], lead: int = 1) -> Tensor:
    return per_example_sq_norm(tensors, lead).sqrt()


def clip_per_example(grads: list[Tensor], config: InnerConfig, lead: int = 1) -> list[Tensor]:
    """Clip by value, then by the global norm of each example (the first `lead` dims index examples)."""
    if config.clip_value is not None:
        grads = [g.clamp(-config.clip_value, config.clip_value) for g in grads]
    if config.clip_norm is not None:
        flat = [g.flatten(0, lead - 1) for g in grads]
        # sqrt's derivative at an all-zero gradient (a row with no real token) is infinite: clamp first
        norm = per_example_sq_norm(flat).clamp_min(1e-12).sqrt()
        scale = (config.clip_norm / (norm + 1e-6)).clamp(max=1.0)
        grads = [(g * scale.view(-1, *([1] * (g.dim() - 1)))).view_as(original) for g, original in zip(flat, grads)]
    return grads


# --- learned learning rates -------------------------------------------------------------------

LR_AXES: dict[str, tuple[str, ...]] = {
    "none": (),
    "scalar": (),
    "per_step": ("step",),
    "per_group": ("group",),
    "per_step_group": ("step", "group"),
}
"""Which axes the learned log learning rate has, per `learn_lr` mode (of the axes a loop offers)."""


@attrs.frozen
class RateAxes:
    """The axes of a table of learned log learning rates: name -> size, in the table's order.

    `InnerLoop` has the axes its recipe's `learn_lr` asks for among (step, group); PRMT4 has
    (layer, step): a rate per layer always, the step axis of size 1 unless `learn_lr` asks for one.
    `index` picks the entry for a position along each axis (an int, or a slice: one rate per cell of
    a batched call); a step past the table's last uses the last."""

    sizes: dict[str, int]

    @classmethod
    def of(cls, config: InnerConfig, offered: dict[str, int]) -> RateAxes:
        """The axes among `offered` (name -> size) that `config.learn_lr` asks for, in that order."""
        return cls({axis: size for axis, size in offered.items() if axis in LR_AXES[config.learn_lr]})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.sizes.values()) or (1,)

    def index(self, **position: int | slice) -> tuple[int | slice, ...]:
        if not self.sizes:
            return (0,)
        return tuple(min(position[axis], size - 1) if axis == "step" else position[axis]
                     for axis, size in self.sizes.items())


def register_log_lr(module: nn.Module, config: InnerConfig, axes: RateAxes) -> None:
    """Give `module` the table ``log_lr`` (shape `axes.shape`, every entry log(config.lr)): a parameter
    (exp keeps the rate positive), or a buffer when ``learn_lr = "none"``."""
    log_lr = torch.full(axes.shape, math.log(config.lr))
    if config.learn_lr == "none":
        module.register_buffer("log_lr", log_lr)
    else:
        module.log_lr = nn.Parameter(log_lr)


# --- the loop ---------------------------------------------------------------------------------


class InnerLoss(NamedTuple):
    """What an objective returns when it needs more than a per-example loss.

    ``fit`` ``[*lead]``: the loss the stability anchor is added to; its batch mean (summed over the
    leading group dims) is the term ``outer_weight`` adds to the outer loss. ``finish``: terms added
    after the anchor, as a function of the anchored loss (PRMT4's next-token term on its top cells)."""

    fit: Tensor
    finish: Callable[[Tensor], Tensor] | None = None


InnerObjective = Callable[[State], "Tensor | InnerLoss"]


class InnerStats:
    """Per-step inner statistics summed over calls (each call's batch means, summed over its
    groups), averaged over groups by `result`: one call for a learner, many cells for PRMT4."""

    def __init__(self, steps: int) -> None:
        self.loss: list[Tensor | float] = [0.0] * steps
        self.grad_norm: list[Tensor | float] = [0.0] * steps
        self.groups = 0
        self.outer: list[Tensor] = []

    def result(self, memory: Sequence[Tensor], outer: str = "mean_over_steps") -> dict[str, Tensor]:
        """`inner_loss` / `inner_grad_norm` ``[K]``, `memory_norm` of `memory`, and `outer_term` (in
        the graph): the mean over steps of the fit term (`InnerLoop`), or with ``outer =
        "sum_over_steps"`` its sum over steps, averaged over groups (PRMT4's outer term)."""
        stats: dict[str, Tensor] = {}
        if self.groups and self.loss:
            stats["inner_loss"] = torch.stack([torch.as_tensor(x) for x in self.loss]) / self.groups
            stats["inner_grad_norm"] = torch.stack([torch.as_tensor(x) for x in self.grad_norm]) / self.groups
        stats["memory_norm"] = per_example_norm([m.detach() for m in memory]).mean()
        if self.outer:
            outer_terms = torch.stack(self.outer)
            stats["outer_term"] = outer_terms.mean() if outer == "mean_over_steps" else outer_terms.sum() / self.groups
        return stats


class InnerLoop(nn.Module):
    """K differentiable steps over a state: the engine every learner and recurrence runs (`run`),
    with learned (positive) inner learning rates for the learner's state groups.

    It holds the recipe's ``[inner]`` config, the grad-mode logic (`create_graph`) and the switch to
    `torch.func` gradients (`functional`). With no groups (a learner without fast weights) it owns no
    learning rates: a recurrence that runs its own steps (PRMT4) keeps its own table and passes it to
    `run`."""

    def __init__(self, config: InnerConfig, groups: Sequence[str]) -> None:
        super().__init__()
        self.config = config
        self.groups = list(groups)
        self.axes = RateAxes.of(config, {"step": max(config.steps, 1), "group": len(self.groups)})
        if self.groups:
            register_log_lr(self, config, self.axes)
        self.functional = False
        """Compute step gradients with `torch.func.grad` instead of `torch.autograd.grad`: needed when
        the outer gradient is itself a `torch.func` transform (`ttt_core.train.functional`)."""

    def lr(self, step: int, group: int) -> Tensor:
        return self.log_lr[self.axes.index(step=step, group=group)].exp()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "log_lr"
        if key in state_dict and not hasattr(self, "log_lr"):
            # a loop without groups owns no rates; checkpoints from when it kept an unused one load
            del state_dict[key]
        # checkpoints written before the single learning rate became shape (1,) hold a 0-dim one
        elif key in state_dict and state_dict[key].dim() == 0 and self.log_lr.shape == (1,):
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def create_graph(self, step: int) -> bool:
        """Second order only while training: evaluation needs the adapted state, not its graph."""
        if not self.training:
            return False
        mode, steps = self.config.grad_mode, self.config.steps
        return mode == "second" or (mode == "truncated" and step >= steps - self.config.truncate)

    def run(
        self,
        objective: InnerObjective,
        state: State,
        rate: Callable[[int, str], Tensor],
        stats: InnerStats,
        *,
        anchor: Tensor | float | None = None,
        lead: int = 1,
        after_update: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> State:
        """`config.steps` steps of `config.rule` on `objective` (per-example losses ``[*lead]``) from
        `state`; return the adapted state and add each step's statistics to `stats`.

        rate: `(step, key)` -> the learning rate of that step for that state entry (broadcastable).
        anchor: weight (broadcastable to the loss) of ``||s - initial s||^2`` added to each example's
            loss (`[inner] stability`; PRMT4's learned per-layer weight).
        lead: how many leading dims of every state tensor index examples (gradients are clipped and
            norms taken per example): 1 for ``[B, ...]``, 2 for PRMT4's ``[C, B, ...]`` cells.
        after_update: `(new, previous)` -> new, applied to each entry after its update (PRMT4's
            `keep_memory_norm`)."""
        config = self.config
        keys = list(state)
        initial = dict(state)
        buffers: dict[str, dict] = {k: {} for k in keys}
        rule = RULES[config.rule]

        def total(s: State) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            with profiled("ttt.inner.forward"):
                loss = objective(s)
            fit, finish = (loss.fit, loss.finish) if isinstance(loss, InnerLoss) else (loss, None)
            outer_term = fit.mean(-1).sum()  # batch mean, summed over groups
            per_example = fit
            if anchor is not None:
                per_example = per_example + anchor * per_example_sq_norm([s[k] - initial[k] for k in keys], lead)
            if finish is not None:
                per_example = finish(per_example)
            return per_example.sum(), (per_example, outer_term)

        for step in range(config.steps):
            create_graph = self.create_graph(step)
            grads_by_key, (per_example, outer_term) = step_gradients(
                total, state, functional=self.functional, create_graph=create_graph,
                retain_graph=create_graph or bool(config.outer_weight),
            )
            if config.outer_weight:
                stats.outer.append(outer_term)
            grads = [grads_by_key[k] for k in keys]
            if not create_graph:
                grads = [g.detach() for g in grads]
            grads = clip_per_example(grads, config, lead)
            new_state = {}
            for k, grad in zip(keys, grads):
                new_state[k], buffers[k] = rule(state[k], grad, rate(step, k), buffers[k], step, config)
                if after_update is not None:
                    new_state[k] = after_update(new_state[k], state[k])
            state = new_state
            stats.loss[step] += per_example.detach().mean(-1).sum()
            flat = [g.detach().flatten(0, lead - 1) for g in grads]
            stats.grad_norm[step] += per_example_norm(flat).view(per_example.shape).mean(-1).sum()
        stats.groups += math.prod(per_example.shape[:-1]) if config.steps else 0
        return state

    def forward(self, loss_fn: LossFn, state: State) -> tuple[State, dict[str, Tensor]]:
        """Adapt `state` on `loss_fn` (per-example losses ``[B]``); return it and statistics."""
        missing = [k for k in state if k not in self.groups]
        if missing:
            raise KeyError(f"state keys {missing} are not inner-loop groups {self.groups}")
        stats = InnerStats(self.config.steps)
        state = self.run(
            loss_fn, state, lambda step, key: self.lr(step, self.groups.index(key)), stats,
            anchor=self.config.stability or None,
        )
        return state, stats.result(list(state.values()))
