"""Fault injection (#15): an ``align`` stage is killed (KeyboardInterrupt) or fails (a full disk,
OSError ENOSPC) at each of its write points -- a checkpoint, the per-step log, the final adapter
save, the completed manifest, the removal of the checkpoints -- and ``--resume`` must then give
bit-for-bit the adapter of an uninterrupted run, losing nothing already completed.

Each failure is injected at one exact call (monkeypatched), on ``tiny-random``; one case kills a
real ``python -m hftguard align`` process with SIGKILL.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from hftguard.config import AlignConfig, LoraOptions, TrainOptions
from hftguard.console import Reporter
from hftguard.engine import checkpoints, models
from hftguard.pipeline import align

pytestmark = pytest.mark.fault_injection

STEPS = 5  # checkpoints at steps 2 and 4, and at the last step (5) until the final save is durable
EVERY = 2
ALIGN_TOML = f"""\
model = "tiny-random"
samples = 16
retain = ""
[train]
max_steps = {STEPS}
batch_size = 4
max_length = 64
checkpoint_every = {EVERY}
[lora]
r = 4
alpha = 8.0
"""


def _cfg() -> AlignConfig:
    train = TrainOptions(max_steps=STEPS, batch_size=4, max_length=64, checkpoint_every=EVERY)
    return AlignConfig(
        model="tiny-random", samples=16, retain="", train=train, lora=LoraOptions(r=4, alpha=8.0)
    )


def _run(out: Path, resume: bool = False) -> dict[str, Any]:
    return align.run(_cfg(), out, reporter=Reporter(quiet=True), resume=resume)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(b[name], value), f"{name} differs from the uninterrupted run"


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def _log_steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "align_log.jsonl").read_text().splitlines()]


def _ckpt_steps(out: Path) -> list[int]:
    return [int(p.name[5:]) for p in checkpoints.checkpoint_dirs(checkpoints_run(out))]


def checkpoints_run(out: Path) -> Any:
    from hftguard.runs import RunDir

    return RunDir(out, "align", True)


def _temp_leftovers(out: Path) -> list[str]:
    """Temporary files and directories of interrupted atomic writes."""
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob(".*")
        if p.name.startswith((".tmp-", ".adapter.")) or p.name.endswith(".tmp")
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The adapter, manifest and log of an uninterrupted run."""
    out = tmp_path_factory.mktemp("fault") / "reference"
    m = _run(out)
    assert m["status"] == "completed" and not (out / "checkpoints").exists()
    assert _log_steps(out) == list(range(STEPS))
    return {"adapter": _adapter(out), "manifest": m}


# ------------------------------------------------------------------------------------------------
# Injection: raise at the n-th call of a function that matches


FAILURES: dict[str, Callable[[], BaseException]] = {
    "killed": KeyboardInterrupt,
    "disk-full": lambda: OSError(errno.ENOSPC, "No space left on device"),
}
STATUS = {"killed": "interrupted", "disk-full": "failed"}


@dataclass
class Fired:
    done: bool = False


def _fail_at(
    monkeypatch: pytest.MonkeyPatch,
    target: Any,
    name: str,
    exc: Callable[[], BaseException],
    match: Callable[..., bool],
    nth: int = 1,
    after: bool = False,
) -> Fired:
    """Make ``target.name`` raise ``exc()`` at its ``nth`` call that ``match``es (before the real
    call, or just after it with ``after``); every other call goes through."""
    real = getattr(target, name)
    seen = [0]
    fired = Fired()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hit = False
        if not fired.done and match(*args, **kwargs):
            seen[0] += 1
            hit = seen[0] == nth
        if hit and not after:
            fired.done = True
            raise exc()
        result = real(*args, **kwargs)
        if hit:
            fired.done = True
            raise exc()
        return result

    monkeypatch.setattr(target, name, wrapper)
    return fired


