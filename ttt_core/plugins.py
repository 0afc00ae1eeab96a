"""Plugin discovery: built-ins and entry points in the group `ttt`, each loaded in isolation.

A plugin that fails to import or whose hooks are invalid is recorded with its error instead of
crashing; it only matters when a run needs one of its components.

Switches:
    TTT_DISABLE_PLUGIN_AUTOLOAD=1   load no entry points (built-ins only)
    TTT_PLUGINS=a,b                 load only these entry points (by entry-point or distribution
                                    name); an empty value loads none

A plugin left out by a switch is recorded as disabled, so that a recipe needing one of its components
says how to enable it instead of "pip install". A name in TTT_PLUGINS that matches no installed
plugin is reported on stderr (once per process: `default_host` is cached), naming the installed ones.
A plugin module that defines a `ttt_*` function without `@hookimpl` is reported as broken: pluggy
would ignore the function, and the plugin would load without registering anything.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import sys
import traceback
from importlib import metadata
from typing import Any

import attrs
import pluggy

import ttt_core.hookspecs as hookspecs
from ttt_core.registry import Provider, ProviderRegistry, Registry

ENTRY_POINT_GROUP = "ttt"
BUILTIN = "builtin"


@attrs.define
class PluginInfo:
    """What `ttt plugins` shows about one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    components: list[tuple[str, str]] = attrs.field(factory=list)
    error: str | None = None
    traceback: str | None = None

    @property
    def provider(self) -> Provider:
        return Provider(plugin=self.name, distribution=self.distribution, version=self.version)


def core_version() -> str:
    try:
        return metadata.version("ttt-core")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@attrs.define
class PluginHost:
    """The plugin manager, the registry it filled and what happened to each plugin."""

    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo]

    disabled: list[PluginInfo] = attrs.field(factory=list)
    """Installed plugins that a switch (TTT_PLUGINS, TTT_DISABLE_PLUGIN_AUTOLOAD) left out."""
    unknown_selected: list[str] = attrs.field(factory=list)
    """Names in TTT_PLUGINS that match no installed plugin."""

    def broken(self) -> dict[str, str]:
        """distribution -> load error, for every plugin that failed."""
        return {p.distribution: p.error for p in self.plugins if p.error}

    def versions(self) -> dict[str, str]:
        return {p.distribution: p.version for p in self.plugins if not p.error}


def _switches() -> tuple[bool, set[str] | None]:
    """(autoload disabled, the names TTT_PLUGINS allows or None for all)."""
    disabled = os.environ.get("TTT_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0")
    allow = os.environ.get("TTT_PLUGINS")
    return disabled, None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}


def _names(entry_point: metadata.EntryPoint) -> set[str]:
    return {entry_point.name, entry_point.dist.name} if entry_point.dist else {entry_point.name}


def _disabled_reason(entry_point: metadata.EntryPoint) -> str | None:
    """Why a switch leaves this entry point out, with how to enable it; None if it is loaded."""
    autoload_off, allow = _switches()
    if autoload_off:
        return "TTT_DISABLE_PLUGIN_AUTOLOAD is set (unset it to load installed plugins)"
    if allow is not None and not _names(entry_point) & allow:
        shown = os.environ.get("TTT_PLUGINS", "")
        return f"TTT_PLUGINS='{shown}' does not name it (add '{entry_point.name}' to TTT_PLUGINS, or unset it)"
    return None


def _unknown_selected(entry_points: list[metadata.EntryPoint]) -> list[str]:
    autoload_off, allow = _switches()
    if autoload_off or not allow:
        return []
    known = set().union(*(_names(ep) for ep in entry_points)) if entry_points else set()
    return sorted(allow - known)


