"""Builds the plugin manager: built-ins first, then entry points one at a time, failures recorded.

A third-party plugin that fails to import is recorded as a :class:`PluginFailure` and shown by
``hftguard plugins``; it never breaks ``--help`` or a run that does not use it.
``HFTGUARD_STRICT_PLUGINS=1`` re-raises the failure (for plugin authors and their CI).

Every call into plugin code while the CLI and the registry are built (importing an entry point,
a registration hook, the commands hook) goes through :meth:`PluginHost.call_plugin`, the one place
that decides what a plugin failure is: anything it raises, ``BaseException`` included, so a plugin
that calls ``sys.exit()`` or raises ``KeyboardInterrupt``/``SystemExit``/``GeneratorExit`` at
import is recorded like an ``ImportError``. A real Ctrl-C still stops hftguard: while plugin code
runs, a SIGINT handler notes that the signal arrived, and a ``KeyboardInterrupt`` that follows a
real SIGINT is re-raised, never recorded.

Environment variables:
    HFTGUARD_LOAD_PLUGINS: comma-separated distribution or entry-point names to load ("" = none).
    HFTGUARD_DISABLE_PLUGINS: comma-separated plugin names to block.
    HFTGUARD_STRICT_PLUGINS: "1" makes load failures fatal.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, ModuleType
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
    "hftguard.builtins.trackers",
)
BUILTIN_DISTRIBUTION = "hftguard"
#: :attr:`PluginFailure.kind` of a plugin that failed to load or whose hook raised.
BROKEN = "broken-plugin"
#: :attr:`PluginFailure.kind` of a plugin command refused because its name was taken.
COMMAND_CLASH = "command-clash"
_STRICT_HINT = "Fix or uninstall the plugin; unset HFTGUARD_STRICT_PLUGINS to skip it."


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded (or whose hook raised), or a refused plugin command."""

    name: str
    distribution: str
    version: str
    error: str
    traceback: str = ""
    #: :data:`BROKEN` or :data:`COMMAND_CLASH` (the ``kind`` column of ``hftguard plugins``).
    kind: str = BROKEN


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
                error=_describe(exc),
                traceback="".join(traceback.format_exception(exc)),
            )
        )

    def call_plugin(
        self,
        name: str,
        dist: tuple[str, str],
        doing: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[bool, Any]:
        """Run plugin code: ``(True, result)``, or ``(False, None)`` with the failure recorded.

        ``doing`` completes "Plugin 'x' from dist 1.0 failed ...", e.g. ``"to load"``. Whatever
        the code raises (``SystemExit`` and ``KeyboardInterrupt`` included) is a failure of the
        plugin, except a ``KeyboardInterrupt`` caused by a real Ctrl-C, which is re-raised. In
        strict mode (``HFTGUARD_STRICT_PLUGINS=1``) a failure is raised as a :class:`PluginError`.
        """
        with _CtrlC() as ctrl_c:
            try:
                return True, fn(*args, **kwargs)
            except BaseException as exc:
                if ctrl_c.pressed(exc):
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    raise KeyboardInterrupt from exc
                if strict():
                    raise PluginError(
                        f"Plugin '{name}' from {dist[0]} {dist[1]} failed {doing}: "
                        f"{_describe(exc)}",
                        hint=_STRICT_HINT,
                    ) from exc
                self.record_failure(name, exc, dist)
                return False, None

    def record_problem(self, name: str, dist: tuple[str, str], kind: str, message: str) -> None:
        """Record something a plugin did that was refused (not an exception), e.g. a command that
        clashes with a built-in one; in strict mode raise it as a :class:`PluginError`."""
        if strict():
            raise PluginError(f"Plugin '{name}' from {dist[0]} {dist[1]}: {message}", _STRICT_HINT)
        self.failures.append(PluginFailure(name, dist[0], dist[1], message, kind=kind))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _CtrlC:
    """Tells a real Ctrl-C apart from a ``KeyboardInterrupt`` that plugin code raises itself.

    In the main thread a SIGINT handler is installed for the duration of the ``with`` block; it
    notes the signal and hands it to the previous handler (which raises ``KeyboardInterrupt``).
    Where no handler can be installed (the previous one was not set from Python), every
    ``KeyboardInterrupt`` counts as a real Ctrl-C, so hftguard is never made uninterruptible.
    Outside the main thread SIGINT never raises, so a ``KeyboardInterrupt`` is the plugin's own.
    """

    def __init__(self) -> None:
        self.hit = False
        self.tells_apart = threading.current_thread() is not threading.main_thread()
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if self.tells_apart:
            return self
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:
            return self
        try:
            signal.signal(signal.SIGINT, self._handler)
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            return self
        self._previous, self.tells_apart = previous, True
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> Any:
        self.hit = True
        if callable(self._previous):
            return self._previous(signum, frame)
        if self._previous == signal.SIG_DFL:
            raise KeyboardInterrupt
        return None  # SIG_IGN: ignored, as it was before

    def pressed(self, exc: BaseException) -> bool:
        """True when ``exc`` must propagate as a user's Ctrl-C."""
        return self.hit or (isinstance(exc, KeyboardInterrupt) and not self.tells_apart)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
        loaded, _ = host.call_plugin(ep.name, dist_info, "to load", _load_one, host, ep)
        if loaded:
            host.provenance[ep.name] = dist_info


def _load_one(host: PluginHost, ep: md.EntryPoint) -> None:
    """Import an entry point and register it; a half-registered plugin is removed again."""
    module: ModuleType = ep.load()
    try:
        host.pm.register(module, name=ep.name)
        host.pm.check_pending()
    except BaseException:
        if host.pm.get_plugin(ep.name) is module:  # not another plugin of the same name
            host.pm.unregister(name=ep.name)
        raise
