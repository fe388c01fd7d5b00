"""``--help`` of the root and of every command exits 0 and lists the options users rely on.

No exact-text snapshots: rich's layout depends on the terminal, so the tests only look for option
names and section titles (with ``COLUMNS=200`` so nothing is truncated).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from hftguard.cli import main
from hftguard.registry import default_registry

COMMON = ("--config", "--set", "--seed", "--resume", "--overwrite", "--out", "--quiet", "--json")
REQUIRED: dict[str, tuple[str, ...]] = {
    "align": ("--model", "--defense", "--data", "--max-steps", *COMMON),
    "attack-finetune": (
        "--model",
        "--defense",
        "--task",
        "--harmful",
        "--harmful-ratio",
        "--samples",
        "--max-steps",
        *COMMON,
    ),
    "eval": ("--model", "--judge", "--task", "--harmful-samples", "--max-new-tokens", *COMMON),
    "run": ("--out", "--set", "--seed", "--overwrite", "config_file"),
    "judge": ("--judge", "--field", "--out", "--set", "--resume", "--overwrite", "--json", "file"),
    "rejudge": ("--dry-run", "--force", "--device", "--quiet", "--json", "paths"),
    "export": ("--out", "--merge", "--no-merge", "--dtype", "--push-to-hub", "--json", "run_dir"),
    "plugins": ("--json", "--verbose"),
    "validate": ("--kind", "config_file"),
}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def help_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., str]]:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    monkeypatch.delenv("HFTGUARD_STRICT_PLUGINS", raising=False)
    default_registry.cache_clear()

    def run(*args: str) -> str:
        code = main([*args, "--help"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "Traceback" not in captured.err
        return _ANSI.sub("", captured.out)

    yield run
    default_registry.cache_clear()


def test_root_help(help_text: Callable[..., str]) -> None:
    text = help_text()
    assert "Usage" in text
    for command in REQUIRED:
        assert re.search(rf"\b{re.escape(command)}\b", text), command
    assert "Pipeline" in text and "Inspect" in text
    assert "Examples" in text


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_command_help_lists_options(help_text: Callable[..., str], command: str) -> None:
    text = help_text(command)
    options = set(re.findall(r"--[a-z][a-z-]*", text))
    missing = [o for o in REQUIRED[command] if o.startswith("--") and o not in options]
    assert missing == [], f"hftguard {command} --help lacks {missing}"
    for argument in (a for a in REQUIRED[command] if not a.startswith("--")):
        assert argument.lower() in text.lower()


def test_run_help_names_the_config_sections(help_text: Callable[..., str]) -> None:
    text = help_text("run")
    assert "[align]" in text and "[finetune]" in text and "[eval]" in text


def _commands(command: object, path: str = "hftguard") -> Iterator[tuple[str, object]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, f"{path} {name}")


def test_help_texts_survive_rich_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI renders help with rich markup, which drops an unescaped ``[word]`` as a style tag:
    "the [grid.attack] settings" printed as "the  settings". Every help text and option help must
    render to what it says (a literal bracket written ``\\[``)."""
    import typer
    from rich.text import Text

    from hftguard.cli import build_app

    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    default_registry.cache_clear()
    try:
        root = typer.main.get_command(build_app(default_registry().host))
        lost = []
        for path, command in _commands(root):
            texts = [getattr(command, "help", None), getattr(command, "epilog", None)]
            texts += [getattr(p, "help", None) for p in getattr(command, "params", [])]
            for text in filter(None, texts):
                if Text.from_markup(text).plain != text.replace("\\[", "["):
                    lost.append(f"{path}: {text[:70]!r}")
        assert lost == [], "help text eaten by rich markup (escape '[' as '\\['):\n" + "\n".join(
            lost
        )
    finally:
        default_registry.cache_clear()
