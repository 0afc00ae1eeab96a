"""The contracts of the six component kinds.

A plugin implements one of these classes and registers a factory for it (see
`ttt_core.hookspecs.ttt_register_components`). The factory of each kind is called as
``factory(config, **context)`` with the context listed in the class docstring.

Vocabulary used throughout:
    B  batch size, T  sequence length, d  model width, M  number of memory tokens.
    A *state* is a ``dict[str, Tensor]`` of fast weights, each with a leading batch dimension, so
    one ``torch.autograd.grad`` of the summed inner loss gives every example its own gradient.
    Segments and episodes are defined in `ttt_core.episode`.

This module imports torch only for type checking, so that registration stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor, nn

    from pathlib import Path

    from ttt_core.episode import Episode, Segment

State = dict[str, "Tensor"]


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@runtime_checkable
class TextTokenizer(Protocol):
    """A tokenizer a text task takes from elsewhere instead of building its own: a pretrained
    model's own (the `hf` backbone's `AutoTokenizer`), which the model's embedding rows mean.

    ``encode`` adds no special tokens (the task adds those it wants); ``vocab_size`` bounds every id
    (the backbone is built with it); ``eos_id`` and ``bos_id`` are None when the tokenizer has none
    (a task that needs one says so); ``pad_id`` is any id (padded positions are masked)."""

    vocab_size: int
    pad_id: int
    eos_id: int | None
    bos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Any) -> str: ...


class BackboneOutput(NamedTuple):
    """What a backbone's forward returns."""

    logits: Tensor
    """``[B, T, vocab]``."""
    hidden_states: tuple[Tensor, ...] | None
    """The input of the first block, then each block's output (None unless ``return_hidden``)."""


@runtime_checkable
class OwnsMemory(Protocol):
    """A component with meta-learned initial fast weights: the optimiser's "memory" group
    (``[optimizer] memory_lr``). Learners, writers and recurrences report theirs."""

    def memory_parameters(self) -> list[nn.Parameter]: ...


class Backbone(ABC):
    """The sequence model (an ``nn.Module``). Context: ``vocab_size: int``.

    It consumes embeddings rather than ids so that memory tokens can be prefixed, and exposes its
    blocks (``layers``) so that recurrences can run them one at a time. Optional abilities are
    capabilities (below): several sequences per row (`PackedRows`), blocks run functionally on
    stacked weights for diagonal batching (`LayerBlocks`), per-example weight deltas
    (`WeightDeltas`); a backbone declares those it has when it registers (``provides``).

    A backbone whose model comes with its own tokenizer (a pretrained transformers model) supplies
    it to text tasks: its registration's ``tokenizer`` is a function of its config giving a
    `TextTokenizer` (or None: the task's own). The builder asks it before building a task that
    takes one (`TakesTokenizer`); the backbone is then built with that tokenizer's ``vocab_size``.
    """

    dim: int
    n_layers: int
    vocab_size: int
    layers: nn.ModuleList

    @abstractmethod
    def embed(self, ids: Tensor) -> Tensor:
        """``[B, T]`` token ids -> ``[B, T, d]`` embeddings."""

    @abstractmethod
    def forward(self, embeds: Tensor, mask: Tensor | None = None, return_hidden: bool = False) -> BackboneOutput:
        """Run all blocks and the head.

        ``mask`` is ``[B, T]`` bool, True for real tokens; padded positions never change real ones.
        A backbone that also takes several sequences per row declares it (`PackedRows`).
        """

    @abstractmethod
    def head(self, hidden: Tensor) -> Tensor:
        """Final norm and output projection: ``[B, T, d]`` -> ``[B, T, vocab]``."""


class MemoryWriter(ABC):
    """Turns fast state plus context into the memory the backbone reads (an ``nn.Module``).

    Context: ``dim: int`` (model width). A writer may own fast weights of its own (the
    cross-attention writer adapts its projections per example): ``init_state`` returns them and the
    inner loop adapts them together with the learner's state.

    ``read_context``: whether the read (``InnerLearner.forward``) passes the context to the writer
    again. When False the writer gets ``context=None`` there, so the context reaches the read only
    through what the inner loop wrote into the state.
    """

    read_context: bool = True

    @abstractmethod
    def init_state(self, batch_size: int) -> State:
        """The writer's fast weights for a batch, from their meta-learned initial value ({} if none)."""

    @abstractmethod
    def forward(
        self, state: State, memory: Tensor, context: Tensor | None, context_mask: Tensor | None
    ) -> Tensor:
        """``memory [B, M, d]`` and ``context [B, T, d]`` embeddings -> written memory ``[B, M, d]``."""

    def memory_parameters(self) -> list[nn.Parameter]:
        """The meta-learned initial values of its fast weights; by default all its parameters."""
        return list(self.parameters())  # type: ignore[attr-defined]