HOOK_NAMES = tuple(name for name in dir(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_"))


def _unmarked_hooks(plugin: Any) -> list[str]:
    """Hooks the plugin defines without `@hookimpl` (pluggy silently skips them): functions named like a
    hook spec, or close to one (a misspelling); other `ttt_*` helpers are the plugin's own business."""
    marker = f"{hookspecs.PROJECT}_impl"
    module = getattr(plugin, "__name__", None) if inspect.ismodule(plugin) else None
    found = []
    for name in dir(plugin):
        if not name.startswith("ttt_") or not (name in HOOK_NAMES or difflib.get_close_matches(name, HOOK_NAMES, cutoff=0.85)):
            continue
        function = getattr(plugin, name, None)
        if not (inspect.isfunction(function) or inspect.ismethod(function)):
            continue
        if module is not None and getattr(function, "__module__", None) != module:
            continue  # imported from elsewhere, not this plugin's hook
        if not hasattr(function, marker):
            found.append(name)
    return found


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _register(host: PluginHost, info: PluginInfo, plugin: Any) -> None:
    """Register `plugin` with pluggy, validate its hooks, then let it add its components.

    Any failure unregisters the plugin and leaves the registry as it was before it.
    """
    manager = host.manager
    unmarked = _unmarked_hooks(plugin)
    if unmarked:
        info.error = (f"{', '.join(unmarked)}: not marked as a hook; decorate it with @hookimpl "
                      "(from ttt_core import hookimpl), or rename it if it is not a hook")
        return
    try:
        manager.register(plugin, name=info.name)
        manager.check_pending()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - isolation of third-party code is the point (sys.exit too)
        if manager.is_registered(plugin):
            manager.unregister(plugin)
        info.error, info.traceback = _error_text(exc), traceback.format_exc()
        return
    view = ProviderRegistry(registry=Registry(), provider=info.provider)
    try:
        for impl in manager.hook.ttt_register_components.get_hookimpls():
            if impl.plugin is plugin:
                impl.function(registry=view)
        host.registry.add_all([view.registry[kind].get(name) for kind, name in view.added])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001
        manager.unregister(plugin)
        info.error, info.traceback = _error_text(exc), traceback.format_exc()
        return
    info.components = list(view.added)


def create_host(extra_plugins: tuple[tuple[str, Any], ...] = ()) -> PluginHost:
    """Build a fresh plugin host: built-ins, then entry points, then `extra_plugins` (name, obj)."""
    import ttt_core.builtin as builtin

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    host = PluginHost(manager=manager, registry=Registry(), plugins=[])

    version = core_version()
    infos: list[tuple[PluginInfo, Any]] = [
        (PluginInfo(BUILTIN, "ttt-core", version, builtin.__name__), builtin)
    ]
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    for entry_point in entry_points:
        dist = entry_point.dist
        info = PluginInfo(
            name=entry_point.name,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
            module=entry_point.value,
        )
        reason = _disabled_reason(entry_point)
        if reason is not None:
            info.error = None
            host.disabled.append(info)
            host.registry.disabled[info.distribution] = reason
            continue
        try:
            plugin = entry_point.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - an import that calls sys.exit() included
            info.error, info.traceback = _error_text(exc), traceback.format_exc()
            host.plugins.append(info)
            continue
        infos.append((info, plugin))
    for name, plugin in extra_plugins:
        infos.append((PluginInfo(name, name, "local", getattr(plugin, "__name__", repr(plugin))), plugin))

    for info, plugin in infos:
        _register(host, info, plugin)
        host.plugins.append(info)
    host.plugins.sort(key=lambda p: (p.name != BUILTIN, p.name))
    host.unknown_selected = _unknown_selected(entry_points)
    if host.unknown_selected:
        installed = ", ".join(sorted(f"{ep.name} ({ep.dist.name if ep.dist else '?'})" for ep in entry_points))
        print(f"ttt: warning: TTT_PLUGINS names {', '.join(repr(n) for n in host.unknown_selected)}, which "
              f"matches no installed plugin; installed: {installed or 'none'}", file=sys.stderr)
    return host


@functools.cache
def default_host() -> PluginHost:
    """The process-wide host, loaded lazily on first use and only once."""
    return create_host()
