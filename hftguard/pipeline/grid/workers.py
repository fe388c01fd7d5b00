"""Several ``hftguard run`` processes on one grid, started by one command (``--workers N``).

Two processes on one ``--out`` already share a grid (each stage locks its run directory; a worker
that finds a stage held does the rest of the grid first and then waits for it: :mod:`.runner`).
On a 2-core CPU two one-thread workers get more done than one two-thread process, and on a GPU
several small-model workers fill the card. ``--workers N`` starts them for the user:

- the first worker starts alone, and the others only once it has opened the grid's root (written
  its manifest), so that they find an hftguard root and not a half-made directory (the CLI
  refuses ``--overwrite`` and ``--no-wait`` with several workers: see ``hftguard run --help``);
- each worker computes with ``cores // N`` threads unless ``OMP_NUM_THREADS`` is set, and on a
  machine with several GPUs worker ``i`` sees GPU ``i mod k`` (of those ``CUDA_VISIBLE_DEVICES``
  lists, where it lists several);
- every line a worker writes to stderr (progress, warnings, errors) comes out on this process's
  stderr prefixed with ``[wI]`` (with ``--json``: as JSON lines with ``"worker": I``); their
  result tables are left out, and this process shows the grid's from the root manifest once
  they have all ended;
- Ctrl-C and SIGTERM (and SIGHUP, as SIGTERM) to this process are passed on to every worker,
  once (the workers run in sessions of their own, so a terminal's Ctrl-C does not reach them
  twice); a stage stops as it does in one process (interrupted, or at a step boundary with a
  checkpoint), and this process waits for them all;
- a worker whose command was killed outright (SIGKILL, the OOM killer) stops as it would on
  SIGTERM (:func:`watch_parent`): it does not run on unseen, and it does not die of a broken
  pipe in the middle of a step either, since each worker also holds a read end of its own
  stderr pipe (so its writes never meet a pipe without a reader) and empties it once its
  command is gone.

The code here starts and watches processes; what each one computes is ``hftguard run``'s.
"""

from __future__ import annotations

import locale
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from hftguard.runs import read_manifest

