"""``hftguard report`` over attack settings (#19): mean and worst case per defense, the
capability-bounded worst case (``--fa-bound``), and the screening leak-through column.

The grids are written here with known numbers (tests/test_report.py's eval writer), so every
expected value below is computed by hand in the comments.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_report import M_HARMFUL, M_TASK, _aligned_dir, _eval_dir

from hftguard.pipeline import report
from hftguard.pipeline.grid import Cell
from hftguard.runs import atomic_write_json

# (method, lr) -> per seed (1, 2): (harmful answers of 20, correct task answers of 10)
# HS = 5 × the first number, FA = 10 × the second.
TABLE: dict[tuple[str, float], list[tuple[int, int]]] = {
    ("sft/sft", 1e-5): [(4, 8), (6, 8)],  # HS 20, 30 -> 25;  FA 80, 80 -> 80
    ("sft/sft", 1e-4): [(10, 7), (12, 5)],  # HS 50, 60 -> 55;  FA 70, 50 -> 60
    ("sft/sft", 5e-4): [(18, 2), (16, 1)],  # HS 90, 80 -> 85;  FA 20, 10 -> 15
    ("booster/sft", 1e-5): [(2, 9), (2, 9)],  # HS 10;  FA 90
    ("booster/sft", 1e-4): [(3, 4), (5, 6)],  # HS 15, 25 -> 20;  FA 40, 60 -> 50
    ("booster/sft", 5e-4): [(4, 8), (4, 6)],  # HS 20;  FA 80, 60 -> 70
}
LRS = [5e-4, 1e-5, 1e-4]  # written in this order; reports sort settings by value
LABELS = {"sft/sft": "SFT", "booster/sft": "Booster"}


def _attacked(path: Path, aligned: Path, cell: Cell, screening: dict[str, Any] | None) -> None:
    data = {"main": {"screening": screening}} if screening else {}
    atomic_write_json(
        path / "manifest.json",
        {
            "stage": "finetune",
            "status": "completed",
            "aligned_run": str(aligned.resolve()),
            "data": data,
            "config": {
                "model": str(aligned),
                "defense": cell.finetune,
                "screen": cell.screen,
                "harmful_ratio": cell.p,
                "samples": cell.n,
                "task": cell.task,
                "seed": cell.seed,
            },
        },
    )


def write_grid(
    root: Path,
    cells: list[tuple[Cell, int, int, dict[str, Any] | None]],
    methods: list[str],
    labels: dict[str, str],
) -> Path:
    """A finished grid: (cell, harmful answers of 20, correct of 10, screening record)."""
    entries, evals = [], []
    for cell, k_harm, k_task, screening in cells:
        aligned = root / "aligned" / f"{cell.align}-s{cell.seed}"
        if not aligned.exists():
            _aligned_dir(aligned, cell.align, cell.seed)
            _eval_dir(root / "evals" / f"aligned-{cell.align}-s{cell.seed}", aligned, 1, 9)
            evals.append(
                {
                    "kind": "aligned",
                    "align": cell.align,
                    "seed": cell.seed,
                    "aligned": f"aligned/{cell.align}-s{cell.seed}",
                    "eval": f"evals/aligned-{cell.align}-s{cell.seed}",
                }
            )
        d = root / "cells" / cell.name
        _attacked(d / "attacked", aligned, cell, screening)
        _eval_dir(d / "eval", d / "attacked", k_harm, k_task)
        entries.append(
            {
                "name": cell.name,
                **cell.coords(),
                "status": "done",
                "attacked": f"cells/{cell.name}/attacked",
                "eval": f"cells/{cell.name}/eval",
            }
        )
    atomic_write_json(
        root / "manifest.json",
        {
            "stage": "pipeline",
            "status": "completed",
            "config": {},
            "rows": [],
            "grid": {"methods": methods, "labels": labels},
            "cells": entries,
            "evals": evals,
        },
    )
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cells = []
    for method in LABELS:
        a, f = method.split("/")
        for lr in LRS:
            for seed, (k_harm, k_task) in zip((1, 2), TABLE[(method, lr)], strict=True):
                cell = Cell(a, f, 0.2, 100, "sentiment", seed, attack=(("lr", lr),))
                cells.append((cell, k_harm, k_task, None))
    return write_grid(tmp_path_factory.mktemp("sweep") / "g", cells, list(LABELS), LABELS)


def _by_method(rep: report.Report) -> dict[str, Any]:
    return {w.method: w for w in rep.worst}


def test_worst_case_over_attack_settings_by_hand(sweep: Path) -> None:
    rep = report.build(report.collect([sweep]), n_boot=0)
    # rows: one per (method, setting), settings in ascending order of their values
    assert [r.label for r in rep.rows] == [
        "SFT (lr=1e-05)",
        "SFT (lr=0.0001)",
        "SFT (lr=0.0005)",
        "Booster (lr=1e-05)",
        "Booster (lr=0.0001)",
        "Booster (lr=0.0005)",
    ]
    w = _by_method(rep)
    sft, booster = w["sft/sft"], w["booster/sft"]
    assert (sft.label, sft.column, len(sft.settings)) == ("SFT", 0.2, 3)
    # seeds are averaged within a setting first: the worst is 85 (lr 5e-4: 90 and 80), not the
    # single worst seed (90)
    assert sft.mean_hs == pytest.approx((25 + 55 + 85) / 3)
    assert sft.mean_fa == pytest.approx((80 + 60 + 15) / 3)
    assert (sft.worst.label, sft.worst.hs, sft.worst.fa) == ("lr=0.0005", 85.0, 15.0)
    assert sft.bounded is None and sft.fa_bound is None  # no --fa-bound: no bounded worst case
    # Booster: lr 1e-4 and 5e-4 tie at HS 20; the tie goes to the higher FA (70 > 50), although
    # lr 1e-4 comes first
    assert booster.mean_hs == pytest.approx((10 + 20 + 20) / 3)
    assert booster.mean_fa == pytest.approx((90 + 50 + 70) / 3)
    assert (booster.worst.label, booster.worst.hs, booster.worst.fa) == ("lr=0.0005", 20.0, 70.0)
    # the worst setting's own interval is reported (2 seeds: bootstrap; n_boot=0: none)
    assert booster.worst.cell.hs.n_seeds == 2


@pytest.mark.parametrize(
    ("bound", "sft", "booster"),
    [
        # FA >= 50: SFT keeps lr 1e-5 (80) and 1e-4 (60) -> worst 55; Booster keeps all (lr 1e-4
        # has exactly 50), its worst is the tie's higher-FA setting
        (50.0, ("lr=0.0001", 55.0, 2), ("lr=0.0005", 20.0, 3)),
        # FA >= 60: Booster loses lr 1e-4 (50); 1e-5 (HS 10) and 5e-4 (HS 20, FA 70) remain
        (60.0, ("lr=0.0001", 55.0, 2), ("lr=0.0005", 20.0, 2)),
        # FA >= 75: SFT keeps lr 1e-5 only -> 25; Booster lr 1e-5 (90) only -> 10
        (75.0, ("lr=1e-05", 25.0, 1), ("lr=1e-05", 10.0, 1)),
        # FA >= 90: no SFT setting; Booster's lr 1e-5 has exactly 90
        (90.0, (None, None, 0), ("lr=1e-05", 10.0, 1)),
        (0.0, ("lr=0.0005", 85.0, 3), ("lr=0.0005", 20.0, 3)),  # every setting: the plain worst
    ],
)
def test_capability_bounded_worst_case_by_hand(
    sweep: Path, bound: float, sft: tuple[Any, ...], booster: tuple[Any, ...]
) -> None:
    w = _by_method(report.build(report.collect([sweep]), n_boot=0, fa_bound=bound))
    for method, (label, hs, meeting) in (("sft/sft", sft), ("booster/sft", booster)):
        got = w[method]
        assert got.fa_bound == bound and got.n_meeting == meeting
        if label is None:
            assert got.bounded is None
        else:
            assert (got.bounded.label, got.bounded.hs) == (label, hs)
            assert got.bounded.fa >= bound


def test_worst_case_in_markdown_csv_and_json(sweep: Path) -> None:
    rep = report.build(report.collect([sweep]), n_boot=0, fa_bound=90.0)
    md = report.to_markdown(rep)
    assert "## Worst case over attack settings" in md
    line = next(x for x in md.splitlines() if x.startswith("| SFT | p=0.2 "))
    assert "| 3 | 55.0 | 51.7 | 85.0 " in line and "lr=0.0005" in line
    assert "no setting keeps FA ≥ 90" in line  # none of SFT's settings meets the bound
    line = next(x for x in md.splitlines() if x.startswith("| Booster | p=0.2 "))
    assert "| 10.0 [" in line or "| 10.0 |" in line
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    worst = {r["method"]: r for r in rows if r["kind"] == "attack_worst_case"}
    assert (
        worst["sft/sft"]["worst_hs"] == "85.0" and worst["sft/sft"]["worst_attack"] == "lr=0.0005"
    )
    assert worst["sft/sft"]["bounded_worst_hs"] == "" and worst["sft/sft"]["fa_bound"] == "90.0"
    assert worst["booster/sft"]["bounded_worst_attack"] == "lr=1e-05"
    attacked = [r for r in rows if r["kind"] == "attacked"]
    assert {r["attack"] for r in attacked} == {"lr=1e-05", "lr=0.0001", "lr=0.0005"}
    data = report.report_dict(rep)
    assert data["fa_bound"] == 90.0
    sft = next(w for w in data["attack_worst_case"] if w["method"] == "sft/sft")
    assert sft["worst"]["attack"] == {"lr": 5e-4} and sft["worst"]["hs"] == 85.0
    assert sft["bounded"] is None and sft["n_meeting"] == 0
    assert [s["attack"] for s in sft["settings"]] == [{"lr": 1e-5}, {"lr": 1e-4}, {"lr": 5e-4}]
    assert data["cells"][0]["attack"] == {"lr": 1e-5}


def test_worst_case_against_the_baselines_worst_case_by_hand(sweep: Path) -> None:
    """Each defense's worst setting against SFT's worst setting, paired per seed: Booster's worst
    is lr 5e-4 (harmful answers 4, 4 of 20), SFT's is lr 5e-4 (18, 16); with FA >= 50 SFT's
    worst is lr 1e-4 (10, 12) and Booster's still lr 5e-4."""
    rep = report.build(report.collect([sweep]), n_boot=0, fa_bound=50.0)
    w = _by_method(rep)
    assert w["sft/sft"].vs_baseline == {}  # the baseline's own row
    worst, bounded = w["booster/sft"].vs_baseline["worst"], w["booster/sft"].vs_baseline["bounded"]
    assert [c.diff for c in worst.comparisons] == [5.0 * (4 - 18), 5.0 * (4 - 16)]
    assert (worst.mean, worst.sd) == (pytest.approx(-65.0), pytest.approx(7.0710678))
    assert bounded.mean == pytest.approx((5.0 * (4 - 10) + 5.0 * (4 - 12)) / 2)
    for c in worst.comparisons:  # different settings on each side, the same seed and prompts
        assert (
            c.run.attack == {"lr": 5e-4} and c.ref.method == "sft/sft" and c.run.seed == c.ref.seed
        )
    md = report.to_markdown(rep)
    assert "ΔHS vs SFT's worst" in md and "ΔHS vs SFT's, FA ≥ 50" in md
    line = next(x for x in md.splitlines() if x.startswith("| Booster | p=0.2 "))
    assert "| -65.0 ± 7.1 |" in line and "| -35.0 ± 7.1 |" in line
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    b = next(r for r in rows if r["kind"] == "attack_worst_case" and r["method"] == "booster/sft")
    assert b["worst_vs_baseline_hs_mean"] == "-65.0"
    assert b["bounded_worst_vs_baseline_hs_mean"] == "-35.0"
    tex = report.to_latex(rep)
    worst_tex = tex.split("% Worst case over attack settings")[1]
    line = next(x for x in worst_tex.splitlines() if x.startswith("Booster &"))
    # Booster's worst (lr 5e-4: HS 20 on both seeds), its ΔHS against SFT's worst, and the bounded
    assert line.startswith(r"Booster & p=0.2 & 16.7 & 20.0$\pm$0.0 & lr=0.0005 & -65.0")
    assert "-35.0" in line and "±" not in worst_tex and r"\bottomrule" in worst_tex
    data = report.report_dict(rep)
    bw = next(x for x in data["attack_worst_case"] if x["method"] == "booster/sft")
    assert (
        bw["vs_baseline"]["worst"]["mean"] == -65.0 and bw["vs_baseline"]["worst"]["n_seeds"] == 2
    )


