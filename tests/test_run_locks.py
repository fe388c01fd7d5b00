"""Never lose a run (#15), items 4 and 8.

4. A run directory is locked while a stage writes it: a second process (a plain start, --resume or
   --overwrite on the same --out) fails cleanly instead of interleaving with the first, and two
   ``hftguard run`` processes on one grid skip each other's cells.
8. A grid can be moved or copied: paths inside it are recorded relative to its root, so re-running
   it at the new place does no work, ``hftguard report`` works there, and its models load their
   adapters from the new place.

Stages run on ``tiny-random``, as functions or through ``hftguard.cli.main``; the two-process test
starts a real second process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, assert_error, cli_runner

from hftguard.cli import main
from hftguard.registry import default_registry

ALIGN = ("align", "--model", "tiny-random", "--max-steps", "2", "--samples", "4")
ALIGN += ("--set", "retain=", "--set", "train.batch_size=2", "--quiet")


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Run]:
    """The shared ``cli`` fixture, with the session's HFTGUARD_HOME (tests/cli_helpers.py)."""
    yield from cli_runner(monkeypatch, tmp_path, capsys, home=False)


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


# ------------------------------------------------------------------------------------------------
# 4. Locked run directories

#: A first hftguard process that stops inside training until the test lets it go: it writes
#: SIGNAL when training starts (its run directory open, its manifest written), then waits for GO.
SLOW = """\
import sys, time
from pathlib import Path
from hftguard.engine import training
signal, go = Path(sys.argv[1]), Path(sys.argv[2])
train = training.train

def slow(*args, **kwargs):
    signal.write_text("training")
    deadline = time.time() + 120
    while not go.exists() and time.time() < deadline:
        time.sleep(0.05)
    return train(*args, **kwargs)

training.train = slow
from hftguard.cli import main
sys.exit(main(sys.argv[3:]))
"""


@dataclass
class Child:
    proc: subprocess.Popen[str]
    go: Path

    def finish(self) -> tuple[int, str]:
        self.go.write_text("go")
        out, _ = self.proc.communicate(timeout=300)
        return self.proc.returncode, out


def start_slow(tmp_path: Path, *args: str) -> Child:
    """Start ``hftguard ARGS`` in another process and wait until it is training."""
    script, signal, go = tmp_path / "slow.py", tmp_path / "training.flag", tmp_path / "go.flag"
    script.write_text(SLOW)
    env = {**os.environ, "HFTGUARD_LOAD_PLUGINS": "", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(signal), str(go), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 180
    while not signal.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"the first process did not start training:\n{proc.stdout}")
        time.sleep(0.05)
    return Child(proc, go)


def test_a_second_process_cannot_write_a_run_in_use(cli: Run, tmp_path: Path) -> None:
    """The reproduction: while a first align trains in --out, a --resume was accepted (and
    interleaved the log), an --overwrite moved the running run aside; now each is refused."""
    first = start_slow(tmp_path, *ALIGN, "--seed", "1", "--out", "o")
    try:
        for flags in (["--resume"], ["--overwrite"], []):
            result = cli(*ALIGN, "--seed", "1", "--out", "o", *flags)
            assert_error(
                result,
                2,
                "o is in use by another hftguard process",
                f"pid {first.proc.pid} on host",
                "since",
            )
        assert siblings(tmp_path / "o") == sorted(["slow.py", "training.flag"])
    finally:
        code, out = first.finish()
    assert code == 0, out
    run = tmp_path / "o"
    m = manifest(run)
    assert m["status"] == "completed" and m["config"]["seed"] == 1
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (run / "align_log.jsonl").open()]
    assert steps == [0, 1]  # one run's log, not two interleaved
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "align_log.jsonl", "manifest.json"]


def test_a_run_started_while_another_holds_the_directory_writes_nothing(
    cli: Run, tmp_path: Path
) -> None:
    """Two aligns started at once on a new --out: the second finds the first's lock (taken before
    anything is written) and stops; the lock names the holder."""
    from hftguard.runs import lock_run_dir

    with lock_run_dir(tmp_path / "o"):
        result = cli(*ALIGN, "--out", "o")
        assert_error(result, 2, f"pid {os.getpid()} on host", "Wait for it to finish")
        assert not (tmp_path / "o" / "manifest.json").exists()
    result = cli(*ALIGN, "--out", "o")  # released: the directory is usable again
    assert result.code == 0, result.err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "adapter",
        "align_log.jsonl",
        "manifest.json",
    ]


