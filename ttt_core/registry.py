"""One registry per component kind: name -> (attrs config class, factory, provider).

Built-ins and plugins fill it through the `ttt_register_components` hook. Factories may be given as
`"package.module:function"` strings so that registering a component imports nothing heavy; the
string is imported only when the component is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from ttt_core.errors import RegistryError, did_you_mean
from ttt_core.kinds import KINDS

Needs = Mapping[str, tuple[str, ...]]
"""slot -> capability names (`ttt_core.interfaces.CAPABILITIES`) the component in that slot must have."""

# Components that first-party plugins provide, so that an unknown name can say what to install.
FIRST_PARTY: dict[tuple[str, str], str] = {
    **{("recurrence", n): "ttt-plugin-rmt" for n in ("rmt", "rmt4", "prmt4")},
    **{
        ("memory_writer", n): "ttt-plugin-writers"
        for n in ("cross_attention", "neural_memory", "mlp", "memory_mlp")
    },
    ("inner_learner", "lora"): "ttt-plugin-lora",
    ("inner_learner", "ttt_linear"): "ttt-plugin-layers",
    ("inner_learner", "ttt_mlp"): "ttt-plugin-layers",
    ("backbone", "ttt_lm"): "ttt-plugin-layers",
    ("backbone", "hf"): "ttt-plugin-hf",
    **{("task", f"babilong_qa{i}"): "ttt-plugin-babilong" for i in range(1, 21)},
    ("task", "babilong"): "ttt-plugin-babilong",
}


@attrs.frozen
class Provider:
    """Who registered a component: the plugin's entry-point name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.distribution} {self.version} (plugin '{self.plugin}')"


@attrs.frozen
class Component:
    kind: str
    name: str
    config: type
    factory: Callable[..., Any] | str
    description: str
    aliases: tuple[str, ...]
    provider: Provider
    slots: tuple[str, ...] | None = None
    """Recurrences only: which optional slots (`ttt_core.kinds.OPTIONAL_SLOTS`) it uses; None: all."""
    provides: tuple[str, ...] = ()
    """Capabilities (names in `ttt_core.interfaces.CAPABILITIES`) every built instance has."""
    needs: Needs | Callable[[Any], Needs] = attrs.field(factory=dict)
    """Capabilities it needs of the components in other slots, or a function of its config giving them."""
    tokenizer: Callable[[Any], Any] | str | None = None
    """Backbones only: a function of its config (or a ``"module:function"`` string) giving the
    tokenizer of the model it loads (a `ttt_core.interfaces.TextTokenizer`), or None for the task's
    own; the builder hands it to a task that takes one (``takes_tokenizer``)."""

    def needs_for(self, config: Any) -> Needs:
        """What this component, configured by `config`, needs of the other slots."""
        return self.needs(config) if callable(self.needs) else self.needs

    def _resolve(self, what: str, target: Callable[..., Any] | str) -> Callable[..., Any]:
        if callable(target):
            return target
        module_name, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.kind} '{self.name}' from {self.provider}: cannot import {what} "
                f"'{target}': {type(exc).__name__}: {exc}"
            ) from exc

    def resolve_factory(self) -> Callable[..., Any]:
        return self._resolve("factory", self.factory)

    def model_tokenizer(self, config: Any) -> Any:
        """The tokenizer this backbone, configured by `config`, supplies to text tasks; None: none."""
        return None if self.tokenizer is None else self._resolve("tokenizer", self.tokenizer)(config)

    def build(self, config: Any, **context: Any) -> Any:
        """Instantiate the component from its config and the objects it is built around."""
        return self.resolve_factory()(config, **context)

    def same_as(self, other: Component) -> bool:
        mine = (self.config, self.factory, self.aliases, self.slots, self.provides, self.needs, self.tokenizer)
        return mine == (other.config, other.factory, other.aliases, other.slots, other.provides, other.needs,
                        other.tokenizer)


