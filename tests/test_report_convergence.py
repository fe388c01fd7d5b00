"""The report's "Training that did not converge" section (hftguard/pipeline/report/convergence.py):
a row whose alignment or fine-tuning loss rose is named, once per stage, with the rows using it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_attack import two_seed_grid, write_grid

from hftguard.pipeline import report
from hftguard.pipeline.grid import Cell
from hftguard.runs import atomic_write_json

LABELS = {"sft/sft": "SFT", "antibody/sft": "Antibody", "booster/sft": "Booster"}


def _log(path: Path, values: list[float], key: str = "loss", **extra: float) -> None:
    rows = [{"step": i, key: v, **extra} for i, v in enumerate(values)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


FALLING = [3.0 - 0.02 * i for i in range(100)]
RISING = [2.5] * 50 + [5.8] * 50


@pytest.fixture()
def grid(tmp_path: Path) -> Path:
    root = two_seed_grid(tmp_path / "g", LABELS)
    for seed in (1, 2):
        _log(root / "aligned" / f"sft-s{seed}" / "align_log.jsonl", FALLING)
        # as Vaccine logs it: the objective fell, the model's own loss (logged beside it) rose
        rows = [{"step": i, "loss": 9.0 - 0.01 * i, "loss_clean": RISING[i]} for i in range(100)]
        path = root / "aligned" / f"antibody-s{seed}" / "align_log.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        _log(root / "aligned" / f"booster-s{seed}" / "align_log.jsonl", FALLING)
    for cell_dir in (root / "cells").iterdir():
        _log(cell_dir / "attacked" / "finetune_log.jsonl", FALLING)
    # one attack that did not go down: Booster, seed 2
    _log(
        next((root / "cells").glob("booster__sft__*s2")) / "attacked" / "finetune_log.jsonl",
        RISING,
    )
    return root


def test_the_stages_whose_loss_rose_are_named_with_their_rows(grid: Path) -> None:
    rep = report.build(report.collect([grid]), n_boot=0)
    items = {
        (i.stage, i.run_dir.name if i.stage == "alignment" else i.run_dir.parent.name): i
        for i in rep.not_converged
    }
    booster_cell = next((grid / "cells").glob("booster__sft__*s2")).name
    assert set(items) == {
        ("alignment", "antibody-s1"),
        ("alignment", "antibody-s2"),
        ("fine-tuning", booster_cell),
    }
    vac = items[("alignment", "antibody-s1")]
    assert (vac.key, vac.first, vac.last, vac.steps, vac.window) == (
        "loss_clean",
        2.5,
        5.8,
        100,
        10,
    )
    assert vac.defense == "antibody"
    assert vac.labels == ["Antibody"]  # the rows that use it, each once
    ft = items[("fine-tuning", booster_cell)]
    assert (ft.key, ft.defense, ft.labels) == ("loss", "sft", ["Booster"])


def test_markdown_and_json(grid: Path) -> None:
    rep = report.build(report.collect([grid]), n_boot=0)
    md = report.to_markdown(rep)
    assert "## Training that did not converge" in md
    assert "- alignment `antibody` (" in md
    assert "used by Antibody: loss_clean rose from 2.5 to 5.8 (medians of the first and last " in md
    data = json.loads(report.to_json(rep))
    assert sorted(d["stage"] for d in data["not_converged"]) == [
        "alignment",
        "alignment",
        "fine-tuning",
    ]
    assert {d["key"] for d in data["not_converged"]} == {"loss_clean", "loss"}


def _record(run_dir: Path, key: str, first: float, last: float, rose: bool) -> None:
    """Write a loss trend into the run's manifest, as a training stage now does."""
    m = json.loads((run_dir / "manifest.json").read_text())
    entry = {"key": key, "state": None, "steps": 100, "window": 10}
    m["training"] = {"loss_trend": [{**entry, "first": first, "last": last, "rose": rose}]}
    atomic_write_json(run_dir / "manifest.json", m)


def test_the_manifests_record_comes_first(grid: Path) -> None:
    """A run that recorded its trend is read from its manifest, not re-computed from the log."""
    _record(grid / "aligned" / "antibody-s1", "loss_clean", 2.5, 2.4, rose=False)  # log: rose
    _record(grid / "aligned" / "sft-s1", "loss", 1.0, 2.0, rose=True)  # log: fell
    rep = report.build(report.collect([grid]), n_boot=0)
    names = {i.run_dir.name for i in rep.not_converged if i.stage == "alignment"}
    assert names == {"antibody-s2", "sft-s1"}


def test_no_section_when_everything_converged(tmp_path: Path) -> None:
    cells = [(Cell("sft", "sft", 0.2, 100, "sentiment", 1), 10, 9, None)]
    root = write_grid(tmp_path / "g", cells, ["sft/sft"], {"sft/sft": "SFT"})
    _log(root / "aligned" / "sft-s1" / "align_log.jsonl", FALLING)
    rep = report.build(report.collect([root]), n_boot=0)
    assert rep.not_converged == []
    assert "did not converge" not in report.to_markdown(rep)
    assert json.loads(report.to_json(rep))["not_converged"] == []