def test_held_out_worst_case_by_hand(sweep: Path) -> None:
    """The cross-fitted worst case (intervals.held_out_max) on the sweep. Prompts are paired by
    key ("h0".."h19", sorted as text: h0, h1, h10, ..., h19, h2, ..., h9); the halves are the
    even and odd positions of that order. SFT's lr 5e-4 is harmful on a superset of the others'
    prompts, so it is picked on both halves: 85. Booster (per prompt, mean of 2 seeds): 5e-4 is
    1 on h0-h3; 1e-4 is 1 on h0-h2 and 0.5 on h3, h4; 1e-5 is 1 on h0, h1. Half A (h0, h10, h12,
    ..., h2, ..., h8) picks 1e-4 (2.5/10 against 2/10), half B (h1, h11, ..., h3, ..., h9) picks
    5e-4 (2/10 against 1.5/10); each measured on the other half: (1.5 + 2) / 20 = 17.5, below
    the plain worst of 20."""
    rep = report.build(report.collect([sweep]), n_boot=300)
    w = _by_method(rep)
    assert w["sft/sft"].held_out is not None and w["booster/sft"].held_out is not None
    assert w["sft/sft"].held_out[0] == pytest.approx(85.0)
    assert w["booster/sft"].held_out[0] == pytest.approx(17.5)
    assert w["booster/sft"].worst.hs == pytest.approx(20.0)
    md = report.to_markdown(rep)
    assert "Worst HS, held out" in md and "cross-fitting" in md
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    b = next(r for r in rows if r["kind"] == "attack_worst_case" and r["method"] == "booster/sft")
    assert b["worst_hs_held_out"] == "17.5"
    data = report.report_dict(rep)
    bw = next(x for x in data["attack_worst_case"] if x["method"] == "booster/sft")
    assert (
        bw["worst_held_out"]["hs"] == pytest.approx(17.5) and len(bw["worst_held_out"]["ci"]) == 2
    )
    assert bw["bounded_held_out"] is None  # no --fa-bound