class KindRegistry:
    """The components of one kind, looked up by name or alias."""

    def __init__(self, kind: str, disabled: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.disabled = {} if disabled is None else disabled
        """distribution -> why it is not loaded and how to enable it (shared by all kinds)."""
        self._components: dict[str, Component] = {}
        self._aliases: dict[str, str] = {}

    def add(self, component: Component) -> None:
        if self.check(component):
            self._components[component.name] = component
            for alias in component.aliases:
                self._aliases[alias] = component.name

    def check(self, component: Component) -> bool:
        """True if `component` can be added, False if it is already there; raises on a clash."""
        existing = self._lookup(component.name)
        if existing is not None:
            if existing.same_as(component) and existing.name == component.name:
                return False
            raise RegistryError(
                f"{self.kind} '{component.name}' is registered twice: by {existing.provider} "
                f"and by {component.provider}"
            )
        for alias in component.aliases:
            clash = self._lookup(alias)
            if clash is not None:
                raise RegistryError(
                    f"{self.kind} alias '{alias}' of '{component.name}' ({component.provider}) "
                    f"clashes with '{clash.name}' ({clash.provider})"
                )
        return True

    def _lookup(self, name: str) -> Component | None:
        return self._components.get(self._aliases.get(name, name))

    def __contains__(self, name: str) -> bool:
        return self._lookup(name) is not None

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._components.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._components)

    def names(self) -> list[str]:
        return sorted(self._components)

    def get(self, name: str, broken: dict[str, str] | None = None) -> Component:
        """The component called `name`; an unknown name says what exists and what to install.

        `broken` maps distribution -> load error of plugins that failed, so that a component
        from a broken plugin is reported with the plugin's error instead of as a typo.
        """
        found = self._lookup(name)
        if found is not None:
            return found
        raise RegistryError(self.unknown_message(name, broken or {}))

    def unknown_message(self, name: str, broken: dict[str, str]) -> str:
        distribution = FIRST_PARTY.get((self.kind, name))
        kind = self.kind.replace("_", " ")
        if distribution is not None and distribution in broken:
            return (
                f"{kind} '{name}' comes from {distribution}, which failed to load: "
                f"{broken[distribution]}"
            )
        if distribution is not None and distribution in self.disabled:
            return (
                f"{kind} '{name}' comes from {distribution}, which is installed but disabled: "
                f"{self.disabled[distribution]}"
            )
        if distribution is not None:
            return f"unknown {kind} '{name}': it is provided by {distribution} (pip install {distribution})"
        available = ", ".join(self.names()) or "none"
        message = (
            f"unknown {kind} '{name}'{did_you_mean(name, [*self._components, *self._aliases])}; "
            f"available: {available}"
        )
        if broken:
            failed = "; ".join(f"{dist}: {error}" for dist, error in broken.items())
            message += f" (plugins that failed to load: {failed})"
        if self.disabled:
            message += (f" (installed plugins that TTT_PLUGINS or TTT_DISABLE_PLUGIN_AUTOLOAD leave out: "
                        f"{', '.join(sorted(self.disabled))})")
        return message


