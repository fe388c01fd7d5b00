"""User-facing errors and exit codes.

Every mistake a user can make (bad config, unknown component, missing file, an output directory that
already exists) raises an :class:`HftguardError` subclass carrying a *hint* on how to fix it. The
CLI
prints ``Error: ...`` and ``Hint: ...`` to stderr and exits with the error's code; no traceback
unless
``HFTGUARD_DEBUG=1``.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    """Documented process exit codes (see docs/cli.md)."""

    OK = 0
    RUN_FAILED = 1
    USAGE = 2
    PLUGIN = 3
    INTERRUPTED = 130
    TERMINATED = 143  # 128 + SIGTERM: a training loop stopped at a step boundary (StopRequested)


class StopRequested(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM) and stopped cleanly (hftguard.engine.stopping).

    A ``KeyboardInterrupt``, so every place that handles Ctrl-C (run directories marked
    "interrupted", locks released, the grid's manifest) handles it the same way; the CLI prints
    ``message`` and exits with :attr:`ExitCode.TERMINATED`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HftguardError(Exception):
    """Base class for errors caused by user input or the environment, shown without a traceback."""

    exit_code: ExitCode = ExitCode.RUN_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(HftguardError):
    """A configuration file, key, value or option is wrong."""

    exit_code = ExitCode.USAGE


class UnknownComponentError(ConfigError):
    """A component name (defense, dataset, judge, ...) is not registered."""


class DataError(HftguardError):
    """A data file is missing or malformed, or a requested amount of data is not available."""

    exit_code = ExitCode.USAGE


class ModelError(HftguardError):
    """A model cannot be resolved or loaded (usually a wrong --model)."""

    exit_code = ExitCode.USAGE


class RunDirError(HftguardError):
    """A run directory cannot be written (exists, incomplete, wrong stage)."""

    exit_code = ExitCode.USAGE


class RunDirInUse(RunDirError):
    """Another process is writing the run directory (it holds its lock: ``hftguard.runs``).

    ``holder`` is what that process recorded about itself (pid, host, since), or ``{}``.
    """

    def __init__(self, path: object, holder: dict[str, object] | None = None) -> None:
        self.path = path
        self.holder = dict(holder or {})
        super().__init__(
            f"{path} is in use by another hftguard process ({self.who}).",
            hint="Wait for it to finish (or stop it) and run the command again, or choose "
            "another --out. --resume and --overwrite are refused too while it runs: they would "
            "write into the same directory.",
        )

    @property
    def who(self) -> str:
        h = self.holder
        if not h.get("pid"):
            return "it has not said who it is yet"
        return f"pid {h['pid']} on host {h.get('host') or '?'} since {h.get('since') or '?'}"


class PluginError(HftguardError):
    """A plugin failed to load, or two plugins provide the same component name."""

    exit_code = ExitCode.PLUGIN


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
