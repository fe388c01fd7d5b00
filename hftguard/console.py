"""The only module that imports rich: consoles, progress, tables and the Reporter.

Results go to stdout; progress, logs and warnings to stderr. Components never print: they call the
:class:`Reporter` they are handed. ``Reporter`` backs progress with one rich ``Progress`` in human
mode (disabled when stderr is not a terminal or in ``--quiet``/``--json`` mode) and records every
event in ``events`` so tests can assert on them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class TaskHandle:
    """A progress task: ``advance(n)`` and ``update(**fields)`` (shown after the bar)."""

    reporter: Reporter
    description: str
    total: int | None
    task_id: Any = None
    done: int = 0

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        if self.reporter.progress is not None and self.task_id is not None:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self.reporter.progress.update(self.task_id, advance=n, info=info)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@dataclass
class Reporter:
    """What components and pipeline stages report through.

    Attributes:
        quiet: No progress and no info lines (warnings still go to stderr).
        events: Every event as a dict, in order (tests assert on these).
    """

    quiet: bool = False
    json_events: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    progress: Progress | None = None

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("time", time.time())
        self.events.append(event)
        if self.json_events:
            print(json.dumps(event, default=str), file=sys.stderr)

    def info(self, message: str) -> None:
        self._emit({"event": "info", "message": message})
        if not self.quiet and not self.json_events:
            (self.progress.console if self.progress else stderr).print(message, highlight=False)

    def warn(self, message: str) -> None:
        self._emit({"event": "warning", "message": message})
        if not self.json_events:
            (self.progress.console if self.progress else stderr).print(
                f"[yellow]Warning:[/yellow] {message}", highlight=False
            )

    def debug(self, message: str) -> None:
        self._emit({"event": "debug", "message": message})

    def metrics(self, step: int, **values: Any) -> None:
        self._emit({"event": "metrics", "step": step, **values})

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[TaskHandle]:
        """A progress bar for a long piece of work (training steps, generation batches...)."""
        handle = TaskHandle(self, description, total)
        self._emit({"event": "task_start", "description": description, "total": total})
        show = not self.quiet and not self.json_events and stderr.is_terminal
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
                console=stderr,
                transient=False,
            )
            self.progress.start()
            own = True
        if self.progress is not None:
            handle.task_id = self.progress.add_task(description, total=total, info="")
        start = time.perf_counter()
        try:
            yield handle
        finally:
            if self.progress is not None and handle.task_id is not None:
                self.progress.remove_task(handle.task_id) if own is False else None
            if own and self.progress is not None:
                self.progress.stop()
                self.progress = None
            elapsed = time.perf_counter() - start
            self._emit(
                {
                    "event": "task_end",
                    "description": description,
                    "done": handle.done,
                    "seconds": round(elapsed, 3),
                }
            )
            if not show and not self.quiet and not self.json_events:
                stderr.print(
                    f"{description}: {handle.done} done in {elapsed:.1f}s", highlight=False
                )


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


def print_error(message: str, hint: str | None) -> None:
    stderr.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, markup=True)
    if hint:
        stderr.print(f"[bold]Hint:[/bold] {escape(hint)}", highlight=False)