@pytest.mark.parametrize("stage", ["eval", "judge"])
def test_eval_and_judge_lock_their_run_directory(cli: Run, tmp_path: Path, stage: str) -> None:
    from hftguard.runs import lock_run_dir

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    args = {
        "eval": ["eval", "--model", "tiny-random", "--harmful-samples", "2", "--quiet"],
        "judge": ["judge", "pairs.jsonl", "--quiet"],
    }[stage]
    with lock_run_dir(tmp_path / "o"):
        assert_error(cli(*args, "--out", "o"), 2, "in use by another hftguard process")
    result = cli(*args, "--out", "o")
    assert result.code == 0, result.err
    assert not (tmp_path / "o" / ".lock").exists()


def test_a_lock_left_by_a_dead_process_is_not_held(cli: Run, tmp_path: Path) -> None:
    """flock locks die with their process: a lock file (and holder record) left by a killed
    run does not stop the next one, in a new directory or when resuming the killed run."""
    from hftguard.runs import HOLDER_FILE, LOCK_FILE

    run = tmp_path / "o"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    (run / HOLDER_FILE).write_text(json.dumps({"pid": 2**22 + 7, "host": "gone", "since": "x"}))
    result = cli(*ALIGN, "--out", "o")
    assert result.code == 0, result.err
    assert not (run / LOCK_FILE).exists() and not (run / HOLDER_FILE).exists()
    m = manifest(run)
    m["status"] = "failed"  # as a killed run leaves it (its lock file still there)
    (run / "manifest.json").write_text(json.dumps(m))
    (run / LOCK_FILE).write_text("")
    result = cli(*ALIGN, "--out", "o", "--resume")
    assert result.code == 0, result.err
    assert manifest(run)["status"] == "completed"


@pytest.mark.parametrize("error", [RuntimeError("out of memory"), KeyboardInterrupt()])
def test_the_lock_is_released_when_a_stage_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    from hftguard.config import AlignConfig, LoraOptions, TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.pipeline import align
    from hftguard.runs import LOCK_FILE, lock_run_dir

    def boom(*a: Any, **k: Any) -> Any:
        raise error

    monkeypatch.setattr(training, "train", boom)
    cfg = AlignConfig(
        model="tiny-random",
        samples=4,
        retain="",
        train=TrainOptions(max_steps=1, batch_size=2, max_length=64),
        lora=LoraOptions(r=4, alpha=8.0),
    )
    with pytest.raises(type(error)):
        align.run(cfg, tmp_path / "o", reporter=Reporter(quiet=True))
    assert manifest(tmp_path / "o")["status"] in ("failed", "interrupted")
    assert not (tmp_path / "o" / LOCK_FILE).exists()
    with lock_run_dir(tmp_path / "o"):  # free again, in this process too
        pass
    monkeypatch.undo()
    out = align.run(cfg, tmp_path / "o", reporter=Reporter(quiet=True), resume=True)
    assert out["status"] == "completed"


# ------------------------------------------------------------------------------------------------
# A finished tiny grid, shared (copied) by the grid tests

