"""Real entry-point discovery, in subprocesses, with a deliberately broken plugin installed.

The broken plugin is "installed" without pip: a hand-written ``*.dist-info`` directory (METADATA and
entry_points.txt) next to a module that raises ImportError on import, on ``PYTHONPATH``.
``importlib.metadata`` finds it exactly as it finds a pip-installed distribution. The example
plugin ``hftguard-example-judge`` is installed (editable) in the test environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BROKEN_DIST = "hftguard-broken-plugin"
BROKEN_EP = "broken"
HEAVY = ("torch", "transformers", "peft")

VALID_CONFIG = """\
[align]
model = "tiny-random"
defense = "sft"

[finetune]
harmful_ratio = 0.2
samples = 20

[eval]
judges = ["refusal-keywords"]
harmful_samples = 4
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the broken plugin's module and dist-info, like site-packages."""
    root = tmp_path_factory.mktemp("site")
    (root / "hftguard_broken_plugin.py").write_text(
        'raise ImportError("hftguard_broken_plugin needs a dependency that is not installed")\n'
    )
    info = root / "hftguard_broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {BROKEN_DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hftguard]\n{BROKEN_EP} = hftguard_broken_plugin\n")
    (info / "top_level.txt").write_text("hftguard_broken_plugin\n")
    (root / "valid.toml").write_text(VALID_CONFIG)
    return root


def hftguard(
    site: Path, *args: str, python_flags: tuple[str, ...] = (), **env_overrides: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGUARD_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        HFTGUARD_HOME=str(site / "home"),
        COLUMNS="200",
        **env_overrides,
    )
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "hftguard", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=site,
        timeout=120,
        check=False,
    )


def rows_of(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list)
    return rows


def test_broken_plugin_does_not_break_help(site: Path) -> None:
    proc = hftguard(site, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "align" in proc.stdout and "plugins" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_plugins_lists_broken_plugin_and_healthy_components(site: Path) -> None:
    rows = rows_of(hftguard(site, "plugins", "--json"))
    broken = [r for r in rows if r["name"] == BROKEN_EP]
    assert len(broken) == 1, rows
    assert broken[0]["kind"] == "broken-plugin"
    assert broken[0]["distribution"] == BROKEN_DIST
    assert broken[0]["version"] == "0.1"
    assert "ImportError" in broken[0]["error"]
    assert "needs a dependency" in broken[0]["error"]
    healthy = {(r["kind"], r["name"]): r for r in rows if "error" not in r}
    assert healthy[("alignment-defense", "sft")]["distribution"] == "hftguard"
    assert healthy[("judge", "refusal-keywords")]["distribution"] == "hftguard"
    assert healthy[("judge", "goal-overlap")]["distribution"] == "hftguard-example-judge"
    assert {r["kind"] for r in healthy.values()} >= {
        "alignment-defense",
        "finetune-defense",
        "dataset",
        "judge",
        "report-sink",
    }


def test_plugins_human_output_shows_the_broken_plugin(site: Path) -> None:
    proc = hftguard(site, "plugins")
    assert proc.returncode == 0, proc.stderr
    assert "goal-overlap" in proc.stdout
    assert BROKEN_EP in proc.stdout and "ImportError" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_validate_works_with_a_broken_plugin_installed(site: Path) -> None:
    proc = hftguard(site, "validate", "valid.toml")
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_strict_mode_fails_with_exit_code_3(site: Path) -> None:
    proc = hftguard(site, "plugins", "--json", HFTGUARD_STRICT_PLUGINS="1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Error:" in proc.stderr
    assert BROKEN_EP in proc.stderr and BROKEN_DIST in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_strict_mode_with_debug_shows_the_traceback(site: Path) -> None:
    proc = hftguard(site, "plugins", HFTGUARD_STRICT_PLUGINS="1", HFTGUARD_DEBUG="1")
    assert proc.returncode == 3
    assert "Traceback" in proc.stderr
    assert "hftguard_broken_plugin" in proc.stderr


def test_load_plugins_empty_loads_nothing_external(site: Path) -> None:
    rows = rows_of(hftguard(site, "plugins", "--json", HFTGUARD_LOAD_PLUGINS=""))
    assert rows
    assert {r["distribution"] for r in rows} == {"hftguard"}
    assert not [r for r in rows if "error" in r]


def test_load_plugins_selects_one_distribution(site: Path) -> None:
    rows = rows_of(
        hftguard(site, "plugins", "--json", HFTGUARD_LOAD_PLUGINS="hftguard-example-judge")
    )
    assert {r["distribution"] for r in rows} == {"hftguard", "hftguard-example-judge"}
    assert not [r for r in rows if "error" in r]


def test_disable_plugins_blocks_the_broken_plugin(site: Path) -> None:
    proc = hftguard(
        site, "plugins", "--json", HFTGUARD_DISABLE_PLUGINS=BROKEN_EP, HFTGUARD_STRICT_PLUGINS="1"
    )
    rows = rows_of(proc)
    assert not [r for r in rows if "error" in r]
    assert "goal-overlap" in {r["name"] for r in rows}


def test_disable_plugins_blocks_the_example_plugin(site: Path) -> None:
    rows = rows_of(hftguard(site, "plugins", "--json", HFTGUARD_DISABLE_PLUGINS="example_judge"))
    assert "goal-overlap" not in {r["name"] for r in rows}


def _imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` lines: 'import time: self | cumulative | name'."""
    modules = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
    return modules


@pytest.mark.parametrize(
    "args",
    [("--help",), ("plugins", "--json"), ("validate", "valid.toml"), ("align", "--help")],
    ids=["help", "plugins", "validate", "align-help"],
)
def test_startup_does_not_import_heavy_libraries(site: Path, args: tuple[str, ...]) -> None:
    proc = hftguard(site, *args, python_flags=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = _imported_modules(proc.stderr)
    assert "hftguard.cli" in modules  # the parse works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"{' '.join(args)} imported {heavy[:10]}"
