"""PRMT4: the diagonal schedule computes exactly what the sequential one does; memory is carried;
cell (l, s) depends on (l-1, s) and (l, s-1) only; registration and recipes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import attrs
import pytest
import torch

from ttt_core.builtin.configs import IdentityWriterConfig, LlamaConfig, MemoryTokensConfig
from ttt_core.builtin.llama import Llama
from ttt_core.builtin.memory_tokens import MemoryTokens
from ttt_core.builtin.writers import IdentityWriter
from ttt_core.config import InnerConfig
from ttt_core.episode import Episode, Segment, answer_loss
from ttt_core.errors import TTTError
from ttt_core.model import MetaModel
from ttt_plugin_rmt.prmt4 import PRMT4, diagonal_waves, sequential_cells
from ttt_plugin_rmt.prmt4_config import PRMT4Config

LAYERS, VOCAB = 3, 11
REPO = Path(__file__).resolve().parents[3]


def make_model(inner: InnerConfig | None = None, **prmt4: object) -> MetaModel:
    torch.manual_seed(0)
    inner = inner or InnerConfig(steps=2, grad_mode="second")
    backbone = Llama(LlamaConfig(layers=LAYERS, dim=16, heads=2), vocab_size=VOCAB)
    writer = IdentityWriter(IdentityWriterConfig(), dim=16)
    learner = MemoryTokens(MemoryTokensConfig(tokens=2), backbone=backbone, writer=writer)
    config = PRMT4Config(**{"memory_tokens": 3, "global_tokens": 8, "stability": 0.1, **prmt4})
    recurrence = PRMT4(config, backbone=backbone, inner=inner)
    return MetaModel(backbone, learner, writer, recurrence, inner)


def random_segment(lengths: list[int], generator: torch.Generator) -> Segment:
    return Segment.from_lists([torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in lengths])


def make_episode(seed: int = 0) -> Episode:
    """3 rows, 3 context segments of different widths, rows of different lengths (right padding)."""
    g = torch.Generator().manual_seed(seed)
    segments = tuple(random_segment(n, g) for n in ([5, 3, 7], [2, 6, 4], [8, 1, 5]))
    context = Segment.from_lists([sum((s.ids[b, : s.lengths[b]].tolist() for s in segments), []) for b in range(3)])
    return Episode(segments, context, random_segment([3, 2, 3], g), random_segment([2, 3, 1], g))


def with_schedule(model: MetaModel, schedule: str) -> MetaModel:
    model.recurrence.config = attrs.evolve(model.recurrence.config, schedule=schedule)
    return model


def run(model: MetaModel, episode: Episode, schedule: str):
    """Logits, loss, inner stats and the gradient of every parameter under one schedule."""
    model.zero_grad(set_to_none=True)
    out = with_schedule(model, schedule)(episode)
    loss = answer_loss(out.logits, episode.target)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out.logits.detach(), loss.detach(), out.stats, grads


INNER_CONFIGS = {
    "second-sgd": InnerConfig(steps=2, grad_mode="second"),
    "truncated-adam-clip-per-step-lr": InnerConfig(
        steps=3, grad_mode="truncated", truncate=2, rule="adam", lr=0.1, clip_norm=0.5, learn_lr="per_step"
    ),
    "first-momentum-outer-weight": InnerConfig(steps=2, grad_mode="first", rule="momentum", outer_weight=0.5),
}


VARIANTS = {
    "global": {},
    "shifted-token-lr": {"reconstruct_from": "shifted", "token_lr": True},
    "shifted-output-keep-norm": {"reconstruct_from": "shifted_output", "keep_memory_norm": True},
    "shifted-lm-inner": {"reconstruct_from": "shifted", "lm_inner_weight": 0.5},
    "lm-inner-every-layer": {"lm_inner_weight": 0.5, "lm_inner_layers": LAYERS},
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("inner", INNER_CONFIGS.values(), ids=INNER_CONFIGS.keys())
def test_diagonal_equals_sequential(inner: InnerConfig, training: bool, variant: dict) -> None:
    model = make_model(inner, **variant).train(training)
    episode = make_episode()
    seq = run(model, episode, "sequential")
    diag = run(model, episode, "diagonal")
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(diag[0], seq[0], **tol)
    torch.testing.assert_close(diag[1], seq[1], **tol)
    for key in ("inner_loss", "inner_grad_norm", "memory_norm"):
        torch.testing.assert_close(diag[2][key], seq[2][key], **tol)
    assert ("outer_term" in diag[2]) == bool(inner.outer_weight) == ("outer_term" in seq[2])
    assert diag[3].keys() == seq[3].keys()
    for name, grad in seq[3].items():
        if grad is None:  # unused by prmt4 (the learner's memory) or not reached in first order
            assert diag[3][name] is None, name
        else:
            torch.testing.assert_close(diag[3][name], grad, **tol, msg=lambda m: f"{name}: {m}")
    # second order reaches everything prmt4 trains: backbone, memory init, global tokens, lrs, weights
    if training and inner.grad_mode != "first":
        for name in ("recurrence.memory", "recurrence.global_tokens", "recurrence.log_lr", "recurrence.log_stability",
                     "backbone.layers.0.wqkv", "backbone.tok_embeddings.weight"):
            assert seq[3][name] is not None and seq[3][name].abs().sum() > 0, name


def test_query_wider_than_the_global_tokens() -> None:
    """A wave holding the query pads to the query's width; the inner loop must not (the global
    tokens only cover the context segments)."""
    g = torch.Generator().manual_seed(1)
    segments = (random_segment([4, 2], g), random_segment([3, 4], g))
    context = Segment.from_lists([[1] * 6, [1] * 6])
    episode = Episode(segments, context, random_segment([6, 5], g), random_segment([4, 4], g))
    model = make_model(global_tokens=4).eval()
    seq = with_schedule(model, "sequential")(episode).logits
    torch.testing.assert_close(with_schedule(model, "diagonal")(episode).logits, seq, atol=1e-5, rtol=1e-5)


def test_inner_loop_lowers_reconstruction_error() -> None:
    model = make_model(InnerConfig(steps=3, lr=0.5)).eval()
    stats = model(make_episode()).stats
    assert stats["inner_loss"].shape == (3,)
    assert stats["inner_loss"][-1] < stats["inner_loss"][0]


def record_adapted(monkeypatch: pytest.MonkeyPatch, option: str) -> dict[object, list[torch.Tensor]]:
    """Every adapted memory `_adapt` returns, in call order, grouped by the model's value of `option`."""
    adapted: dict[object, list[torch.Tensor]] = defaultdict(list)
    original = PRMT4._adapt

    def recording(self, *args, **kwargs):
        state = original(self, *args, **kwargs)
        adapted[getattr(self.config, option)].append(state.detach())
        return state

    monkeypatch.setattr(PRMT4, "_adapt", recording)
    return adapted