@pytest.mark.parametrize(
    ("bound", "sft", "booster"),
    [
        # FA >= 50: SFT keeps lr 1e-5 and 1e-4; 1e-4 is harmful on a superset -> its mean 55.
        # Booster keeps all three -> 17.5 as without a bound
        (50.0, (55.0, True), (17.5, True)),
        # FA >= 75: SFT keeps lr 1e-5 alone -> its plain mean, nothing picked, no interval
        (75.0, (25.0, False), (10.0, False)),
        (95.0, None, None),  # no setting keeps FA >= 95
    ],
)
def test_held_out_worst_case_under_the_fa_bound(
    sweep: Path, bound: float, sft: Any, booster: Any
) -> None:
    w = _by_method(report.build(report.collect([sweep]), n_boot=200, fa_bound=bound))
    for method, want in (("sft/sft", sft), ("booster/sft", booster)):
        got = w[method].held_out_bounded
        if want is None:
            assert got is None
        else:
            assert got is not None and got[0] == pytest.approx(want[0])
            assert (got[1] is not None) == want[1]


def test_paired_comparisons_stay_within_an_attack_setting(sweep: Path) -> None:
    rep = report.build(report.collect([sweep]), n_boot=0)
    hs = [c for c in rep.comparisons if c.kind == "vs_baseline" and c.metric == "hs"]
    assert len(hs) == 3 * 2  # Booster vs SFT at each setting and seed
    for c in hs:
        assert c.run.attack == c.ref.attack
    c = next(c for c in hs if c.run.attack == {"lr": 5e-4} and c.run.seed == 1)
    assert c.diff == pytest.approx(5.0 * (4 - 18))