class InnerLearner(ABC):
    """Fast weights with a meta-learned initial value, adapted per example at test time.

    An ``nn.Module``. Context: ``backbone: Backbone``, ``writer: MemoryWriter``. The inner loop
    (`ttt_core.inner`) calls ``inner_objective(segment)`` (by default ``inner_loss``) K times and
    updates the state with its gradient; the recurrence then calls ``forward`` to read.
    """

    @abstractmethod
    def init_state(self, batch_size: int) -> State:
        """Per-example copies of the meta-learned initial fast weights (kept in the graph)."""

    @abstractmethod
    def inner_loss(self, state: State, segment: Segment) -> Tensor:
        """The test-time training objective on one context segment, per example: ``[B]``."""

    def inner_objective(self, segment: Segment) -> Callable[[State], Tensor]:
        """``inner_loss`` on one segment as a function of the state alone: what the inner loop calls
        K times. A learner overrides it to compute what does not depend on the state (the context's
        embeddings, projections) once rather than at every step."""
        return lambda state: self.inner_loss(state, segment)

    @abstractmethod
    def forward(self, state: State, ids: Tensor, mask: Tensor, context: Segment | None = None) -> Tensor:
        """Read: logits ``[B, T, vocab]`` of ``ids`` under the adapted state.

        ``context`` is the last context segment, for writers that read it when writing memory.
        """

    def memory_parameters(self) -> list[nn.Parameter]:
        """The meta-learned initial values of its fast weights. By default all its parameters:
        `MetaModel` leaves out those of the backbone and the writer it holds."""
        return list(self.parameters())  # type: ignore[attr-defined]


class Recurrence(ABC):
    """How an episode's context is cut into segments and memory carried between them.

    An ``nn.Module`` (it may own parameters, e.g. global tokens or RMT's initial memory). Context:
    ``backbone: Backbone`` and ``inner: InnerConfig`` (the recipe's ``[inner]`` table), so that a
    recurrence can shape its own parameters by the backbone (PRMT4's per-layer memory) and start its
    own inner learning rates from the recipe's. Do not keep the backbone as a submodule (its
    parameters would be trained twice): ``forward`` receives it as ``model.backbone``. A recurrence
    that needs neither accepts and ignores them (``**context``).

    A recurrence that runs its own inner steps (PRMT4) runs them through ``model.inner.run``
    (`ttt_core.inner.InnerLoop.run`) with its own objective, state and learned rates: the loop knows
    the grad mode and whether the step is compiled (``[train] compile`` is a ``torch.func``
    transform, which ``autograd.grad`` does not compose with). Under it, build no frozen attrs
    objects (``Segment``) inside ``forward``: dynamo cannot construct them. Such a recurrence
    registers with ``slots=()`` when it uses neither the learner nor the writer: the model then
    has the ``none`` learner and an inner loop without learning rates of its own.
    """

    def memory_parameters(self) -> list[nn.Parameter]:
        """Parameters that are initial memory (RMT's memory tokens, PRMT4's per-layer memory); the
        rest of its parameters are meta-parameters. None by default."""
        return []

    @abstractmethod
    def forward(self, model: Any, episode: Episode) -> Any:
        """Adapt on the context and read the answer.

        ``model`` is a `ttt_core.model.MetaModel` (backbone, learner, writer, inner loop). Returns a
        `ttt_core.model.ReadOutput`: logits over ``episode.answer`` plus inner-loop statistics.
        """


class Task(ABC):
    """Data, tokenizer, collation into episodes and metrics. Context: none, but ``tokenizer`` for a
    task that declares `takes_tokenizer` (`TakesTokenizer`).

    Data is a deterministic function of (split, data seed, index), so a run resumes at any step
    and every rank can draw its own shard. The data seed belongs to the task's config, so models
    trained with different `train.seed` see the same held-out sets.
    """

    tokenizer: Tokenizer
    headline: str = "exact_match"
    """The metric (a key of `metrics`) that progress lines, reports and plots lead with."""
    higher_is_better: bool = True

    @abstractmethod
    def train_batch(self, step: int, batch_size: int) -> Episode:
        """Batch `step` of the endless training stream: samples ``step * B .. step * B + B - 1``."""

    @abstractmethod
    def eval_batches(self, split: str, samples: int | None, batch_size: int) -> Iterator[Episode]:
        """The first `samples` of a fixed held-out set (``split`` "val" or "test"), in order."""

    @abstractmethod
    def metrics(self, answer_logits: Tensor, episode: Episode) -> dict[str, Tensor]:
        """Per-example metrics ``[B]`` from answer logits ``[B, Tt, V]``, the `headline` among them."""

    @abstractmethod
    def describe(self, split: str, index: int) -> str:
        """Decoded text of one sample, for `ttt data`."""


