"""One stage, several processes: what ``torchrun`` and ``accelerate launch`` start.

Every process of a multi-process launch runs the whole stage command: it validates the config,
loads the data and the model, and trains on its rows of every global batch (``training.py``).
Only process 0 writes: it creates the run directory and writes the manifest, the training log,
the checkpoints and the adapter. The other processes learn what they need from it (the run
directory's path, whether it resumes) at a few *sync points*. Each sync point is one all-gather
of a small record in which every process says "ok" or "failed, with this error", so an error on
any process is raised on every process at the next sync point instead of leaving the others
waiting for a collective that never comes. A training stage has three:

``open``
    every process validates the config; process 0 opens the run directory (creates it, or
    reopens it with ``--resume``) and writes the manifest; the others get its path.
``ready``
    every process has its data and model; training starts.
``done``
    process 0 has saved the adapter and completed the manifest; every process returns it.

Between ``ready`` and ``done`` the processes meet in the training loop's own all-reduce, once per
step, and a failing process cannot announce itself there. It just exits; with gloo the others'
next collective then fails at once, and ``torchrun`` / ``accelerate launch`` stop the whole group
when one process fails. ``HFTGUARD_DIST_TIMEOUT`` (seconds) bounds any remaining wait: it is
the process group's timeout (torch's default otherwise: 30 minutes for gloo, 10 for NCCL).

Several processes need a filesystem they all see (one machine, or a shared one): the others read
the data, the starting model and, on ``--resume``, the checkpoint from the same paths as process
0.

A single process (no launcher, or ``WORLD_SIZE=1``) goes through none of this: no collective, no
torch import, the same files byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hftguard.errors import ExitCode, HftguardError

T = TypeVar("T")

#: The sync points of a training stage, in the order every process passes them.
SYNC_POINTS = ("open", "ready", "done")


def launch_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) without a launcher."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 else (0, 1)


def is_main_process() -> bool:
    """Whether this process writes results and prints them (rank 0, or the only process)."""
    return launch_rank()[0] == 0


class PeerFailed(HftguardError):
    """Another process of the launch failed; this one stops too (same exit code)."""

    def __init__(self, rank: int, source: int, record: dict[str, Any]) -> None:
        what = record["message"] if record["hftguard"] else f"{record['type']}: {record['message']}"
        super().__init__(
            f"Process {rank} stopped: process {source} failed: {what}",
            hint=record["hint"] or f"See the output of process {source}.",
        )
        self.exit_code = ExitCode(record["exit_code"])
        self.source = source


def _describe(exc: BaseException) -> dict[str, Any]:
    """A picklable summary of an error, enough to raise it again on another process."""
    is_ours = isinstance(exc, HftguardError)
    code = (
        exc.exit_code
        if is_ours
        else ExitCode.INTERRUPTED
        if isinstance(exc, KeyboardInterrupt)
        else ExitCode.RUN_FAILED
    )
    return {
        "type": type(exc).__name__,
        "hftguard": is_ours,
        "message": exc.message if is_ours else str(exc),
        "hint": exc.hint if is_ours else None,
        "exit_code": int(code),
    }


@dataclass
class Team:
    """The processes of this launch, and where a training stage is in its sync points.

    Attributes:
        rank: This process's index (0 writes).
        world: Number of processes (1 without a launcher).
    """

    rank: int = 0
    world: int = 1
    active: bool = False  # a training stage is between its ``open`` and ``done``
    _next: int = 0  # index into SYNC_POINTS of the next sync point of the current stage
    _training: bool = False  # inside the loop: no sync point until it returns
    _failed: bool = False  # a sync point reported a failure: no further collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi(self) -> bool:
        return self.world > 1

    def begin_stage(self) -> None:
        """Start the sync points of a new stage (a process runs one stage at a time)."""
        self.active, self._next, self._training, self._failed = True, 0, False, False

    def end_stage(self) -> None:
        self.active = False

    def sync(
        self, label: str, fn: Callable[[], T], share: Callable[[T], Any] | None = None
    ) -> tuple[T, Any]:
        """Run ``fn`` on every process, then meet at sync point ``label``.

        Returns ``(fn's result here, share(fn's result) from process 0)``. If ``fn`` raised on any
        process, every process raises: the one where it happened re-raises its own error, the
        others :class:`PeerFailed` naming it. In a single process: ``(fn(), None)``.
        """
        if not self.multi:
            return fn(), None
        try:
            value = fn()
        except BaseException as exc:
            self._exchange(label, {"ok": False, "error": _describe(exc)})
            raise
        mine = {"ok": True, "payload": share(value) if share and self.is_main else None}
        records = self._exchange(label, mine)
        return value, records[0]["payload"]

    def training(self, running: bool) -> None:
        """Mark the training loop's start (no sync point can be met inside it) and end."""
        self._training = running

    def fail(self, exc: BaseException) -> None:
        """Tell the other processes about ``exc`` at the next sync point, if one can be met.

        Not inside the training loop (the others are in its all-reduce: exiting is what tells
        them), and not once a sync point has already reported a failure.
        """
        if not self.multi or self._failed or self._training or self._next >= len(SYNC_POINTS):
            return
        self._exchange(SYNC_POINTS[self._next], {"ok": False, "error": _describe(exc)})

    def device(self, device: Any) -> Any:
        """This process's device: with several processes on GPUs, ``cuda:LOCAL_RANK``."""
        if self.multi and device.type == "cuda":
            import torch

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device

    def _exchange(self, label: str, record: dict[str, Any]) -> list[dict[str, Any]]:
        import torch.distributed as dist

        expected = SYNC_POINTS[self._next] if self._next < len(SYNC_POINTS) else None
        if label != expected:  # a programming error: the processes would pair wrong collectives
            raise RuntimeError(f"sync point {label!r} reached where {expected!r} was expected")
        self._next += 1
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, {"label": label, **record})
        if any(r["label"] != label for r in gathered):
            self._failed = True
            raise RuntimeError(
                f"Processes met at different sync points: {[r['label'] for r in gathered]}"
            )
        failed = [(i, r) for i, r in enumerate(gathered) if not r["ok"]]
        if failed:
            self._failed = True
            if not record["ok"]:
                return gathered  # the caller re-raises its own error
            source, bad = failed[0]
            raise PeerFailed(self.rank, source, bad["error"])
        return gathered


