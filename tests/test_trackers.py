"""``--report-to``: experiment trackers get the config, every step's metrics and eval's metrics."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path
from typing import Any

import pytest

import hftguard
from hftguard import Tracker
from hftguard.trackers import parse_report_to
from tests.cli_helpers import assert_error

ALIGN = ("align", "--model", "tiny-random", "--max-steps", "3", "--samples", "6", "-q")
ALIGN += ("--batch-size", "2", "--set", "retain=")  # no self-distilled retain set: faster
EVAL = (
    "eval",
    "--model",
    "tiny-random",
    "--harmful-samples",
    "2",
    "--set",
    "task_samples=2",
    "--set",
    "benign_samples=2",
    "--max-new-tokens",
    "2",
    "-q",
)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_parse_report_to() -> None:
    assert parse_report_to(None) is None
    assert parse_report_to(["jsonl,tensorboard", "jsonl", "wandb"]) == [
        "jsonl",
        "tensorboard",
        "wandb",
    ]
    assert parse_report_to(["none"]) == []
    with pytest.raises(hftguard.ConfigError):
        parse_report_to(["none,jsonl"])


def test_align_report_to_jsonl_matches_the_training_log(cli: Any) -> None:
    result = cli(*ALIGN, "--report-to", "jsonl", "--out", "a")
    assert result.code == 0, result.err
    records = _lines(Path("a/tracker.jsonl"))
    assert records[0]["type"] == "config"
    assert records[0]["config"]["report_to"] == ["jsonl"]
    assert records[0]["config"]["model"] == "tiny-random"
    steps = [r for r in records if r["type"] == "step"]
    log = _lines(Path("a/align_log.jsonl"))
    assert len(steps) == len(log) == 3
    assert [s["step"] for s in steps] == [r["step"] for r in log]
    assert [s["loss"] for s in steps] == [r["loss"] for r in log]
    assert [s["grad_norm"] for s in steps] == [r["grad_norm"] for r in log]
    # adding a tracker does not change the run's identity: resuming the finished run is a no-op
    again = cli(*ALIGN, "--resume", "--out", "a")
    assert again.code == 0, again.err


def test_eval_report_to_jsonl_writes_the_final_metrics(cli: Any) -> None:
    result = cli(*EVAL, "--report-to", "jsonl", "--out", "e")
    assert result.code == 0, result.err
    records = _lines(Path("e/tracker.jsonl"))
    assert [r["type"] for r in records] == ["config", "metrics"]
    metrics = json.loads(Path("e/metrics.json").read_text(encoding="utf-8"))
    assert records[-1]["metrics"]["harmful_score"] == metrics["harmful_score"]


def test_unknown_tracker_is_a_usage_error(cli: Any) -> None:
    result = cli(*ALIGN, "--report-to", "jsnl", "--out", "a")
    assert_error(result, 2, "jsnl", "jsonl")
    assert not Path("a").exists()


def test_a_tracker_whose_package_is_missing_says_how_to_install_it(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    result = cli(*ALIGN, "--report-to", "wandb", "--out", "a")
    assert_error(result, 2, "wandb", "pip install wandb")
    assert not Path("a").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_align_report_to_tensorboard_writes_the_losses(cli: Any) -> None:
    from tensorboard.backend.event_processing import event_accumulator

    result = cli(*ALIGN, "--report-to", "tensorboard", "--out", "a")
    assert result.code == 0, result.err
    acc = event_accumulator.EventAccumulator(str(Path("a/tb")))
    acc.Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("loss")]
    log = _lines(Path("a/align_log.jsonl"))
    assert [s for s, _ in losses] == [r["step"] for r in log]
    assert [v for _, v in losses] == pytest.approx([r["loss"] for r in log], rel=1e-6)


class Recorder(Tracker):
    """Keep every call in memory (a test plugin)."""

    name = "recorder"
    calls: list[tuple[str, Any]] = []  # noqa: RUF012 - shared on purpose: read by the test

    def start(self, run_dir: Any, config: dict[str, Any]) -> None:
        self.calls.append(("start", config))

    def log_metrics(self, step: int, values: dict[str, Any]) -> None:
        self.calls.append(("step", (step, values)))

    def log_final(self, metrics: dict[str, Any]) -> None:
        self.calls.append(("final", metrics))

    def close(self) -> None:
        self.calls.append(("close", None))


def test_a_plugin_tracker_receives_the_step_metrics(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hftguard import plugins
    from hftguard.registry import default_registry

    plugin = types.ModuleType("recorder_plugin")
    plugin.hftguard_register_trackers = hftguard.hookimpl(lambda: [Recorder])  # type: ignore[attr-defined]
    real = plugins.get_plugin_host

    def host(*args: Any, **kw: Any) -> Any:
        return real(*args, **{**kw, "extra": [*kw.get("extra", []), plugin]})

    monkeypatch.setattr(plugins, "get_plugin_host", host)
    monkeypatch.setattr("hftguard.registry.get_plugin_host", host)
    default_registry.cache_clear()
    Recorder.calls.clear()
    result = cli(*ALIGN, "--report-to", "recorder", "--out", "a")
    assert result.code == 0, result.err
    kinds = [c[0] for c in Recorder.calls]
    assert kinds == ["start", "step", "step", "step", "close"]
    log = _lines(Path("a/align_log.jsonl"))
    steps = [c[1] for c in Recorder.calls if c[0] == "step"]
    assert [v["loss"] for _, v in steps] == [r["loss"] for r in log]
    assert Recorder.calls[0][1]["defense"] == "sft"


def test_run_checks_the_trackers_of_every_stage(cli: Any) -> None:
    result = cli("run", "--dry-run", "--report-to", "jsonl,tensorbord", "--out", "g")
    assert_error(result, 2, "tensorbord", "tensorboard")
    assert cli("run", "--dry-run", "--report-to", "jsonl", "--out", "g").code == 0