class IndexedTask(Task):
    """A task whose samples are addressed by (split, index): implement `batch` and `split_size`,
    and the training stream and the held-out batches follow (both built-in tasks use it)."""

    @abstractmethod
    def batch(self, split: str, indices: range) -> Episode:
        """The samples `indices` of `split`, collated into one episode."""

    @abstractmethod
    def split_size(self, split: str) -> int | None:
        """Samples in `split`; None for an endless one."""

    def position(self, split: str, index: int) -> int:
        """Which sample `index` of `split` is: the train split cycles (an endless one does not);
        val and test are fixed sets and refuse indices past their end."""
        size = self.split_size(split)
        if size is None:
            return index
        if split == "train":
            return index % size
        if not 0 <= index < size:
            raise IndexError(f"{split} index {index} out of range (size {size})")
        return index

    def train_batch(self, step: int, batch_size: int) -> Episode:
        return self.batch("train", range(step * batch_size, (step + 1) * batch_size))

    def eval_batches(self, split: str, samples: int | None, batch_size: int) -> Iterator[Episode]:
        """The first `samples` of `split` (all if None) in order; the last batch may be smaller."""
        size = self.split_size(split)
        if size is None:
            raise ValueError(f"the {split} split is endless; evaluate on val or test")
        if samples is not None:
            if samples > size:
                raise ValueError(f"{split}: {samples} samples asked but the {split} set has {size}")
            size = samples
        for start in range(0, size, batch_size):
            yield self.batch(split, range(start, min(start + batch_size, size)))


class OuterOptimizer(ABC):
    """The meta-learner. Context: ``model: MetaModel``, ``total_steps: int``.

    Parameter groups come from ``model.param_groups()`` (backbone, memory initial state,
    meta-parameters such as inner learning rates), each with its own learning rate.
    """

    optimizer: Any  # torch.optim.Optimizer

    @abstractmethod
    def step(self, step: int) -> dict[str, float]:
        """Clip, step the optimizer and the schedule; return stats (lr, grad_norm).

        A non-finite gradient norm must leave the parameters untouched (the trainer then counts
        the step as skipped)."""

    def lr_scheduler(self) -> Any:
        """A torch LR scheduler over ``optimizer`` giving the learning rates that ``step(n)`` uses, advanced
        once per optimizer step; None keeps the rates constant.

        Under DeepSpeed the engine steps ``optimizer`` and this scheduler itself (``step`` is not called)
        and clips gradients at the config's ``clip_norm`` option, if the config has one.
        """
        return None

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --- capabilities: optional abilities a component declares (`registry.add(..., provides=...)`) and
# another may need (`needs=`). `ttt validate` checks the declarations; the builder checks the
# built objects against these protocols, so a component that declares what it lacks is caught too.


@runtime_checkable
class PacksContext(Protocol):
    """An inner learner that lays its context pass out two examples per row (`ttt_core.packing`).

    ``pack`` returns the segment with its layout attached (``segment.packing``), rows at least
    ``min_width`` wide, or the segment unchanged when the learner's config does not pack. The
    compiled step calls it before tracing (the layout reads lengths); ``inner_loss`` then uses it."""

    def pack(self, segment: Segment, min_width: int = 0) -> Segment: ...


@runtime_checkable
class PackedRows(Protocol):
    """A backbone whose forward takes several sequences per row: ``positions`` ``[B, T]`` (RoPE
    position of each token within its own sequence) and ``segments`` ``[B, T]`` (which sequence a
    position belongs to, -1 for padding; attention stays within one)."""

    def forward(
        self, embeds: Tensor, mask: Tensor | None = None, return_hidden: bool = False,
        positions: Tensor | None = None, segments: Tensor | None = None,
    ) -> BackboneOutput: ...


