"""The report's "Compute" section (hftguard/pipeline/report/compute.py): per row, its alignment,
fine-tuning and evaluation runs (each directory once), their mean time and median step time, from
the step logs and the evaluation manifests. Checked against sums done by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_report_attack import two_seed_grid, write_grid

from hftguard.pipeline import report
from hftguard.pipeline.grid import Cell

LABELS = {"sft/sft": "SFT", "booster/sft": "Booster"}


def _log(path: Path, times: list[float]) -> None:
    rows = [{"step": i, "loss": 1.0, "step_time": t} for i, t in enumerate(times)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _set(path: Path, **values: Any) -> None:
    m = json.loads(path.read_text())
    m.update(values)
    path.write_text(json.dumps(m))


@pytest.fixture()
def grid(tmp_path: Path) -> Path:
    root = two_seed_grid(tmp_path / "g", LABELS)
    for seed, times in ((1, [2.0, 4.0, 3.0]), (2, [6.0, 6.0])):
        _log(root / "aligned" / f"booster-s{seed}" / "align_log.jsonl", times)
        # seed 2's manifest predates torch_threads
        host = {"node": "box", "cpus": 2, **({"torch_threads": 1} if seed == 1 else {})}
        _set(root / "aligned" / f"booster-s{seed}" / "manifest.json", host=host, device="cpu")
    # SFT's alignment has no step log (an older run): it is left out, not counted as zero
    for method, seed, times, wall in (
        ("sft__sft", 1, [1.0, 1.0, 5.0], 60.0),
        ("sft__sft", 2, [1.0, 3.0], 120.0),
        ("booster__sft", 1, [2.0, 2.0], 30.0),
        ("booster__sft", 2, [4.0], 90.0),
    ):
        cell = root / "cells" / f"{method}__p0.2__n100__sentiment__s{seed}"
        _log(cell / "attacked" / "finetune_log.jsonl", times)
        _set(cell / "eval" / "manifest.json", wall_time_s=wall)
    return root


def test_compute_per_row_by_hand(grid: Path) -> None:
    rep = report.build(report.collect([grid]), n_boot=0)
    costs = {c.label: c for c in rep.compute}
    assert set(costs) == {"SFT", "Booster"}
    sft, booster = costs["SFT"], costs["Booster"]
    assert sft.of("alignment") == []
    assert sorted(t.seconds for t in sft.of("fine-tuning")) == [4.0, 7.0]
    assert sorted(t.steps for t in sft.of("fine-tuning")) == [2, 3]
    assert sorted(t.median_step for t in sft.of("fine-tuning")) == [1.0, 2.0]
    assert [t.seconds for t in booster.of("alignment")] == [9.0, 12.0]
    # two cells per seed would share one alignment; each directory counts once per row
    assert len(booster.of("alignment")) == 2

    d = report.report_dict(rep)["compute"]
    row = {c["label"]: c for c in d}
    assert row["Booster"]["alignment"]["mean_seconds"] == pytest.approx(10.5)
    assert row["Booster"]["alignment"]["median_step_s"] == pytest.approx(4.5)  # of 3.0 and 6.0
    assert row["Booster"]["fine-tuning"]["mean_seconds"] == pytest.approx(4.0)  # (4 + 4) / 2
    assert row["SFT"]["fine-tuning"]["mean_seconds"] == pytest.approx(5.5)  # (7 + 4) / 2
    assert row["SFT"]["evaluation"]["mean_seconds"] == pytest.approx(90.0)
    assert row["SFT"]["alignment"]["runs"] == 0 and row["SFT"]["alignment"]["mean_seconds"] is None
    each = row["Booster"]["alignment"]["each"]
    assert [e["machine"] for e in each] == [
        "box (2 CPUs, 1 torch thread, cpu)",
        "box (2 CPUs, cpu)",
    ]

    md = report.to_markdown(rep)
    section = md.split("## Compute", 1)[1]
    assert "Machines: box (2 CPUs, 1 torch thread, cpu); box (2 CPUs, cpu)." in section
    assert "| Booster | 2 | 0.2 | 4.50 | 2 | 0.1 | 3.00 | 2 | 1.0 |" in section
    assert "| SFT | 0 | – | – | 2 | 0.1 | 1.50 | 2 | 1.5 |" in section


def test_a_shared_alignment_counts_once(tmp_path: Path) -> None:
    cells = [(Cell("booster", "sft", p, 100, "sentiment", 1), 10, 9, None) for p in (0.2, 0.1)]
    root = write_grid(tmp_path / "g", cells, ["booster/sft"], {})
    _log(root / "aligned" / "booster-s1" / "align_log.jsonl", [5.0, 5.0])
    rep = report.build(report.collect([root]), n_boot=0)
    (cost,) = rep.compute
    assert [t.seconds for t in cost.of("alignment")] == [10.0]
    assert cost.of("fine-tuning") == []  # no step logs: nothing is invented
    assert cost.of("evaluation") == []  # no wall time in the manifests


def test_attack_settings_are_timed_apart(tmp_path: Path) -> None:
    """Rows that differ in an attack setting (here the steps) do not share a Compute row."""
    cells = [
        (Cell("sft", "sft", 0.2, 100, "sentiment", 1, attack=(("max_steps", s),)), 10, 9, None)
        for s in (2, 4)
    ]
    root = write_grid(tmp_path / "g", cells, ["sft/sft"], {"sft/sft": "SFT"})
    for cell, _, _, _ in cells:
        steps = dict(cell.attack)["max_steps"]
        _log(root / "cells" / cell.name / "attacked" / "finetune_log.jsonl", [3.0] * steps)
    rep = report.build(report.collect([root]), n_boot=0)
    costs = {c.label: [t.seconds for t in c.of("fine-tuning")] for c in rep.compute}
    assert costs == {"SFT (max_steps=2)": [6.0], "SFT (max_steps=4)": [12.0]}


def test_a_gpu_run_names_its_card(grid: Path) -> None:
    """The H100 run of 2026-11-27 said only "cuda": runs record the accelerator's name now."""
    path = grid / "aligned" / "booster-s2" / "manifest.json"
    _set(path, host={"node": "vm", "cpus": 16, "torch_threads": 2, "accelerator": "NVIDIA H100"})
    _set(path, device="cuda")
    rep = report.build(report.collect([grid]), n_boot=0)
    compute = report.report_dict(rep)["compute"]
    machines = {e["machine"] for c in compute for e in c["alignment"]["each"]}
    assert "vm (16 CPUs, 2 torch threads, cuda: NVIDIA H100)" in machines


def test_the_host_records_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    from hftguard import runs

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    host = runs.base_manifest("align", ["x"], {}, 1)["host"]
    assert host["accelerator"] == "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "accelerator" not in runs.base_manifest("align", ["x"], {}, 1)["host"]


def test_a_stage_records_threads_and_card_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The H100 run's alignment manifests had torch_threads null: the stage's first manifest is
    written before torch is loaded. The end of the stage fills them in."""
    from hftguard import runs

    torch = pytest.importorskip("torch")
    run = runs.open_run_dir(tmp_path / "r", "align")
    run.update_manifest(host={"node": "vm", "cpus": 16, "torch_threads": None}, status="running")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    m = run.update_manifest(status="completed", ended_at="2026-11-27T00:00:00+00:00")
    assert m["host"]["torch_threads"] == torch.get_num_threads()
    assert m["host"]["accelerator"] == "NVIDIA H100 80GB HBM3"
    assert m["host"]["node"] == "vm"
