"""The model as the builder assembles it: memory parameters reach the optimiser's memory group, a
learner without state leaves no inner-loop parameters, unused slots are filled, capabilities are
checked on the built objects, and running out of memory is one line naming the slot."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch

from ttt_core.build import build_model, build_task, check_capabilities, component_specs
from ttt_core.builtin.adamw import AdamW
from ttt_core.builtin.configs import AdamWConfig, IdentityWriterConfig, LlamaConfig, MemoryTokensConfig, NoMemoryConfig
from ttt_core.builtin.llama import Llama
from ttt_core.builtin.memory_tokens import MemoryTokens
from ttt_core.builtin.no_memory import NoMemory
from ttt_core.builtin.writers import IdentityWriter
from ttt_core.config import InnerConfig
from ttt_core.errors import TTTError
from ttt_core.interfaces import Backbone, BackboneOutput, missing_capability
from ttt_core.model import MetaModel
from ttt_core.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny" / "baseline_ar_tiny.toml"


def model_with(recurrence_factory, learner: str = "none") -> MetaModel:
    torch.manual_seed(0)
    inner = InnerConfig(steps=1)
    backbone = Llama(LlamaConfig(layers=2, dim=16, heads=2), vocab_size=11)
    writer = IdentityWriter(IdentityWriterConfig(), dim=16)
    if learner == "none":
        memory = NoMemory(NoMemoryConfig(), backbone=backbone, writer=writer)
    else:
        memory = MemoryTokens(MemoryTokensConfig(tokens=2), backbone=backbone, writer=writer)
    return MetaModel(backbone, memory, writer, recurrence_factory(backbone, inner), inner)


def prmt4(backbone, inner):
    from ttt_plugin_rmt.prmt4 import PRMT4
    from ttt_plugin_rmt.prmt4_config import PRMT4Config

    return PRMT4(PRMT4Config(memory_tokens=2, global_tokens=8), backbone=backbone, inner=inner)


def rmt(backbone, inner):
    from ttt_plugin_rmt.rmt import RMT
    from ttt_plugin_rmt.rmt_config import RMTConfig

    return RMT(RMTConfig(memory_tokens=2), backbone=backbone)


def lr_of(optimizer: AdamW, param: torch.nn.Parameter) -> float:
    (lr,) = [g["lr"] for g in optimizer.optimizer.param_groups if any(p is param for p in g["params"])]
    return lr


@pytest.mark.parametrize("recurrence", [prmt4, rmt], ids=["prmt4", "rmt"])
def test_memory_lr_reaches_the_recurrences_memory(recurrence) -> None:
    pytest.importorskip("ttt_plugin_rmt")
    model = model_with(recurrence)
    groups = model.param_groups()
    assert len(groups["memory"]) == 1 and groups["memory"][0] is model.recurrence.memory
    optimizer = AdamW(AdamWConfig(lr=1e-3, memory_lr=0.25), model=model, total_steps=10)
    assert lr_of(optimizer, model.recurrence.memory) == 0.25
    others = [p for p in model.recurrence.parameters() if p is not model.recurrence.memory]
    assert all(lr_of(optimizer, p) == 1e-3 for p in others)  # prmt4's global tokens, rates: meta
    assert bool(others) == (recurrence is prmt4)
    seen = [id(p) for params in groups.values() for p in params]
    assert sorted(seen) == sorted({id(p) for p in model.parameters()})  # every parameter once


def test_memory_tokens_groups_are_as_before() -> None:
    """The baseline's groups: the learner's memory (not the backbone it holds), then the inner lr."""
    from ttt_core.builtin.single import SingleSegment
    from ttt_core.builtin.configs import SingleConfig

    model = model_with(lambda backbone, inner: SingleSegment(SingleConfig()), learner="memory_tokens")
    groups = model.param_groups()
    same = lambda a, b: len(a) == len(b) and all(x is y for x, y in zip(a, b))  # noqa: E731
    assert same(groups["memory"], [model.learner.memory])
    assert same(groups["meta"], [model.inner.log_lr])
    assert same(groups["backbone"], list(model.backbone.parameters()))


def test_a_learner_without_state_leaves_no_inner_parameters_and_old_checkpoints_load() -> None:
    pytest.importorskip("ttt_plugin_rmt")
    model = model_with(prmt4)
    names = list(model.state_dict())
    assert not [n for n in names if n.startswith(("inner.", "writer."))], names
    assert all(n.startswith("learner.backbone.") for n in names if n.startswith("learner.")), names  # it holds it
    # a checkpoint from when prmt4 recipes built (and never ran) a memory-token learner and its lr
    old = {**model.state_dict(), "learner.memory": torch.zeros(8, 16), "inner.log_lr": torch.zeros(1)}
    model.load_state_dict(old)
    assert model.inner.config.steps == 1 and not list(model.inner.parameters())


def prmt4_recipe():
    """The tiny prmt4 recipe: validation leaves its unused learner and writer slots out."""
    pytest.importorskip("ttt_plugin_rmt")
    recipe = load_recipe(TINY.parent / "prmt4_tiny.toml")
    assert not any(slot.startswith("memory.") for slot in recipe.components)
    return recipe


def test_the_builder_fills_unused_slots() -> None:
    recipe = prmt4_recipe()
    specs = component_specs(recipe)
    assert specs["memory.learner"].name == "none" and specs["memory.writer"].name == "identity"
    model = build_model(recipe, build_task(recipe))
    assert isinstance(model.learner, NoMemory) and isinstance(model.writer, IdentityWriter)
    assert not list(model.inner.parameters())


class PlainBackbone(torch.nn.Module, Backbone):
    """A backbone with only the core contract: one sequence per row, no functional blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.dim, self.n_layers, self.vocab_size = 4, 1, 5
        self.layers = torch.nn.ModuleList()

    def embed(self, ids):
        return torch.zeros(*ids.shape, 4)

    def forward(self, embeds, mask=None, return_hidden=False):
        return BackboneOutput(torch.zeros(*embeds.shape[:2], 5), None)

    def head(self, hidden):
        return torch.zeros(*hidden.shape[:-1], 5)


