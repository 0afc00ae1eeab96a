"""The validated recipe: filled component slots, the standard tables, and a curriculum's stages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import attrs

from ttt_core.config import DistributedConfig, EvalConfig, InnerConfig, LoggingConfig, TrainConfig
from ttt_core.kinds import KINDS_TABLE
from ttt_core.recipe.overrides import set_path
from ttt_core.recipe.structure import CONVERTER
from ttt_core.registry import Component

SLOTS: dict[str, str] = {kind.slot: kind.name for kind in KINDS_TABLE}
"""slot path -> component kind"""
DEFAULT_SLOTS: dict[str, str] = {kind.slot: kind.default for kind in KINDS_TABLE if kind.default is not None}
"""slots that may be left out, and the component they default to"""
TABLES: dict[str, type] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "distributed": DistributedConfig,
    "inner": InnerConfig,
    "logging": LoggingConfig,
}
"""the standard tables every recipe has"""
STAGE_KEYS = ("name", "steps", "set")
CURRICULUM_KEYS = ("carry_set",)
TOP_LEVEL_KEYS = (
    "extends",
    "requires",
    "description",
    *dict.fromkeys(slot.split(".")[0] for slot in SLOTS),
    "deepspeed",
    "stages",
    "curriculum",
    *TABLES,
)


@attrs.frozen
class ComponentSpec:
    """A filled slot: the chosen component and its structured config."""

    slot: str
    component: Component
    config: Any

    @property
    def name(self) -> str:
        return self.component.name

    def build(self, **context: Any) -> Any:
        return self.component.build(self.config, **context)


@attrs.frozen
class Stage:
    """One stage of a curriculum: the recipe with the stage's `set` overrides and `steps`.

    `overrides` is what the stage sets on top of the recipe, carried-over keys included (see
    `ttt_core.recipe.stages`). Stage k > 0 starts from stage k-1's final weights (`train.init_from`,
    filled in by the runner, which knows the run directory: `with_init_from`)."""

    name: str
    steps: int
    overrides: dict[str, Any]
    recipe: Recipe

    def table(self) -> dict[str, Any]:
        return {"name": self.name, "steps": self.steps, "set": dict(self.overrides)}


@attrs.frozen
class Recipe:
    source: str
    data: dict[str, Any]
    """The merged TOML after `extends` and overrides (what was written, not the defaults)."""
    components: dict[str, ComponentSpec]
    """The filled slots; an optional slot the recurrence does not use is absent (the builder fills it)."""
    train: TrainConfig
    eval: EvalConfig
    distributed: DistributedConfig
    inner: InnerConfig
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    requires: tuple[str, ...] = ()
    deepspeed: dict[str, Any] | None = None
    stages: tuple[Stage, ...] = ()
    """A curriculum (`[[stages]]`): `ttt run` trains these in order instead of the recipe itself."""

    def __getitem__(self, slot: str) -> ComponentSpec:
        return self.components[slot]

    def resolved(self) -> dict[str, Any]:
        """The full recipe, every default filled in: what `ttt show` prints and a run stores.

        A curriculum's stages are written with every key they set (carried-over ones included), so
        the stored recipe reads back the same without `[curriculum]`."""
        out: dict[str, Any] = {}
        if "description" in self.data:
            out["description"] = self.data["description"]
        if self.requires:
            out["requires"] = list(self.requires)
        for slot, spec in self.components.items():
            options = CONVERTER.unstructure(spec.config)
            if hasattr(spec.config, "written_options"):  # configs that derive fields from others
                options = spec.config.written_options(options)
            table = {"name": spec.name, **options}
            set_path(out, slot.split("."), table)
        for name in TABLES:
            out[name] = CONVERTER.unstructure(getattr(self, name))
        # a DeepSpeed JSON file is stored inline, so that a run directory is self-contained
        out["distributed"]["deepspeed_config"] = None
        if self.deepspeed is not None:
            out["deepspeed"] = self.deepspeed
        if self.stages:
            out["stages"] = [stage.table() for stage in self.stages]
        return out

    def with_init_from(self, source: str) -> Recipe:
        """This recipe starting from the weights of `source` (a checkpoint or run directory).

        A relative `source` is made absolute, so that the stored recipe (read back relative to its
        own file) still names it."""
        source = str(Path(source).absolute())
        data = copy.deepcopy(self.data)
        set_path(data, ["train", "init_from"], source)
        return attrs.evolve(self, data=data, train=attrs.evolve(self.train, init_from=source))