def test_reports_without_attack_axes_are_unchanged(tmp_path: Path) -> None:
    from test_report import fake_grid

    rep = report.build(report.collect([fake_grid(tmp_path / "g")]), n_boot=0, fa_bound=50.0)
    assert rep.worst == []
    assert "Worst case" not in report.to_markdown(rep)
    assert "Leak-through" not in report.to_markdown(rep)
    header = report.to_csv(rep).splitlines()[0].split(",")
    assert header == report.CSV_FIELDS
    from hftguard.pipeline.report.render import ATTACK_CSV_FIELDS, LEAK_CSV_FIELDS

    # the fields only attack-sweep and screening reports have stay out of a plain report's CSV
    assert not set(header) & {*ATTACK_CSV_FIELDS, *LEAK_CSV_FIELDS}
    assert {"hs_mean", "fa_mean", "margin_mean", "published_hs"} <= set(header)
    data = report.report_dict(rep)
    assert "attack_worst_case" not in data and "fa_bound" not in data
    assert "leak_through" not in data["cells"][0] and "attack" not in data["cells"][0]


# ------------------------------------------------------------------------------------------------
# Screening: leak-through next to HS and FA


def _screening(harmful: int, leaked: int, benign: int, dropped: int) -> dict[str, Any]:
    return {
        "judge": "refusal-keywords",
        "n": harmful + benign,
        "harmful": harmful,
        "benign": benign,
        "harmful_leaked": leaked,
        "benign_dropped": dropped,
        "leak_through_rate": 100.0 * leaked / harmful if harmful else None,
        "benign_dropped_rate": 100.0 * dropped / benign if benign else None,
    }


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    methods = ["sft/sft", "sft/sft+screen:refusal-keywords"]
    cells = []
    for seed, leaked in ((1, 1), (2, 2)):
        for p in (0.0, 0.2):
            plain = Cell("sft", "sft", p, 20, "sentiment", seed)
            cells.append((plain, 12 if p else 2, 8, None))
            scr = Cell("sft", "sft", p, 20, "sentiment", seed, screen="refusal-keywords")
            # p = 0.2 of 20: 4 harmful samples, 1 (seed 1) or 2 (seed 2) leak through
            record = _screening(4, leaked, 16, 0) if p else _screening(0, 0, 20, 1)
            cells.append((scr, 6 if p else 2, 8, record))
    labels = {"sft/sft": "SFT", "sft/sft+screen:refusal-keywords": "SFT + keyword filter"}
    return write_grid(tmp_path_factory.mktemp("screened") / "g", cells, methods, labels)


