"""Component registry: name -> ComponentInfo, per kind, with provenance and did-you-mean errors.

Built from the plugin host's ``hftguard_register_*`` hooks. Each hook implementation is called on
its own, so a plugin whose hook raises is recorded as broken and its siblings keep working. Two
providers of one name are kept as a conflict and reported (naming both) only when that name is used
or listed. A class whose name is not a safe file name (:func:`hftguard.names.check_name`) makes its
hook's result rejected, like a class of the wrong kind.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from hftguard.components import KIND_BASES, KIND_HOOKS, Component
from hftguard.errors import ConfigError, PluginError, UnknownComponentError, did_you_mean
from hftguard.names import check_name
from hftguard.plugins import BROKEN, PluginHost, get_plugin_host

KIND_LABELS = {
    "alignment-defense": "alignment defense",
    "finetune-defense": "fine-tuning defense",
    "repair-defense": "repair defense",
    "dataset": "dataset",
    "judge": "judge",
    "report-sink": "report sink",
    "tracker": "tracker",
}


#: Components of the repository's example plugin (plugins/hftguard-example-judge), which the docs
#: use in examples but the hftguard wheel does not contain: their unknown-name hint says so.
EXAMPLE_PLUGIN_COMPONENTS = {("judge", "goal-overlap")}


@dataclass(frozen=True)
class ComponentInfo:
    """A registered component and where it came from."""

    name: str
    kind: str
    cls: type[Component]
    plugin: str
    distribution: str
    distribution_version: str

    @property
    def version(self) -> str:
        return self.cls.version

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "stage": getattr(self.cls, "stage", None) or getattr(self.cls, "role", None),
            "version": self.cls.version,
            "distribution": self.distribution,
            "distribution_version": self.distribution_version,
            "plugin": self.plugin,
            "summary": self.cls.summary(),
            "paper": self.cls.paper,
            "license_note": self.cls.license_note,
        }


class Registry:
    """Typed facade over the plugin manager's registration hooks."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self._by_kind: dict[str, dict[str, ComponentInfo]] = {}
        self._conflicts: dict[tuple[str, str], list[ComponentInfo]] = {}

    # -- building ---------------------------------------------------------------------------
    def _build(self, kind: str) -> dict[str, ComponentInfo]:
        if kind in self._by_kind:
            return self._by_kind[kind]
        hook = getattr(self.host.pm.hook, KIND_HOOKS[kind])
        found: dict[str, ComponentInfo] = {}
        # get_hookimpls() lists in registration order: built-ins first, then entry points.
        for impl in hook.get_hookimpls():
            dist = self.host.provenance.get(impl.plugin_name, ("?", "?"))
            ok, classes = self.host.call_plugin(
                impl.plugin_name, dist, f"in {KIND_HOOKS[kind]}", _hook_classes, impl, kind, dist
            )
            if not ok:
                continue
            for cls in classes:
                info = ComponentInfo(cls.name, kind, cls, impl.plugin_name, dist[0], dist[1])
                if cls.name in found or (kind, cls.name) in self._conflicts:
                    self._conflicts.setdefault(
                        (kind, cls.name), [found.pop(cls.name, None) or info]
                    )
                    if info not in self._conflicts[(kind, cls.name)]:
                        self._conflicts[(kind, cls.name)].append(info)
                else:
                    found[cls.name] = info
        self._by_kind[kind] = found
        return found

    # -- queries ----------------------------------------------------------------------------
    def components(self, kind: str) -> list[ComponentInfo]:
        return sorted(self._build(kind).values(), key=lambda i: i.name)

    def all_components(self) -> list[ComponentInfo]:
        return [info for kind in KIND_HOOKS for info in self.components(kind)]

    def conflicts(self) -> dict[tuple[str, str], list[ComponentInfo]]:
        for kind in KIND_HOOKS:
            self._build(kind)
        return dict(self._conflicts)

    def get(self, kind: str, name: str) -> ComponentInfo:
        """Look a component up by kind and name; unknown names get a did-you-mean error."""
        found = self._build(kind)
        if (kind, name) in self._conflicts:
            providers = " and ".join(
                f"{i.distribution} (plugin {i.plugin})" for i in self._conflicts[(kind, name)]
            )
            raise PluginError(
                f"Two plugins provide the {KIND_LABELS[kind]} '{name}': {providers}.",
                hint="Uninstall one, or block it with HFTGUARD_DISABLE_PLUGINS=<plugin name>.",
            )
        if name in found:
            return found[name]
        label = KIND_LABELS[kind]
        broken = [f.name for f in self.host.failures if f.kind == BROKEN]
        hint = f"Available: {', '.join(sorted(found)) or '(none)'}. Run `hftguard plugins`."
        if (kind, name) in EXAMPLE_PLUGIN_COMPONENTS:  # named in the docs, not in the wheel
            hint = (
                f"'{name}' is the example plugin's {label} (hftguard-example-judge, in the "
                "repository's plugins/ folder; not part of the hftguard wheel): install it with "
                "`pip install ./plugins/hftguard-example-judge` from a checkout. " + hint
            )
        if broken:
            hint += f" Broken plugins (which may have provided it): {', '.join(broken)}."
            if not did_you_mean(name, found):
                raise PluginError(
                    f"Unknown {label} '{name}'; it may come from a plugin that failed to load.",
                    hint=hint,
                )
        raise UnknownComponentError(
            f"Unknown {label} '{name}'.{did_you_mean(name, found)}", hint=hint
        )

    def dataset(self, name: str, role: str | None = None) -> ComponentInfo:
        info = self.get("dataset", name)
        if role and getattr(info.cls, "role", None) != role:
            others = [
                i.name for i in self.components("dataset") if getattr(i.cls, "role", "") == role
            ]
            raise ConfigError(
                f"Dataset '{name}' has role '{info.cls.role}', but {role} data is needed here.",
                hint=f"Datasets with role '{role}': {', '.join(others) or '(none)'}; "
                "or give a file.",
            )
        return info

    def instantiate(
        self, kind: str, name: str, options: dict[str, Any] | None = None, where: str = "options"
    ) -> Component:
        """Create a component with its Config built (and type-checked) from ``options``."""
        from hftguard.config import build

        info = self.get(kind, name)
        cfg = build(info.cls.Config, options or {}, where)
        return info.cls(cfg)


def _hook_classes(impl: Any, kind: str, dist: tuple[str, str]) -> list[Any]:
    """Call one registration hook implementation and check every class it returns."""
    result = impl.function()
    classes = [] if result is None else result if isinstance(result, list) else [result]
    for cls in classes:
        _check_class(cls, kind, impl.plugin_name, dist)
    return classes


def _check_class(cls: Any, kind: str, plugin: str, dist: tuple[str, str] = ("?", "?")) -> None:
    base = KIND_BASES[kind]
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise TypeError(
            f"plugin {plugin} returned {cls!r} from {KIND_HOOKS[kind]}, "
            f"which is not a subclass of {base.__name__}"
        )
    name = getattr(cls, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__} from plugin {plugin} needs a kebab-case `name`")
    try:
        check_name(name)
    except ValueError as exc:
        raise TypeError(
            f"{cls.__name__} from plugin {plugin} ({dist[0]} {dist[1]}) has an {exc}"
        ) from None


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process-wide registry (built-ins plus installed plugins)."""
    return Registry(get_plugin_host())
