"""``hftguard run --workers N``: N hftguard run processes on one grid, started by one command
(hftguard.pipeline.grid.workers). Before, the user started them by hand, one shell each, and
set each one's threads."""

from __future__ import annotations

import json
import os
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


WORKER_STANDIN = """
import datetime, json, os, pathlib, signal, sys, time
from hftguard.pipeline.grid import workers
root = pathlib.Path(sys.argv[1])
root.mkdir()
(root / "pid").write_text(str(os.getpid()))
def on_term(*a):
    sys.stderr.write("x" * 200_000 + "\\n")  # more than a pipe holds: nobody reads it now
    sys.stderr.flush()
    (root / "stopped").write_text(str(os.getppid()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
(root / "manifest.json").write_text(json.dumps({"stage": "pipeline", "started_at": now}))
assert workers.watch_parent(poll_s=0.05)
print("up", file=sys.stderr, flush=True)
try:
    for _ in range(6000):  # a worker's progress lines, until it is stopped (or 60 s)
        print("tick", file=sys.stderr, flush=True)
        time.sleep(0.01)
except BrokenPipeError:
    (root / "epipe").write_text("")
    raise
"""

LAUNCHER = """
import sys
from pathlib import Path
from hftguard.pipeline.grid import workers
script, root = sys.argv[1], sys.argv[2]
workers.launch(lambda i: [sys.executable, "-c", script, root], 1, Path(root))
"""


def _end(launcher: Any, bound: Any, root: Path) -> None:
    """Stop a test's launcher, its time bound and the stand-in worker it started (its pid in
    ``root/pid``), and close the launcher's pipe."""
    import signal

    bound.cancel()
    launcher.kill()
    launcher.wait()
    if launcher.stderr is not None:
        launcher.stderr.close()
    pid = int((root / "pid").read_text()) if (root / "pid").exists() else 0
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_worker_stops_cleanly_when_its_command_is_killed(tmp_path: Path) -> None:
    """Before, a SIGKILL of ``hftguard run --workers N`` left the workers running unseen, and
    their next progress line met a pipe nobody read (BrokenPipeError, in the middle of a
    step). Now each worker sees its command gone and stops as on SIGTERM; its writes in
    between still find a reader. A stand-in worker writes a line every 10 ms."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    root = tmp_path / "g"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER_STANDIN, str(root)],
        stderr=subprocess.PIPE,
        text=True,
    )
    bound = threading.Timer(120, launcher.kill)  # a liveness bound on the reading below
    bound.start()
    try:
        assert launcher.stderr is not None
        lines = []
        for line in launcher.stderr:  # the worker is up and its lines come through
            lines.append(line)
            if line.startswith("[w1] tick"):
                break
        assert lines and lines[-1].startswith("[w1] tick"), "".join(lines)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        for _ in range(600):  # a liveness bound, not a timing: the stop comes in ~0.05 s
            if (root / "stopped").exists() or (root / "epipe").exists():
                break
            time.sleep(0.05)
        time.sleep(0.2)  # an "epipe" written just after
        assert not (root / "epipe").exists(), "the worker died of a broken pipe"
        assert (root / "stopped").exists(), "the worker was not stopped"
        assert int((root / "stopped").read_text()) != launcher.pid
    finally:
        _end(launcher, bound, root)


def test_only_a_started_worker_watches_its_command(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hftguard run`` (one process, no --workers) calls watch_parent, which watches only
    where launch() set HFTGUARD_WORKER_OF: a user's own run has nothing to watch."""
    for value in (None, "", "w1", "\u00b2", "-5", "0", "1"):  # "²" is a digit, not a number
        assert workers.watch_parent({} if value is None else {workers.PARENT_ENV: value}) is False
    called: list[bool] = []

    def watch() -> bool:  # before the grid starts: the root has no manifest yet
        called.append(not (tmp_path / "g" / "manifest.json").exists())
        return False

    monkeypatch.setattr(workers, "watch_parent", watch)
    (tmp_path / "grid.toml").write_text(GRID_TOML)
    result = cli("run", "grid.toml", "--out", "g", "--dry-run")
    assert result.code == 0 and called == []  # a plan starts no stage
    result = cli("run", "grid.toml", "--out", "g")
    assert result.code == 0, result.err
    assert called == [True]