def test_capabilities_of_the_builtins() -> None:
    llama = Llama(LlamaConfig(layers=1, dim=8, heads=2), vocab_size=5)
    assert missing_capability(llama, "packed_rows") is None and missing_capability(llama, "layer_blocks") is None
    assert missing_capability(PlainBackbone(), "packed_rows") == "its forward() takes no positions, segments"
    assert "it has no norm_eps, stacked_layer_params" in missing_capability(PlainBackbone(), "layer_blocks")


def test_a_component_lacking_what_it_declares_or_what_another_needs_is_one_line() -> None:
    recipe = load_recipe(TINY, ["memory.learner.pack_pairs=true"])
    specs = component_specs(recipe)
    with pytest.raises(TTTError) as declared:
        check_capabilities("backbone", PlainBackbone(), specs)
    assert str(declared.value) == (
        "[backbone] backbone 'llama' declares capability 'packed_rows' but lacks it: "
        "its forward() takes no positions, segments"
    )
    specs["backbone"] = attrs.evolve(specs["backbone"], component=attrs.evolve(specs["backbone"].component, provides=()))
    with pytest.raises(TTTError) as needed:
        check_capabilities("backbone", PlainBackbone(), specs)
    assert str(needed.value) == (
        "[memory.learner] inner learner 'memory_tokens' needs capability 'packed_rows' of the backbone; "
        "backbone 'llama' lacks it: its forward() takes no positions, segments"
    )
    specs = component_specs(prmt4_recipe())
    specs["backbone"] = attrs.evolve(specs["backbone"], component=attrs.evolve(specs["backbone"].component, provides=()))
    with pytest.raises(TTTError, match=r"^\[recurrence\] recurrence 'prmt4' needs capability 'layer_blocks' of the backbone"):
        check_capabilities("backbone", PlainBackbone(), specs)


def test_the_task_declares_export() -> None:
    recipe = load_recipe(TINY)
    assert "export" in recipe["task"].component.provides
    build_task(recipe)  # checked against ExportsData


def test_running_out_of_memory_while_building_names_the_slot() -> None:
    recipe = load_recipe(TINY, ["backbone.dim=4194304", "backbone.heads=1"])
    with pytest.raises(TTTError) as error:
        build_model(recipe, build_task(recipe))
    message = str(error.value)
    assert message.startswith("[backbone] backbone 'llama': ran out of memory while building it (")
    assert "\n" not in message and "is a width or size too large?" in message
