"""``hftguard run --workers N``: N hftguard run processes on one grid, started by one command
(hftguard.pipeline.grid.workers). Before, the user started them by hand, one shell each, and
set each one's threads."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, assert_error, cli_runner
from test_run_locks import CELLS, GRID_TOML

from hftguard.pipeline.grid import workers


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """The shared ``cli`` fixture, with the session's HFTGUARD_HOME: the workers (other
    processes) find the tiny model where the test session built it."""
    yield from cli_runner(monkeypatch, tmp_path, capsys, home=False)


def manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def test_two_workers_run_a_grid_to_the_end(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real processes: the grid ends completed, each stage ran once with its share of the
    cores as torch threads, and both workers' lines come out here, prefixed."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the share, not the caller's setting
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    result = cli("run", "grid.toml", "--out", "g", "--workers", "2")
    assert result.code == 0, result.err
    assert "[w1] " in result.err and "[w2] " in result.err
    m = manifest(tmp_path / "g")
    assert m["status"] == "completed"
    assert [c["status"] for c in m["cells"]] == ["done", "done"]
    threads = max(1, workers.cores() // 2)
    stages = ["aligned/sft-s42", *(f"cells/{c}/{s}" for c in CELLS for s in ("attacked", "eval"))]
    for stage in stages:
        sm = manifest(tmp_path / "g" / stage)
        assert sm["status"] == "completed", stage
        assert sm["host"]["torch_threads"] == threads, (stage, sm["host"])
    # the result table, from the root manifest the workers wrote
    assert "hftguard run: g" in result.out and "sft/sft" in result.out
    # and the grid is whole: running it again does no work
    again = cli("run", "grid.toml", "--out", "g", "--workers", "2", "--dry-run")
    assert again.code == 0 and "2 done" in again.out


def test_each_worker_gets_the_command(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    seen: dict[str, Any] = {}

    def fake_launch(argv: Any, n: int, root: Path, **kw: Any) -> list[int]:
        seen.update(n=n, root=root, argv=[argv(i) for i in range(n)], **kw)
        return [0, 130, 0]

    monkeypatch.setattr(workers, "launch", fake_launch)
    result = cli(
        "run", "grid.toml", "--out", "g", "--workers", "3",
        "--set", "finetune.train.max_steps=2", "--seed", "7", "--quiet",
    )  # fmt: skip
    assert result.code == 130, result.err  # a worker was interrupted
    assert "[w2] 130" in result.err and "Re-run the same command" in result.err
    assert seen["n"] == 3 and seen["root"] == Path("g") and seen["as_json"] is False
    tail = ["grid.toml", "--out", "g", "--set", "finetune.train.max_steps=2", "--seed", "7"]
    for a in seen["argv"]:
        assert a[1:5] == ["-P", "-m", "hftguard", "run"] and a[5:] == [*tail, "--quiet"]
    result = cli("run", "grid.toml", "--out", "g", "--workers", "2", "--json")
    assert seen["as_json"] is True and seen["argv"][1][5:] == ["grid.toml", "--out", "g", "--json"]


@pytest.mark.parametrize("flag", ["--overwrite", "--no-wait"])
def test_overwrite_and_no_wait_are_refused_with_workers(
    cli: Run, tmp_path: Path, flag: str
) -> None:
    """Several workers would each act on the run --overwrite replaces (put it back, delete it),
    and with --no-wait each would end incomplete with part of the grid's rows."""
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    result = cli("run", "grid.toml", "--out", "g", "--workers", "2", flag)
    assert_error(result, 2, f"{flag} cannot be used with --workers 2")
    assert not (tmp_path / "g").exists()