def test_a_worker_also_watches_a_command_behind_a_wrapper(tmp_path: Path) -> None:
    """Where something stands between the command and the worker (a python shim that forks
    rather than execs), the worker's parent is not the command: it then stops when either is
    gone, and at once if the command died before the worker looked. Stand-ins whose parent
    (pytest) stays alive: one names a finished process as its command, one a live one."""
    import os
    import subprocess
    import sys

    script = (
        "import os, pathlib, signal, sys, time\n"
        "from hftguard.pipeline.grid import workers\n"
        "flag = pathlib.Path(sys.argv[1])\n"
        "signal.signal(signal.SIGTERM, lambda *a: (flag.write_text('stopped'), sys.exit(0)))\n"
        "assert workers.watch_parent(poll_s=0.05)\n"
        "flag.with_suffix('.up').write_text('')\n"
        "time.sleep(60)\n"
    )
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    commands = {"dead": dead.pid, "alive": os.getppid()}  # the latter: pytest's own parent
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / name)],
            env={**os.environ, workers.PARENT_ENV: str(pid)},
        )
        for name, pid in commands.items()
    }
    try:
        for _ in range(600):  # a liveness bound
            if (tmp_path / "dead").exists() and (tmp_path / "alive.up").exists():
                break
            time.sleep(0.05)
        time.sleep(0.5)  # ten of the live one's polls
        assert (tmp_path / "dead").read_text() == "stopped"
        assert procs["dead"].wait(timeout=30) == 0
        assert not (tmp_path / "alive").exists() and procs["alive"].poll() is None
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


STOPPING_STANDIN = """
import datetime, json, os, pathlib, sys, time
from hftguard.engine.stopping import StopOnSigterm
from hftguard.errors import StopRequested
from hftguard.pipeline.grid import workers
root = pathlib.Path(sys.argv[1])
root.mkdir()
(root / "pid").write_text(str(os.getpid()))
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
(root / "manifest.json").write_text(json.dumps({"stage": "pipeline", "started_at": now}))
assert workers.watch_parent(poll_s=0.05)
try:
    with StopOnSigterm() as stop:
        print("up", file=sys.stderr, flush=True)
        while not stop.requested:  # steps
            time.sleep(0.01)
        (root / "requested").write_text("")
        time.sleep(3)  # the step in progress, long enough for the command to be killed
        (root / "stopped").write_text("at the step boundary")  # where a loop raises its own
except StopRequested as exc:
    if not (root / "stopped").exists():
        (root / "stopped").write_text(str(exc))
"""


def test_a_stop_under_way_is_not_cut_short_when_the_command_is_killed(tmp_path: Path) -> None:
    """A SIGTERM passed on to the workers, then a SIGKILL of the command (``timeout -k``,
    ``kill`` then ``kill -9``): the worker, already heading for its step boundary, must not
    send itself a second SIGTERM, which a training loop takes for "stop at once"."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    root = tmp_path / "g"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, STOPPING_STANDIN, str(root)],
        stderr=subprocess.PIPE,
        text=True,
    )
    bound = threading.Timer(120, launcher.kill)
    bound.start()
    try:
        assert launcher.stderr is not None
        lines = [launcher.stderr.readline()]
        assert lines[0].startswith("[w1] up"), lines
        launcher.send_signal(signal.SIGTERM)  # passed on to the worker
        for _ in range(600):
            if (root / "requested").exists():
                break
            time.sleep(0.05)
        time.sleep(1.2)  # past DUPLICATE_S: a second SIGTERM now would be a new request
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        for _ in range(600):
            if (root / "stopped").exists():
                break
            time.sleep(0.05)
        assert (root / "stopped").read_text() == "at the step boundary"
    finally:
        _end(launcher, bound, root)


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


_CHILDREN = Path(f"/proc/self/task/{os.getpid()}/children")


@pytest.mark.skipif(not _CHILDREN.exists(), reason="reads /proc/PID/task/PID/children (Linux)")
def test_real_workers_stop_cleanly_when_the_command_is_sigkilled(tmp_path: Path) -> None:
    """End to end: ``hftguard run --workers 2`` on a tiny grid whose alignment is long, the
    command SIGKILLed while worker 1 trains and worker 2 waits for it. Both stop: the
    alignment at a step boundary with a checkpoint, its manifest and the grid's saying
    "interrupted", and no worker left running."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "grid.toml").write_text(GRID_TOML)
    env = {**os.environ, "HFTGUARD_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hftguard", "run", "grid.toml", "--out", "g"]
    command += ["--workers", "2", "--set", "align.train.max_steps=100000"]
    command += ["--set", "align.train.checkpoint_every=1000000"]  # only the stop's checkpoint
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    aligned = tmp_path / "g" / "aligned" / "sft-s42"
    try:
        for _ in range(1200):  # a liveness bound: until a few steps are logged
            log = aligned / "align_log.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.communicate()[1].decode()
            time.sleep(0.1)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2, children  # the two workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(1200):  # the waiting worker stops at once, the training one after a step
            if all(manifest(d)["status"] != "running" for d in (tmp_path / "g", aligned)):
                break
            time.sleep(0.1)
        assert manifest(aligned)["status"] == "interrupted"
        assert "SIGTERM" in json.dumps(manifest(aligned))
        assert (aligned / "checkpoints").is_dir() and any((aligned / "checkpoints").iterdir())
        assert manifest(tmp_path / "g")["status"] == "interrupted"
        for pid in children:
            for _ in range(300):
                if not _running(int(pid)):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"worker {pid} still runs")
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
