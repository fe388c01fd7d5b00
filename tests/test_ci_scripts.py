"""The CI scripts' own housekeeping (seventh session): a CI run on record failed with "No space left
on device" because every `.ci/wheel-check` left its ~1.4 GB `mktemp -d` folder behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "TMPDIR": str(tmp_path), **env}
    return subprocess.run(
        ["bash", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60
    )


def test_wheel_check_removes_its_temporary_folder(tmp_path: Path) -> None:
    # a python that fails at once: the check stops at its first step, after making its folder
    result = _run([".ci/wheel-check"], tmp_path, PYTHON="false")
    assert result.returncode != 0
    assert "wheel-check: building the wheel in " + str(tmp_path) in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_wheel_check_keeps_a_folder_it_was_given(tmp_path: Path) -> None:
    work = tmp_path / "kept"
    result = _run([".ci/wheel-check", str(work)], tmp_path, PYTHON="false")
    assert result.returncode != 0
    assert work.is_dir()


def test_disk_check_fails_clearly_below_the_floor(tmp_path: Path) -> None:
    result = _run([".ci/disk-check", "100000", "100000", str(tmp_path)], tmp_path)
    assert result.returncode == 1
    assert "GB free under" in result.stderr and "No space left" not in result.stderr
    assert "free some space" in result.stderr


def test_disk_check_warns_between_the_two_levels(tmp_path: Path) -> None:
    result = _run([".ci/disk-check", "100000", "0", str(tmp_path)], tmp_path)
    assert result.returncode == 0
    assert "warning: only" in result.stderr


def test_disk_check_passes_quietly_with_room(tmp_path: Path) -> None:
    result = _run([".ci/disk-check", "0", "0", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_ci_run_checks_the_disk_first() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    commands = [line for line in lines if not line.startswith(("set ", "cd "))]
    assert commands[0].startswith("bash .ci/disk-check ")