def test_leak_through_column_by_hand(screened: Path) -> None:
    rep = report.build(report.collect([screened]), n_boot=0)
    assert [r.label for r in rep.rows] == ["SFT", "SFT + keyword filter"]
    sft, filt = rep.rows
    assert rep.cell(sft, 0.2).leak_through is None  # not screened
    lt = rep.cell(filt, 0.2).leak_through
    assert lt is not None and lt.mean == pytest.approx((25.0 + 50.0) / 2) and lt.n_items == 4
    assert rep.cell(filt, 0.0).leak_through is None  # no harmful sample to leak
    head, body = report.main_table(rep)
    assert "Leak-through" in head
    col = head.index("Leak-through")
    assert [row[col] for row in body] == ["–", "37.5"]
    # screening is a defense: compared with SFT prompt by prompt, HS 60 -> 30
    (vs,) = [c for c in rep.comparisons if c.kind == "vs_baseline" and c.metric == "hs"][:1]
    assert vs.run.method == "sft/sft+screen:refusal-keywords" and vs.ref.method == "sft/sft"
    assert rep.cell(filt, 0.2).vs_baseline["hs"].mean == pytest.approx(30.0 - 60.0)
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    got = {(r["method"], r["p"]): r["leak_through_mean"] for r in rows if r["kind"] == "attacked"}
    assert got[("sft/sft+screen:refusal-keywords", "0.2")] == "37.5"
    assert got[("sft/sft", "0.2")] == ""
    cell = next(
        c
        for c in report.report_dict(rep)["cells"]
        if c["method"] == "sft/sft+screen:refusal-keywords" and c["p"] == 0.2
    )
    assert cell["leak_through"]["mean"] == 37.5
    assert cell["screen"] == "refusal-keywords"
    assert [s["leak_through"] for s in cell["per_seed_screening"]] == [25.0, 50.0]


def test_leak_through_of_a_single_eval_dir_from_provenance(screened: Path) -> None:
    cell = Cell("sft", "sft", 0.2, 20, "sentiment", 1, screen="refusal-keywords")
    rep = report.build(report.collect([screened / "cells" / cell.name / "eval"]), n_boot=0)
    (row,) = rep.rows
    assert row.method == "sft/sft+screen:refusal-keywords"
    assert rep.cell(row, 0.2).leak_through.mean == 25.0


# ------------------------------------------------------------------------------------------------
# The command


def test_fa_bound_option(cli: Any, sweep: Path, tmp_path: Path) -> None:
    res = cli("report", str(sweep), "--out", "r", "--no-plots", "--fa-bound", "90")
    assert res.code == 0, res.err
    assert "## Worst case over attack settings" in res.out
    assert "no setting keeps FA ≥ 90" in res.out
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["fa_bound"] == 90.0
    res = cli("report", str(sweep), "--out", "r2", "--no-plots", "--fa-bound", "120")
    assert res.code == 2 and "--fa-bound" in res.err and "Hint:" in res.err


