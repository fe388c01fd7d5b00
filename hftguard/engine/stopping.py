"""Stopping a training loop on SIGTERM at a step boundary, with a checkpoint.

Why: batch schedulers (SLURM's preemption and time limits, Kubernetes, ``docker stop``) and shared
machines end long jobs with SIGTERM, and give the process a grace period before SIGKILL. Killed
mid-step, a run resumes from its last periodic checkpoint and loses up to ``checkpoint_every``
steps (tens of minutes for a multi-pass defense on a CPU). While a training loop runs in a
single process, SIGTERM instead asks it to stop: the step in progress finishes, a checkpoint of
the state after it is saved (when checkpointing is on), and :class:`StopRequested` — a
``KeyboardInterrupt``, so every stage marks its run "interrupted" and releases its directory as
it does for Ctrl-C — ends the command with exit code 143. Re-running it resumes from that step,
bit-identically. A second SIGTERM during the step stops at once, as before.

Outside a training loop, in other threads, and in multi-process runs (where every rank would
have to agree on the step to stop at) SIGTERM keeps its default effect.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from hftguard.errors import StopRequested


class StopOnSigterm:
    """``with StopOnSigterm(enabled) as stop:`` — ``stop.requested`` is True once SIGTERM arrived.

    The handler is installed only in the main thread (Python delivers signals there alone), only
    when ``enabled``, and not over a process that ignores SIGTERM (``SIG_IGN``, e.g. under
    ``trap '' TERM``) or whose handler was not set from Python; the previous handler is restored
    on exit. A request that no step boundary saw (it came after the loop's last check) is raised
    on exit, so the signal is never swallowed.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopOnSigterm:
        if not self.enabled:
            return self
        previous = signal.getsignal(signal.SIGTERM)
        if previous is None or previous == signal.SIG_IGN:
            return self  # not ours to restore, or SIGTERM is meant to be ignored
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        except (ValueError, OSError):  # pragma: no cover - not the main interpreter
            self._installed = False
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise StopRequested("Stopped by a second SIGTERM before the step in progress ended.")
        self.requested = True

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
        if self.requested and exc_type is None:
            raise StopRequested("Stopped by SIGTERM at the end of training (nothing left to run).")
