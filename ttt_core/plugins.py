"""Plugin discovery: built-ins and entry points in the group `ttt`, each loaded in isolation.

A plugin that fails to import or whose hooks are invalid is recorded with its error instead of
crashing; it only matters when a run needs one of its components.

Switches:
    TTT_DISABLE_PLUGIN_AUTOLOAD=1   load no entry points (built-ins only)
    TTT_PLUGINS=a,b                 load only these entry points (by entry-point or distribution
                                    name); an empty value loads none
"""

from __future__ import annotations

import functools
import os
import traceback
from importlib import metadata
from typing import Any

import attrs
import pluggy

from ttt_core import hookspecs
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

    def broken(self) -> dict[str, str]:
        """distribution -> load error, for every plugin that failed."""
        return {p.distribution: p.error for p in self.plugins if p.error}

    def versions(self) -> dict[str, str]:
        return {p.distribution: p.version for p in self.plugins if not p.error}


def _selected(entry_point: metadata.EntryPoint) -> bool:
    if os.environ.get("TTT_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0"):
        return False
    allow = os.environ.get("TTT_PLUGINS")
    if allow is None:
        return True
    names = {n.strip() for n in allow.split(",") if n.strip()}
    dist = entry_point.dist.name if entry_point.dist else ""
    return entry_point.name in names or dist in names


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _register(host: PluginHost, info: PluginInfo, plugin: Any) -> None:
    """Register `plugin` with pluggy, validate its hooks, then let it add its components.

    Any failure unregisters the plugin and leaves the registry as it was before it.
    """
    manager = host.manager
    try:
        manager.register(plugin, name=info.name)
        manager.check_pending()
    except Exception as exc:  # noqa: BLE001 - isolation of third-party code is the point
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
    except Exception as exc:  # noqa: BLE001
        manager.unregister(plugin)
        info.error, info.traceback = _error_text(exc), traceback.format_exc()
        return
    info.components = list(view.added)


def create_host(extra_plugins: tuple[tuple[str, Any], ...] = ()) -> PluginHost:
    """Build a fresh plugin host: built-ins, then entry points, then `extra_plugins` (name, obj)."""
    from ttt_core import builtin

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    host = PluginHost(manager=manager, registry=Registry(), plugins=[])

    version = core_version()
    infos: list[tuple[PluginInfo, Any]] = [
        (PluginInfo(BUILTIN, "ttt-core", version, builtin.__name__), builtin)
    ]
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _selected(entry_point):
            continue
        dist = entry_point.dist
        info = PluginInfo(
            name=entry_point.name,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
            module=entry_point.value,
        )
        try:
            plugin = entry_point.load()
        except Exception as exc:  # noqa: BLE001
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
    return host


@functools.cache
def default_host() -> PluginHost:
    """The process-wide host, loaded lazily on first use and only once."""
    return create_host()
