"""Registration with ttt-core (entry point `babilong` in the group `ttt`): tasks `babilong_qa1`..`babilong_qa8`
and `babilong_mix` (several of them in turn).

Imports no torch: a factory imports the task when it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ttt_core import hookimpl

from ttt_plugin_babilong.babilong_config import BabilongConfig, BabilongMixConfig

DESCRIPTIONS: dict[str, str] = {
    "qa1": "single supporting fact (where is an actor)",
    "qa2": "two supporting facts (where is an object)",
    "qa3": "three supporting facts (where was an object before a place)",
    "qa4": "two-argument relations (what is north of a place)",
    "qa5": "three-argument relations (who gave what to whom)",
    "qa6": "yes/no questions (is an actor in a place)",
    "qa7": "counting (how many objects an actor carries)",
    "qa8": "lists (what an actor carries)",
}


def _factory(qa: str) -> Callable[..., Any]:
    def build(config: BabilongConfig, tokenizer: Any = None, **_: Any) -> Any:
        from ttt_plugin_babilong.task import Babilong

        return Babilong(config, qa, tokenizer)

    build.__name__ = build.__qualname__ = f"build_babilong_{qa}"
    return build


FACTORIES: dict[str, Callable[..., Any]] = {qa: _factory(qa) for qa in DESCRIPTIONS}


def build_babilong_mix(config: BabilongMixConfig, tokenizer: Any = None, **_: Any) -> Any:
    from ttt_plugin_babilong.task import BabilongMix

    return BabilongMix(config, tokenizer)


@hookimpl
def ttt_register_components(registry: Any) -> None:
    for qa, what in DESCRIPTIONS.items():
        registry.add(
            "task", f"babilong_{qa}", config=BabilongConfig, factory=FACTORIES[qa], provides=("export", "takes_tokenizer"),
            description=f"BABILong {qa}: bAbI {what} in distractor text of a given length",
        )
    registry.add(
        "task", "babilong_mix", config=BabilongMixConfig, factory=build_babilong_mix, provides=("export", "takes_tokenizer"),
        description="BABILong tasks in turn (default qa1-qa5): one model for BABILong's mean",
    )