class _TornLog:
    """The append-mode training log; the write of line ``step`` writes half of it, then fails."""

    def __init__(self, fh: Any, step: int, exc: Callable[[], BaseException], fired: Fired):
        self.fh, self.step, self.exc, self.fired = fh, step, exc, fired

    def __enter__(self) -> _TornLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def write(self, text: str) -> int:
        if not self.fired.done and json.loads(text)["step"] == self.step:
            self.fh.write(text[: len(text) // 2])
            self.fh.flush()
            self.fired.done = True
            raise self.exc()
        return self.fh.write(text)

    def flush(self) -> None:
        self.fh.flush()


def _tear_log(
    monkeypatch: pytest.MonkeyPatch, step: int, exc: Callable[[], BaseException]
) -> Fired:
    real = Path.open
    fired = Fired()

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real(self, mode, *args, **kwargs)
        if self.name == "align_log.jsonl" and mode == "a":
            return _TornLog(fh, step, exc, fired)
        return fh

    monkeypatch.setattr(Path, "open", open_)
    return fired


# ------------------------------------------------------------------------------------------------
# The write points of an align stage


@dataclass
class Point:
    inject: Callable[[pytest.MonkeyPatch, Path, Callable[[], BaseException]], Fired]
    resumed_from: int  # the step the resume starts at
    adapter_after_crash: bool = False  # the final adapter is already in place


def _is_state_json(path: Path, *_: Any) -> bool:
    return Path(path).name == "state.json"


def _completed_manifest(src: Any, dst: Any) -> bool:
    return Path(dst).name == "manifest.json" and '"completed"' in Path(src).read_text()


POINTS: dict[str, Point] = {
    # (1) a checkpoint's files written, its state.json (written last) not yet
    "checkpoint-2-before-state.json": Point(
        lambda mp, out, exc: _fail_at(mp, checkpoints, "atomic_write_json", exc, _is_state_json),
        resumed_from=0,  # no checkpoint yet: the resume trains from the start
    ),
    "checkpoint-4-before-state.json": Point(
        lambda mp, out, exc: _fail_at(
            mp, checkpoints, "atomic_write_json", exc, _is_state_json, nth=2
        ),
        resumed_from=2,
    ),
    "final-checkpoint-before-state.json": Point(
        lambda mp, out, exc: _fail_at(
            mp, checkpoints, "atomic_write_json", exc, _is_state_json, nth=3
        ),
        resumed_from=4,
    ),
    # (2) a checkpoint renamed into place, the older ones not yet pruned
    "checkpoint-4-after-rename": Point(
        lambda mp, out, exc: _fail_at(
            mp, checkpoints, "fsync_dir", exc, lambda p: Path(p) == out / "checkpoints", nth=2
        ),
        resumed_from=4,
    ),
    "final-checkpoint-after-rename": Point(
        lambda mp, out, exc: _fail_at(
            mp, checkpoints, "fsync_dir", exc, lambda p: Path(p) == out / "checkpoints", nth=3
        ),
        resumed_from=STEPS,
    ),
    # (3) half a line of the per-step log written
    "log-line-3-torn": Point(lambda mp, out, exc: _tear_log(mp, 3, exc), resumed_from=2),
    "log-line-4-torn": Point(lambda mp, out, exc: _tear_log(mp, 4, exc), resumed_from=4),
    # (4) the final adapter save: before anything, files written but not renamed, renamed
    "adapter-save-not-started": Point(
        lambda mp, out, exc: _fail_at(mp, models, "save_adapter", exc, lambda *a: True),
        resumed_from=STEPS,
    ),
    "adapter-files-written-not-renamed": Point(
        lambda mp, out, exc: _fail_at(mp, checkpoints, "fsync_tree", exc, lambda p: True),
        resumed_from=STEPS,
    ),
    "adapter-saved": Point(
        lambda mp, out, exc: _fail_at(mp, models, "save_adapter", exc, lambda *a: True, after=True),
        resumed_from=STEPS,
        adapter_after_crash=True,
    ),
    # (5) the completed manifest written to its temporary file, not renamed
    "completed-manifest-before-rename": Point(
        lambda mp, out, exc: _fail_at(mp, os, "replace", exc, _completed_manifest),
        resumed_from=STEPS,
        adapter_after_crash=True,
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("point", list(POINTS))
def test_resume_after_a_failure_at_a_write_point(
    point: str, failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    spec, exc = POINTS[point], FAILURES[failure]
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        fired = spec.inject(mp, out, exc)
        with pytest.raises(type(exc())):
            _run(out)
    assert fired.done, "the failure was not injected"

    # The run dir after the failure: marked, resumable, nothing completed lost.
    assert _manifest(out)["status"] == STATUS[failure]
    ckpts = _ckpt_steps(out)
    newest = max(ckpts, default=0)
    assert newest == spec.resumed_from, ckpts
    for step in ckpts:  # every checkpoint kept is whole
        state = json.loads((out / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())
        assert state["step"] == step
    log = (out / "align_log.jsonl").read_text().splitlines()
    intact = [json.loads(x)["step"] for x in log[:newest]]
    assert intact == list(range(newest))  # the log of every checkpointed step
    if spec.adapter_after_crash:
        _assert_same(reference["adapter"], _adapter(out))
    else:
        assert not (out / "adapter").exists()

    m = _run(out, resume=True)
    assert m["status"] == "completed"
    assert m["training"]["resumed_from"] == spec.resumed_from
    _assert_same(reference["adapter"], _adapter(out))
    assert _log_steps(out) == list(range(STEPS))
    assert not (out / "checkpoints").exists()
    assert _temp_leftovers(out) == []
    assert m["training"]["final_loss"] == reference["manifest"]["training"]["final_loss"]


# (6) the completed manifest durable, the checkpoints not yet removed


def _fail_after_completion(mp: pytest.MonkeyPatch, out: Path, exc: type[BaseException]) -> Fired:
    # train_stage: save_adapter fsyncs out (1st call), the completed manifest's rename (2nd call),
    # then the checkpoints are removed.
    return _fail_at(mp, checkpoints, "fsync_dir", exc, lambda p: Path(p) == out, nth=2)


class Killed(BaseException):
    """A kill no handler sees (SIGKILL, power loss): nothing marks the run failed."""


def test_a_hard_kill_after_the_completed_manifest_needs_no_more_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        fired = _fail_after_completion(mp, out, Killed)
        with pytest.raises(Killed):
            _run(out)
    assert fired.done
    assert _manifest(out)["status"] == "completed"
    adapter_file = out / "adapter" / "adapter_model.safetensors"
    before = adapter_file.stat()
    _assert_same(reference["adapter"], _adapter(out))

    m = _run(out, resume=True)
    assert m["status"] == "completed"
    assert m["training"] == _manifest(out)["training"]
    assert m["training"]["resumed_from"] == 0  # the first attempt's record, no new training
    assert not (out / "checkpoints").exists()  # the kill's leftovers are cleaned up
    after = adapter_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    _assert_same(reference["adapter"], _adapter(out))


# Regression: fail_run used to mark a completed run 'interrupted' (Ctrl-C during the clean-up).
def test_an_interrupt_after_the_completed_manifest_keeps_the_run_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        fired = _fail_after_completion(mp, out, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            _run(out)
    assert fired.done
    _assert_same(reference["adapter"], _adapter(out))
    adapter_file = out / "adapter" / "adapter_model.safetensors"
    before = adapter_file.stat()
    try:
        assert _manifest(out)["status"] == "completed"
    finally:  # what holds today either way: the resume gives the same adapter
        m = _run(out, resume=True)
        assert m["status"] == "completed"
        _assert_same(reference["adapter"], _adapter(out))
    after = adapter_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# ------------------------------------------------------------------------------------------------
# A real kill: SIGKILL of a `python -m hftguard align` process once a checkpoint exists

# ``python -m hftguard align ...``, made to wait after its step-2 checkpoint (and to say so in a
# marker file) so that the kill lands at a known step, not at whatever step the machine reached.
_KILLABLE = """\
import runpy, sys, time
from pathlib import Path
from hftguard.engine import training
real = training._save_checkpoint
marker = Path(sys.argv[1])

def save_checkpoint(run, step, *args):
    real(run, step, *args)
    if step == 2:
        marker.write_text("checkpointed")
        time.sleep(300)

training._save_checkpoint = save_checkpoint
sys.argv = ["hftguard", *sys.argv[2:]]
runpy.run_module("hftguard", run_name="__main__", alter_sys=True)
"""


def test_sigkill_of_a_real_process_then_resume_via_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Any
) -> None:
    from hftguard.cli import main
    from hftguard.registry import default_registry

    config = tmp_path / "align.toml"
    config.write_text(ALIGN_TOML)
    out = tmp_path / "run"
    marker = tmp_path / "checkpointed"
    args = ["align", "--config", str(config), "--out", str(out)]
    env = {**os.environ, "HFTGUARD_LOAD_PLUGINS": ""}
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would block the process
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILLABLE, str(marker), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"align exited ({proc.returncode}) early:\n{stderr.read_text()}")
            if time.monotonic() > deadline:
                pytest.skip("the align process reached no checkpoint in 120 s (machine too busy)")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    assert _manifest(out)["status"] == "running"  # nothing ran to mark it
    assert _ckpt_steps(out) == [2]
    assert _log_steps(out) == [0, 1]
    assert (out / ".lock").exists()  # left by the killed process, not held by anyone

    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    default_registry.cache_clear()
    try:
        assert main([*args, "--resume"]) == 0
    finally:
        default_registry.cache_clear()
    m = _manifest(out)
    assert m["status"] == "completed" and m["training"]["resumed_from"] == 2
    _assert_same(reference["adapter"], _adapter(out))
    assert _log_steps(out) == list(range(STEPS))
    assert not (out / "checkpoints").exists()
