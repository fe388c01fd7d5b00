"""The only module that imports rich: consoles, progress, tables and the Reporter.

Results go to stdout; progress, logs and warnings to stderr. Components never print: they call the
:class:`Reporter` they are handed. ``Reporter`` backs progress with one rich ``Progress`` in human
mode on a terminal; without one (log file, SLURM, CI) it prints a plain progress line every
``HFTGUARD_PROGRESS_EVERY`` seconds (30 by default), or, in ``--json`` mode, JSON-lines events on
stderr. Nothing in ``--quiet`` mode. Every event is recorded in ``events`` so tests can assert on
them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


#: Seconds between two progress lines when stderr is not a terminal (``HFTGUARD_PROGRESS_EVERY``).
PROGRESS_EVERY_S = 30.0


def progress_every() -> float:
    """``HFTGUARD_PROGRESS_EVERY`` (seconds, ``0`` = every update), else 30 s."""
    raw = os.environ.get("HFTGUARD_PROGRESS_EVERY", "").strip()
    if not raw:
        return PROGRESS_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        return PROGRESS_EVERY_S
    return max(value, 0.0) if math.isfinite(value) else PROGRESS_EVERY_S


@dataclass
class TaskHandle:
    """A progress task: ``advance(n)`` and ``update(**fields)`` (shown after the bar).

    Without a terminal (log file, SLURM, CI) the handle prints a plain line (or, in JSON mode, a
    ``progress`` event) at its first update, then at most every ``Reporter.every`` seconds, and
    at its last one.
    """

    reporter: Reporter
    description: str
    total: int | None
    task_id: Any = None
    done: int = 0
    plain: bool = False
    started: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    _base: tuple[float, int] | None = None
    _printed_at: float | None = None
    _printed_done: int | None = None

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        if self.reporter.progress is not None and self.task_id is not None:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self.reporter.progress.update(self.task_id, advance=n, info=info)
        if not self.plain or self.done <= 0:
            return
        now = self.reporter.clock()
        final = self.total is not None and self.done >= self.total
        due = self._printed_at is None or now - self._printed_at >= self.reporter.every
        if final or due:
            self._print(now)

    def skip(self, n: int) -> None:
        """Count ``n`` units done before (a resumed run's steps): not in the rate, not printed."""
        self.done += n
        if self.reporter.progress is not None and self.task_id is not None:
            self.reporter.progress.update(self.task_id, completed=self.done)
        self._base = (self.reporter.clock(), self.done)

    def finish(self) -> None:
        """The last line, unless the last update was already printed."""
        if self.plain and self.done > 0 and self._printed_done != self.done:
            self._print(self.reporter.clock())

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the rate since the start (or since ``skip``)."""
        if self.total is None:
            return None
        base_time, base_done = self._base if self._base is not None else (self.started, 0)
        if self.done <= base_done:
            return None
        per = (now - base_time) / (self.done - base_done)
        return max(max(self.total - self.done, 0) * per, 0.0)

    def _print(self, now: float) -> None:
        self._printed_at, self._printed_done = now, self.done
        eta = self.eta_s(now)
        self.reporter._progress_line(self, eta, now - self.started)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _clock_text(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class Reporter:
    """What components and pipeline stages report through.

    Attributes:
        quiet: No progress and no info lines (warnings still go to stderr).
        json_events: Report as JSON lines on stderr (``--json``): info, warnings, the start and
            end of each task and periodic ``progress`` events; stdout stays for the result.
        events: Every event as a dict, in order (tests assert on these).
        stream: Where progress goes (default: ``sys.stderr`` at the time of writing).
        clock: Monotonic seconds, for the progress interval and ETA (tests pass a fake one).
        every: Seconds between progress lines without a terminal (default:
            ``HFTGUARD_PROGRESS_EVERY``, else 30).
        trackers: Where ``metrics`` also goes: objects with ``metrics(step, values)``
            (:class:`hftguard.trackers.TrackerHub`, attached by ``--report-to``).
    """

    quiet: bool = False
    json_events: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    progress: Progress | None = None
    stream: TextIO | None = None
    clock: Callable[[], float] = time.monotonic
    every: float = field(default_factory=progress_every)
    trackers: list[Any] = field(default_factory=list)

    @property
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _console(self) -> Console:
        if self.progress is not None:
            return self.progress.console
        return stderr if self.stream is None else Console(file=self.stream, soft_wrap=True)

    def _is_terminal(self) -> bool:
        if self.stream is None:
            return stderr.is_terminal
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("time", time.time())
        self.events.append(event)
        if self.json_events and event["event"] not in _NOT_STREAMED:
            if self.quiet and event["event"] != "warning":
                return
            print(json.dumps(event, default=str), file=self._out, flush=True)

    def info(self, message: str) -> None:
        self._emit({"event": "info", "message": message})
        if not self.quiet and not self.json_events:
            self._console().print(message, highlight=False)

    def warn(self, message: str) -> None:
        self._emit({"event": "warning", "message": message})
        if not self.json_events:
            self._console().print(f"[yellow]Warning:[/yellow] {message}", highlight=False)

    def debug(self, message: str) -> None:
        self._emit({"event": "debug", "message": message})

    def metrics(self, step: int, **values: Any) -> None:
        self._emit({"event": "metrics", "step": step, **values})
        for tracker in self.trackers:
            tracker.metrics(step, values)

    def _progress_line(self, handle: TaskHandle, eta: float | None, elapsed: float) -> None:
        if self.json_events:
            fields = {k: _json_value(v) for k, v in handle.fields.items()}
            self._emit(
                {
                    "event": "progress",
                    "task": handle.description,
                    "done": handle.done,
                    "total": handle.total,
                    **fields,
                    "elapsed_s": round(elapsed, 3),
                    "eta_s": None if eta is None else round(eta, 1),
                }
            )
            return
        parts = [f"{handle.description}: {handle.done}"]
        if handle.total:
            parts[0] += f"/{handle.total} ({100 * handle.done / handle.total:.0f}%)"
        parts += [f"{k}={_fmt(v)}" for k, v in handle.fields.items()]
        if eta is not None:
            parts.append(f"ETA {_clock_text(eta)}")
        print(" ".join(parts), file=self._out, flush=True)

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[TaskHandle]:
        """A progress bar for a long piece of work (training steps, generation batches...).

        On a terminal: a rich progress bar. Otherwise (and not quiet): periodic plain lines,
        or ``progress`` JSON events in JSON mode.
        """
        handle = TaskHandle(self, description, total, started=self.clock())
        self._emit({"event": "task_start", "description": description, "total": total})
        show = not self.quiet and not self.json_events and self._is_terminal()
        handle.plain = not self.quiet and not show
        own = False
        if show and self.progress is None:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=self._console(),
                transient=False,
            )
            self.progress.start()
            own = True
        if self.progress is not None:
            handle.task_id = self.progress.add_task(description, total=total, info="")
        try:
            yield handle
        finally:
            if self.progress is not None and handle.task_id is not None:
                self.progress.remove_task(handle.task_id) if own is False else None
            if own and self.progress is not None:
                self.progress.stop()
                self.progress = None
            handle.finish()
            elapsed = self.clock() - handle.started
            self._emit(
                {
                    "event": "task_end",
                    "description": description,
                    "done": handle.done,
                    "seconds": round(elapsed, 3),
                }
            )
            if not show and not self.quiet and not self.json_events:
                print(
                    f"{description}: {handle.done} done in {elapsed:.1f}s",
                    file=self._out,
                    flush=True,
                )


#: Events kept in ``Reporter.events`` but not streamed as JSON lines: per-step metrics are in the
#: run's ``log.jsonl`` and progress events carry the loss.
_NOT_STREAMED = frozenset({"metrics", "debug"})


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a results table to stdout."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    stdout.print(table)


def print_listing(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A left-aligned listing to stdout; only the last column wraps in a narrow terminal."""
    table = Table(title=title, title_justify="left")
    for col in columns[:-1]:
        table.add_column(col, no_wrap=True)
    table.add_column(columns[-1], ratio=1)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    stdout.print(table)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def print_json(data: Any) -> None:
    """Machine-readable results on stdout."""
    print(json.dumps(data, indent=2, default=str))


def with_docs_command(hint: str) -> str:
    """A hint that names docs pages (``docs/datasets.md``) also says how a wheel user reads them.

    The pages ship inside the package (hftguard/shipped.py); a user with no checkout reads them
    with ``hftguard docs TOPIC``, which the hint then names once per page.
    """
    import re

    from hftguard import shipped

    topics = set(shipped.doc_topics())
    named = [
        t for t in dict.fromkeys(re.findall(r"docs/([A-Za-z0-9/_-]+)\.md", hint)) if t in topics
    ]
    missing = [t for t in named if f"hftguard docs {t}`" not in hint]
    if not missing:
        return hint
    return hint + " (" + "; ".join(f"`hftguard docs {t}`" for t in missing) + ")"


def print_error(message: str, hint: str | None) -> None:
    stderr.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, markup=True)
    if hint:
        stderr.print(f"[bold]Hint:[/bold] {escape(with_docs_command(hint))}", highlight=False)
