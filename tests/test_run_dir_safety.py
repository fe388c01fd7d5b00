"""Never lose a run (#15): ``--overwrite`` and ``hftguard run --out`` replace only what hftguard
wrote, and only once the new run can start; files follow the umask.

Stages run on ``tiny-random``, as functions or through ``hftguard.cli.main``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, assert_error, cli_runner

from hftguard.config import AlignConfig, EvalConfig, FinetuneConfig, LoraOptions, TrainOptions
from hftguard.console import Reporter
from hftguard.errors import RunDirError
from hftguard.pipeline import align, attack_finetune, evaluate
from hftguard.runs import atomic_write_json, base_manifest, open_run_dir

TINY_LORA = LoraOptions(r=4, alpha=8.0)
ALIGN = ("align", "--model", "tiny-random", "--max-steps", "1", "--samples", "4")
ALIGN += ("--set", "retain=", "--quiet")


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Run]:
    """The shared ``cli`` fixture, with the session's HFTGUARD_HOME (tests/cli_helpers.py)."""
    yield from cli_runner(monkeypatch, tmp_path, capsys, home=False)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def siblings(path: Path) -> list[str]:
    """What else lies next to ``path`` (a run moved aside and left behind would show here)."""
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def _train() -> TrainOptions:
    return TrainOptions(max_steps=1, batch_size=4, max_length=64)


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A completed align, attack-finetune and eval run (copied by each test that changes one)."""
    root = tmp_path_factory.mktemp("done")
    quiet = Reporter(quiet=True)
    acfg = AlignConfig(model="tiny-random", samples=8, retain="", train=_train(), lora=TINY_LORA)
    align.run(acfg, root / "align", reporter=quiet)
    fcfg = FinetuneConfig(
        model=str(root / "align"), samples=8, harmful_ratio=0.25, train=_train(), lora=TINY_LORA
    )
    attack_finetune.run(fcfg, root / "finetune", reporter=quiet)
    ecfg = EvalConfig(
        model=str(root / "align"),
        harmful_samples=2,
        task_samples=2,
        benign_samples=2,
        max_new_tokens=2,
        tasks=["sentiment"],
    )
    evaluate.run(ecfg, root / "eval", reporter=quiet)
    return {"align": root / "align", "finetune": root / "finetune", "eval": root / "eval"}


def copy_run(done: dict[str, Path], stage: str, to: Path) -> Path:
    shutil.copytree(done[stage], to)
    return to


# ------------------------------------------------------------------------------------------------
# 1. --overwrite replaces only what is recognisably an hftguard run of the same stage

FOREIGN = {
    "web-app": {"name": "My App", "short_name": "app", "start_url": "/", "display": "standalone"},
    "list": [1, 2, 3],
    "unknown-stage": {"stage": "build", "status": "ok", "config": {}, "started_at": "x"},
    "stage-only": {"stage": "align"},
}


@pytest.mark.parametrize("kind", [*FOREIGN, "damaged"])
def test_overwrite_refuses_a_foreign_manifest(cli: Run, tmp_path: Path, kind: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    text = "{damaged" if kind == "damaged" else json.dumps(FOREIGN[kind])
    (site / "manifest.json").write_text(text)
    (site / "index.html").write_text("<html>mine</html>")
    before = snapshot(site)
    result = cli(*ALIGN, "--out", "site", "--overwrite")
    assert_error(result, 2, "not an hftguard run directory", "manifest.json")
    assert snapshot(site) == before


@pytest.mark.parametrize("other", ["eval", "finetune"])
def test_overwrite_refuses_a_run_of_another_stage(
    cli: Run, tmp_path: Path, done: dict[str, Path], other: str
) -> None:
    run = copy_run(done, other, tmp_path / "o")
    before = snapshot(run)
    result = cli(*ALIGN, "--out", "o", "--overwrite")
    assert_error(result, 2, f"'{other}' run", "another --out")
    assert snapshot(run) == before


def test_overwrite_refuses_a_grid_root(cli: Run, tmp_path: Path, done: dict[str, Path]) -> None:
    root = tmp_path / "grid"
    root.mkdir()
    atomic_write_json(
        root / "manifest.json",
        {"stage": "pipeline", "status": "completed", "config": {}, "command": None, "rows": []},
    )
    copy_run(done, "align", root / "aligned")
    before = snapshot(root)
    assert_error(cli(*ALIGN, "--out", "grid", "--overwrite"), 2, "'pipeline' run")
    assert snapshot(root) == before


def test_overwrite_refuses_the_current_directory(
    cli: Run, tmp_path: Path, done: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(done, "align", tmp_path / "a")
    monkeypatch.chdir(run)
    before = snapshot(run)
    assert_error(cli(*ALIGN, "--out", ".", "--overwrite"), 2, "current directory")
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------------------
# 2. --overwrite replaces a run only once the new one can start; a failed attempt restores it

BAD_INPUT = {
    "align-data": ("align", [*ALIGN, "--data", "/nonexistent.jsonl"], "nonexistent.jsonl"),
    "align-model": ("align", [*ALIGN[:1], *ALIGN[3:], "--model", "/nonexistent-model"], "nonex"),
    "finetune-task": (
        "finetune",
        [
            "attack-finetune",
            "--model",
            "tiny-random",
            "--max-steps",
            "1",
            "--samples",
            "8",
            "--task",
            "/nonexistent.jsonl",
            "--quiet",
        ],
        "nonexistent.jsonl",
    ),
    "eval-model": (
        "eval",
        ["eval", "--model", "/nonexistent-model", "--harmful-samples", "2", "--quiet"],
        "nonexistent-model",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_overwrite_with_a_bad_input_keeps_the_run(
    cli: Run, tmp_path: Path, done: dict[str, Path], case: str
) -> None:
    stage, args, needle = BAD_INPUT[case]
    run = copy_run(done, stage, tmp_path / "o")
    before = snapshot(run)
    result = cli(*args, "--out", "o", "--overwrite")
    assert result.code == 2, result.err
    assert needle in result.err and "Hint:" in result.err
    assert snapshot(run) == before  # same manifest, adapter and outputs, byte for byte
    assert siblings(run) == []
    if case != "align-data":  # align loads its data before it opens the run directory
        assert "is back in place" in result.err


def test_a_failed_overwrite_restores_the_run(
    tmp_path: Path, done: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training fails before it saved anything to resume from: the attempt is discarded."""
    from hftguard.engine import training

    run = copy_run(done, "align", tmp_path / "o")
    before = snapshot(run)

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(training, "train", boom)
    cfg = AlignConfig(model="tiny-random", samples=8, retain="", train=_train(), lora=TINY_LORA)
    with pytest.raises(RuntimeError, match="out of memory"):
        align.run(cfg, run, reporter=Reporter(quiet=True), overwrite=True)
    assert snapshot(run) == before
    assert siblings(run) == []