GRID_TOML = """\
evaluate_base = false

[grid]
methods = ["sft/sft"]
harmful_ratio = [0.0, 0.5]

[align]
model = "tiny-random"
samples = 4
retain = ""
[align.train]
max_steps = 1
batch_size = 2
max_length = 48
[align.lora]
r = 4
alpha = 8.0

[finetune]
samples = 4
[finetune.train]
max_steps = 1
batch_size = 2
max_length = 48
[finetune.lora]
r = 4
alpha = 8.0

[eval]
harmful_samples = 2
benign_prompts = ""
task_samples = 2
max_new_tokens = 2
batch_size = 2
"""
CELLS = ["sft__sft__p0__n4__sentiment__s42", "sft__sft__p0.5__n4__sentiment__s42"]


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hftguard run grid.toml --out g`` run from its own directory (a relative --out)."""
    home = tmp_path_factory.mktemp("grid-home")
    (home / "grid.toml").write_text(GRID_TOML)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFTGUARD_LOAD_PLUGINS", "")
        mp.chdir(home)
        default_registry.cache_clear()
        assert main(["run", "grid.toml", "--out", "g", "--quiet"]) == 0
        default_registry.cache_clear()
    return home / "g"


def stage_manifests(root: Path) -> dict[str, str]:
    """The text of every stage manifest under a grid root (not the root's own)."""
    return {
        m.parent.relative_to(root).as_posix(): m.read_text() for m in root.rglob("*/manifest.json")
    }


@pytest.fixture
def copy_grid(finished_grid: Path, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Copy the finished grid to ``tmp_path/WHERE``, with the original hidden meanwhile (renamed),
    so that a path still pointing at it fails instead of silently reading the original."""
    hidden = finished_grid.with_name("g-hidden")
    copies: list[Path] = []

    def copy(where: str) -> Path:
        target = tmp_path / where
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(finished_grid if not copies else hidden, target)
        if not copies:
            os.rename(finished_grid, hidden)
        copies.append(target)
        return target

    yield copy
    if copies:
        os.rename(hidden, finished_grid)


# ------------------------------------------------------------------------------------------------
# 4 (grids). Two hftguard run processes on one grid


def test_a_grid_skips_the_cells_another_process_holds(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path]
) -> None:
    from hftguard.runs import lock_run_dir

    root = copy_grid("g")
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    for cell in CELLS:
        shutil.rmtree(root / "cells" / cell)  # both cells left to do
    held = root / "cells" / CELLS[0] / "attacked"
    with lock_run_dir(held):
        result = cli("run", "grid.toml", "--out", "g", "--no-wait", "--quiet")
        assert_error(
            result,
            1,
            "1 of 2 cells skipped",
            "held by another hftguard process",
            CELLS[0],
            "Re-run",
        )
        m = manifest(root)
        assert m["status"] == "incomplete"
        assert [c["status"] for c in m["cells"]] == ["held", "done"]
        assert manifest(root / "cells" / CELLS[1] / "eval")["status"] == "completed"
        assert not (held / "manifest.json").exists()
        # --overwrite would move the tree another process is writing in: refused
        before = stage_manifests(root)
        result = cli("run", "grid.toml", "--out", "g", "--overwrite", "--quiet")
        assert_error(result, 2, "in use by another hftguard process", str(Path("cells", CELLS[0])))
        assert stage_manifests(root) == before and siblings(root) == ["grid.toml"]
    result = cli("run", "grid.toml", "--out", "g", "--quiet")  # the re-run picks the cell up
    assert result.code == 0, result.err
    m = manifest(root)
    assert m["status"] == "completed" and [c["status"] for c in m["cells"]] == ["done", "done"]


def test_a_held_cell_is_waited_for_and_taken_as_the_other_process_left_it(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --no-wait, a cell another process is running is waited for at the end: found
    finished (not rebuilt), so this run too ends with the grid complete and exit code 0. This
    run built the aligned model, the other process the cell after it: not stale."""
    import datetime as dt

    from hftguard.pipeline.grid import runner
    from hftguard.runs import RunLock

    root = copy_grid("g")
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    finished = tmp_path / "finished"
    shutil.copytree(root, finished)
    for part in [*(f"cells/{c}" for c in CELLS), "aligned/sft-s42", "evals/aligned-sft-s42"]:
        shutil.rmtree(root / part)
    lock = RunLock(root / "cells" / CELLS[0] / "attacked").acquire()
    waits: list[float] = []
    left: dict[str, dict[str, Any]] = {}

    def other_process_finishes(seconds: float) -> None:
        """The other process ran cell 0 on this run's aligned model: it started it a
        millisecond after the alignment ended (in the same second: whole-second times tied, and
        the cell was rebuilt as stale)."""
        waits.append(seconds)
        assert manifest(root / "cells" / CELLS[1] / "eval")["status"] == "completed"
        lock.release()
        cell = root / "cells" / CELLS[0]
        shutil.copytree(finished / "cells" / CELLS[0], cell, dirs_exist_ok=True)
        ended = dt.datetime.fromisoformat(manifest(root / "aligned" / "sft-s42")["ended_at"])
        for part in ("attacked", "eval"):
            m = manifest(cell / part)
            later = ended + dt.timedelta(milliseconds=1)
            m["started_at"] = m["ended_at"] = later.isoformat(timespec="microseconds")
            (cell / part / "manifest.json").write_text(json.dumps(m))
            left[part] = m

    monkeypatch.setattr(runner, "_sleep", other_process_finishes)
    result = cli("run", "grid.toml", "--out", "g")
    assert result.code == 0, result.err
    assert waits == [runner.WAIT_POLL_S]
    assert "waiting for another hftguard process to finish" in result.err
    assert "rebuilding" not in result.err
    m = manifest(root)
    assert m["status"] == "completed" and "held" not in m
    assert [c["status"] for c in m["cells"]] == ["done", "done"]
    assert len([r for r in m["rows"] if r.get("kind") == "attacked"]) == 2
    for part in ("attacked", "eval"):  # as the other process left them
        assert manifest(root / "cells" / CELLS[0] / part) == left[part], part


def test_stage_times_order_stages_within_one_second(finished_grid: Path) -> None:
    """Each stage's started_at / ended_at carry microseconds, so the staleness check (a stage is
    stale when its input ended after it started) orders stages that ran in one second: the tiny
    grid's stages take well under a second each."""
    import datetime as dt
    import itertools
    import re

    times: dict[str, tuple[dt.datetime, dt.datetime]] = {}
    for part, text in stage_manifests(finished_grid).items():
        m = json.loads(text)
        for key in ("started_at", "ended_at"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", m[key]), (part, m)
        times[part] = (
            dt.datetime.fromisoformat(m["started_at"]),
            dt.datetime.fromisoformat(m["ended_at"]),
        )
    for cell in CELLS:
        chain = ["aligned/sft-s42", f"cells/{cell}/attacked", f"cells/{cell}/eval"]
        for up, down in itertools.pairwise(chain):
            assert times[up][1] < times[down][0], (up, down)


def _held_alignment(root: Path, tmp_path: Path) -> tuple[Path, Path, Any]:
    """Leave both cells to do and the aligned model half-built, its directory locked as if
    another hftguard process were aligning it. Returns the aligned dir, a copy of the finished
    grid (what the other process will have built) and the lock."""
    from hftguard.runs import RunLock

    (tmp_path / "grid.toml").write_text(GRID_TOML)
    finished = tmp_path / "finished"
    shutil.copytree(root, finished)
    for cell in CELLS:
        shutil.rmtree(root / "cells" / cell)
    aligned = root / "aligned" / "sft-s42"
    shutil.rmtree(aligned)
    shutil.rmtree(root / "evals" / "aligned-sft-s42")
    return aligned, finished, RunLock(aligned).acquire()


def test_a_second_process_waits_for_a_held_alignment_then_shares_its_cells(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers on one grid: the one that finds the aligned model being built by the other
    waits for it, then runs the cells that need it (it used to skip them all and end, leaving
    the other worker to run every cell of that aligned model alone)."""
    from hftguard.pipeline.grid import runner

    root = copy_grid("g")
    _, finished, lock = _held_alignment(root, tmp_path)
    waits: list[float] = []

    def other_process_finishes(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # meanwhile the other process aligned, evaluated and ran cell 0
            lock.release()
            for part in ("aligned/sft-s42", "evals/aligned-sft-s42", f"cells/{CELLS[0]}"):
                shutil.copytree(finished / part, root / part, dirs_exist_ok=True)

    monkeypatch.setattr(runner, "_sleep", other_process_finishes)
    result = cli("run", "grid.toml", "--out", "g")
    assert result.code == 0, result.err
    assert len(waits) == 2
    assert "waiting for another hftguard process" in result.err
    assert str(Path("aligned", "sft-s42")) in result.err
    m = manifest(root)
    assert m["status"] == "completed" and "held" not in m
    assert [c["status"] for c in m["cells"]] == ["done", "done"]
    # what the other process built is taken as it is, not rebuilt as if stale
    assert "rebuilding" not in result.err
    for part in ("aligned/sft-s42", "evals/aligned-sft-s42", f"cells/{CELLS[0]}/eval"):
        assert manifest(root / part) == manifest(finished / part), part
    assert manifest(root / "cells" / CELLS[1] / "eval")["status"] == "completed"


def test_no_wait_skips_the_cells_of_a_held_alignment(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hftguard.pipeline.grid import runner

    root = copy_grid("g")
    _, _, lock = _held_alignment(root, tmp_path)

    def no_sleep(seconds: float) -> None:
        raise AssertionError("--no-wait waited")

    monkeypatch.setattr(runner, "_sleep", no_sleep)
    try:
        result = cli("run", "grid.toml", "--out", "g", "--no-wait", "--quiet")
    finally:
        lock.release()
    assert_error(result, 1, "2 of 2 cells skipped", "held by another hftguard process")
    m = manifest(root)
    assert m["status"] == "incomplete"
    assert [c["status"] for c in m["cells"]] == ["held", "held"]
    assert [h["where"] for h in m["held"]] == [str(Path("g", "aligned", "sft-s42"))]


def test_sigterm_to_a_waiting_worker_ends_it_as_interrupted(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler's SIGTERM to a worker that waits for another process's stage (no training
    loop runs, so no step-boundary handler is installed) ends it as Ctrl-C does: exit 143, and
    the grid's root manifest says "interrupted". It used to keep SIGTERM's default action: the
    process died at once and the root manifest stayed "running" until the next run."""
    import signal

    from hftguard.pipeline.grid import runner

    root = copy_grid("g")
    _, _, lock = _held_alignment(root, tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def sigterm_arrives(seconds: float) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), f"SIGTERM would end the process uncleanly ({handler!r})"
        handler(signal.SIGTERM, None)
        raise AssertionError("SIGTERM's handler returned while the grid waited")

    monkeypatch.setattr(runner, "_sleep", sigterm_arrives)
    try:
        result = cli("run", "grid.toml", "--out", "g")
    finally:
        lock.release()
    assert result.code == 143, result.err
    assert "SIGTERM" in result.err and "Traceback" not in result.err
    m = manifest(root)
    assert m["status"] == "interrupted"
    assert [c["status"] for c in m["cells"]] == ["held", "held"]
    assert signal.getsignal(signal.SIGTERM) == before  # put back


# ------------------------------------------------------------------------------------------------
# 8. Movable grids


def test_a_copied_grid_does_no_work_and_reports(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path]
) -> None:
    """The reproduction: a grid copied elsewhere failed every cell as "changed" (its cells
    recorded the aligned model as spelled in the original --out)."""
    root = copy_grid("elsewhere/g2")
    before = stage_manifests(root)
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    for out in ("elsewhere/g2", str(root.resolve())):  # relative to another cwd, and absolute
        result = cli("run", "grid.toml", "--out", out)
        assert result.code == 0, result.err
        assert "attack-finetune" not in result.err and "align:" not in result.err
        assert stage_manifests(root) == before  # no stage ran again
        assert manifest(root)["status"] == "completed"
    result = cli("report", "elsewhere/g2", "--out", "rep")
    assert result.code == 0, result.err
    assert "Warning" not in result.err  # no cell missing or damaged
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [(c["method"], c["p"]) for c in report["cells"]] == [("sft/sft", 0.0), ("sft/sft", 0.5)]
    assert (tmp_path / "rep" / "training_curves.png").is_file()  # the runs' logs, found there


def test_a_moved_grid_loads_its_adapters_from_where_it_is(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path]
) -> None:
    """A moved attacked model merges the aligned adapter (and its own) from the new place: an
    eval of it, a changed eval config re-run over the grid, and a cell retrained from the moved
    aligned model all work with the original gone."""
    root = copy_grid("moved/g2")
    here = str(root.resolve())
    attacked = root / "cells" / CELLS[1] / "attacked"
    result = cli(
        "eval",
        "--model",
        str(attacked),
        "--harmful-samples",
        "2",
        "--set",
        "benign_prompts=",
        "--set",
        "tasks=[]",
        "--max-new-tokens",
        "2",
        "--out",
        "e",
        "--quiet",
    )
    assert result.code == 0, result.err
    adapters = manifest(tmp_path / "e")["evaluated_model"]["adapters"]
    assert len(adapters) == 2 and all(a.startswith(here + os.sep) for a in adapters), adapters

    (tmp_path / "grid.toml").write_text(GRID_TOML)
    shutil.rmtree(root / "cells" / CELLS[0])  # retrained from the moved aligned model
    result = cli("run", "grid.toml", "--out", "moved/g2", "--set", "eval.max_new_tokens=3")
    assert result.code == 0, result.err
    for cell in CELLS:
        ev = manifest(root / "cells" / cell / "eval")
        assert ev["config"]["max_new_tokens"] == 3  # redone at the new place
        assert all(a.startswith(here + os.sep) for a in ev["evaluated_model"]["adapters"])
    retrained = manifest(root / "cells" / CELLS[0] / "attacked")
    assert all(a.startswith(here + os.sep) for a in retrained["model"]["adapters"])


def test_a_new_out_with_a_copied_aligned_model_runs_only_the_cells(
    cli: Run, tmp_path: Path, finished_grid: Path
) -> None:
    """The workflow configs/calibrated-field.toml and the calibrated README give: copy a grid's
    aligned model (and its evaluation) into a new --out, and only the cells run there. It used
    to be refused: a non-empty directory without a root manifest was taken for someone else's."""
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    new = tmp_path / "g2"
    for part in ("aligned/sft-s42", "evals/aligned-sft-s42"):
        shutil.copytree(finished_grid / part, new / part)
    copied = stage_manifests(new)
    result = cli("run", "grid.toml", "--out", "g2", "--set", "grid.harmful_ratio=[0.5]")
    assert result.code == 0, result.err
    for part, text in copied.items():  # taken as they are, not run again
        assert (new / part / "manifest.json").read_text() == text, part
    m = manifest(new)
    assert m["status"] == "completed" and [c["status"] for c in m["cells"]] == ["done"]
    assert manifest(new / "cells" / CELLS[1] / "eval")["status"] == "completed"


@pytest.mark.parametrize(
    "extra", ["notes.txt", "aligned/notes.txt", "results/x/manifest.json", "aligned/sft-s42/x"]
)
def test_a_tree_that_is_not_only_hftguard_stages_is_still_refused(
    cli: Run, tmp_path: Path, finished_grid: Path, extra: str
) -> None:
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    new = tmp_path / "g2"
    shutil.copytree(finished_grid / "aligned" / "sft-s42", new / "aligned" / "sft-s42")
    if extra.endswith("/x"):  # a stage directory that is not a run (its manifest is gone)
        (new / "aligned" / "sft-s42" / "manifest.json").unlink()
    else:
        (new / extra).parent.mkdir(parents=True, exist_ok=True)
        (new / extra).write_text("{}")
    result = cli("run", "grid.toml", "--out", "g2")
    assert_error(result, 2, "is not the output directory of hftguard run")
    assert not (new / "manifest.json").exists()


def test_a_run_moved_without_its_upstream_says_what_to_do(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path]
) -> None:
    root = copy_grid("g2")
    lone = tmp_path / "lone"
    shutil.copytree(root / "cells" / CELLS[1] / "attacked", lone)
    shutil.rmtree(root)  # the aligned model it was trained from is gone (and the original hidden)
    result = cli("eval", "--model", "lone", "--harmful-samples", "2", "--out", "e", "--quiet")
    assert_error(result, 2, "aligned/sft-s42/adapter", "moved or copied", "whole grid")


def test_a_grid_recorded_before_relative_paths_still_reruns_in_place(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path]
) -> None:
    """Grids written before recorded their stages' input models as --out spelled them (and no
    ``model_root``): re-run with the same --out, every stage is still found finished."""
    root = copy_grid("g")
    legacy = 0
    for m in root.rglob("*/manifest.json"):
        data = json.loads(m.read_text())
        if "model_root" in data:
            data["config"]["model"] = f"g/{data['config']['model']}"
            del data["model_root"]
            m.write_text(json.dumps(data))
            legacy += 1
    assert legacy == 5  # the aligned eval, both cells' attack-finetune and eval
    before = stage_manifests(root)
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    result = cli("run", "grid.toml", "--out", "g")
    assert result.code == 0, result.err
    assert stage_manifests(root) == before


