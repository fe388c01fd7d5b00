"""Experiment trackers (``--report-to``): open a stage's trackers and feed them its metrics.

:func:`tracked` runs one stage with the trackers its config names (``report_to``). The trackers
hang on the stage's :class:`~hftguard.console.Reporter`, whose ``metrics`` call (made by the
training loop once per step, after its one host synchronisation) forwards the step's values; an
evaluation's headline metrics are sent when the stage returns. Only process 0 tracks. Nothing here
imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hftguard.errors import ConfigError

if TYPE_CHECKING:
    from hftguard.components import Tracker

#: ``--report-to none``: no tracker (overrides a config file's list).
NONE = "none"


def parse_report_to(values: Iterable[str] | None) -> list[str] | None:
    """``--report-to`` values (repeated and/or comma-separated) as a list; ``none`` -> ``[]``;
    no option -> ``None`` (the config's value stands)."""
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if NONE in names:
        if len(names) > 1:
            raise ConfigError(
                f"--report-to {NONE} cannot be combined with other trackers "
                f"({', '.join(n for n in names if n != NONE)}).",
                hint=f"Give either {NONE} or the trackers to use.",
            )
        return []
    return list(dict.fromkeys(names))


def check_names(names: Iterable[str], registry: Any) -> None:
    """An error (exit 2, with a hint) for each tracker name that is not registered."""
    for name in names:
        if name != NONE:
            registry.get("tracker", name)


@dataclass
class TrackerHub:
    """The trackers of one stage: started at the first event, closed by :meth:`close`."""

    trackers: list[Tracker]
    run_dir: Path
    config: dict[str, Any]
    warn: Callable[[str], None]
    started: bool = False
    failed: set[int] = field(default_factory=set)

    def _each(self, method: str, *args: Any) -> None:
        for i, tracker in enumerate(self.trackers):
            if i in self.failed:
                continue
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker never stops the run
                self.failed.add(i)
                self.warn(
                    f"Tracker '{tracker.name}' failed in {method} "
                    f"({type(exc).__name__}: {exc}); it is switched off for this stage."
                )

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self._each("start", self.run_dir, self.config)

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        self._start()
        self._each("log_metrics", step, values)

    def final(self, metrics: dict[str, Any]) -> None:
        self._start()
        self._each("log_final", metrics)

    def close(self) -> None:
        if self.started:
            self._each("close")


def open_hub(
    cfg: Any, run_dir: str | Path, reporter: Any, registry: Any = None
) -> TrackerHub | None:
    """The trackers ``cfg.report_to`` names, checked and ready, or ``None`` (none named, or not
    process 0)."""
    names = [n for n in getattr(cfg, "report_to", None) or [] if n != NONE]
    if not names:
        return None
    from hftguard.engine.distributed import is_main_process

    if not is_main_process():
        return None
    from hftguard.config import as_dict
    from hftguard.registry import default_registry

    reg = registry if registry is not None else default_registry()
    trackers = [cast("Tracker", reg.instantiate("tracker", name)) for name in names]
    for tracker in trackers:
        tracker.check()
    return TrackerHub(trackers, Path(run_dir), as_dict(cfg), reporter.warn)


def tracked(
    cfg: Any, run_dir: str | Path, reporter: Any, fn: Callable[[], Any], registry: Any = None
) -> Any:
    """Call ``fn`` (a stage's ``run``) with ``cfg.report_to``'s trackers attached to
    ``reporter``; an evaluation's metrics (``result["metrics"]``) go to them at the end."""
    hub = open_hub(cfg, run_dir, reporter, registry)
    if hub is None:
        return fn()
    previous = reporter.trackers
    reporter.trackers = [*previous, hub]
    try:
        result = fn()
        if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
            hub.final(result["metrics"])
        return result
    finally:
        reporter.trackers = previous
        hub.close()