def test_keep_memory_norm_moves_only_the_direction(monkeypatch) -> None:
    """With keep_memory_norm every adapted memory token keeps the initial token's norm; with one inner
    step the first segment's memory points the same way as without it (the layer is blind to scale)."""
    adapted = record_adapted(monkeypatch, "keep_memory_norm")
    inner = InnerConfig(steps=1, lr=0.5)
    for keep in (True, False):
        make_model(inner, keep_memory_norm=keep, schedule="sequential").eval()(make_episode())
    initial = make_model(inner).recurrence.memory.detach().norm(dim=-1)  # [L, M]
    for cell, state in enumerate(adapted[True]):
        torch.testing.assert_close(state[0].norm(dim=-1), initial[cell % LAYERS].expand_as(state[0, ..., 0]))
    for kept, free in zip(adapted[True][:LAYERS], adapted[False][:LAYERS]):  # segment 0
        torch.testing.assert_close(kept, free * kept.norm(dim=-1, keepdim=True) / free.norm(dim=-1, keepdim=True))
        assert free.norm() > 1.05 * kept.norm()  # without it the write grows the memory


@pytest.mark.parametrize("lm_layers", [1, 2])
def test_lm_inner_weight_changes_only_the_top_layers_writes(lm_layers: int, monkeypatch) -> None:
    """The next-token term enters the inner loss of the top `lm_inner_layers` layers and no other: the
    lower layers' memories are the same with and without it, the top layers' differ."""
    adapted = record_adapted(monkeypatch, "lm_inner_weight")
    for weight in (1.0, 0.0):
        make_model(lm_inner_weight=weight, lm_inner_layers=lm_layers, schedule="sequential").eval()(make_episode())
    for cell, (with_lm, without) in enumerate(zip(adapted[1.0], adapted[0.0])):
        if cell % LAYERS >= LAYERS - lm_layers:
            assert (with_lm - without).abs().max() > 1e-3, cell
        else:
            torch.testing.assert_close(with_lm, without)


