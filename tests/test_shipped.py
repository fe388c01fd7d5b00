"""The configs and docs that ship inside the package: ``hftguard configs``, ``hftguard docs``,
``hftguard run NAME``, and the package data that carries them into a wheel (#16)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from cli_helpers import assert_error

from hftguard import shipped

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_folders_are_the_repositorys_configs_and_docs():
    assert shipped.configs_dir().resolve() == (ROOT / "configs").resolve()
    assert shipped.docs_dir().resolve() == (ROOT / "docs").resolve()
    names = [c.name for c in shipped.configs()]
    assert names == sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
    assert {"demo", "grid-papers-small"} <= set(names)
    demo = shipped.config_path("demo")
    assert demo == shipped.config_path("demo.toml") == shipped.configs_dir() / "demo.toml"
    assert shipped.config_path("configs/demo.toml") is None  # a path is not a name
    assert shipped.config_path("no-such-config") is None


def test_every_shipped_file_is_package_data():
    """A config or docs page added to the repository must also land in the wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["hftguard"]
    files = [
        *(
            f"_configs/{p.relative_to(ROOT / 'configs').as_posix()}"
            for p in (ROOT / "configs").rglob("*")
            if p.is_file()
        ),
        *(f"_docs/{t}.md" for t in shipped.doc_topics()),
    ]

    def matches(path: str, pattern: str) -> bool:  # setuptools' glob: * stays within a folder
        rx = "".join("[^/]*" if ch == "*" else re.escape(ch) for ch in pattern)
        return re.fullmatch(rx, path) is not None

    missing = [f for f in files if not any(matches(f, pat) for pat in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
    assert "LICENSE" in project["project"]["license-files"] and (ROOT / "LICENSE").is_file()


def test_configs_lists_prints_and_copies(cli, tmp_path):
    r = cli("configs")
    assert r.code == 0, r.err
    for c in shipped.configs():
        assert c.name in r.out
    r = cli("configs", "demo")
    assert r.code == 0 and r.out == (ROOT / "configs" / "demo.toml").read_text()
    assert cli("configs", "demo", "--out", "my.toml").code == 0
    assert (tmp_path / "my.toml").read_text() == (ROOT / "configs" / "demo.toml").read_text()


def test_configs_refuses_to_overwrite_and_names_unknown_configs(cli, tmp_path):
    (tmp_path / "mine.toml").write_text("# my edits\n")
    assert_error(cli("configs", "demo", "--out", "mine.toml"), 2, "already exists", "--overwrite")
    assert (tmp_path / "mine.toml").read_text() == "# my edits\n"  # nothing lost
    assert cli("configs", "demo", "--out", "mine.toml", "--overwrite").code == 0
    assert (tmp_path / "mine.toml").read_text().startswith("# The main job")
    assert_error(cli("configs", "nope"), 2, "No shipped config", "grid-papers-small")
    assert_error(cli("configs", "demo", "--out", "no-dir/x.toml"), 2, "does not exist")


def test_run_and_validate_take_a_shipped_configs_name_from_any_folder(cli, tmp_path):
    # the fixture runs in tmp_path: no configs/ folder here, as for a wheel user
    assert not (tmp_path / "configs").exists()
    r = cli("run", "demo", "--out", "runs/demo", "--dry-run")
    assert r.code == 0, r.err
    assert "sft/sft p=0.2" in r.out and not (tmp_path / "runs").exists()
    r = cli("validate", "grid-papers-small")
    assert r.code == 0, r.err
    # a real file of that name wins over the shipped config
    (tmp_path / "demo.toml").write_text("[grid]\nnot_an_axis = [1]\n")
    assert cli("validate", "demo.toml").code == 2
    assert_error(cli("run", "nosuch", "--out", "x", "--dry-run"), 2, "no shipped config", "demo")


def test_docs_lists_and_prints_pages(cli):
    r = cli("docs")
    assert r.code == 0
    for topic in ("datasets", "quickstart", "components/booster", "plugins/hooks"):
        assert re.search(rf"^\s+{re.escape(topic)}$", r.out, re.M), topic
    r = cli("docs", "datasets")
    assert r.code == 0 and r.out == (ROOT / "docs" / "datasets.md").read_text()
    assert cli("docs", "docs/datasets.md").out == r.out
    r = cli("docs", "components/booster", "--path")
    assert Path(r.out.strip()).resolve() == (ROOT / "docs/components/booster.md").resolve()
    assert_error(cli("docs", "nope"), 2, "No documentation page", "datasets")


def test_every_docs_page_the_code_names_exists():
    """Hints and docstrings point at docs pages: each one must be a shipped page."""
    topics = set(shipped.doc_topics())
    named = set()
    for py in (ROOT / "hftguard").rglob("*.py"):
        for m in re.finditer(r"docs/([A-Za-z0-9/_-]+)\.md", py.read_text(encoding="utf-8")):
            named.add((m.group(1), py.relative_to(ROOT).as_posix()))
    dangling = sorted(f"{f}: docs/{t}.md" for t, f in named if t not in topics)
    assert named and not dangling, dangling


def test_the_example_plugins_judge_gets_a_hint_when_it_is_not_installed(cli):
    # the cli fixture loads no plugins, as for a wheel installed alone
    r = cli("eval", "--model", "tiny-random", "--judge", "goal-overlap", "--out", "e")
    assert_error(r, 2, "example plugin", "pip install ./plugins/hftguard-example-judge")
    r = cli("eval", "--model", "tiny-random", "--judge", "no-such-judge", "--out", "e")
    assert r.code == 2 and "example plugin" not in r.err


def test_hints_that_name_a_docs_page_say_how_to_read_it_without_a_checkout():
    from hftguard.console import with_docs_command

    assert with_docs_command("See docs/presets.md for the format.") == (
        "See docs/presets.md for the format. (`hftguard docs presets`)"
    )
    two = with_docs_command("docs/datasets.md and docs/components/booster.md, docs/datasets.md")
    assert two.endswith("(`hftguard docs datasets`; `hftguard docs components/booster`)")
    assert with_docs_command("docs/no-such-page.md") == "docs/no-such-page.md"
    already = "see docs/plugins/hooks.md, or `hftguard docs plugins/hooks`"
    assert with_docs_command(already) == already


def test_a_real_error_hint_names_the_docs_command(cli):
    # an unreachable hub dataset (no local mirror, no `datasets`): the hint points at the docs
    r = cli("eval", "--model", "tiny-random", "--task", "hf:org/name", "--out", "e")
    assert r.code == 2 and "`hftguard docs datasets`" in r.err, r.err
