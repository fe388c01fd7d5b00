"""Progress without a terminal (log file, SLURM, CI): periodic plain lines or JSON-lines events.

The Reporter takes a stream and a clock, so these tests neither need a terminal nor sleep; one
end-to-end test trains the ``tiny-random`` model with stderr redirected to a file.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hftguard.console import Reporter, progress_every


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reporter(every: float = 30.0, **kwargs: object) -> tuple[Reporter, io.StringIO, FakeClock]:
    stream, clock = io.StringIO(), FakeClock()
    return Reporter(stream=stream, clock=clock, every=every, **kwargs), stream, clock  # type: ignore[arg-type]


def _train(reporter: Reporter, clock: FakeClock, steps: int, dt: float) -> None:
    """What the training loop does: advance(start_step), then one advance per step."""
    with reporter.task("align: sft", total=steps) as task:
        task.skip(0)
        for _ in range(steps):
            clock.now += dt
            task.advance(1, loss=0.5, **{"s/step": dt})


def test_plain_lines_at_the_interval_with_step_total_and_eta() -> None:
    reporter, stream, clock = _reporter(every=30.0)
    _train(reporter, clock, steps=10, dt=10.0)
    lines = stream.getvalue().splitlines()
    progress = [line for line in lines if "ETA" in line]
    # the first update (step 1), then every 30 s (steps 4 and 7), and the last one (step 10)
    assert [re.search(r": (\d+)/10", line).group(1) for line in progress] == ["1", "4", "7", "10"]  # type: ignore[union-attr]
    assert progress[0] == "align: sft: 1/10 (10%) loss=0.5 s/step=10 ETA 01:30"
    assert progress[1] == "align: sft: 4/10 (40%) loss=0.5 s/step=10 ETA 01:00"
    assert progress[-1].startswith("align: sft: 10/10 (100%)")
    assert progress[-1].endswith("ETA 00:00")
    assert lines[-1] == "align: sft: 10 done in 100.0s"


def test_every_zero_prints_every_update_and_hours_in_the_eta() -> None:
    reporter, stream, clock = _reporter(every=0.0)
    _train(reporter, clock, steps=3, dt=4000.0)
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:3]] == [f"align: sft: {i}/3" for i in (1, 2, 3)]
    assert lines[0].endswith("ETA 2:13:20")


def test_resumed_task_measures_the_rate_after_the_skipped_steps() -> None:
    reporter, stream, clock = _reporter(every=0.0)
    with reporter.task("align: sft", total=100) as task:
        clock.now += 60.0  # loading the checkpoint
        task.skip(50)  # resumed at step 50: those steps took no time now
        clock.now += 2.0
        task.advance(1, loss=1.0)
    first = stream.getvalue().splitlines()[0]
    assert first == "align: sft: 51/100 (51%) loss=1 ETA 01:38"  # 49 steps at 2 s


def test_an_unfinished_task_prints_its_last_state() -> None:
    reporter, stream, clock = _reporter(every=30.0)
    with pytest.raises(KeyboardInterrupt), reporter.task("eval: generate", total=8) as task:
        task.advance(2)
        clock.now += 1.0
        task.advance(2)  # not due: printed when the task ends
        raise KeyboardInterrupt
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("eval: generate: 2/8 (25%)")
    assert lines[1].startswith("eval: generate: 4/8 (50%)")


def test_quiet_prints_nothing_and_a_terminal_keeps_the_bar() -> None:
    reporter, stream, clock = _reporter(every=0.0, quiet=True)
    _train(reporter, clock, steps=3, dt=1.0)
    assert stream.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, clock = Tty(), FakeClock()
    reporter = Reporter(stream=tty, clock=clock, every=0.0)
    _train(reporter, clock, steps=3, dt=1.0)
    assert "ETA 00:" not in tty.getvalue()  # rich's bar, not the plain lines
    assert "done in" not in tty.getvalue()


def test_json_mode_emits_parseable_progress_events() -> None:
    reporter, stream, clock = _reporter(every=30.0, json_events=True)
    reporter.info("loading")
    _train(reporter, clock, steps=10, dt=10.0)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds == ["info", "task_start", *["progress"] * 4, "task_end"]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [1, 4, 7, 10]
    first = progress[0]
    assert first["task"] == "align: sft" and first["total"] == 10
    assert first["loss"] == 0.5 and first["s/step"] == 10.0
    assert first["eta_s"] == 90.0
    assert progress[-1]["eta_s"] == 0.0
    assert "metrics" not in kinds  # per-step metrics stay in the run's log.jsonl


def test_json_mode_quiet_keeps_only_warnings_and_nan_is_null() -> None:
    reporter, stream, clock = _reporter(every=0.0, json_events=True)
    with reporter.task("align: sft", total=1) as task:
        task.advance(1, loss=float("nan"))
    progress = [json.loads(line) for line in stream.getvalue().splitlines()][1]
    assert progress["event"] == "progress" and progress["loss"] is None

    reporter, stream, clock = _reporter(every=0.0, json_events=True, quiet=True)
    reporter.info("hidden")
    _train(reporter, clock, steps=2, dt=1.0)
    reporter.warn("shown")
    (event,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert event["event"] == "warning" and event["message"] == "shown"


@pytest.mark.parametrize(
    ("value", "expected"), [("", 30.0), ("0", 0.0), ("5.5", 5.5), ("x", 30.0), ("-3", 0.0)]
)
def test_progress_every_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: float
) -> None:
    monkeypatch.setenv("HFTGUARD_PROGRESS_EVERY", value)
    assert progress_every() == expected
    assert Reporter().every == expected


# ------------------------------------------------------------------------------------------------
# End to end: `hftguard align` with stderr in a file


ALIGN = ("align", "--model", "tiny-random", "--max-steps", "4", "--samples", "8")
ALIGN += ("--batch-size", "2", "--set", "retain=")  # no self-distilled retain set: faster


def _align(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    env = {
        **os.environ,
        "HFTGUARD_PROGRESS_EVERY": "0",
        "HFTGUARD_LOAD_PLUGINS": "",
        "COLUMNS": "200",
    }
    env.pop("HFTGUARD_DEBUG", None)
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "hftguard", *ALIGN, "--out", str(tmp_path / "aligned"), *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
    return proc, log.read_text()


def test_align_with_stderr_in_a_file_prints_progress_lines(tmp_path: Path) -> None:
    proc, log = _align(tmp_path)
    assert proc.returncode == 0, log
    steps = re.findall(
        r"^align: sft: (\d)/4 \(\d+%\) loss=\S+ s/step=\S+ ETA \d\d:\d\d$", log, re.M
    )
    assert steps == ["1", "2", "3", "4"], log
    assert "align: sft: 4 done in" in log


def test_align_json_keeps_stdout_for_the_manifest(tmp_path: Path) -> None:
    proc, log = _align(tmp_path, "--json")
    assert proc.returncode == 0, log
    assert json.loads(proc.stdout)["status"] == "completed"
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in progress] == [1, 2, 3, 4], log
    assert all(e["total"] == 4 and "loss" in e and "eta_s" in e for e in progress)