def test_a_failed_overwrite_with_checkpoints_keeps_both(
    tmp_path: Path, done: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training fails after a checkpoint: the new run stays resumable in --out, the old one is
    kept aside until the new one completes."""
    from hftguard.engine import training
    from hftguard.runs import RunDir

    run = copy_run(done, "align", tmp_path / "o")
    before = snapshot(run)

    def boom(
        model: Any, defense: Any, main: Any, streams: Any, cfg: Any, rd: Any, *a: Any, **k: Any
    ) -> Any:
        (rd.checkpoints / "step-1").mkdir(parents=True)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(training, "train", boom)
    cfg = AlignConfig(
        model="tiny-random", samples=8, retain="", train=_train(), lora=TINY_LORA, seed=7
    )
    with pytest.raises(RuntimeError, match="out of memory"):
        align.run(cfg, run, reporter=Reporter(quiet=True), overwrite=True)
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "failed" and m["config"]["seed"] == 7
    (aside,) = siblings(run)
    assert aside.startswith(".o.replaced-") and m["replaces"] == aside
    assert snapshot(tmp_path / aside) == before
    RunDir(run, "align", resumed=True).update_manifest(status="completed")  # e.g. after --resume
    assert siblings(run) == []
    assert "replaces" not in json.loads((run / "manifest.json").read_text())


def test_a_successful_overwrite_replaces_the_run(
    cli: Run, tmp_path: Path, done: dict[str, Path]
) -> None:
    run = copy_run(done, "align", tmp_path / "o")
    result = cli(*ALIGN, "--seed", "5", "--out", "o", "--overwrite")
    assert result.code == 0, result.err
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "completed" and m["config"]["seed"] == 5 and "replaces" not in m
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert siblings(run) == []


# ------------------------------------------------------------------------------------------------
# 3. hftguard run --out writes only into a new or empty directory or a grid root of its own

PIPELINE_TOML = """\
evaluate_base = false

[align]
model = "tiny-random"
samples = 4
retain = ""
data = "/nonexistent.jsonl"
[align.train]
max_steps = 1
batch_size = 2

[finetune]
samples = 8
[finetune.train]
max_steps = 1
batch_size = 2

[eval]
harmful_samples = 2
task_samples = 2
benign_prompts = ""
max_new_tokens = 2
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_run_refuses_a_stage_run_directory(
    cli: Run, tmp_path: Path, done: dict[str, Path], overwrite: bool
) -> None:
    (tmp_path / "p.toml").write_text(PIPELINE_TOML)
    run = copy_run(done, "align", tmp_path / "a")
    before = snapshot(run)
    result = cli("run", "p.toml", "--out", "a", "--quiet", *(["--overwrite"] if overwrite else []))
    assert_error(result, 2, "'align' run", "another --out")
    assert snapshot(run) == before


@pytest.mark.parametrize("dry_run", [False, True])
def test_run_refuses_a_foreign_directory(cli: Run, tmp_path: Path, dry_run: bool) -> None:
    """--dry-run refuses it too: it used to list the plan (even stages copied in as done) for a
    directory the real run then refused."""
    (tmp_path / "p.toml").write_text(PIPELINE_TOML)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = cli("run", "p.toml", "--out", "mine", "--quiet", *(["--dry-run"] if dry_run else []))
    assert_error(result, 2, "not the output directory of hftguard run", "another --out")
    assert snapshot(tmp_path / "mine") == {"notes.txt": b"mine"}


def test_run_into_an_empty_directory_or_its_own_root(cli: Run, tmp_path: Path) -> None:
    """An empty --out and the root of an earlier run (even one from before the root had
    schema_version) are accepted; here the align data is missing, so the run fails in its stage."""
    (tmp_path / "p.toml").write_text(PIPELINE_TOML)
    (tmp_path / "empty").mkdir()
    assert_error(cli("run", "p.toml", "--out", "empty", "--quiet"), 2, "nonexistent.jsonl")
    m = json.loads((tmp_path / "empty" / "manifest.json").read_text())
    assert m["stage"] == "pipeline" and m["status"] == "failed"
    assert_error(cli("run", "p.toml", "--out", "empty", "--quiet"), 2, "nonexistent.jsonl")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    atomic_write_json(
        legacy / "manifest.json",
        {"stage": "pipeline", "config": {}, "command": None, "status": "completed"},
    )
    assert_error(cli("run", "p.toml", "--out", "legacy", "--quiet"), 2, "nonexistent.jsonl")


def test_run_overwrite_that_fails_at_once_keeps_the_grid(
    cli: Run, tmp_path: Path, done: dict[str, Path]
) -> None:
    (tmp_path / "p.toml").write_text(PIPELINE_TOML)
    root = tmp_path / "g"
    root.mkdir()
    atomic_write_json(
        root / "manifest.json",
        {"stage": "pipeline", "config": {}, "command": None, "status": "completed"},
    )
    copy_run(done, "align", root / "aligned")
    before = snapshot(root)
    assert_error(cli("run", "p.toml", "--out", "g", "--overwrite", "--quiet"), 2, "nonexistent")
    assert snapshot(root) == before
    assert siblings(root) == ["p.toml"]


# ------------------------------------------------------------------------------------------------
# 9. Files and directories follow the umask


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def modes(path: Path) -> dict[str, int]:
    return {
        p.relative_to(path).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in [path, *path.rglob("*")]
    }


def test_a_stage_writes_with_the_umask(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    cfg = AlignConfig(model="tiny-random", samples=8, retain="", train=_train(), lora=TINY_LORA)
    align.run(cfg, tmp_path / "a", reporter=Reporter(quiet=True))
    found = modes(tmp_path / "a")
    assert found["manifest.json"] == 0o644
    assert found["adapter"] == 0o755
    assert found["adapter/adapter_model.safetensors"] == 0o644
    assert {p: m for p, m in found.items() if m not in (0o644, 0o755)} == {}


def test_atomic_writes_and_run_dirs_follow_the_umask(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    from hftguard.runs import make_temp_dir

    umask(0o027)
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(make_temp_dir(tmp_path, ".t.").stat().st_mode) == 0o750
    run = open_run_dir(tmp_path / "r", "align")
    run.update_manifest(**base_manifest("align", [], {}, 0))
    assert stat.S_IMODE(run.manifest_path.stat().st_mode) == 0o640
    umask(0o002)
    atomic_write_json(tmp_path / "y.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "y.json").stat().st_mode) == 0o664


def test_open_run_dir_overwrite_is_refused_for_foreign_content(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "manifest.json").write_text('{"name": "app"}')
    with pytest.raises(RunDirError, match="not an hftguard run directory") as err:
        open_run_dir(tmp_path / "o", "align", overwrite=True)
    assert err.value.hint
    assert (tmp_path / "o" / "manifest.json").is_file()


def test_run_overwrite_with_progress_keeps_both_until_it_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid --overwrite whose first stages finished keeps its progress (re-run to continue)
    and the old tree aside; the run that completes deletes the old tree."""
    from hftguard import config as cfgmod
    from hftguard.errors import HftguardError
    from hftguard.pipeline import grid
    from hftguard.pipeline.common import start_run
    from hftguard.runs import stamp

    failing: set[str] = set()

    def fake(stage: str) -> Any:
        def run(cfg: Any, out: Any, *, resume: bool = False, overwrite: bool = False, **kw: Any):
            run_dir, done_ = start_run(
                out, stage, cfg, resume=resume, overwrite=overwrite, command=None
            )
            if done_:
                return run_dir.read_manifest()
            try:  # released at the end, as the real stages' guard() does
                if stage in failing:
                    raise HftguardError(f"boom in {out}")
                return run_dir.update_manifest(status="completed", ended_at=stamp(), metrics={})
            finally:
                run_dir.release()

        return run

    for name, module in (("align", align), ("finetune", attack_finetune), ("eval", evaluate)):
        monkeypatch.setattr(module, "run", fake(name))
    cfg = cfgmod.build(
        cfgmod.PipelineConfig,
        {
            "evaluate_base": True,
            "align": {"model": "tiny-random", "retain": "", "train": {"max_steps": 1}},
            "finetune": {"samples": 20, "train": {"max_steps": 1}},
            "eval": {"harmful_samples": 4},
        },
    )
    root = tmp_path / "g"
    quiet = Reporter(quiet=True)
    grid.run(cfg, root, reporter=quiet)
    old = snapshot(root)
    failing.add("align")
    with pytest.raises(HftguardError, match="boom"):
        grid.run(cfg, root, reporter=quiet, overwrite=True)  # the base eval finished
    (aside,) = siblings(root)
    assert aside.startswith(".g.replaced-") and snapshot(tmp_path / aside) == old
    m = json.loads((root / "manifest.json").read_text())
    assert m["status"] == "failed" and m["replaces"] == aside
    failing.clear()
    summary = grid.run(cfg, root, reporter=quiet)  # the same command again, without --overwrite
    assert summary["status"] == "completed" and "replaces" not in summary
    assert siblings(root) == []
    assert "replaces" not in json.loads((root / "manifest.json").read_text())


# Regression: a run stopped (SIGTERM, a failure) and resumed to completion kept the stop's
# `error` in its manifest, so a finished run read as "completed" with an error beside it.
def test_a_resumed_run_that_completes_carries_no_stale_error(tmp_path: Path) -> None:
    from hftguard.errors import StopRequested
    from hftguard.pipeline.common import fail_run, start_run
    from hftguard.runs import read_manifest, stamp

    cfg = AlignConfig(model="tiny-random", retain="", train=_train())
    out = tmp_path / "run"
    run, done_ = start_run(out, "align", cfg, resume=False, overwrite=False, command=None)
    assert not done_
    (run.checkpoints / "step-0000001").mkdir(parents=True)  # something to resume from
    fail_run(run, StopRequested("Stopped by SIGTERM after step 1 of 4"))
    run.release()
    stopped = read_manifest(out)
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]

    run, done_ = start_run(out, "align", cfg, resume=True, overwrite=False, command=None)
    assert not done_
    resumed = read_manifest(out)
    assert resumed["status"] == "running" and "error" not in resumed and "ended_at" not in resumed
    final = run.update_manifest(status="completed", ended_at=stamp())
    run.release()
    assert "error" not in final and "error" not in read_manifest(out)
    # the stop is kept as history, with when it happened
    assert final["earlier_stops"] == [
        {
            "status": "interrupted",
            "error": stopped["error"],
            "ended_at": stopped["ended_at"],
        }
    ]
