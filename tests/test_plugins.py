"""The plugin host and the registry: built-ins through hooks, broken, blocked and duplicate plugins.

Entry points are faked by monkeypatching ``hftguard.plugins._entry_points``; in-process plugins are
passed as ``get_plugin_host(extra=[...])``. Real entry-point discovery is tested in a subprocess by
``test_entry_points.py``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

import hftguard
from hftguard import Judge, JudgeContext, Verdict
from hftguard.components import KIND_HOOKS
from hftguard.errors import ExitCode, PluginError, UnknownComponentError
from hftguard.plugins import BUILTIN_DISTRIBUTION, DEFAULT_PLUGINS, get_plugin_host
from hftguard.registry import Registry, default_registry

# ------------------------------------------------------------------------------------------------
# Fakes


@dataclass
class FakeDist:
    name: str
    version: str = "0.1"


@dataclass
class FakeEntryPoint:
    """Quacks like ``importlib.metadata.EntryPoint`` as far as the host is concerned."""

    name: str
    dist: FakeDist
    loader: Callable[[], Any]
    loads: int = 0

    def load(self) -> Any:
        self.loads += 1
        return self.loader()


def _raise_import_error() -> Any:
    raise ImportError("No module named 'hftguard_missing_dependency'")


def broken_entry_point() -> FakeEntryPoint:
    return FakeEntryPoint("broken", FakeDist("hftguard-broken"), _raise_import_error)


class FakeJudge(Judge):
    """A judge provided by a test plugin."""

    name = "fake-judge"

    def judge(
        self, prompts: Sequence[str], responses: Sequence[str], ctx: JudgeContext
    ) -> list[Verdict]:
        return [Verdict(False, "refusal", 0.0) for _ in responses]


class DuplicateKeywords(FakeJudge):
    """Same name as the built-in judge."""

    name = "refusal-keywords"


class Sibling(FakeJudge):
    """A healthy sibling of a duplicate."""

    name = "sibling-judge"


def plugin_module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A module-like plugin object whose attributes are the given hook implementations."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hftguard.hookimpl(fn))
    return module


def good_plugin() -> types.ModuleType:
    return plugin_module("fake_good_plugin", hftguard_register_judges=lambda: FakeJudge)


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeEntryPoint]]:
    """The fake installed entry points (append to it), with the process registry rebuilt."""
    eps: list[FakeEntryPoint] = []
    monkeypatch.setattr("hftguard.plugins._entry_points", lambda: list(eps))
    for var in ("HFTGUARD_LOAD_PLUGINS", "HFTGUARD_DISABLE_PLUGINS", "HFTGUARD_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    default_registry.cache_clear()
    yield eps
    default_registry.cache_clear()


# ------------------------------------------------------------------------------------------------
# Built-ins


def test_builtins_are_registered_through_the_hooks(registry: Registry) -> None:
    for modname in DEFAULT_PLUGINS:
        assert registry.host.pm.get_plugin(modname) is not None
        assert registry.host.provenance[modname] == (BUILTIN_DISTRIBUTION, hftguard.__version__)
    for kind, hook_name in KIND_HOOKS.items():
        infos = registry.components(kind)
        assert infos, f"no built-in {kind}"
        hook = getattr(registry.host.pm.hook, hook_name)
        providers = {impl.plugin_name for impl in hook.get_hookimpls()}
        for info in infos:
            assert info.kind == kind
            assert info.distribution == BUILTIN_DISTRIBUTION
            assert info.plugin in providers
            assert info.cls.summary(), f"{kind} {info.name} has no docstring summary"
    assert registry.host.failures == []
    assert registry.conflicts() == {}


def test_expected_builtins_resolve(registry: Registry) -> None:
    assert registry.get("alignment-defense", "sft").cls.stage == "align"
    assert registry.get("finetune-defense", "sft").cls.stage == "finetune"
    assert registry.get("judge", "refusal-keywords").name == "refusal-keywords"
    assert registry.dataset("sentiment", "task").name == "sentiment"
    assert registry.get("report-sink", "markdown").kind == "report-sink"


def test_import_hftguard_loads_no_plugin() -> None:
    host = get_plugin_host(load_entry_points=False)
    names = {name for name, _ in host.pm.list_name_plugin()}
    assert names == set(DEFAULT_PLUGINS)


# ------------------------------------------------------------------------------------------------
# Broken entry points


def test_broken_entry_point_is_recorded(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(broken_entry_point())
    host = get_plugin_host()
    (failure,) = host.failures
    assert failure.name == "broken"
    assert failure.distribution == "hftguard-broken"
    assert failure.version == "0.1"
    assert failure.error.startswith("ImportError: ")
    assert "hftguard_missing_dependency" in failure.traceback
    assert host.pm.get_plugin("broken") is None
    assert Registry(host).get("judge", "refusal-keywords").distribution == BUILTIN_DISTRIBUTION


def test_broken_entry_point_is_listed_by_plugin_rows(entry_points: list[FakeEntryPoint]) -> None:
    from hftguard.cli.inspect import plugin_rows

    entry_points.append(broken_entry_point())
    rows = plugin_rows()
    broken = [r for r in rows if r["name"] == "broken"]
    assert len(broken) == 1
    assert broken[0]["kind"] == "broken-plugin"
    assert broken[0]["distribution"] == "hftguard-broken"
    assert "ImportError" in broken[0]["error"]
    healthy = [r for r in rows if "error" not in r]
    assert {"sft", "refusal-keywords", "sentiment"} <= {r["name"] for r in healthy}
    assert default_registry().get("judge", "refusal-keywords").name == "refusal-keywords"


def test_unknown_name_with_a_broken_plugin_mentions_it(
    entry_points: list[FakeEntryPoint],
) -> None:
    entry_points.append(broken_entry_point())
    # No close match among the healthy components: it may be the broken plugin's (exit code 3).
    with pytest.raises(PluginError) as info:
        default_registry().get("judge", "from-the-broken-plugin")
    assert "broken" in (info.value.hint or "")
    # A near-miss of a healthy component is still a typo (exit code 2, did-you-mean).
    with pytest.raises(UnknownComponentError, match="Did you mean 'refusal-keywords'"):
        default_registry().get("judge", "refusal-keyword")


def test_strict_mode_raises_plugin_error(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points.append(broken_entry_point())
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as info:
        get_plugin_host()
    assert info.value.exit_code == ExitCode.PLUGIN
    assert "broken" in info.value.message
    assert "hftguard-broken" in info.value.message
    assert "ImportError" in info.value.message
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_strict_mode_off_values(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    entry_points.append(broken_entry_point())
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", value)
    assert [f.name for f in get_plugin_host().failures] == ["broken"]


def test_good_entry_point_is_loaded_with_provenance(entry_points: list[FakeEntryPoint]) -> None:
    entry_points.append(FakeEntryPoint("good", FakeDist("hftguard-good", "2.0"), good_plugin))
    registry = Registry(get_plugin_host())
    info = registry.get("judge", "fake-judge")
    assert (info.plugin, info.distribution, info.distribution_version) == (
        "good",
        "hftguard-good",
        "2.0",
    )


# ------------------------------------------------------------------------------------------------
# Selecting and blocking plugins


def test_disable_plugins_blocks_an_entry_point(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = FakeEntryPoint("good", FakeDist("hftguard-good"), good_plugin)
    entry_points.append(good)
    monkeypatch.setenv("HFTGUARD_DISABLE_PLUGINS", "other, good")
    registry = Registry(get_plugin_host())
    assert good.loads == 0
    assert registry.host.pm.get_plugin("good") is None
    with pytest.raises(UnknownComponentError):
        registry.get("judge", "fake-judge")


def test_disable_plugins_skips_a_broken_plugin(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points.append(broken_entry_point())
    monkeypatch.setenv("HFTGUARD_DISABLE_PLUGINS", "broken")
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    assert get_plugin_host().failures == []


def test_disable_plugins_can_block_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTGUARD_DISABLE_PLUGINS", "hftguard.builtins.judges")
    registry = Registry(get_plugin_host(load_entry_points=False))
    assert registry.components("judge") == []
    assert registry.components("finetune-defense")


@pytest.mark.parametrize(
    ("value", "loaded"),
    [("", []), ("good", ["good"]), ("hftguard-good", ["good"]), ("broken,good", ["good"])],
)
def test_load_plugins_selects_entry_points(
    entry_points: list[FakeEntryPoint],
    monkeypatch: pytest.MonkeyPatch,
    value: str,
    loaded: list[str],
) -> None:
    entry_points.append(FakeEntryPoint("good", FakeDist("hftguard-good"), good_plugin))
    entry_points.append(broken_entry_point())
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", value)
    host = get_plugin_host()
    external = [n for n in host.provenance if n not in DEFAULT_PLUGINS]
    assert external == loaded
    assert [f.name for f in host.failures] == (["broken"] if "broken" in value else [])


def test_load_entry_points_false_ignores_installed_plugins(
    entry_points: list[FakeEntryPoint],
) -> None:
    entry_points.append(broken_entry_point())
    host = get_plugin_host(load_entry_points=False)
    assert host.failures == []


# ------------------------------------------------------------------------------------------------
# Duplicates, unknown names, bad hook results


def test_duplicate_name_names_both_providers_and_siblings_resolve() -> None:
    dup = plugin_module(
        "fake_dup_plugin", hftguard_register_judges=lambda: [DuplicateKeywords, Sibling]
    )
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[dup]))
    with pytest.raises(PluginError) as info:
        registry.get("judge", "refusal-keywords")
    message = info.value.message
    assert "refusal-keywords" in message
    assert "hftguard.builtins.judges" in message and BUILTIN_DISTRIBUTION in message
    assert "fake_dup_plugin" in message
    assert "HFTGUARD_DISABLE_PLUGINS" in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.PLUGIN
    assert registry.get("judge", "sibling-judge").cls is Sibling
    assert registry.get("finetune-defense", "sft").distribution == BUILTIN_DISTRIBUTION
    assert "refusal-keywords" not in {i.name for i in registry.components("judge")}
    (conflict,) = registry.conflicts().values()
    assert {i.plugin for i in conflict} == {"hftguard.builtins.judges", "fake_dup_plugin"}


def test_duplicate_is_listed_by_plugin_rows(
    entry_points: list[FakeEntryPoint],
) -> None:
    from hftguard.cli.inspect import plugin_rows

    dup = plugin_module("fake_dup_ep", hftguard_register_judges=lambda: DuplicateKeywords)
    entry_points.append(FakeEntryPoint("dup", FakeDist("hftguard-dup"), lambda: dup))
    rows = [r for r in plugin_rows() if r["name"] == "refusal-keywords"]
    assert len(rows) == 1
    assert "duplicate" in rows[0]["error"]
    assert "hftguard-dup" in rows[0]["error"] and BUILTIN_DISTRIBUTION in rows[0]["error"]


def test_three_providers_of_one_name_are_all_named() -> None:
    one = plugin_module("fake_one", hftguard_register_judges=lambda: DuplicateKeywords)
    two = plugin_module("fake_two", hftguard_register_judges=lambda: DuplicateKeywords)
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[one, two]))
    with pytest.raises(PluginError) as info:
        registry.get("judge", "refusal-keywords")
    for provider in ("hftguard.builtins.judges", "fake_one", "fake_two"):
        assert provider in info.value.message


@pytest.mark.parametrize(
    ("kind", "typo", "suggestion"),
    [
        ("judge", "refusal-keyword", "refusal-keywords"),
        ("alignment-defense", "sfft", "sft"),
        ("dataset", "sentimen", "sentiment"),
    ],
)
def test_unknown_name_gets_did_you_mean(
    registry: Registry, kind: str, typo: str, suggestion: str
) -> None:
    with pytest.raises(UnknownComponentError) as info:
        registry.get(kind, typo)
    assert f"Did you mean '{suggestion}'?" in info.value.message
    assert suggestion in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.USAGE


def test_unknown_name_without_close_match_lists_available(registry: Registry) -> None:
    with pytest.raises(UnknownComponentError) as info:
        registry.get("judge", "zzzzzz")
    assert "Did you mean" not in info.value.message
    assert "refusal-keywords" in (info.value.hint or "")


def test_hook_returning_a_non_component_is_recorded_as_broken() -> None:
    bad = plugin_module("fake_bad_hook", hftguard_register_judges=lambda: [Sibling, dict])
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[bad]))
    names = {i.name for i in registry.components("judge")}
    assert "refusal-keywords" in names
    assert "sibling-judge" not in names  # the whole hook result is rejected
    (failure,) = registry.host.failures
    assert failure.name == "fake_bad_hook"
    assert "not a subclass of Judge" in failure.error
    assert registry.get("alignment-defense", "sft").name == "sft"


def test_hook_returning_a_class_without_a_valid_name_is_recorded_as_broken() -> None:
    class BadName(FakeJudge):
        """Not kebab-case."""

        name = "Bad Name"

    bad = plugin_module("fake_bad_name", hftguard_register_judges=lambda: BadName)
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[bad]))
    registry.components("judge")
    (failure,) = registry.host.failures
    assert "kebab-case" in failure.error


def test_hook_that_raises_is_recorded_and_siblings_work() -> None:
    def boom() -> None:
        raise RuntimeError("hook exploded")

    bad = plugin_module(
        "fake_raising", hftguard_register_judges=boom, hftguard_register_datasets=lambda: None
    )
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[bad]))
    assert registry.get("judge", "refusal-keywords")
    assert registry.components("dataset")
    assert [f.error for f in registry.host.failures] == ["RuntimeError: hook exploded"]


def test_hook_returning_a_non_component_in_plugin_rows(
    entry_points: list[FakeEntryPoint],
) -> None:
    from hftguard.cli.inspect import plugin_rows

    bad = plugin_module("fake_bad_ep", hftguard_register_judges=lambda: object)
    entry_points.append(FakeEntryPoint("badhook", FakeDist("hftguard-badhook"), lambda: bad))
    rows = [r for r in plugin_rows() if "error" in r]
    assert [(r["name"], r["kind"], r["distribution"]) for r in rows] == [
        ("badhook", "broken-plugin", "hftguard-badhook")
    ]


def test_strict_mode_bad_hook_result_is_a_plugin_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    bad = plugin_module("fake_bad_strict", hftguard_register_judges=lambda: dict)
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[bad]))
    with pytest.raises(PluginError, match="fake_bad_strict"):
        registry.components("judge")


def test_misspelled_hook_in_an_entry_point_is_recorded(
    entry_points: list[FakeEntryPoint],
) -> None:
    typo = plugin_module("fake_typo", hftguard_register_judgez=lambda: FakeJudge)
    entry_points.append(FakeEntryPoint("typo", FakeDist("hftguard-typo"), lambda: typo))
    host = get_plugin_host()
    (failure,) = host.failures
    assert failure.name == "typo"
    assert "hftguard_register_judgez" in failure.error
    assert host.pm.get_plugin("typo") is None


def test_plugin_commands_are_mounted() -> None:
    import typer
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    def register_commands(app: typer.Typer) -> None:
        @app.command("hello", rich_help_panel="Plugin commands")
        def hello() -> None:
            """Say hello."""
            print("hello from a plugin")

    cmds = plugin_module("fake_cmds", hftguard_register_commands=register_commands)
    app = build_app(get_plugin_host(load_entry_points=False, extra=[cmds]))
    result = CliRunner().invoke(app, ["hello"])
    assert result.exit_code == 0
    assert "hello from a plugin" in result.output


def test_broken_plugin_commands_do_not_break_the_cli() -> None:
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    def register_commands(app: Any) -> None:
        raise RuntimeError("commands exploded")

    cmds = plugin_module("fake_bad_cmds", hftguard_register_commands=register_commands)
    host = get_plugin_host(load_entry_points=False, extra=[cmds])
    app = build_app(host)
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "align" in result.output
    assert [f.error for f in host.failures] == ["RuntimeError: commands exploded"]


def test_broken_plugin_commands_do_not_hide_other_plugins_commands() -> None:
    import typer
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    def good_commands(app: typer.Typer) -> None:
        @app.command("hello", rich_help_panel="Plugin commands")
        def hello() -> None:
            """Say hello."""
            print("hello from a plugin")

    def bad_commands(app: typer.Typer) -> None:
        raise RuntimeError("commands exploded")

    good = plugin_module("fake_good_cmds", hftguard_register_commands=good_commands)
    bad = plugin_module("fake_bad_cmds", hftguard_register_commands=bad_commands)
    host = get_plugin_host(load_entry_points=False, extra=[good, bad])
    app = build_app(host)
    assert [f.name for f in host.failures] == ["fake_bad_cmds"]
    result = CliRunner().invoke(app, ["hello"])
    assert result.exit_code == 0, result.output
