"""The plugin docs stay true: every hook documented with its exact signature, examples that work.

``docs/plugins/hooks.md`` must have one ``## `name(args)` `` heading per hookspec in
``hftguard/hookspecs.py`` (and none for hooks that do not exist), each section saying what to
return, when the hook is called, an example and which built-in uses it. Each example is executed and
registered as an in-process plugin to prove it works.
"""

from __future__ import annotations

import inspect
import re
import tomllib
import types
from pathlib import Path

import pytest

from hftguard import hookspecs
from hftguard.components import KIND_HOOKS
from hftguard.plugins import get_plugin_host
from hftguard.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins"
HOOKS_MD = DOCS / "hooks.md"
EXAMPLE = ROOT / "plugins" / "hftguard-example-judge"
HOOK_KINDS = {hook: kind for kind, hook in KIND_HOOKS.items()}
SECTION_PARTS = ("**Return", "**When it is called", "**Example", "**Used by")


def hookspec_signatures() -> dict[str, str]:
    """``{name: "name(arg, ...)"}`` for every function marked as a hookspec in hookspecs.py."""
    found = {}
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("hftguard_") and hasattr(fn, "hftguard_spec"):
            params = ", ".join(inspect.signature(fn).parameters)
            found[name] = f"{name}({params})"
    return found


def documented_sections() -> dict[str, str]:
    """``{heading signature: section text}`` for each ``## `hftguard_...` `` heading."""
    text = HOOKS_MD.read_text(encoding="utf-8")
    parts = re.split(r"^## `([^`]+)`[ \t]*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_hookspecs_are_found() -> None:
    specs = hookspec_signatures()
    assert "hftguard_register_judges" in specs
    assert specs["hftguard_register_commands"] == "hftguard_register_commands(app)"


def test_every_hook_is_documented_with_its_exact_signature() -> None:
    specs = set(hookspec_signatures().values())
    documented = {h for h in documented_sections() if h.startswith("hftguard_")}
    missing = sorted(specs - documented)
    stale = sorted(documented - specs)
    assert not missing, f"hooks missing from hooks.md (or their signature differs): {missing}"
    assert not stale, f"docs/plugins/hooks.md documents hooks that do not exist: {stale}"


@pytest.mark.parametrize("signature", sorted(hookspec_signatures().values()))
def test_hook_section_is_complete(signature: str) -> None:
    section = documented_sections().get(signature)
    if section is None:
        pytest.fail(f"no section for {signature}")
    for part in SECTION_PARTS:
        assert part in section, f"{signature}: no {part}** paragraph"
    blocks = python_blocks(section)
    assert blocks, f"{signature}: no python example"
    name = signature.split("(")[0]
    assert any(f"def {name}(" in block for block in blocks), f"{signature}: example lacks the hook"


def _load_example(signature: str) -> types.ModuleType:
    name = signature.split("(")[0]
    (block,) = [b for b in python_blocks(documented_sections()[signature]) if f"def {name}(" in b]
    module = types.ModuleType(f"docs_example_{name}")
    exec(compile(block, f"{HOOKS_MD}:{name}", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("hook", sorted(HOOK_KINDS))
def test_registration_example_works(hook: str) -> None:
    signature = hookspec_signatures()[hook]
    module = _load_example(signature)
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[module]))
    kind = HOOK_KINDS[hook]
    mine = [i for i in registry.components(kind) if i.plugin == module.__name__]
    assert registry.host.failures == []
    assert mine, f"the example of {signature} registered no {kind}"
    for info in mine:
        assert info.cls.summary()
        registry.instantiate(kind, info.name)


def test_commands_example_works() -> None:
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    module = _load_example("hftguard_register_commands(app)")
    host = get_plugin_host(load_entry_points=False, extra=[module])
    app = build_app(host)
    assert host.failures == []
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "count-refusals" in result.output
    assert "Plugin commands" in result.output


def test_every_python_block_compiles() -> None:
    for path in sorted(DOCS.glob("*.md")):
        if path.name == "tutorial.md":
            continue  # the tutorial shows excerpts ("...") of the example plugin
        for i, block in enumerate(python_blocks(path.read_text(encoding="utf-8"))):
            compile(block, f"{path.name}[{i}]", "exec")


def test_tutorial_shows_the_real_pyproject() -> None:
    tutorial = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", tutorial, flags=re.MULTILINE | re.DOTALL)
    real = (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")
    assert real in blocks, "tutorial.md's pyproject.toml differs from the example plugin's"
    entry_points = tomllib.loads(real)["project"]["entry-points"]["hftguard"]
    assert entry_points == {"example_judge": "hftguard_example_judge"}


def test_tutorial_covers_the_steps() -> None:
    tutorial = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    for needle in (
        "[project.entry-points.hftguard]",
        "@hftguard.hookimpl",
        "def hftguard_register_judges",
        "test_plugin_is_installed",
        "pip install -e plugins/hftguard-example-judge",
        "hftguard plugins",
        "--judge goal-overlap",
    ):
        assert needle in tutorial, needle


def test_tutorial_excerpts_match_the_example_module() -> None:
    source = (EXAMPLE / "hftguard_example_judge.py").read_text(encoding="utf-8")
    tutorial = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    for needle in (
        'name = "goal-overlap"',
        "class GoalOverlapConfig:",
        "class GoalOverlap(Judge):",
        "def hftguard_register_judges() -> list[type[Judge]]:",
    ):
        assert needle in source and needle in tutorial, needle


def test_debugging_documents_every_environment_variable() -> None:
    sources = [ROOT / "hftguard" / "plugins.py", ROOT / "hftguard" / "cli" / "__init__.py"]
    variables = set()
    for path in sources:
        variables |= set(re.findall(r"\bHFTGUARD_[A-Z_]+\b", path.read_text(encoding="utf-8")))
    assert {"HFTGUARD_LOAD_PLUGINS", "HFTGUARD_STRICT_PLUGINS", "HFTGUARD_DEBUG"} <= variables
    debugging = (DOCS / "debugging.md").read_text(encoding="utf-8")
    missing = sorted(v for v in variables if v not in debugging)
    assert not missing, f"docs/plugins/debugging.md does not explain {missing}"


def test_relative_links_resolve() -> None:
    for path in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
