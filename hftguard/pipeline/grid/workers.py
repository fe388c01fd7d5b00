"""Several ``hftguard run`` processes on one grid, started by one command (``--workers N``).

Two processes on one ``--out`` already share a grid (each stage locks its run directory; a worker
that finds a stage held does the rest of the grid first and then waits for it: :mod:`.runner`).
On a 2-core CPU two one-thread workers get more done than one two-thread process, and on a GPU
several small-model workers fill the card. ``--workers N`` starts them for the user:

- the first worker starts alone, and the others only once it has opened the grid's root (written
  its manifest), so that they find an hftguard root and not a half-made directory; only the first
  gets ``--overwrite``, or a later one would move the first one's work aside;
- each worker computes with ``cores // N`` threads unless ``OMP_NUM_THREADS`` is set, and on a
  machine with several GPUs (``CUDA_VISIBLE_DEVICES`` unset) worker ``i`` sees GPU ``i mod k``;
- every line a worker writes to stderr (progress, warnings, errors) comes out on this process's
  stderr prefixed with ``[wI]``; their result tables are left out, and this process shows the
  grid's from the root manifest once they have all ended;
- Ctrl-C and SIGTERM to this process are passed on to every worker, once (the workers run in
  sessions of their own, so a terminal's Ctrl-C does not reach them twice); a stage stops as it
  does in one process (interrupted, or at a step boundary with a checkpoint), and this process
  waits for them all.

The code here starts and watches processes; what each one computes is ``hftguard run``'s.
"""

from __future__ import annotations

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

#: Seconds the first worker may take to open the grid's root before the others start anyway.
START_TIMEOUT_S = 120.0
_POLL_S = 0.2


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
    threads, and one GPU when there are several, unless the user set either already."""
    out = dict(env)
    if "OMP_NUM_THREADS" not in out:
        out["OMP_NUM_THREADS"] = str(max(1, n_cores // n))
    if "CUDA_VISIBLE_DEVICES" not in out and n_gpus > 1:
        out["CUDA_VISIBLE_DEVICES"] = str(index % n_gpus)
    return out


def _started(root: Path, since: float) -> bool:
    """Whether a run that began at ``since`` (epoch seconds) has written the root's manifest."""
    import datetime as dt

    try:
        m = read_manifest(root)
    except Exception:  # not there yet, or being replaced
        return False
    started = m.get("started_at")
    if m.get("stage") != "pipeline" or not isinstance(started, str):
        return False
    try:
        at = dt.datetime.fromisoformat(started).timestamp()
    except ValueError:
        return False
    return at >= int(since)  # the root's started_at has whole seconds


def _pump(index: int, pipe: IO[str], sink: IO[str], lock: threading.Lock) -> None:
    for line in pipe:
        with lock:
            sink.write(
                f"[w{index + 1}] {line}" if line.endswith("\n") else f"[w{index + 1}] {line}\n"
            )
            sink.flush()
    pipe.close()


def launch(
    argv: Callable[[int], list[str]],
    n: int,
    root: Path,
    *,
    env: Mapping[str, str] | None = None,
    sink: IO[str] | None = None,
    start_timeout: float = START_TIMEOUT_S,
) -> list[int]:
    """Run ``argv(i)`` for ``i`` in 0..n-1 as worker processes on the grid at ``root`` and
    return their exit codes. Worker 0 starts first; the others once it has opened ``root``, or
    ``start_timeout`` seconds passed. If worker 0 ends before that (a bad config, a refused
    --out), the others are not started: its exit code is the only one."""
    sink = sink if sink is not None else sys.stderr
    env = dict(os.environ if env is None else env)
    n_cores = cores()
    n_gpus = 0 if "CUDA_VISIBLE_DEVICES" in env else gpu_count()
    lock = threading.Lock()
    procs: list[subprocess.Popen[str]] = []
    pumps: list[threading.Thread] = []

    def start(i: int) -> None:
        proc = subprocess.Popen(
            argv(i),
            stdout=subprocess.DEVNULL,  # each worker's result table: this process shows the grid's
            stderr=subprocess.PIPE,  # progress, warnings, errors
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**worker_env(i, n, env, n_cores, n_gpus), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a signal reaches a worker once: forwarded from here
        )
        procs.append(proc)
        assert proc.stderr is not None
        pump = threading.Thread(target=_pump, args=(i, proc.stderr, sink, lock), daemon=True)
        pump.start()
        pumps.append(pump)

    stopped: list[int] = []  # the signals passed on: no worker starts after one

    def forward(signum: int, frame: Any) -> None:
        stopped.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = signal.getsignal(signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and previous is not None and previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, forward)
    else:
        main_thread = False
    try:
        try:
            since = time.time()
            start(0)
            deadline = since + start_timeout
            while not (_started(root, since) or procs[0].poll() is not None or stopped):
                if time.time() >= deadline:
                    break
                time.sleep(_POLL_S)
            if not stopped and (procs[0].poll() is None or _started(root, since)):
                for i in range(1, n):
                    start(i)
        except KeyboardInterrupt:  # Ctrl-C while they start: stop those that run
            forward(signal.SIGINT, None)
        while True:
            try:
                codes = [p.wait() for p in procs]
                break
            except KeyboardInterrupt:  # Ctrl-C: each worker stops as it would alone
                forward(signal.SIGINT, None)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    for pump in pumps:
        pump.join(timeout=5)
    return codes


def exit_code(codes: list[int]) -> int:
    """One exit code for the workers': 0 when all ended 0; else a stop (143 SIGTERM, 130 Ctrl-C)
    if any worker was stopped, or the largest other code."""
    bad = [c for c in codes if c != 0]
    if not bad:
        return 0
    for stop in (143, 130):
        if stop in bad:
            return stop
    return max(bad, key=lambda c: (c > 0, abs(c)))