_TEAM: Team | None = None


def join(cpu: Callable[[], bool]) -> Team:
    """This process's :class:`Team`; with several processes, the first call joins the group.

    ``cpu()`` says whether training runs on CPUs (gloo) or on GPUs (NCCL); it is only called
    when there are several processes.
    """
    global _TEAM
    if _TEAM is None:
        rank, world = launch_rank()
        if world > 1:
            _join(cpu())
            # Python API users (no CLI main): still tear the group down before static destructors
            import atexit

            atexit.register(leave, False)
        _TEAM = Team(rank, world)
    return _TEAM


def current() -> Team:
    """The team a training stage joined, or a team of one (no stage joined one)."""
    return _TEAM if _TEAM is not None else Team()


def leave(ok: bool) -> None:
    """Tear the process group down before the interpreter exits (several processes only).

    Without this, the group is destroyed by the interpreter's shutdown, while a gloo worker
    thread may still hold an all-gather's buffers: the process then aborts ("terminate called
    without an active exception") after the command has finished, in a few percent of runs.
    After a successful command every process first meets at a barrier, so no process tears down
    while another is still inside a collective with it; after a failure there is no barrier (the
    others may never arrive), the group is just destroyed.
    """
    global _TEAM
    if _TEAM is None or not _TEAM.multi:
        return
    _TEAM = None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    try:
        if ok:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _join(cpu: bool) -> None:
    """Create accelerate's shared state, which joins the process group (gloo on CPUs)."""
    import datetime

    from accelerate import PartialState

    kwargs: dict[str, Any] = {}
    timeout = os.environ.get("HFTGUARD_DIST_TIMEOUT")
    if timeout:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout))
    PartialState(cpu=cpu, **kwargs)
