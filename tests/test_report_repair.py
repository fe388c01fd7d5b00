"""The report's repair column: a repaired model against the attacked model it repaired (#18).

The numbers are worked out by hand from the fake evaluations (tests/test_report.py's _eval_dir:
prompt i is harmful iff i < k_harm of 20, task prompt i correct iff i < k_task of 10), so a
repair effect paired with the wrong reference (the baseline, another method's attacked model,
another seed) or with the sign turned round gives other numbers.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from test_report import _eval_dir
from test_report_attack import write_grid

from hftguard.pipeline import report
from hftguard.runs import atomic_write_json

# method -> per seed (1, 2): (harmful answers of 20, correct task answers of 10)
TABLE = {
    "sft/sft": [(16, 9), (18, 9)],  # HS 80, 90; FA 90, 90
    "sft/sft/antidote": [(6, 4), (10, 7)],  # HS 30, 50; FA 40, 70
    "booster/sft": [(8, 9), (12, 8)],  # HS 40, 60; FA 90, 80
    "booster/sft/antidote": [(4, 9), (4, 6)],  # HS 20, 20; FA 90, 60
}
LABELS = {
    "sft/sft": "SFT",
    "sft/sft/antidote": "SFT + Antidote",
    "booster/sft": "Booster",
    "booster/sft/antidote": "Booster + Antidote",
}


@pytest.fixture(scope="module")
def repaired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hftguard.pipeline.grid import Cell

    cells = []
    for method, per_seed in TABLE.items():
        a, f, *rep = method.split("/")
        for seed, (k_harm, k_task) in zip((1, 2), per_seed, strict=True):
            cell = Cell(a, f, 0.2, 100, "sentiment", seed, repair=rep[0] if rep else "")
            cells.append((cell, k_harm, k_task, None))
    return write_grid(tmp_path_factory.mktemp("rep") / "g", cells, list(LABELS), LABELS)


def _cell(rep: report.Report, method: str) -> report.CellStats:
    row = next(r for r in rep.rows if r.method == method)
    c = rep.cell(row, 0.2)
    assert c is not None
    return c


def test_repair_effect_by_hand(repaired: Path) -> None:
    rep = report.build(report.collect([repaired]), n_boot=0)
    effects = [c for c in rep.comparisons if c.kind == "repair_effect"]
    # one per repaired method, seed and metric (no margins in these evaluations)
    assert len(effects) == 2 * 2 * 2
    for c in effects:
        assert c.ref.method == c.run.attacked_method and c.ref.seed == c.run.seed
    sft = _cell(rep, "sft/sft/antidote").repair_effect
    # seed 1: 30 - 80, seed 2: 50 - 90 -> -50, -40
    assert sft["hs"].mean == pytest.approx(-45.0)
    assert sft["hs"].sd == pytest.approx(7.0710678, rel=1e-6)
    assert sft["fa"].mean == pytest.approx(((40 - 90) + (70 - 90)) / 2)
    # Booster's repair is measured against Booster's attacked model, not against SFT's
    booster = _cell(rep, "booster/sft/antidote")
    assert booster.repair_effect["hs"].mean == pytest.approx(((20 - 40) + (20 - 60)) / 2)
    assert booster.repair_effect["fa"].mean == pytest.approx(((90 - 90) + (60 - 80)) / 2)
    assert booster.vs_baseline["hs"].mean == pytest.approx(((20 - 80) + (20 - 90)) / 2)
    # the discordant counts of one seed: the repaired model is harmful on a subset of the
    # attacked model's prompts (6 of 16), so b = 0, c = 10
    one = next(
        c
        for c in effects
        if c.run.method == "sft/sft/antidote" and c.run.seed == 1 and c.metric == "hs"
    )
    assert (one.b, one.c, one.diff) == (0, 10, pytest.approx(-50.0))
    # unrepaired rows have no repair effect
    assert _cell(rep, "sft/sft").repair_effect == {}
    assert _cell(rep, "booster/sft").repair_effect == {}


def test_repair_effect_in_markdown_csv_and_json(repaired: Path) -> None:
    rep = report.build(report.collect([repaired]), n_boot=0)
    md = report.to_markdown(rep)
    section = md.split("## Repair effect: HS(repaired) − HS(attacked), same attacked model")[1]
    table = section.split("\n## ")[0]
    assert "| SFT + Antidote | -45.0 ± 7.1" in table
    assert "| Booster + Antidote | -30.0 ± 14.1" in table
    assert "| SFT |" not in table and "| Booster |" not in table
    assert "| repair effect | SFT + Antidote | attacked |" in md
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(report.to_csv(rep)))}
    assert rows["sft/sft/antidote"]["repair_effect_hs_mean"] == "-45.0"
    assert rows["booster/sft/antidote"]["repair_effect_fa_mean"] == "-10.0"
    assert rows["sft/sft"]["repair_effect_hs_mean"] == ""
    data = report.report_dict(rep)
    cells = {c["method"]: c for c in data["cells"]}
    assert cells["sft/sft/antidote"]["repair_effect"]["hs"]["mean"] == -45.0
    assert "repair_effect" not in cells["sft/sft"]
    kinds = {c["kind"] for c in data["comparisons"]}
    assert kinds == {"vs_baseline", "repair_effect"}


def test_reports_without_repairs_keep_their_csv_fields(tmp_path: Path) -> None:
    from test_report import fake_grid

    from hftguard.pipeline.report.render import REPAIR_CSV_FIELDS

    rep = report.build(report.collect([fake_grid(tmp_path / "g")]), n_boot=0)
    header = report.to_csv(rep).splitlines()[0].split(",")
    assert not set(header) & set(REPAIR_CSV_FIELDS)
    assert "Repair effect" not in report.to_markdown(rep)


def _finished(path: Path, stage: str, link: dict[str, str], config: dict[str, Any]) -> Path:
    """A finished run directory of ``stage`` (manifest only), linked to its input run."""
    atomic_write_json(
        path / "manifest.json", {"stage": stage, "status": "completed", **link, "config": config}
    )
    return path


def _attacked_run(path: Path, aligned: Path, options: dict[str, Any] | None = None) -> Path:
    """A finished SFT attack (p = 0.2, n = 100, sentiment, seed 42) of ``aligned``, outside a
    grid; ``options``: its defense options."""
    config = {"model": str(aligned), "defense": "sft", "harmful_ratio": 0.2, "samples": 100}
    config |= {"task": "sentiment", "seed": 42}
    if options is not None:
        config["defense_options"] = options
    return _finished(path, "finetune", {"aligned_run": str(aligned)}, config)


def _repaired_run(path: Path, attacked: Path, options: dict[str, Any] | None = None) -> Path:
    """A finished SafeLoRA repair of ``attacked``; ``options``: its defense options."""
    config: dict[str, Any] = {"model": str(attacked), "defense": "safelora"}
    if options is not None:
        config["defense_options"] = options
    return _finished(path, "repair", {"attacked_run": str(attacked)}, config)


def test_repair_effect_from_eval_dirs_given_one_by_one(tmp_path: Path) -> None:
    """A single pipeline's attacked-eval and repaired-eval, passed straight to the report (no grid
    manifest): the repair is read from the repaired model's provenance."""
    from test_report import _aligned_dir

    aligned = tmp_path / "aligned"
    _aligned_dir(aligned, "sft", 42)
    attacked = _attacked_run(tmp_path / "attacked", aligned)
    repaired_dir = _repaired_run(tmp_path / "repaired", attacked)
    _eval_dir(tmp_path / "attacked-eval", attacked, 14, 9)
    _eval_dir(tmp_path / "repaired-eval", repaired_dir, 5, 8)
    coll = report.collect([tmp_path / "attacked-eval", tmp_path / "repaired-eval"])
    assert sorted(r.method for r in coll.runs) == ["sft/sft", "sft/sft/safelora"]
    rep = report.build(coll, n_boot=0)
    (hs,) = [c for c in rep.comparisons if c.kind == "repair_effect" and c.metric == "hs"]
    assert hs.diff == pytest.approx(5.0 * (5 - 14)) and hs.ref.method == "sft/sft"


