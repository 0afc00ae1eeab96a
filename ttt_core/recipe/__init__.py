"""TOML recipes -> validated specs.

A recipe is a TOML file. Component slots are tables whose `name` picks a registered component and
whose other keys are that component's options::

    extends = ["base/ar.toml"]          # resolved relative to this file, deep-merged in order
    requires = ["ttt-plugin-rmt>=0.1"]

    [recurrence]
    name = "rmt4"

    [memory.writer]
    name = "cross_attention"
    heads = 4

Merging: tables merge key by key, except that a slot whose `name` changes is replaced whole (the
old component's options mean nothing to the new one). Every problem is collected and reported at
once, one line each, as `FILE: [TABLE] MESSAGE`.

One module per job: `schema` (Recipe, ComponentSpec, Stage), `reading` (files, `extends`, merge),
`overrides` (`--set`), `structure` (cattrs), `validation` (build_recipe, load_recipe), `stages`
(`[[stages]]`), `toml_output` (dumps_toml).
"""

from ttt_core.recipe.overrides import apply_overrides, parse_override, set_path, tomllib
from ttt_core.recipe.reading import display, load_raw, merge, read_toml
from ttt_core.recipe.schema import (
    DEFAULT_SLOTS,
    SLOTS,
    STAGE_KEYS,
    TABLES,
    TOP_LEVEL_KEYS,
    ComponentSpec,
    Recipe,
    Stage,
)
from ttt_core.recipe.stages import stage_tables
from ttt_core.recipe.structure import CONVERTER, describe, make_converter, options_of, structure_options
from ttt_core.recipe.toml_output import dumps_toml
from ttt_core.recipe.validation import build_recipe, load_recipe

__all__ = [
    "CONVERTER",
    "DEFAULT_SLOTS",
    "SLOTS",
    "STAGE_KEYS",
    "TABLES",
    "TOP_LEVEL_KEYS",
    "ComponentSpec",
    "Recipe",
    "Stage",
    "apply_overrides",
    "build_recipe",
    "describe",
    "display",
    "dumps_toml",
    "load_raw",
    "load_recipe",
    "make_converter",
    "merge",
    "options_of",
    "parse_override",
    "read_toml",
    "set_path",
    "stage_tables",
    "structure_options",
    "tomllib",
]
