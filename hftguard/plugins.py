"""Builds the plugin manager: built-ins first, then entry points one at a time, failures recorded.

A third-party plugin that fails to import is recorded as a :class:`PluginFailure` and shown by
``hftguard plugins``; it never breaks ``--help`` or a run that does not use it.
``HFTGUARD_STRICT_PLUGINS=1`` re-raises the failure (for plugin authors and their CI).

Environment variables:
    HFTGUARD_LOAD_PLUGINS: comma-separated distribution or entry-point names to load ("" = none).
    HFTGUARD_DISABLE_PLUGINS: comma-separated plugin names to block.
    HFTGUARD_STRICT_PLUGINS: "1" makes load failures fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from hftguard import hookspecs
from hftguard.errors import PluginError

ENTRY_POINT_GROUP = "hftguard"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "hftguard.builtins.defenses",
    "hftguard.builtins.datasets",
    "hftguard.builtins.judges",
    "hftguard.builtins.sinks",
)
BUILTIN_DISTRIBUTION = "hftguard"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded (or whose hook raised)."""

    name: str
    distribution: str
    version: str
    error: str
    traceback: str = ""


@dataclass
class PluginHost:
    """The plugin manager plus what we know about where each plugin came from."""

    pm: pluggy.PluginManager
    #: plugin name -> (distribution name, distribution version)
    provenance: dict[str, tuple[str, str]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def record_failure(self, name: str, exc: BaseException, dist: tuple[str, str]) -> None:
        self.failures.append(
            PluginFailure(
                name=name,
                distribution=dist[0],
                version=dist[1],
                error=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
            )
        )


def strict() -> bool:
    return os.environ.get("HFTGUARD_STRICT_PLUGINS", "") not in ("", "0", "false")


def _hftguard_version() -> str:
    from hftguard import __version__

    return __version__


def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group=ENTRY_POINT_GROUP))


def get_plugin_host(
    *, load_entry_points: bool = True, extra: list[Any] | None = None
) -> PluginHost:
    """Create a fresh plugin manager with the built-ins and (unless disabled) installed plugins."""
    pm = pluggy.PluginManager("hftguard")
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    blocked = {
        n.strip() for n in os.environ.get("HFTGUARD_DISABLE_PLUGINS", "").split(",") if n.strip()
    }
    for name in blocked:
        pm.set_blocked(name)
    for modname in DEFAULT_PLUGINS:
        module = importlib.import_module(modname)
        if pm.register(module, name=modname) is not None:
            host.provenance[modname] = (BUILTIN_DISTRIBUTION, _hftguard_version())
    for plugin in extra or []:
        name = getattr(plugin, "__name__", None) or repr(plugin)
        pm.register(plugin, name=name)
        host.provenance[name] = ("(in-process)", "")
    if load_entry_points:
        _load_entry_points(host, blocked)
    return host


def _load_entry_points(host: PluginHost, blocked: set[str]) -> None:
    only_env = os.environ.get("HFTGUARD_LOAD_PLUGINS")
    only = None if only_env is None else {n.strip() for n in only_env.split(",") if n.strip()}
    for ep in _entry_points():
        dist = ep.dist
        dist_info = (dist.name if dist else "?", dist.version if dist else "?")
        if only is not None and ep.name not in only and dist_info[0] not in only:
            continue
        if ep.name in blocked or host.pm.is_blocked(ep.name):
            continue
        try:
            module: ModuleType = ep.load()
            host.pm.register(module, name=ep.name)
            host.pm.check_pending()
        except Exception as exc:
            if host.pm.get_plugin(ep.name) is not None:
                host.pm.unregister(name=ep.name)
            if strict():
                raise PluginError(
                    f"Plugin '{ep.name}' from {dist_info[0]} {dist_info[1]} failed to load: "
                    f"{type(exc).__name__}: {exc}",
                    hint="Fix or uninstall the plugin; unset HFTGUARD_STRICT_PLUGINS to skip it.",
                ) from exc
            host.record_failure(ep.name, exc, dist_info)
            continue
        host.provenance[ep.name] = dist_info