_POLL_S = 0.2
PARENT_ENV = "HFTGUARD_WORKER_OF"  # set by launch(): the pid of the command that started a worker
PIPE_ENV = "HFTGUARD_WORKER_PIPE"  # set by launch(): the read end of its stderr pipe, in a worker


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """GPUs torch sees here (0 without CUDA), read only when ``CUDA_VISIBLE_DEVICES`` is unset."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - a broken CUDA install: leave the devices alone
        return 0


def worker_env(
    index: int, n: int, env: Mapping[str, str], n_cores: int, n_gpus: int
) -> dict[str, str]:
    """The environment of worker ``index`` (0-based) of ``n``: a share of the cores as torch's
    threads unless ``OMP_NUM_THREADS`` is set, and one GPU when there are several: GPU ``index
    mod n_gpus``, or, where ``CUDA_VISIBLE_DEVICES`` lists several (a scheduler's allocation),
    the listed one ``index`` mod their number."""
    out = dict(env)
    if "OMP_NUM_THREADS" not in out:
        out["OMP_NUM_THREADS"] = str(max(1, n_cores // n))
    listed = [d.strip() for d in out.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" not in out and n_gpus > 1:
        out["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
    elif len(listed) > 1:
        out["CUDA_VISIBLE_DEVICES"] = listed[index % len(listed)]
    return out


def _started(root: Path, since: float) -> bool:
    """Whether a run that began at ``since`` (epoch seconds) has written the root's manifest."""
    from hftguard.pipeline.grid.layout import parse_time

    try:
        m = read_manifest(root)
    except Exception:  # not there yet, or being replaced
        return False
    at = parse_time(m.get("started_at")) if m.get("stage") == "pipeline" else None
    return at is not None and at.timestamp() >= int(since)  # the root's has whole seconds


def _pump(index: int, pipe: IO[str], sink: IO[str], lock: threading.Lock, as_json: bool) -> None:
    """Copy a worker's stderr here, line by line: prefixed ``[wI]``, or with ``as_json`` each
    JSON line given ``"worker": I`` (other text as ``{"worker": I, "text": ...}``). Keeps reading
    whatever happens, so that the worker never blocks on a full pipe."""
    import json

    for line in pipe:
        text = line.rstrip("\n")
        if as_json:
            try:
                record = json.loads(text)
                out = json.dumps(
                    {"worker": index + 1, **record}
                    if isinstance(record, dict)
                    else {"worker": index + 1, "text": text}
                )
            except ValueError:
                out = json.dumps({"worker": index + 1, "text": text})
        else:
            out = f"[w{index + 1}] {text}"
        try:
            with lock:
                sink.write(out + "\n")
                sink.flush()
        except Exception:  # pragma: no cover - our own stderr is gone: keep draining the pipe
            pass
    pipe.close()


def launch(
    argv: Callable[[int], list[str]],
    n: int,
    root: Path,
    *,
    env: Mapping[str, str] | None = None,
    sink: IO[str] | None = None,
    as_json: bool = False,
) -> list[int]:
    """Run ``argv(i)`` for ``i`` in 0..n-1 as worker processes on the grid at ``root`` and
    return their exit codes. Worker 0 starts first; the others once it has opened ``root`` (so
    that none of them finds a half-made directory). If worker 0 ends before that (a bad config,
    a refused --out), or a stop signal came, the others are not started."""
    sink = sink if sink is not None else sys.stderr
    env = dict(os.environ if env is None else env)
    n_cores = cores()
    n_gpus = 0 if "CUDA_VISIBLE_DEVICES" in env else gpu_count()
    lock = threading.Lock()
    procs: list[subprocess.Popen[bytes]] = []
    pumps: list[threading.Thread] = []
    stopped: list[int] = []  # the signals passed on: no worker starts after one

    def start(i: int) -> None:
        # The worker's stderr pipe, made here so that the worker holds a read end of it too
        # (pass_fds): if this process is killed outright, the worker's writes never fail with
        # EPIPE, and watch_parent() empties the pipe once it has seen this process gone.
        read_fd, write_fd = os.pipe()
        proc = None
        try:
            proc = subprocess.Popen(
                argv(i),
                stdout=subprocess.DEVNULL,  # each worker's result table: this process shows one
                stderr=write_fd,  # progress, warnings, errors
                stdin=subprocess.DEVNULL,
                pass_fds=(read_fd,),
                env={
                    **worker_env(i, n, env, n_cores, n_gpus),
                    "PYTHONUNBUFFERED": "1",
                    PARENT_ENV: str(os.getpid()),
                    PIPE_ENV: str(read_fd),
                },
                start_new_session=True,  # a signal reaches a worker once: passed on from here
            )
            # errors="replace": a library's stray byte must not stop the reading
            reader = open(  # noqa: SIM115 - closed by _pump when the worker ends
                read_fd, encoding=locale.getpreferredencoding(False), errors="replace"
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if proc is not None:
                procs.append(proc)
                if stopped:  # the signal came while it started
                    proc.send_signal(stopped[-1])
        pump = threading.Thread(target=_pump, args=(i, reader, sink, lock, as_json), daemon=True)
        pump.start()
        pumps.append(pump)

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:  # the terminal went away: stop cleanly, as for SIGTERM
            signum = signal.SIGTERM
        stopped.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            before = signal.getsignal(sig)
            if before is not None and before != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, forward)
    try:
        try:
            since = time.time()
            start(0)
            while not (_started(root, since) or procs[0].poll() is not None or stopped):
                time.sleep(_POLL_S)
            for i in range(1, n):
                if stopped or not _started(root, since):
                    break
                start(i)
        except KeyboardInterrupt:  # Ctrl-C outside the main thread: stop those that run
            forward(signal.SIGINT, None)
        except BaseException:  # could not start one: stop the others, and say why
            forward(signal.SIGTERM, None)
            for p in procs:
                p.wait()
            raise
        while True:
            try:
                codes = [p.wait() for p in procs]
                break
            except KeyboardInterrupt:  # (where SIGINT's handler is not ours)
                forward(signal.SIGINT, None)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for pump in pumps:
        pump.join(timeout=5)
    return codes


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdecimal() else None


def watch_parent(env: Mapping[str, str] | None = None, poll_s: float = _POLL_S) -> bool:
    """In a worker that :func:`launch` started (``HFTGUARD_WORKER_OF`` in ``env``): watch, on a
    daemon thread, for the command that started it to go away without passing on a stop (killed
    by SIGKILL; its workers are then children of init or a subreaper). Then the worker:

    1. points its stderr at the null device, since nobody reads it any more;
    2. unless a stop signal already reached it (a SIGTERM or Ctrl-C the command passed on before
       it died: a second one would mean "stop at once"), sends its main thread SIGTERM, which
       stops it as a scheduler's SIGTERM would: a training loop at the end of its step, with a
       checkpoint, anything else interrupted, and re-running the command continues the grid (a
       worker started with SIGTERM ignored, under ``trap '' TERM``, runs on to the end);
    3. empties its own copy of the pipe (``HFTGUARD_WORKER_PIPE``), so that a write that found
       the pipe full when the command died does not wait forever.

    Returns whether it watches."""
    env = os.environ if env is None else env
    command = _number(env.get(PARENT_ENV))
    if command is None or command <= 1:
        return False
    pipe = _number(env.get(PIPE_ENV))
    parent = os.getppid()
    from hftguard.engine import stopping

    _record_ctrl_c(stopping.note_stop)

    def gone() -> bool:
        if os.getppid() != parent:
            return True
        if parent == command:
            return False
        # the command died before this worker looked, or a wrapper (a python shim that forks)
        # stands between them: watch the command itself too
        try:
            os.kill(command, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # pragma: no cover - a pid reused by another user's process
            return False
        return False

    def watch() -> None:
        while not gone():
            time.sleep(poll_s)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        if not stopping.stop_under_way():
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        _drain(pipe)

    threading.Thread(target=watch, name="hftguard-watch-parent", daemon=True).start()
    return True


def _record_ctrl_c(note: Callable[[], None]) -> None:
    """Have Python's Ctrl-C handler (where it is the one installed) also note the stop."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        return  # ignored, or a handler of someone else's: leave it alone

    def on_ctrl_c(signum: int, frame: Any) -> None:
        note()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_ctrl_c)


def _drain(fd: int | None) -> None:
    """Read this worker's copy of its stderr pipe to the end (nobody else reads it now)."""
    import stat

    try:
        if fd is None or not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        while os.read(fd, 1 << 16):
            pass
        os.close(fd)
    except OSError:
        pass


def exit_code(codes: list[int]) -> int:
    """One exit code for the workers': 0 when all ended 0; else a stop (143 SIGTERM, 130 Ctrl-C)
    if any worker was stopped, or the largest other code. A worker killed by signal N (return
    code -N) counts as the shell's 128 + N: SIGTERM 143, SIGKILL 137."""
    bad = [128 - c if c < 0 else c for c in codes if c != 0]
    if not bad:
        return 0
    for stop in (143, 130):
        if stop in bad:
            return stop
    return max(bad)