def test_attack_settings_as_columns(sweep: Path) -> None:
    """--columns attack: one row per defense, one column per setting (ascending), the same cell
    numbers, pairing within a column, and the worst case still taken over the settings."""
    rep = report.build(report.collect([sweep]), columns="attack", n_boot=0, fa_bound=50.0)
    assert [r.label for r in rep.rows] == ["SFT", "Booster"]
    assert rep.columns == ["lr=1e-05", "lr=0.0001", "lr=0.0005"]
    sft = next(r for r in rep.rows if r.method == "sft/sft")
    hs = [rep.cell(sft, c).hs.mean for c in rep.columns]  # type: ignore[union-attr]
    assert hs == [25.0, 55.0, 85.0]
    booster = next(r for r in rep.rows if r.method == "booster/sft")
    vs = rep.cell(booster, "lr=0.0005").vs_baseline["hs"]  # type: ignore[union-attr]
    assert vs.mean == pytest.approx((5.0 * (4 - 18) + 5.0 * (4 - 16)) / 2)
    w = _by_method(rep)
    assert (w["sft/sft"].worst.label, w["sft/sft"].worst.hs) == ("lr=0.0005", 85.0)
    assert (w["sft/sft"].bounded.label, w["sft/sft"].bounded.hs) == ("lr=0.0001", 55.0)
    assert w["booster/sft"].vs_baseline["worst"].mean == pytest.approx(-65.0)
    md = report.to_markdown(rep)
    assert "| SFT | 25.0 ± 7.1 / 80.0 ± 0.0 |" in md.replace("  ", " ")
    assert "| SFT | p=0.2 | 3 |" in md  # the worst-case table keeps p as its column
    data = report.report_dict(rep)
    assert data["axis"] == "attack" and data["attack_worst_case"][0]["p"] == 0.2