@runtime_checkable
class LayerBlocks(Protocol):
    """A backbone whose blocks run functionally on per-layer weights with a leading *cell* dim C:
    C layers applied to C inputs in one batched call (PRMT4's diagonal batching).

    ``params`` below map a block's parameter names to tensors ``[C, ...]``. ``block_forward_prefixed``
    runs a block on ``[prefix; x]`` for the outputs at x's positions only (causal, no padding mask),
    with x's attention projections computed once by ``project`` and reused under many prefixes; a
    projected x with batch 1 is shared by every example."""

    n_layers: int
    norm_eps: float
    """The epsilon of the blocks' RMS norms."""

    def stacked_layer_params(self, indices: Any = None) -> dict[str, Tensor]:
        """The chosen layers' (all by default) parameters stacked along a leading C dim (differentiable)."""
        ...

    def layer_params(self, layer: int) -> dict[str, Tensor]:
        """One layer's own parameters with a C dim of 1."""
        ...

    def project(self, params: dict[str, Tensor], x: Tensor, offset: int) -> Any:
        """x ``[C, b, T, d]`` sitting after ``offset`` prefix positions, with its queries, keys and values."""
        ...

    def block_forward_prefixed(self, params: dict[str, Tensor], prefix: Tensor, suffix: Any) -> Tensor:
        """The block outputs ``[C, B, T, d]`` at the positions of `suffix` (from ``project``) behind
        ``prefix`` ``[C, B, M, d]`` (M = the offset it was projected at)."""
        ...

    def head(self, hidden: Tensor) -> Tensor: ...


@runtime_checkable
class WeightDeltas(Protocol):
    """A backbone that runs with per-example low-rank deltas on its linear layers (LoRA memory).

    ``delta_targets`` names the linear weights a delta may adapt, with their shapes ``(out, in)``
    (e.g. ``"layers.0.wqkv": (3d, d)``). ``forward_with_deltas`` is ``forward`` with, for each
    named weight ``W`` and each example b, ``W + up[b] @ down[b]`` in its place: ``deltas[name] =
    (down [B, r, in], up [B, out, r])``; names left out run with ``W`` alone. Deltas of zero give
    ``forward``'s result, and gradients reach both the deltas and the backbone."""

    def delta_targets(self) -> dict[str, tuple[int, int]]: ...

    def forward_with_deltas(
        self, embeds: Tensor, mask: Tensor | None, deltas: dict[str, tuple[Tensor, Tensor]],
        return_hidden: bool = False,
    ) -> BackboneOutput: ...


@runtime_checkable
class FixedSuffix(Protocol):
    """A backbone run many times on ``[prefix; x]`` with x fixed and the prefix changing (memory
    tokens' K inner steps over one context): ``project_suffix(embeds, offset)`` computes what of x
    does not depend on the prefix (its first layer's projections) once; ``forward_prefixed(prefix,
    suffix, mask)`` then equals ``forward(cat([prefix, embeds], 1), mask)`` (mask ``[B, M + T]``)."""

    def project_suffix(self, embeds: Tensor, offset: int) -> Any: ...

    def forward_prefixed(self, prefix: Tensor, suffix: Any, mask: Tensor | None = None) -> BackboneOutput: ...


@runtime_checkable
class ExportsData(Protocol):
    """A task that writes its splits to files (`ttt data --write`): returns the paths written."""

    def export(self, directory: Path, fmt: str, train_samples: int) -> list[Path]: ...


@runtime_checkable
class TakesTokenizer(Protocol):
    """A text task that runs on a tokenizer handed to it (the backbone's model's own, a
    `TextTokenizer`) instead of its own: its factory takes the context ``tokenizer`` (absent or None:
    its own) and encodes every text with it, so the built task's ``tokenizer`` is that object (the
    builder checks). A tokenizer it cannot use (no EOS where answers end with one) is one line."""

    tokenizer: Any


CAPABILITIES: dict[str, type] = {
    "packing": PacksContext,
    "packed_rows": PackedRows,
    "layer_blocks": LayerBlocks,
    "weight_deltas": WeightDeltas,
    "fixed_suffix": FixedSuffix,
    "export": ExportsData,
    "takes_tokenizer": TakesTokenizer,
}
"""Capability name (as recipes' components declare it) -> the protocol a built component satisfies."""


def missing_capability(component: Any, capability: str) -> str | None:
    """Why `component` lacks `capability` (a name in `CAPABILITIES`), or None if it has it.

    Beyond ``isinstance`` (which only sees that methods and attributes exist), the optional
    parameters a protocol's methods declare (callers pass them by keyword) must be accepted by the
    component's: a backbone whose ``forward`` takes no ``segments`` has no `PackedRows`."""
    import inspect

    protocol = CAPABILITIES[capability]
    members = [name for name in protocol.__dict__.get("__annotations__", {})]
    members += [name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")]
    absent = [name for name in members if not hasattr(component, name)]
    if absent:
        return f"it has no {', '.join(absent)}"
    for name, value in vars(protocol).items():
        if name.startswith("_") or not callable(value):
            continue
        wanted = [name for name, p in inspect.signature(value).parameters.items() if p.default is not p.empty]
        try:
            given = inspect.signature(getattr(component, name)).parameters
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in given.values()):
            continue
        lacking = [p for p in wanted if p not in given]
        if lacking:
            return f"its {name}() takes no {', '.join(lacking)}"
    return None
