"""SIGTERM during training: the step in progress finishes, a checkpoint of it is saved, the
command exits 143, and re-running it resumes bit-identically (hftguard.engine.stopping)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import Run
from training_helpers import train_tiny

from hftguard.errors import ExitCode, StopRequested


def _data(tok: Any, n: int = 12) -> Any:
    from hftguard.data.inputs import encode_all
    from hftguard.records import Example

    exs = [Example(f"question {i}", f"answer {i} " * (1 + i % 3), "refusal") for i in range(n)]
    return encode_all(exs, tok, "chat", 64)


def _train(
    tmp_path: Path, tok: Any, name: str, defense: Any, resume: bool = False, every: int = 3
) -> Any:
    return train_tiny(
        tmp_path, tok, name, defense, _data(tok), resume=resume, checkpoint_every=every
    )[0]


def _terminated_at(step: int, times: int = 1) -> Any:
    from hftguard.builtins.defenses.sft import SFTAlign

    class Terminated(SFTAlign):
        def training_step(self, model: Any, batch: Any, ctx: Any) -> Any:
            out = super().training_step(model, batch, ctx)
            if ctx.step == step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGTERM)
            return out

    return Terminated()


def test_sigterm_finishes_the_step_saves_it_and_resumes_bit_identically(
    tmp_path: Path, tiny_tok: Any
) -> None:
    from hftguard.builtins.defenses.sft import SFTAlign

    before = signal.getsignal(signal.SIGTERM)
    full = _train(tmp_path, tiny_tok, "full", SFTAlign())
    # (no `as err`: the traceback would keep the run directory's lock alive)
    with pytest.raises(StopRequested, match=r"after step 2 of 6 .*checkpoint of step 2"):
        _train(tmp_path, tiny_tok, "stopped", _terminated_at(1))
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    ckpts = sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002"]  # not a periodic one (every 3): saved for the stop
    log = (tmp_path / "stopped" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [0, 1]  # step 1 finished and was logged
    resumed = _train(tmp_path, tiny_tok, "stopped", SFTAlign(), resume=True)
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


def test_a_second_sigterm_stops_at_once(
    tmp_path: Path, tiny_tok: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hftguard.engine import stopping

    monkeypatch.setattr(stopping, "DUPLICATE_S", 0.0)  # the second one is a request of its own
    with pytest.raises(StopRequested, match="second SIGTERM"):
        _train(tmp_path, tiny_tok, "twice", _terminated_at(4, times=2))
    # stopped inside step 4: the newest checkpoint is the periodic one of step 3
    ckpts = sorted(p.name for p in (tmp_path / "twice" / "checkpoints").iterdir())
    assert ckpts == ["step-0000003"]


def test_one_sigterm_delivered_twice_still_stops_at_the_step_boundary(
    tmp_path: Path, tiny_tok: Any
) -> None:
    """A cgroup-wide stop (systemd, SLURM) reaches a `hftguard run --workers` worker directly
    and through the command that passes it on: the two arrive together and are one request."""
    with pytest.raises(StopRequested, match=r"after step 2 of 6 .*checkpoint of step 2"):
        _train(tmp_path, tiny_tok, "twice", _terminated_at(1, times=2))
    ckpts = sorted(p.name for p in (tmp_path / "twice" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002"]


def test_sigterm_at_the_last_step_keeps_the_training(tmp_path: Path, tiny_tok: Any) -> None:
    from hftguard.builtins.defenses.sft import SFTAlign

    full = _train(tmp_path, tiny_tok, "full", SFTAlign())
    with pytest.raises(StopRequested, match=r"after step 6 of 6"):
        _train(tmp_path, tiny_tok, "last", _terminated_at(5))
    resumed = _train(tmp_path, tiny_tok, "last", SFTAlign(), resume=True)  # no step left to run
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


def test_sigterm_at_the_last_step_without_checkpointing_keeps_the_training(
    tmp_path: Path, tiny_tok: Any
) -> None:
    """checkpoint_every = 0: a stop earlier restarts the stage, but a stop after the last step
    must not throw the finished training away."""
    from hftguard.builtins.defenses.sft import SFTAlign

    full = _train(tmp_path, tiny_tok, "full", SFTAlign(), every=0)
    with pytest.raises(StopRequested, match="checkpointing is off"):
        _train(tmp_path, tiny_tok, "early", _terminated_at(2), every=0)
    assert not (tmp_path / "early" / "checkpoints").exists()
    with pytest.raises(StopRequested, match=r"after step 6 of 6 .*checkpoint of step 6"):
        _train(tmp_path, tiny_tok, "last", _terminated_at(5), every=0)
    resumed = _train(tmp_path, tiny_tok, "last", SFTAlign(), resume=True, every=0)
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


def test_an_ignored_sigterm_stays_ignored(tmp_path: Path, tiny_tok: Any) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _train(tmp_path, tiny_tok, "ignored", _terminated_at(1))  # runs to the end
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_request_after_the_last_check_is_not_swallowed() -> None:
    from hftguard.engine.stopping import StopOnSigterm

    with pytest.raises(StopRequested, match="end of training"), StopOnSigterm():
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_interrupts_raises_where_it_arrives_and_yields_to_a_training_loop() -> None:
    """The grid's SIGTERM handler (outside training loops) raises at once; a training loop
    inside it installs its own step-boundary handler and puts the grid's back."""
    from hftguard.engine.stopping import SigtermInterrupts, StopOnSigterm

    before = signal.getsignal(signal.SIGTERM)
    with (
        pytest.raises(StopRequested, match="Stopped by SIGTERM while testing"),
        SigtermInterrupts("while testing"),
    ):
        outer = signal.getsignal(signal.SIGTERM)
        assert callable(outer) and outer != before
        with StopOnSigterm() as loop:
            assert signal.getsignal(signal.SIGTERM) == loop._handler
        assert signal.getsignal(signal.SIGTERM) == outer
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises during the sleep
        raise AssertionError("SIGTERM did not stop the block")
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_interrupts_leaves_an_ignored_sigterm_ignored() -> None:
    from hftguard.engine.stopping import SigtermInterrupts

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with SigtermInterrupts("while testing"):
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)  # ignored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_cli_exits_143_with_a_resume_hint_and_resumes(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hftguard.builtins.defenses.sft import SFTAlign

    align = (
        "align",
        "--model",
        "tiny-random",
        "--samples",
        "8",
        "--batch-size",
        "2",
        "--set",
        "retain=",
    )
    plain = SFTAlign.training_step

    def terminated(self: Any, model: Any, batch: Any, ctx: Any) -> Any:
        out = plain(self, model, batch, ctx)
        if ctx.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(SFTAlign, "training_step", terminated)
    result = cli(*align, "--max-steps", "4", "--out", "o")
    assert result.code == int(ExitCode.TERMINATED) == 143, result.err
    assert "Stopped by SIGTERM after step 2 of 4" in result.err and "--resume" in result.err
    assert "Traceback" not in result.err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    monkeypatch.setattr(SFTAlign, "training_step", plain)
    result = cli(*align, "--max-steps", "4", "--out", "o", "--resume")
    assert result.code == 0, result.err
    log = (tmp_path / "o" / "align_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [0, 1, 2, 3]


def test_sigterm_during_an_evaluation_marks_it_interrupted(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hftguard eval` (and align's retain distillation, anything outside a training loop)
    stops on SIGTERM as on Ctrl-C: exit 143 and its manifest "interrupted". It used to keep
    SIGTERM's default action: the process died and the manifest stayed "running"."""
    from hftguard.engine import generation

    before = signal.getsignal(signal.SIGTERM)

    def sigterm_arrives(*args: Any, **kwargs: Any) -> Any:
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), f"SIGTERM would end the process uncleanly ({handler!r})"
        handler(signal.SIGTERM, None)
        raise AssertionError("SIGTERM's handler returned during the evaluation")

    monkeypatch.setattr(generation, "generate", sigterm_arrives)
    result = cli("eval", "--model", "tiny-random", "--harmful-samples", "2", "--out", "e")
    assert result.code == int(ExitCode.TERMINATED), result.err
    assert "Stopped by SIGTERM" in result.err and "Traceback" not in result.err
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before