class Registry:
    """All kinds. `add` is what a plugin's `ttt_register_components` hook calls."""

    def __init__(self) -> None:
        self.disabled: dict[str, str] = {}
        """distribution -> why a plugin switch left it out (filled by the plugin host)."""
        self.kinds: dict[str, KindRegistry] = {kind: KindRegistry(kind, self.disabled) for kind in KINDS}

    def __getitem__(self, kind: str) -> KindRegistry:
        try:
            return self.kinds[kind]
        except KeyError:
            raise RegistryError(
                f"unknown component kind '{kind}'{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}"
            ) from None

    def add_component(self, component: Component) -> None:
        self[component.kind].add(component)

    def add_all(self, components: list[Component]) -> None:
        """Add all or none: a plugin half registered would be confusing."""
        for component in components:
            self[component.kind].check(component)
        for component in components:
            self.add_component(component)

    def components(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from self.kinds[kind]


@attrs.define
class ProviderRegistry:
    """The view of the registry handed to one plugin's hook: it stamps that plugin as provider."""

    registry: Registry
    provider: Provider
    added: list[tuple[str, str]] = attrs.field(factory=list)

    def add(
        self,
        kind: str,
        name: str,
        *,
        config: type,
        factory: Callable[..., Any] | str,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
        slots: tuple[str, ...] | list[str] | None = None,
        provides: tuple[str, ...] | list[str] = (),
        needs: Needs | Callable[[Any], Needs] | None = None,
        tokenizer: Callable[[Any], Any] | str | None = None,
    ) -> None:
        """Register a component.

        Args:
            kind: one of `KINDS`.
            name: the name recipes use in the slot's `name` key.
            config: an attrs class; the slot's other keys are structured into it.
            factory: `factory(config, **context)` returning the component, or a
                `"module:function"` string imported only when the component is built.
            aliases: other names accepted in recipes.
            description: one line shown by `ttt list`.
            slots: recurrences only: the optional slots (`memory.learner`, `memory.writer`) it
                uses; a recipe that fills another is refused, and the builder fills those itself.
                None (default): all of them.
            provides: capabilities the component has (`ttt_core.interfaces.CAPABILITIES`: e.g.
                "layer_blocks" for a backbone whose blocks run functionally).
            needs: slot -> capabilities it needs of the component in that slot (e.g.
                {"backbone": ("layer_blocks",)}), or a function of its config returning that;
                `ttt validate` refuses a recipe that does not provide them.
            tokenizer: backbones only: `tokenizer(config)` giving the model's own tokenizer (a
                `ttt_core.interfaces.TextTokenizer`) or None, or a `"module:function"` string; the
                builder hands it to a task that declares "takes_tokenizer".
        """
        if not attrs.has(config):
            raise RegistryError(
                f"{kind} '{name}' from {self.provider}: config must be an attrs class, got {config!r}"
            )
        self._check_declarations(kind, name, slots, provides, needs)
        if tokenizer is not None and kind != "backbone":
            raise RegistryError(f"{kind} '{name}' from {self.provider}: only a backbone supplies a tokenizer")
        component = Component(
            kind=kind,
            name=name,
            config=config,
            factory=factory,
            description=description,
            aliases=tuple(aliases),
            provider=self.provider,
            slots=None if slots is None else tuple(slots),
            provides=tuple(provides),
            needs=needs if callable(needs) else dict(needs or {}),
            tokenizer=tokenizer,
        )
        self.registry.add_component(component)
        self.added.append((kind, name))

    def _check_declarations(self, kind: str, name: str, slots: Any, provides: Any, needs: Any) -> None:
        """Slot and capability names are checked where they are written: a typo would otherwise mark a
        slot unused or a capability missing without a word."""
        from ttt_core.interfaces import CAPABILITIES
        from ttt_core.kinds import BY_SLOT, OPTIONAL_SLOTS

        where = f"{kind} '{name}' from {self.provider}"
        if slots is not None and kind != "recurrence":
            raise RegistryError(f"{where}: only a recurrence declares the slots it uses")
        for slot in slots or ():
            if slot not in OPTIONAL_SLOTS:
                raise RegistryError(f"{where}: slots: '{slot}' is not an optional slot{did_you_mean(slot, OPTIONAL_SLOTS)}; "
                                    f"optional slots: {', '.join(OPTIONAL_SLOTS)}")
        declared = [*provides, *(c for caps in (needs.values() if isinstance(needs, Mapping) else ()) for c in caps)]
        for capability in declared:
            if capability not in CAPABILITIES:
                raise RegistryError(f"{where}: unknown capability '{capability}'{did_you_mean(capability, CAPABILITIES)}; "
                                    f"known: {', '.join(CAPABILITIES)}")
        for slot in needs if isinstance(needs, Mapping) else ():
            if slot not in BY_SLOT:
                raise RegistryError(f"{where}: needs: unknown slot '{slot}'{did_you_mean(slot, BY_SLOT)}")
