"""The check that a training stage's loss went down (hftguard/pipeline/trend.py), by hand on small
step logs, and its wiring into a real alignment run (manifest and warning)."""

from __future__ import annotations

import json
import statistics

import pytest

from hftguard.config import AlignConfig, LoraOptions, TrainOptions
from hftguard.console import Reporter
from hftguard.pipeline import align, trend


def _rows(values, key="loss", **extra):
    return [{"step": i, key: v, **extra} for i, v in enumerate(values)]


def test_a_falling_loss_is_not_flagged():
    (t,) = trend.loss_trend(_rows([6.0 - 0.1 * i for i in range(50)]))
    assert t["key"] == "loss" and t["state"] is None and t["steps"] == 50
    assert t["window"] == 10  # max(10, 50 // 10)
    assert t["first"] == pytest.approx(6.0 - 0.1 * 4.5)  # median of steps 0-9
    assert t["last"] == pytest.approx(6.0 - 0.1 * 44.5)  # median of steps 40-49
    assert t["rose"] is False
    assert trend.warning("align", [t], "hint") is None


def test_a_rising_loss_is_flagged_with_its_numbers():
    values = [2.0] * 100 + [6.0] * 100  # 200 steps: windows of 20
    (t,) = trend.loss_trend(_rows(values))
    assert (t["window"], t["first"], t["last"], t["rose"]) == (20, 2.0, 6.0, True)
    message = trend.warning("align", [t], "Try X.")
    assert message == (
        "align: the training loss did not go down: loss rose from 2 (median of the first 20 steps) "
        "to 6 (the last 20). Try X."
    )


def test_within_the_tolerance_is_flat_not_rising():
    flat = trend.loss_trend(_rows([1.0] * 25 + [1.04] * 25))
    assert flat[0]["rose"] is False  # +4% < 5%
    risen = trend.loss_trend(_rows([1.0] * 25 + [1.06] * 25))
    assert risen[0]["rose"] is True


def test_too_few_steps_give_no_verdict():
    assert trend.loss_trend(_rows([1.0] * 48 + [9.0])) == []  # 49 steps
    assert trend.loss_trend([]) == []


def test_the_models_own_loss_is_compared_where_a_defense_logs_one():
    """Vaccine: the perturbed objective fell, the clean loss rose (calibrated grid, ρ = 400)."""
    rows = [
        {"step": i, "loss": 8.0 - 0.05 * i, "loss_clean": 2.4 + 0.1 * i, "eps_norm": 400.0}
        for i in range(50)
    ]
    (t,) = trend.loss_trend(rows)
    assert t["key"] == "loss_clean" and t["rose"] is True


def test_objectives_are_checked_separately():
    """Lisa alternates alignment (state 0) and user (state 1) steps: each against itself."""
    rows = []
    for i in range(200):
        state = 0 if (i // 20) % 2 == 0 else 1
        value = 5.0 if state == 0 else 0.5  # each constant; a mixed window would see a "rise"
        rows.append({"step": i, "loss": value - 0.001 * i, "state": float(state)})
    rows[-1]["loss"] = 0.5  # the last step is a user step, as a mixed comparison would see
    result = trend.loss_trend(rows)
    assert sorted(t["state"] for t in result) == [0.0, 1.0]
    assert not any(t["rose"] for t in result)


def test_unreadable_lines_and_missing_logs(tmp_path):
    log = tmp_path / "align_log.jsonl"
    log.write_text('{"step": 0, "loss": 1.0}\nnot json\n[1, 2]\n{"step": 1, "loss": 2.0}\n')
    assert trend.read_log(log) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 2.0}]
    assert trend.read_log(tmp_path / "missing.jsonl") == []


def test_single_spikes_do_not_make_a_rise():
    """A batch's loss spikes 2-3x now and then (the calibrated grid's Antibody attack): medians."""
    head = [2.1, 2.2, 2.1, 2.0, 2.1, 2.1, 5.6, 2.2, 2.1, 2.1]
    tail = [2.0, 5.6, 1.9, 5.2, 1.95, 2.0, 3.9, 2.0, 1.9, 2.0]
    (t,) = trend.loss_trend(_rows(head + [2.0] * 30 + tail))
    assert (t["first"], t["last"], t["rose"]) == (2.1, 2.0, False)


def test_steps_are_ordered_and_non_finite_values_skipped():
    rows = _rows([1.0] * 25 + [3.0] * 25)[::-1]  # written out of order
    rows.append({"step": 99, "loss": float("nan")})
    (t,) = trend.loss_trend(rows)
    assert (t["first"], t["last"], t["steps"]) == (1.0, 3.0, 50)


def test_the_hint_names_vaccines_rho():
    from hftguard.builtins.defenses.sft import SFTAlign
    from hftguard.builtins.defenses.vaccine import Vaccine, VaccineConfig

    assert "vaccine.rho (now 400" in trend.hint_for(Vaccine(VaccineConfig(rho=400.0)))
    assert "train.lr" in trend.hint_for(SFTAlign())


def _align(out, reporter, steps=50):
    cfg = AlignConfig(
        model="tiny-random",
        samples=16,
        retain="",
        train=TrainOptions(max_steps=steps, batch_size=4, max_length=64),
        lora=LoraOptions(r=4, alpha=8.0),
    )
    return align.run(cfg, out, reporter=reporter)


def test_an_alignment_records_its_loss_trend(tmp_path):
    manifest = _align(tmp_path / "a", Reporter(quiet=True))
    rows = [json.loads(x) for x in (tmp_path / "a" / "align_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in sorted(rows, key=lambda r: r["step"])]
    med = statistics.median
    (t,) = manifest["training"]["loss_trend"]
    assert (t["key"], t["steps"], t["window"]) == ("loss", 50, 10)
    assert t["first"] == pytest.approx(med(losses[:10]), abs=1e-6)
    assert t["last"] == pytest.approx(med(losses[-10:]), abs=1e-6)
    assert t["rose"] == (t["last"] > t["first"] * 1.05)


def test_a_rising_alignment_loss_is_warned_about(tmp_path, monkeypatch):
    # any trend counts as a rise: the wiring from the log to the warning and the manifest
    monkeypatch.setattr(trend, "TOLERANCE", -10.0)
    events = []
    reporter = Reporter(quiet=True)
    monkeypatch.setattr(reporter, "warn", events.append)
    manifest = _align(tmp_path / "b", reporter)
    assert manifest["training"]["loss_trend"][0]["rose"] is True
    (message,) = [e for e in events if "did not go down" in e]
    assert message.startswith("align: the training loss did not go down: loss rose from ")
    assert "train.lr" in message


def test_short_runs_record_no_trend(tmp_path):
    manifest = _align(tmp_path / "c", Reporter(quiet=True), steps=2)
    assert "loss_trend" not in manifest["training"]