def test_memory_is_carried_to_the_query() -> None:
    """Changing segment 0 of row 0 changes row 0's answer logits (through the memory alone: without
    inner steps the memory never changes and the context cannot reach the query)."""
    episode = make_episode()
    first = episode.segments[0]
    ids = first.ids.clone()
    ids[0, :2] = (ids[0, :2] % (VOCAB - 1)) + 1  # a different real token, never padding
    changed = attrs.evolve(episode, segments=(Segment(ids, first.mask), *episode.segments[1:]))
    for schedule in ("diagonal", "sequential"):
        model = make_model(schedule=schedule).eval()
        before, after = model(episode).logits, model(changed).logits
        assert not torch.allclose(before[0], after[0], atol=1e-6), schedule
        torch.testing.assert_close(before[1:], after[1:])  # other examples keep their own memory
        inert = make_model(InnerConfig(steps=0), schedule=schedule).eval()
        torch.testing.assert_close(inert(episode).logits, inert(changed).logits)


@pytest.mark.parametrize("layers,segments", [(1, 1), (3, 2), (4, 5), (2, 7)])
def test_waves_cover_the_grid_in_dependency_order(layers: int, segments: int) -> None:
    waves = diagonal_waves(layers, segments)
    assert len(waves) == layers + segments - 1
    done: dict[tuple[int, int], int] = {}
    for t, wave in enumerate(waves):
        assert [l for l, _ in wave] == list(range(wave[0][0], wave[-1][0] + 1))  # contiguous layers
        for l, s in wave:
            assert l + s == t and (l, s) not in done
            for dependency in ((l - 1, s), (l, s - 1)):
                if min(dependency) >= 0:
                    assert done.get(dependency, t) < t
            done[(l, s)] = t
    assert sorted(done) == [(l, s) for l in range(layers) for s in range(segments)]
    assert sorted(c for [c] in sequential_cells(layers, segments)) == sorted(done)


def record_cells(model: MetaModel, monkeypatch: pytest.MonkeyPatch):
    """Record every call of `_run_cells` with the outputs it left: h_{l,s} and mem_{l,s} per cell."""
    calls: list[list[tuple[int, int]]] = []
    outputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    original = PRMT4._run_cells

    def wrapped(self, model, cells, params, hidden, masks, ids, memory, query, stats):
        original(self, model, cells, params, hidden, masks, ids, memory, query, stats)
        calls.append(list(cells))
        for l, s in cells:
            outputs[(l, s)] = (hidden[s], memory[l])

    monkeypatch.setattr(PRMT4, "_run_cells", wrapped)
    embeds: list[torch.Tensor] = []
    embed = model.backbone.embed

    def recording_embed(ids):
        out = embed(ids)
        embeds.append(out)
        return out

    monkeypatch.setattr(model.backbone, "embed", recording_embed)
    return calls, outputs, embeds


@pytest.mark.parametrize(
    "lm_inner", [{}, {"lm_inner_weight": 0.5}, {"lm_inner_weight": 0.5, "lm_inner_layers": LAYERS}],
    ids=["reconstruct", "lm-inner", "lm-inner-every-layer"],
)
@pytest.mark.parametrize("schedule", ["diagonal", "sequential"])
def test_cell_depends_on_the_layer_below_and_the_segment_before(schedule: str, lm_inner: dict, monkeypatch) -> None:
    """h_{l,s} and mem_{l,s} depend on the embeddings of segments <= s and the weights of layers <= l,
    and on nothing later (second order, so the memory's dependence on its segment is in the graph)."""
    model = make_model(schedule=schedule, **lm_inner).train()
    episode = make_episode()
    calls, outputs, embeds = record_cells(model, monkeypatch)
    model(episode)
    segments = episode.num_segments + 1  # the query is the last column
    assert len(calls) == (LAYERS + segments - 1 if schedule == "diagonal" else LAYERS * segments)
    weights = [model.backbone.layers[j].wqkv for j in range(LAYERS)]
    for (l, s), (hidden, memory) in outputs.items():
        for name, value in (("hidden", hidden), ("memory", memory)):
            if name == "memory" and s == segments - 1:
                continue  # the query does not adapt memory
            grads = torch.autograd.grad(value.sum(), [*embeds, *weights], retain_graph=True, allow_unused=True)
            reached = [g is not None and bool(g.abs().sum() > 0) for g in grads]
            assert reached[:segments] == [k <= s for k in range(segments)], (name, l, s)
            assert reached[segments:] == [j <= l for j in range(LAYERS)], (name, l, s)