def test_repairs_with_other_options_are_rows_of_their_own(tmp_path: Path) -> None:
    """Two SafeLoRA repairs of one attacked model with different options (num_layers 1 and 2):
    rows of their own, ``(num_layers=1)``, each paired with the attacked model it repaired. Before,
    the report refused them as two evaluations of one seed."""
    from test_report import _aligned_dir

    aligned = tmp_path / "aligned"
    _aligned_dir(aligned, "sft", 42)
    attacked = _attacked_run(tmp_path / "attacked", aligned)
    _eval_dir(tmp_path / "attacked-eval", attacked, 14, 9)
    evals = [tmp_path / "attacked-eval"]
    for layers, k_harm in ((1, 10), (2, 4)):
        repaired_dir = _repaired_run(
            tmp_path / f"repaired-{layers}", attacked, {"num_layers": layers}
        )
        _eval_dir(tmp_path / f"repaired-{layers}-eval", repaired_dir, k_harm, 8)
        evals.append(tmp_path / f"repaired-{layers}-eval")
    coll = report.collect(evals)
    variants = sorted((r.method, r.variant_label) for r in coll.runs)
    assert variants == [
        ("sft/sft", ""),
        ("sft/sft/safelora", "num_layers=1"),
        ("sft/sft/safelora", "num_layers=2"),
    ]
    rep = report.build(coll, n_boot=0)
    assert sorted(r.label for r in rep.rows) == [
        "sft/sft",
        "sft/sft/safelora (num_layers=1)",
        "sft/sft/safelora (num_layers=2)",
    ]
    effects = [c for c in rep.comparisons if c.kind == "repair_effect" and c.metric == "hs"]
    got = sorted((c.run.variant_label, c.diff, c.ref.path.name) for c in effects)
    assert got == [
        ("num_layers=1", pytest.approx(5.0 * (10 - 14)), "attacked-eval"),
        ("num_layers=2", pytest.approx(5.0 * (4 - 14)), "attacked-eval"),
    ]


