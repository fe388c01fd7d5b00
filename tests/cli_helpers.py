"""The CLI run in-process, for tests: ``cli("align", "--out", "x")`` → exit code, stdout, stderr.

``tests/conftest.py`` provides it as the ``cli`` fixture (in ``tmp_path``, with a fresh
``HFTGUARD_HOME``, no plugins, no debug/strict environment); a module that wants the session's
shared home (the tiny model built once) overrides the fixture with ``home=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hftguard.cli import main
from hftguard.registry import default_registry


@dataclass
class Result:
    code: int
    out: str
    err: str


Run = Callable[..., Result]


def cli_runner(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    home: bool = True,
) -> Iterator[Run]:
    """The body of a ``cli`` fixture (a generator: ``yield from cli_runner(...)``)."""
    if home:
        monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    monkeypatch.setenv("COLUMNS", "200")
    for var in ("HFTGUARD_DEBUG", "HFTGUARD_STRICT_PLUGINS", "HFTGUARD_DISABLE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    default_registry.cache_clear()
    capsys.readouterr()

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run
    default_registry.cache_clear()


def assert_error(
    result: Result, code: int, *needles: str, require: tuple[str, ...] = ("Error:", "Hint:")
) -> None:
    """A clean user error: the exit code, no traceback, and ``require`` + ``needles`` on stderr."""
    assert result.code == code, result.out + result.err
    assert "Traceback" not in result.err + result.out
    for needle in (*require, *needles):
        assert needle in result.err, f"{needle!r} not in stderr:\n{result.err}"