def test_the_dry_run_shows_what_another_process_is_running(
    cli: Run, tmp_path: Path, copy_grid: Callable[[str], Path]
) -> None:
    """A stage another hftguard process holds now shows ``running`` in the plan, and looking
    writes nothing (no lock taken, no lock file created)."""
    from hftguard.runs import LOCK_FILE, RunLock, running_holder

    root = copy_grid("g")
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    for cell in CELLS:
        shutil.rmtree(root / "cells" / cell)
    attacked = root / "cells" / CELLS[0] / "attacked"
    assert running_holder(attacked) is None and not attacked.exists()
    lock = RunLock(attacked).acquire()
    try:
        holder = running_holder(attacked)
        assert holder is not None and holder["pid"] == os.getpid()
        before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
        result = cli("run", "grid.toml", "--out", "g", "--dry-run", "--json")
        assert result.code == 0, result.err
        states = [(c["attack"], c["eval"]) for c in json.loads(result.out)["cells"]]
        assert states == [("running", "new"), ("new", "new")]
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before
        assert not (root / "cells" / CELLS[1] / "attacked" / LOCK_FILE).exists()
        assert lock.held  # still this process's: the look did not take it over
    finally:
        lock.release()
    assert running_holder(attacked) is None
    result = cli("run", "grid.toml", "--out", "g", "--dry-run", "--json")
    assert [c["attack"] for c in json.loads(result.out)["cells"]] == ["new", "new"]