def test_columns_attack_via_the_cli_with_plots(cli: Any, sweep: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    res = cli("report", str(sweep), "--out", "r", "--columns", "attack", "--fa-bound", "50")
    assert res.code == 0, res.err
    assert (tmp_path / "r" / "hs_fa_vs_attack.png").is_file()
    assert "Harmful Score / Finetune Accuracy by attack" in res.out


def test_fa_bound_without_attack_axes_warns(cli: Any, tmp_path: Path) -> None:
    from test_report import fake_grid

    g = fake_grid(tmp_path / "g", seeds=[1])
    res = cli("report", str(g), "--out", "r", "--no-plots", "--fa-bound", "50")
    assert res.code == 0, res.err
    assert "no attack axes" in res.err
    assert "([grid.attack])" in " ".join(res.err.split())  # not eaten as rich markup
    assert M_HARMFUL == 20 and M_TASK == 10  # the eval writer's prompt counts used above


ATTACK_GRID = """\
evaluate_base = false

[grid]
methods = ["sft/sft", "sft/sft+screen:refusal-keywords"]
harmful_ratio = [0.5]
labels = { "sft/sft" = "SFT", "sft/sft+screen:refusal-keywords" = "SFT + filter" }

[grid.attack]
lr = [1e-4, 1e-3]

[align]
model = "tiny-random"
samples = 8
retain = ""
[align.train]
max_steps = 1
batch_size = 4
max_length = 64
[align.lora]
r = 4
alpha = 8.0

[finetune]
samples = 8
[finetune.train]
max_steps = 1
batch_size = 4
max_length = 64
[finetune.lora]
r = 4
alpha = 8.0

[eval]
harmful_samples = 4
benign_samples = 2
task_samples = 4
max_new_tokens = 2
batch_size = 4
"""


def test_run_and_report_an_attack_sweep_with_screening(cli: Any, tmp_path: Path) -> None:
    """End to end on the tiny model: a grid with an attack axis and a screened defense runs,
    resumes with nothing to do, and reports the worst case and the leak-through."""
    (tmp_path / "grid.toml").write_text(ATTACK_GRID)
    res = cli("run", "grid.toml", "--out", "g", "--dry-run")
    assert res.code == 0, res.err
    assert "attack setting" in res.out and "lr=0.001" in res.out
    res = cli("run", "grid.toml", "--out", "g")
    assert res.code == 0, res.err
    summary = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["done"] * 4
    assert [p.name for p in (tmp_path / "g" / "aligned").iterdir()] == ["sft-s42"]
    screened = next(c for c in summary["cells"] if c.get("screen"))
    ft = json.loads((tmp_path / "g" / screened["attacked"] / "manifest.json").read_text())
    assert ft["config"]["screen"] == "refusal-keywords"
    assert ft["config"]["train"]["lr"] == screened["attack"]["lr"]
    record = ft["data"]["main"]["screening"]
    assert record["harmful"] == 4  # p = 0.5 of n = 8
    res = cli("run", "grid.toml", "--out", "g", "--dry-run")
    assert res.code == 0 and "4 cell(s), 4 done" in res.out

    res = cli("report", "g", "--out", "rep", "--bootstrap", "50", "--fa-bound", "0")
    assert res.code == 0, res.err
    assert "## Worst case over attack settings" in res.out
    assert "| SFT + filter (lr=0.0001) |" in res.out and "Leak-through" in res.out
    rj = json.loads((tmp_path / "rep" / "report.json").read_text())
    worst = {w["method"]: w for w in rj["attack_worst_case"]}
    assert set(worst) == {"sft/sft", "sft/sft+screen:refusal-keywords"}
    assert len(worst["sft/sft"]["settings"]) == 2
    leak = 100.0 * record["harmful_leaked"] / 4
    cell = next(
        c
        for c in rj["cells"]
        if c["method"] == "sft/sft+screen:refusal-keywords" and c["attack"] == screened["attack"]
    )
    assert cell["leak_through"]["mean"] == pytest.approx(leak)


# ------------------------------------------------------------------------------------------------
# Evaluations outside a grid: the attack setting from the attacked models' own manifests


def _single_attack(
    root: Path, method: str, lr: float, epochs: float, k_harm: int, k_task: int
) -> Path:
    """A single pipeline's attacked model (fine-tuned with ``lr``, 30 steps) and its eval dir."""
    align, finetune = method.split("/")
    aligned = root / f"aligned-{align}"
    if not aligned.exists():
        _aligned_dir(aligned, align, 1)
    attacked = root / f"{align}-{finetune}-lr{lr:g}-ep{epochs:g}"
    atomic_write_json(
        attacked / "manifest.json",
        {
            "stage": "finetune",
            "status": "completed",
            "aligned_run": str(aligned.resolve()),
            "config": {
                "model": str(aligned),
                "defense": finetune,
                "harmful": "harmful-compliance",
                "harmful_ratio": 0.2,
                "samples": 100,
                "task": "sentiment",
                "seed": 1,
                # epochs has no effect beside max_steps > 0: it must not become an axis
                "train": {"lr": lr, "epochs": epochs, "max_steps": 30, "batch_size": 8},
                "lora": {"r": 8, "alpha": 16.0},
            },
        },
    )
    _eval_dir(attacked.with_name(attacked.name + "-eval"), attacked, k_harm, k_task)
    return attacked.with_name(attacked.name + "-eval")


def test_eval_dirs_outside_a_grid_keep_their_attack_setting(tmp_path: Path) -> None:
    """The known limit of the first version (B6): eval directories given straight to the report
    lost their attack setting, so two learning rates of one method were averaged as if they were
    seeds of one cell (and refused as duplicate seeds)."""
    dirs = [
        _single_attack(tmp_path, "sft/sft", 1e-5, 1.0, 4, 8),  # HS 20, FA 80
        _single_attack(tmp_path, "sft/sft", 1e-4, 3.0, 12, 5),  # HS 60, FA 50
        _single_attack(tmp_path, "booster/sft", 1e-5, 1.0, 2, 9),  # HS 10, FA 90
        _single_attack(tmp_path, "booster/sft", 1e-4, 1.0, 6, 6),  # HS 30, FA 60
    ]
    coll = report.collect(dirs)
    assert sorted(r.attack_label for r in coll.runs if r.kind == "attacked") == [
        "lr=0.0001",
        "lr=0.0001",
        "lr=1e-05",
        "lr=1e-05",
    ]
    rep = report.build(coll, n_boot=0, fa_bound=55.0)
    w = _by_method(rep)
    assert (w["sft/sft"].worst.label, w["sft/sft"].worst.hs) == ("lr=0.0001", 60.0)
    assert (w["sft/sft"].bounded.label, w["sft/sft"].bounded.hs) == ("lr=1e-05", 20.0)
    assert (w["booster/sft"].worst.label, w["booster/sft"].worst.hs) == ("lr=0.0001", 30.0)
    hs = [c for c in rep.comparisons if c.kind == "vs_baseline" and c.metric == "hs"]
    assert sorted((c.run.attack_label, c.diff) for c in hs) == [
        ("lr=0.0001", 30.0 - 60.0),
        ("lr=1e-05", 10.0 - 20.0),
    ]


def test_eval_dirs_outside_a_grid_with_one_setting_have_none(tmp_path: Path) -> None:
    dirs = [
        _single_attack(tmp_path, "sft/sft", 1e-4, 1.0, 4, 8),
        _single_attack(tmp_path, "booster/sft", 1e-4, 2.0, 2, 9),
    ]
    rep = report.build(report.collect(dirs), n_boot=0)
    assert rep.worst == [] and all(not r.attack for r in rep.collection.runs)


def test_outside_runs_do_not_split_on_missing_or_irrelevant_settings(tmp_path: Path) -> None:
    """Review findings: a manifest without ``train`` (older or foreign) must not become a
    setting of ``None``s, and ``harmful`` changes nothing at p = 0."""
    dirs = [
        _single_attack(tmp_path, "sft/sft", 1e-4, 1.0, 12, 5),
        _single_attack(tmp_path, "booster/sft", 1e-4, 1.0, 6, 6),
    ]
    m = dirs[1].with_name(dirs[1].name[: -len("-eval")]) / "manifest.json"
    data = json.loads(m.read_text())
    del data["config"]["train"], data["config"]["lora"]
    atomic_write_json(m, data)
    rep = report.build(report.collect(dirs), n_boot=0)
    assert all(not r.attack for r in rep.collection.runs)
    assert [c.kind for c in rep.comparisons if c.metric == "hs"] == ["vs_baseline"]

    # p = 0 controls with another harmful dataset named in their config still pair
    root = tmp_path / "p0"
    p02 = _single_attack(root, "sft/sft", 1e-4, 1.0, 12, 5)
    p0 = _single_attack(root / "zero", "sft/sft", 1e-4, 1.0, 2, 9)
    m = p0.with_name(p0.name[: -len("-eval")]) / "manifest.json"
    data = json.loads(m.read_text())
    data["config"].update(harmful_ratio=0.0, harmful="other-harmful-set")
    atomic_write_json(m, data)
    rep = report.build(report.collect([p02, p0]), n_boot=0)
    assert all(not r.attack for r in rep.collection.runs)
    (effect,) = [c for c in rep.comparisons if c.kind == "attack_effect" and c.metric == "hs"]
    assert effect.diff == pytest.approx(5.0 * (12 - 2))


def test_outside_runs_line_up_with_a_grids_attack_axes(sweep: Path, tmp_path: Path) -> None:
    """An eval directory added to a grid's report gets the grid's attack keys, so it pairs with
    the grid's cells of its setting."""
    extra = _single_attack(tmp_path, "booster/sft", 5e-4, 1.0, 4, 8)
    m = extra.with_name(extra.name[: -len("-eval")]) / "manifest.json"
    data = json.loads(m.read_text())
    data["config"].update(samples=100, seed=3)
    atomic_write_json(m, data)
    coll = report.collect([sweep, extra])
    run = next(r for r in coll.runs if r.path == extra.resolve())
    assert run.attack == {"lr": 5e-4}
    rep = report.build(coll, n_boot=0)
    paired = [
        c
        for c in rep.comparisons
        if c.run.path == extra.resolve() and c.kind == "vs_baseline" and c.metric == "hs"
    ]
    assert paired == []  # no SFT cell at seed 3: nothing to pair with, but the row joins lr=5e-4
    row = next(
        r for r in rep.rows if r.method == "booster/sft" and r.extra["attack"] == "lr=0.0005"
    )
    cell = rep.cell(row, 0.2)
    assert cell is not None and sorted(cell.seeds) == [1, 2, 3]


def two_seed_grid(root: Path, labels: dict[str, str], k_harm: int = 10, k_task: int = 9) -> Path:
    """A finished grid of every method in ``labels`` at p = 0.2, n = 100, seeds 1 and 2."""
    cells = []
    for method in labels:
        a, f = method.split("/")
        for seed in (1, 2):
            cells.append((Cell(a, f, 0.2, 100, "sentiment", seed), k_harm, k_task, None))
    return write_grid(root, cells, list(labels), labels)