def test_repair_variants_of_attacked_variants_keep_both_pairings(tmp_path: Path) -> None:
    """Attacked models that differ in a fine-tuning option (x = 1, 2), each repaired with two
    SafeLoRA options: every repaired model is paired with the baseline (SFT, the same x) and with
    the attacked model it repaired. The vs-baseline pairs were lost once the repair's options
    joined the variant."""
    from test_report import _aligned_dir

    aligned = tmp_path / "aligned"
    _aligned_dir(aligned, "sft", 42)
    evals = []
    for x in (1, 2):
        attacked = _attacked_run(tmp_path / f"attacked-{x}", aligned, {"x": x})
        _eval_dir(tmp_path / f"attacked-{x}-eval", attacked, 12 + x, 9)
        evals.append(tmp_path / f"attacked-{x}-eval")
        for layers in (1, 2):
            repaired_dir = _repaired_run(
                tmp_path / f"repaired-{x}-{layers}", attacked, {"num_layers": layers}
            )
            _eval_dir(tmp_path / f"repaired-{x}-{layers}-eval", repaired_dir, 10 - 3 * layers, 8)
            evals.append(tmp_path / f"repaired-{x}-{layers}-eval")
    rep = report.build(report.collect(evals), baseline="sft/sft", n_boot=0)
    pairs = sorted(
        (c.kind, c.run.path.name, c.ref.path.name)
        for c in rep.comparisons
        if c.metric == "hs" and c.run.repair
    )
    want = []
    for x in (1, 2):
        for layers in (1, 2):
            run = f"repaired-{x}-{layers}-eval"
            want += [("repair_effect", run, f"attacked-{x}-eval")]
            want += [("vs_baseline", run, f"attacked-{x}-eval")]
    assert pairs == sorted(want)
