"""The outer gradient as one functional transform, optionally compiled (`[train] compile`).

`torch.compile` cannot run a double backward through a compiled graph, so second-order MAML with
`loss.backward()` stays eager. Written functionally instead (`torch.func.grad` of the outer loss
over `functional_call`, the inner loop's step gradients by a nested `torch.func.grad`), the whole
outer gradient, inner double backward included, is one forward program that dynamo traces into a
single graph and inductor compiles, fusing the elementwise work autograd runs op by op.

Shapes are static (`dynamic=False`): every segment of an episode is right-padded to the widest seen
so far for its slot, so a task whose batches vary in width by a few tokens compiles once or twice,
not once per width. Padding is masked out everywhere (causal attention over real keys, masked
losses), so it changes results by float rounding only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ttt_core.episode import Episode, Segment, answer_loss
from ttt_core.errors import TTTError, first_line
from ttt_core.interfaces import PacksContext
from ttt_core.model import MetaModel, ReadOutput
from ttt_core.objective import with_inner_term


BACKEND = "inductor"
"""The `torch.compile` backend of `[train] compile` (tests trace with "aot_eager": no C++ to build)."""


def cpp_compiler() -> str | None:
    """The C++ compiler inductor builds its CPU kernels with ($CXX, else g++), or None when it finds
    none. ImportError on a torch whose inductor cannot be asked."""
    from torch._inductor import cpp_builder, exc

    try:
        return cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return None


def require_cpp_compiler() -> None:
    """Inductor builds its CPU kernels with a C++ compiler; without one the first step would fail
    minutes into tracing with inductor's own error, so say it before training starts."""
    try:
        found = cpp_compiler()
    except ImportError:  # an older torch: nothing to ask, inductor will say it itself
        return
    if found is None:
        raise TTTError(
            "[train] compile: inductor needs a C++ compiler and found none (it looks for $CXX, else g++); "
            "install one (e.g. apt install g++) or set train.compile = false"
        )


def parameter_slots(model: torch.nn.Module) -> dict[str, str]:
    """Every distinct (module, attribute) holding a parameter, by its first dotted name, mapped to the
    parameter's own (first) name. Submodules reached by two paths (the learner holds the backbone)
    appear once, so `functional_call` swaps each attribute once (swapping one twice leaves the
    module holding the substitute afterwards); tied weights (`tie_embeddings`) on different modules
    appear once per module, so the substitute reaches every use."""
    canonical: dict[int, str] = {}
    slots: dict[tuple[int, str], tuple[str, str]] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            canonical.setdefault(id(param), name)
            slots.setdefault((id(module), attr), (name, canonical[id(param)]))
    return dict(slots.values())


def pad_segment(segment: Segment, width: int) -> Segment:
    """`segment` right-padded with masked id-0 positions to `width` (no copy when already that wide)."""
    extra = width - segment.ids.shape[1]
    if extra <= 0:
        return segment
    pad = lambda x: torch.nn.functional.pad(x, (0, extra))  # noqa: E731  zeros: id 0, mask False
    return Segment(pad(segment.ids), pad(segment.mask))


class FunctionalStep:
    """Outer loss, answer logits, statistics and the gradient of the loss w.r.t. every parameter of
    `model`, computed by `torch.func.grad` (compiled by `torch.compile` when `compile`).

    Calling it writes the gradients into the parameters' `.grad` (as `loss.backward()` would) and
    returns `(loss, ReadOutput)`. It switches `model.inner` to its functional path for good; the eager
    path gives the same results, so evaluation can keep using the model as it is.
    """

    def __init__(self, model: MetaModel, compile: bool = False, backend: str | None = None) -> None:
        self.model = model
        self.slots = parameter_slots(model)
        backend = backend or BACKEND
        if compile and backend == "inductor" and next(model.parameters()).device.type == "cpu":
            require_cpp_compiler()
        model.inner.functional = True
        grad = torch.func.grad(self._loss, has_aux=True)
        if compile:
            grad = torch.compile(grad, backend=backend, dynamic=False, fullgraph=True)
        self.grad = grad
        self.widths: dict[str, int] = {}

    def _loss(self, params: dict[str, Tensor], episode: Episode) -> tuple[Tensor, tuple[Tensor, Tensor, dict[str, Tensor]]]:
        slots = {slot: params[name] for slot, name in self.slots.items()}
        out = torch.func.functional_call(self.model, slots, (episode,), tie_weights=False)
        loss = with_inner_term(self.model, answer_loss(out.logits, episode.target), out)
        stats = {k: v for k, v in out.stats.items() if k != "outer_term"}
        return loss, (loss, out.logits, stats)

    def _pad(self, name: str, segment: Segment) -> Segment:
        width = self.widths[name] = max(self.widths.get(name, 0), segment.ids.shape[1])
        return pad_segment(segment, width)

    def _pad_and_pack(self, name: str, segment: Segment) -> Segment:
        """Padded, then with the learner's layout attached (`pack_pairs`, `length_buckets`) at the
        widest row width (each group's widest) seen for the slot: static shapes, few compiles."""
        segment = self._pad(name, segment)
        learner = self.model.learner
        if not isinstance(learner, PacksContext):
            return segment
        packed = learner.pack(segment, self.widths.get(name + ".packed", 0))
        if packed.packing is not None:
            self.widths[name + ".packed"] = packed.packing.width
        return packed

    def pad(self, episode: Episode) -> Episode:
        """Every segment padded to the widest seen for its slot: few distinct shapes, few compiles."""
        return Episode(
            segments=tuple(self._pad_and_pack(f"segment{i}", s) for i, s in enumerate(episode.segments)),
            context=self._pad_and_pack("context", episode.context),
            query=self._pad("query", episode.query),
            target=self._pad("target", episode.target),
        )

    def __call__(self, episode: Episode) -> tuple[Tensor, ReadOutput]:
        named = dict(self.model.named_parameters())
        # detached: the transform differentiates them; plain autograd need not record anything
        try:
            grads, (loss, logits, stats) = self.grad({k: p.detach() for k, p in named.items()}, self.pad(episode))
        except torch._dynamo.exc.FailOnRecompileLimitHit as err:
            raise TTTError(
                "[train] compile: this process has compiled the training step for "
                f"{torch._dynamo.config.recompile_limit} models or batch shapes already; call "
                "torch.compiler.reset() before building another model's step"
            ) from err
        except torch._dynamo.exc.TorchDynamoException as err:  # e.g. a component calling autograd.grad itself
            first = first_line(err)
            raise TTTError(
                f"[train] compile: this model cannot be traced as one functional program ({first}); "
                "set train.compile = false"
            ) from err
        for name, param in named.items():
            param.grad = grads[name]
        # the target may have been padded: logits for the batch's own target positions only
        return loss, ReadOutput(logits=logits[:, : episode.target.ids.shape[1]], stats=stats)