def test_an_unfinished_overwrite_is_finished_by_one_process(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    (tmp_path / "g").mkdir()
    m = {"stage": "pipeline", "status": "interrupted", "config": {}, "replaces": "g.replaced-1"}
    (tmp_path / "g" / "manifest.json").write_text(json.dumps(m))
    result = cli("run", "grid.toml", "--out", "g", "--workers", "2")
    assert_error(result, 2, "continues an interrupted --overwrite", "one process")


def test_workers_need_a_grid(cli: Run, tmp_path: Path) -> None:
    one = GRID_TOML.split("[grid]")[0] + "[align]" + GRID_TOML.split("[align]", 1)[1]
    (tmp_path / "one.toml").write_text(one)
    assert_error(cli("run", "one.toml", "--out", "o", "--workers", "2"), 2, "needs a grid")
    assert not (tmp_path / "o").exists()
    result = cli("run", "one.toml", "--out", "o", "--workers", "0")
    assert result.code == 2 and "--workers" in result.err


def test_a_refused_out_is_refused_once_before_any_worker_starts(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "notes.txt").write_text("mine")

    def no_launch(*a: Any, **k: Any) -> list[int]:
        raise AssertionError("a worker started")

    monkeypatch.setattr(workers, "launch", no_launch)
    assert_error(cli("run", "grid.toml", "--out", "g", "--workers", "2"), 2, "is not the output")
    assert (tmp_path / "g" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("codes", "code"),
    [
        ([0, 0], 0),
        ([0, 1], 1),
        ([1, 130], 130),
        ([143, 130], 143),
        ([2, 1], 2),
        ([0, -9], 137),  # killed by SIGKILL (the OOM killer): the shell's 128 + 9
        ([-15, 0], 143),  # stopped by SIGTERM before it could handle it
    ],
)
def test_one_exit_code_for_the_workers(codes: list[int], code: int) -> None:
    assert workers.exit_code(codes) == code


def test_worker_env_shares_the_cores_and_the_gpus() -> None:
    env = workers.worker_env(2, 4, {"PATH": "/bin"}, n_cores=16, n_gpus=2)
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "0"}
    assert workers.worker_env(1, 3, {}, n_cores=2, n_gpus=1) == {"OMP_NUM_THREADS": "1"}
    mine = {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "1"}
    assert workers.worker_env(0, 2, mine, n_cores=16, n_gpus=4) == mine  # the user's win


def test_sigterm_and_ctrl_c_reach_every_worker_once(tmp_path: Path) -> None:
    """A scheduler's SIGTERM (or Ctrl-C) to the command is passed on to each worker: they run in
    sessions of their own, so nothing else would reach them. Stand-in workers: the first opens
    the grid's root (its manifest), then each prints a line and sleeps; the signal comes once
    both have printed."""
    import io
    import os
    import signal
    import sys
    import threading

    script = (
        "import datetime, json, pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(40 + int(sys.argv[1])))\n"
        "if sys.argv[1] == '0':\n"
        "    root = pathlib.Path(sys.argv[2]); root.mkdir()\n"
        "    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')\n"
        "    m = {'stage': 'pipeline', 'started_at': now}\n"
        "    (root / 'manifest.json').write_text(json.dumps(m))\n"
        "sys.stderr.buffer.write(b'up ' + sys.argv[1].encode() + b' \\xff\\n')\n"
        "sys.stderr.flush()\n"
        "time.sleep(60)\n"
    )
    # a shell without job control starts background commands with SIGINT ignored (`cmd &`):
    # Ctrl-C is what this test sends, so it is Python's default here whatever started pytest
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    for k, signum in enumerate((signal.SIGTERM, signal.SIGINT)):
        before = signal.getsignal(signal.SIGTERM)
        sink = io.StringIO()
        root = tmp_path / f"g{k}"

        def send_when_both_up(signum: int = signum, sink: io.StringIO = sink) -> None:
            for _ in range(600):
                if sink.getvalue().count("up") == 2:
                    break
                time.sleep(0.05)
            os.kill(os.getpid(), signum)

        sender = threading.Thread(target=send_when_both_up, daemon=True)
        sender.start()
        codes = workers.launch(
            lambda i, root=root: [sys.executable, "-c", script, str(i), str(root)],
            2,
            root,
            sink=sink,
        )
        sender.join()
        assert signal.getsignal(signal.SIGTERM) == before
        lines = sorted(sink.getvalue().splitlines())
        # a byte that is not UTF-8 (a C library's) is replaced, not a reason to stop reading
        assert lines == ["[w1] up 0 \ufffd", "[w2] up 1 \ufffd"], lines
        assert codes == ([-signal.SIGTERM] * 2 if signum == signal.SIGTERM else [40, 41]), signum
    signal.signal(signal.SIGINT, interrupt)


def test_a_worker_that_cannot_open_the_grid_starts_no_other(tmp_path: Path) -> None:
    import io
    import sys

    sink = io.StringIO()
    script = "import sys; print('refused', file=sys.stderr); sys.exit(2)"
    codes = workers.launch(lambda i: [sys.executable, "-c", script], 3, tmp_path / "g", sink=sink)
    assert codes == [2] and sink.getvalue() == "[w1] refused\n"