def test_refuses_other_backbones_and_bad_input() -> None:
    with pytest.raises(TTTError, match="runs the llama backbone's blocks"):
        PRMT4(PRMT4Config(), backbone=torch.nn.Linear(2, 2), inner=InnerConfig())
    backbone = Llama(LlamaConfig(layers=1, dim=8, heads=2), vocab_size=VOCAB)
    with pytest.raises(TTTError, match=r"set \[recurrence\] stability, not \[inner\] stability"):
        PRMT4(PRMT4Config(), backbone=backbone, inner=InnerConfig(stability=0.1))
    model = make_model(global_tokens=6)
    with pytest.raises(TTTError, match="segment of 8 tokens is longer than .* global_tokens = 6"):
        model(make_episode())
    with pytest.raises(ValueError, match="option 'lm_inner_weight' must be >= 0; got -1.0"):
        PRMT4Config(lm_inner_weight=-1.0)
    with pytest.raises(TTTError, match="lm_inner_layers = 4 is more than the backbone's 3 layers"):
        make_model(lm_inner_layers=4)


def test_registered_through_the_hook() -> None:
    from ttt_core.registry import Provider, ProviderRegistry, Registry
    from ttt_plugin_rmt import plugin

    registry = Registry()
    plugin.ttt_register_components(ProviderRegistry(registry, Provider("rmt", "ttt-plugin-rmt", "0.1.0")))
    component = registry["recurrence"].get("prmt4")
    assert component.config is PRMT4Config
    assert component.resolve_factory() is PRMT4


@pytest.mark.skipif(not (REPO / "recipes").is_dir(), reason="recipes live in the source tree")
def test_recipes_build_and_train_one_step() -> None:
    from ttt_core.recipe import load_recipe
    from ttt_core.build import build

    flagship = load_recipe(REPO / "recipes" / "prmt4_ar.toml")
    assert flagship["recurrence"].name == "prmt4" and flagship["recurrence"].config.schedule == "diagonal"
    built = build(load_recipe(REPO / "recipes" / "tiny" / "prmt4_tiny.toml"))
    assert isinstance(built.model.recurrence, PRMT4)
    episode = built.task.train_batch(0, 4)
    loss = answer_loss(built.model(episode).logits, episode.target)
    loss.backward()
    assert torch.isfinite(loss) and built.model.recurrence.memory.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "inner,variant",  # each trace takes ~20 s: the recipes' setting and two that cover the other code paths
    [
        ("second-sgd", "lm-inner-every-layer"),
        ("truncated-adam-clip-per-step-lr", "lm-inner-every-layer"),
        ("first-momentum-outer-weight", "global"),
    ],
)
def test_compiled_training_step_equals_eager(inner: str, variant: str) -> None:
    """`[train] compile`: the outer gradient as one traced functional program (the inner loop by
    `torch.func.grad`, padded segments) gives the eager loss, logits and gradients."""
    from ttt_core.train.functional import FunctionalStep
    from ttt_core.objective import step_loss

    config = INNER_CONFIGS[inner]
    episode = make_episode()
    eager = make_model(config, **VARIANTS[variant])
    loss, out = step_loss(eager, episode)  # the answer loss plus the outer-weighted inner term
    loss.backward()
    logits, grads = out.logits.detach(), {name: p.grad for name, p in eager.named_parameters()}
    functional = make_model(config, **VARIANTS[variant])
    torch.compiler.reset()  # dynamo keeps 8 compiled steps per process: one per test model
    f_loss, f_out = FunctionalStep(functional, compile=True, backend="aot_eager")(episode)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_loss, loss.detach(), **tol)
    torch.testing.assert_close(f_out.logits, logits, **tol)
    for name, param in functional.named_parameters():
        if grads[name] is None:  # the learner's memory (unused by prmt4)
            assert param.grad is None or not param.grad.any(), name
        else:
            torch.testing.assert_close(param.grad, grads[name], **tol, msg=lambda m: f"{name}: {m}")
