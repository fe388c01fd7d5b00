"""Stopping a training loop on SIGTERM at a step boundary, with a checkpoint.

Why: batch schedulers (SLURM's preemption and time limits, Kubernetes, ``docker stop``) and shared
machines end long jobs with SIGTERM, and give the process a grace period before SIGKILL. Killed
mid-step, a run resumes from its last periodic checkpoint and loses up to ``checkpoint_every``
steps (tens of minutes for a multi-pass defense on a CPU). While a training loop runs in a
single process, SIGTERM instead asks it to stop: the step in progress finishes, a checkpoint of
the state after it is saved (when checkpointing is on), and :class:`StopRequested` — a
``KeyboardInterrupt``, so every stage marks its run "interrupted" and releases its directory as
it does for Ctrl-C — ends the command with exit code 143. Re-running it resumes from that step,
bit-identically. A second SIGTERM during the step stops at once, as before, unless it comes
within ``DUPLICATE_S`` of the first (the same stop delivered twice).

In a command run as one process (every CLI command, ``hftguard run``'s grids included) SIGTERM
outside a training loop — during an evaluation, the retain set's distillation, or while a grid
worker waits for a stage another process holds — raises :class:`StopRequested` where it arrives
(:class:`SigtermInterrupts`), as Ctrl-C does, so the run's manifest (a grid's root too) says
"interrupted" instead of staying "running". In other threads, and in multi-process runs (where
every rank would have to agree on the step to stop at) SIGTERM keeps its default effect.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any, Self

from hftguard.errors import StopRequested

#: Seconds within which a second SIGTERM is the first one delivered twice, not a second request:
#: a cgroup-wide stop (systemd, SLURM) reaches ``hftguard run --workers``'s workers directly and
#: through the command, which passes it on (hftguard.pipeline.grid.workers).
DUPLICATE_S = 1.0

_stopped = threading.Event()  # set once this process has received a stop signal (note_stop)


def note_stop() -> None:
    """Record that this process received a stop signal (SIGTERM, or Ctrl-C where a caller
    records it): :func:`stop_under_way` then says so."""
    _stopped.set()


def stop_under_way() -> bool:
    """Whether this process has received a stop signal: a worker whose command then disappears
    does not send itself another one (hftguard.pipeline.grid.workers.watch_parent), which a
    training loop would take for "stop at once"."""
    return _stopped.is_set()


class _SigtermHandler:
    """Installs ``_handler`` for SIGTERM while the ``with`` block runs, and puts the previous one
    back. Only in the main thread (Python delivers signals there alone), only when ``enabled``,
    and not over a process that ignores SIGTERM (``SIG_IGN``, e.g. under ``trap '' TERM``) or
    whose handler was not set from Python."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: Any = None
        self._installed = False
        self._first_at: float | None = None  # when the first SIGTERM arrived

    def _handler(self, signum: int, frame: FrameType | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _install(self) -> None:
        if not self.enabled:
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None or previous == signal.SIG_IGN:
            return  # not ours to restore, or SIGTERM is meant to be ignored
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            self._installed = False

    def __enter__(self) -> Self:
        self._install()
        return self

    def _restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _again(self) -> bool:
        """Note a SIGTERM; True when it is the one before, delivered twice (within
        ``DUPLICATE_S``: module docstring)."""
        now = time.monotonic()
        note_stop()
        again = self._first_at is not None and now - self._first_at < DUPLICATE_S
        if self._first_at is None:
            self._first_at = now
        return again


class StopOnSigterm(_SigtermHandler):
    """``with StopOnSigterm(enabled) as stop:`` — ``stop.requested`` is True once SIGTERM arrived.

    Installed as :class:`_SigtermHandler` says. A request that no step boundary saw (it came
    after the loop's last check) is raised on exit, so the signal is never swallowed.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.requested = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._again():
            return
        if self.requested:
            raise StopRequested("Stopped by a second SIGTERM before the step in progress ended.")
        self.requested = True

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._restore()
        if self.requested and exc_type is None:
            raise StopRequested("Stopped by SIGTERM at the end of training (nothing left to run).")


class SigtermInterrupts(_SigtermHandler):
    """``with SigtermInterrupts():`` — SIGTERM raises :class:`StopRequested` (a
    ``KeyboardInterrupt``) where it arrives, so the code around it cleans up as for Ctrl-C.
    A training loop inside installs its own :class:`StopOnSigterm` over this one, and puts it
    back when it ends."""

    def __init__(self, what: str, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.what = what

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._again():
            return  # while the first one is being handled
        raise StopRequested(f"Stopped by SIGTERM {self.what}.")

    def __exit__(self, *exc: object) -> None:
        self._restore()
