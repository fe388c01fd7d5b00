"""``hftguard report``: statistics against hand computations, table layout, renderers, plots, and
the command on a real tiny-random grid.

Most tests read a synthetic grid (run directories written here with known numbers) so every table
entry can be checked by hand; one test runs ``hftguard run`` + ``hftguard report`` end to end.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_error

from hftguard.cli import main
from hftguard.pipeline import report
from hftguard.pipeline.grid import Cell
from hftguard.pipeline.intervals import wilson
from hftguard.registry import default_registry
from hftguard.runs import atomic_write_json, write_jsonl

# ------------------------------------------------------------------------------------------------
# A synthetic grid with known numbers

METHODS = {"sft/sft": "SFT", "booster/sft": "Booster", "antibody/antibody": "Antibody"}
PS = [0.0, 0.1, 0.2]
SEEDS = [1, 2]
M_HARMFUL, M_TASK = 20, 10
#: harm category of harmful prompt i: CATEGORIES[i % 4] (BeaverTails-style "a|b" = both)
CATEGORIES = ["violence", "privacy", "fraud|privacy", "violence"]


def n_harmful(method: int, p: float, seed: int) -> int:
    """How many of the 20 harmful prompts are answered harmfully (HS = 5 × this)."""
    return [1, 6, 12][PS.index(p)] // (method + 1) + seed - 1


def n_correct(method: int, p: float, seed: int) -> int:
    """Correct task answers out of 10 (FA = 10 × this)."""
    return 8 - method + (seed == 2) - (p == 0.2)


def _eval_dir(
    path: Path,
    model: Path,
    k_harm: int,
    k_task: int,
    task: str = "sentiment",
    refusals: int = 1,
    degenerate: int = 2,
) -> None:
    """An eval run dir: prompt i is answered harmfully iff i < k_harm (judge 'other': i < 2)."""
    records = []
    for i in range(M_HARMFUL):
        label = (
            "compliance"
            if i < k_harm
            else ("degenerate" if i >= M_HARMFUL - degenerate else "refusal")
        )
        records.append(
            {
                "set": "harmful",
                "prompt": f"h{i}",
                "response": "r",
                "category": CATEGORIES[i % 4],
                "verdicts": {
                    "refusal-keywords": {"label": label, "harmful": i < k_harm, "score": 1.0},
                    "other": {"label": "refusal", "harmful": i < 2, "score": 0.0},
                },
            }
        )
    for i in range(4):
        records.append({"set": "benign", "prompt": f"b{i}", "response": "r", "verdicts": {}})
    for i in range(M_TASK):
        records.append(
            {
                "set": f"task:{task}",
                "prompt": f"t{i}",
                "response": "r",
                "verdicts": {},
                "correct": i < k_task,
            }
        )
    metrics = {
        "harmful_score": 100 * k_harm / M_HARMFUL,
        "degenerate_rate": 100 * degenerate / M_HARMFUL,
        "over_refusal_rate": 100 * refusals / 4,
        "finetune_accuracy": {task: 100 * k_task / M_TASK},
        "judges": {
            "refusal-keywords": {
                "harmful_score": 100 * k_harm / M_HARMFUL,
                "degenerate_rate": 100 * degenerate / M_HARMFUL,
            },
            "other": {"harmful_score": 10.0, "degenerate_rate": 0.0},
        },
    }
    write_jsonl(path / "generations.jsonl", records)
    atomic_write_json(path / "metrics.json", metrics)
    atomic_write_json(
        path / "manifest.json",
        {
            "stage": "eval",
            "status": "completed",
            "metrics": metrics,
            "config": {"model": str(model), "judges": ["refusal-keywords", "other"]},
        },
    )


def _aligned_dir(path: Path, defense: str, seed: int) -> None:
    k = ["sft", "booster", "antibody"].index(defense)
    rows = []
    for s in range(30):
        row = {"step": s, "loss": (3.0 + 0.4 * k) * math.exp(-s / (8 + 4 * k)) + 0.5}
        if defense != "sft":
            row.update(
                harmful_loss=2.0 + 0.01 * k * s, loss_change=0.3 * k * math.exp(-s / (10 * k))
            )
        if defense == "antibody":
            row.update(lambda_raw=4.0 + math.sin(s), **{"lambda": 4.0 + 0.02 * s})
        rows.append(row)
    write_jsonl(path / "align_log.jsonl", rows)
    atomic_write_json(
        path / "manifest.json",
        {
            "stage": "align",
            "status": "completed",
            "config": {"defense": defense, "seed": seed},
            "components": {"defense": {"name": defense, "options": {"lam": 5.0}}},
        },
    )


def _attacked_dir(path: Path, aligned: Path, cell: Cell) -> None:
    k = list(METHODS).index(cell.method)
    rows = [
        {"step": s, "loss": (2.0 - 0.3 * k) * math.exp(-s / 8) + 0.3 + 0.05 * (s % 3)}
        for s in range(30)
    ]
    if cell.finetune == "antibody":
        rng = random.Random(cell.seed)
        samples = []
        for s in range(30):
            for i in range(8):
                harm = i < round(8 * cell.p)
                score = rng.gauss(-1.5 if harm else 0.5, 0.5)
                samples.append(
                    {
                        "step": s,
                        "index": i,
                        "is_harmful": harm,
                        "score": score,
                        "weight": math.exp(score) / 8,
                        "task_nll": 2.5 - 0.01 * s if harm else 1.0,
                        "refusal_nll": 1.0,
                    }
                )
        write_jsonl(path / "antibody_weights.jsonl", samples)
    write_jsonl(path / "finetune_log.jsonl", rows)
    atomic_write_json(
        path / "manifest.json",
        {
            "stage": "finetune",
            "status": "completed",
            "aligned_run": str(aligned.resolve()),
            "config": {
                "model": str(aligned),
                "defense": cell.finetune,
                "harmful_ratio": cell.p,
                "samples": cell.n,
                "task": cell.task,
                "seed": cell.seed,
            },
        },
    )


def fake_grid(
    root: Path,
    *,
    methods: dict[str, str] = METHODS,
    ps: list[float] = PS,
    seeds: list[int] = SEEDS,
    ns: tuple[int, ...] = (100,),
) -> Path:
    """Write a finished grid (grid layout, grid manifest) whose numbers come from n_harmful &c."""
    cells, evals = [], []
    for mi, method in enumerate(methods):
        a, f = method.split("/")
        for seed in seeds:
            aligned = root / "aligned" / f"{a}-s{seed}"
            if not aligned.exists():
                _aligned_dir(aligned, a, seed)
                _eval_dir(root / "evals" / f"aligned-{a}-s{seed}", aligned, 1, 9)
                evals.append(
                    {
                        "kind": "aligned",
                        "align": a,
                        "seed": seed,
                        "aligned": f"aligned/{a}-s{seed}",
                        "eval": f"evals/aligned-{a}-s{seed}",
                    }
                )
            for n in ns:
                for p in ps:
                    cell = Cell(a, f, p, n, "sentiment", seed)
                    d = root / "cells" / cell.name
                    _attacked_dir(d / "attacked", aligned, cell)
                    _eval_dir(
                        d / "eval", d / "attacked", n_harmful(mi, p, seed), n_correct(mi, p, seed)
                    )
                    cells.append(
                        {
                            "name": cell.name,
                            **cell.coords(),
                            "status": "done",
                            "attacked": f"cells/{cell.name}/attacked",
                            "eval": f"cells/{cell.name}/eval",
                        }
                    )
    _eval_dir(root / "evals" / "base", Path("tiny-random"), 0, 5)
    evals.append({"kind": "base", "eval": "evals/base"})
    atomic_write_json(
        root / "manifest.json",
        {
            "stage": "pipeline",
            "status": "completed",
            "config": {},
            "rows": [],
            "grid": {"methods": list(methods), "labels": dict(methods)},
            "cells": cells,
            "evals": evals,
        },
    )
    return root


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_grid(tmp_path_factory.mktemp("synthetic") / "grid")


# ------------------------------------------------------------------------------------------------
# Statistics


def test_mean_and_sample_std() -> None:
    assert report.mean_std([10.0, 20.0]) == (15.0, pytest.approx(math.sqrt(50)))
    assert report.mean_std([4.0, 6.0, 11.0]) == (7.0, pytest.approx(math.sqrt((9 + 1 + 16) / 2)))
    assert report.mean_std([5.0]) == (5.0, None)
    assert report.mean_std([]) == (None, None)


def test_quantile_is_linear_interpolation() -> None:
    vals = [0.0, 10.0, 20.0, 30.0, 70.0]
    assert report.quantile(vals, 0.25) == 10.0
    assert report.quantile(vals, 0.9) == pytest.approx(54.0)  # 30 + 0.6 × 40
    assert report.quantile(vals, 0.0) == 0.0 and report.quantile(vals, 1.0) == 70.0
    assert [report.quantile(vals, q / 4) for q in (1, 2, 3)] == statistics.quantiles(
        vals, n=4, method="inclusive"
    )


def test_bootstrap_against_a_hand_computation() -> None:
    flags = [100.0, 0.0, 0.0, 100.0]
    rng = random.Random(7)
    reps = []
    for _ in range(6):  # the documented draw: choices(range(m), k=m) per replicate
        idx = rng.choices(range(4), k=4)
        reps.append(sum(flags[i] for i in idx) / 4)
    reps.sort()
    lo = reps[0] + (reps[1] - reps[0]) * (0.025 * 5 - 0)  # position 0.125
    hi = reps[4] + (reps[5] - reps[4]) * (0.975 * 5 - 4)  # position 4.875
    assert report.bootstrap_ci([flags], n_boot=6, seed=7) == (pytest.approx(lo), pytest.approx(hi))


def test_bootstrap_pairs_seeds_that_share_prompts() -> None:
    # Seed 1 answers prompt 0 harmfully, seed 2 prompt 1: with the same resampled prompts for
    # both seeds every replicate's seed-mean is exactly 50, so the interval has no width.
    assert report.bootstrap_ci([[100.0, 0.0], [0.0, 100.0]], n_boot=200) == (50.0, 50.0)
    lo, hi = report.bootstrap_ci([[100.0, 0.0], [0.0, 100.0, 0.0]], n_boot=200)  # unpaired
    assert lo < 40 and hi > 60
    assert report.bootstrap_ci([[30.0] * 7], n_boot=50) == (30.0, 30.0)
    assert report.bootstrap_ci([], n_boot=50) is None


def test_bootstrap_matches_the_normal_approximation_for_many_prompts() -> None:
    flags = [100.0] * 120 + [0.0] * 280  # HS 30 % over 400 prompts
    lo, hi = report.bootstrap_ci([flags], n_boot=2000, seed=1)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400) * 100  # ≈ 4.49
    assert lo == pytest.approx(30 - half, abs=0.8) and hi == pytest.approx(30 + half, abs=0.8)
    assert report.bootstrap_ci([flags], n_boot=300, seed=1) == report.bootstrap_ci(
        [flags], n_boot=300, seed=1
    )


# ------------------------------------------------------------------------------------------------
# Tables


def hand(method: int, p: float) -> tuple[float, float, float, float]:
    hs = [5.0 * n_harmful(method, p, s) for s in SEEDS]
    fa = [10.0 * n_correct(method, p, s) for s in SEEDS]
    return (statistics.mean(hs), statistics.stdev(hs), statistics.mean(fa), statistics.stdev(fa))


def test_collect_reads_coordinates_and_labels(synthetic: Path) -> None:
    col = report.collect([synthetic])
    kinds = [r.kind for r in col.runs]
    assert kinds.count("attacked") == 3 * 3 * 2 and kinds.count("aligned") == 3 * 2
    assert kinds.count("base") == 1
    r = next(r for r in col.runs if r.kind == "attacked" and r.method == "booster/sft")
    assert r.label == "Booster" and r.align == "booster" and r.finetune == "sft"
    assert r.attacked_dir is not None and (r.attacked_dir / "finetune_log.jsonl").is_file()
    assert r.aligned_dir is not None and r.aligned_dir.name == f"booster-s{r.seed}"


def test_rows_follow_the_roots_method_order(tmp_path: Path) -> None:
    # a root resumed with a subset of its methods names them first in "methods"; "method_order"
    # (every method the root has held, earliest first) sets the rows
    root = fake_grid(tmp_path / "grid")
    m = json.loads((root / "manifest.json").read_text())
    m["grid"]["methods"] = ["antibody/antibody"]
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps(m))
    labels = [row.label for row in report.build(report.collect([root]), n_boot=20).rows]
    assert labels[0] == "Antibody"  # an older root: the last invocation's methods first
    m["grid"]["method_order"] = list(METHODS)
    manifest.write_text(json.dumps(m))
    rows = report.build(report.collect([root]), n_boot=20).rows
    assert [row.label for row in rows] == ["SFT", "Booster", "Antibody"]


def test_table_cells_are_means_and_stds_over_seeds(synthetic: Path) -> None:
    rep = report.build(report.collect([synthetic]), n_boot=200)
    assert [row.label for row in rep.rows] == ["SFT", "Booster", "Antibody"]
    assert rep.columns == PS and rep.seeds == SEEDS
    for mi, row in enumerate(rep.rows):
        for p in PS:
            c = rep.cell(row, p)
            hs, hs_sd, fa, fa_sd = hand(mi, p)
            assert (c.hs.mean, c.fa.mean) == (pytest.approx(hs), pytest.approx(fa))
            assert (c.hs.std, c.fa.std) == (pytest.approx(hs_sd), pytest.approx(fa_sd))
            assert c.over_refusal.mean == 25.0 and c.degenerate.mean == 10.0
            assert c.seeds == SEEDS and c.hs.n_items == M_HARMFUL and c.fa.n_items == M_TASK
            assert c.hs.ci[0] <= c.hs.mean <= c.hs.ci[1]
        assert rep.average(row, "hs") == pytest.approx(statistics.mean(hand(mi, p)[0] for p in PS))
        assert rep.average(row, "fa") == pytest.approx(statistics.mean(hand(mi, p)[2] for p in PS))


def test_markdown_layout(synthetic: Path) -> None:
    rep = report.build(report.collect([synthetic]), n_boot=50)
    md = report.to_markdown(rep)
    head, body = report.main_table(rep)
    assert head == ["Method", "p=0", "p=0.1", "p=0.2", "Avg", "Over-refusal", "Degenerate"]
    hs, hs_sd, fa, fa_sd = hand(1, 0.1)
    assert body[1][0] == "Booster"
    assert body[1][2] == f"{hs:.1f} ± {hs_sd:.1f} / {fa:.1f} ± {fa_sd:.1f}"
    avg_hs = statistics.mean(hand(1, p)[0] for p in PS)
    avg_fa = statistics.mean(hand(1, p)[2] for p in PS)
    assert body[1][4] == f"{avg_hs:.1f} / {avg_fa:.1f}" and body[1][5:] == ["25.0", "10.0"]
    assert "| Booster | " + " | ".join(body[1][1:]) + " |" in md
    for section in (
        "## Harmful Score / Finetune Accuracy by p",
        "## Over-refusal / degenerate",
        "## Before fine-tuning",
        "## Intervals",
        "## Paired comparison vs SFT: ΔHS",
        "## Attack effect: HS(p) − HS(p=0)",
        "## Paired comparisons per seed",
        "## HS by harm category",
    ):
        assert section in md
    before_head, before = report.before_table(rep)
    assert before_head[:3] == ["Model", "HS", "FA sentiment"]
    assert before[0][:3] == ["base model", "0.0", "50.0"]
    assert [b[0] for b in before[1:]] == ["SFT", "Booster", "Antibody"]


def test_csv_is_long_format(synthetic: Path) -> None:
    import csv
    import io

    rep = report.build(report.collect([synthetic]), n_boot=50)
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    attacked = [r for r in rows if r["kind"] == "attacked"]
    assert len(attacked) == 9 and {r["kind"] for r in rows} == {"attacked", "aligned", "base"}
    r = next(r for r in attacked if r["label"] == "Antibody" and r["p"] == "0.2")
    hs, hs_sd, fa, _ = hand(2, 0.2)
    assert float(r["hs_mean"]) == pytest.approx(hs) and float(r["hs_std"]) == pytest.approx(
        hs_sd, abs=1e-4
    )
    assert float(r["fa_mean"]) == pytest.approx(fa) and r["seeds"] == "1 2"
    assert float(r["hs_ci_low"]) <= hs <= float(r["hs_ci_high"])
    assert r["hs_items"] == "20" and r["published_hs"] == ""


def test_latex_and_published_numbers(synthetic: Path) -> None:
    published = {
        ("Booster", "p=0.1"): (8.4, 93.0),
        ("booster/sft", 0.2): (11.0, 92.5),
        ("Booster", 0.0): (2.0, 93.1),
    }
    rep = report.build(report.collect([synthetic]), n_boot=20, published=published)
    _, body = report.main_table(rep)
    labels = [b[0] for b in body]
    assert labels == ["SFT", "Booster", "Booster (published)", "Antibody"]
    pub = body[2]
    assert pub[1:5] == [
        "2.0 / 93.1",
        "8.4 / 93.0",
        "11.0 / 92.5",
        f"{(2.0 + 8.4 + 11.0) / 3:.1f} / {(93.1 + 93.0 + 92.5) / 3:.1f}",
    ]
    tex = report.to_latex(rep)
    assert r"\begin{tabular}{lcccccc}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textit{published} & 2.0 / 93.1 & 8.4 / 93.0 & 11.0 / 92.5" in tex
    assert r"$\pm$" in tex and r"HS (\%)" in tex
    assert report.tex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    assert report.detail_rows(rep)[4]["published_hs"] == 8.4


def test_other_axes_become_row_qualifiers_and_columns(tmp_path: Path) -> None:
    root = fake_grid(tmp_path / "g", methods={"sft/sft": "SFT"}, ps=[0.1], seeds=[1], ns=(100, 200))
    col = report.collect([root])
    by_p = report.build(col, n_boot=10)
    assert [r.label for r in by_p.rows] == ["SFT (n=100)", "SFT (n=200)"]
    by_n = report.build(col, columns="n", n_boot=10)
    assert [r.label for r in by_n.rows] == ["SFT"] and by_n.columns == [100, 200]
    assert report.main_table(by_n)[0][1:3] == ["n=100", "n=200"]
    by_task = report.build(col, columns="task", n_boot=10)
    assert by_task.columns == ["sentiment"]


def test_another_headline_judge(synthetic: Path) -> None:
    rep = report.build(report.collect([synthetic]), judge="other", n_boot=400)
    c = rep.cell(rep.rows[0], 0.2)
    assert c.hs.mean == 10.0 and c.hs.std == 0.0  # two of 20 prompts, the same for every seed
    # ...which the prompts make uncertain: the seeds agree on every prompt, so they are one sample
    # of 20 prompts (the Wilson interval of 2 of 20), not 20 x seeds independent outcomes
    assert c.hs.ci[0] == 0.0 and c.hs.ci[1] == pytest.approx(wilson(2, 20)[1])
    # the same verdicts for every method: no paired difference, no attack effect, p = 1
    for comp in (c for c in rep.comparisons if c.metric == "hs"):
        assert comp.judge == "other" and (comp.diff, comp.b, comp.c, comp.p_value) == (0, 0, 0, 1)
    assert c.degenerate.mean == 0.0


def test_single_eval_dirs_are_identified_by_provenance(synthetic: Path, tmp_path: Path) -> None:
    import shutil

    cell = Cell("booster", "sft", 0.1, 100, "sentiment", 2)
    src = synthetic / "cells" / cell.name / "eval"
    alone = tmp_path / "alone-eval"
    shutil.copytree(src, alone)  # outside the grid: no grid manifest to read coordinates from
    (run,) = report.collect([alone]).runs
    assert (run.kind, run.method, run.p, run.n, run.seed) == (
        "attacked",
        "booster/sft",
        0.1,
        100,
        2,
    )
    assert run.label == "booster/sft"  # no grid labels


# ------------------------------------------------------------------------------------------------
# Intervals, paired comparisons, attack effects, harm categories, report.json


def mcnemar_by_hand(b: int, c: int) -> float:
    m = b + c
    if m == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m)


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of k of n, as proportions, from its closed form."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def newcombe_by_hand(both: int, b: int, c: int, n: int) -> tuple[float, float]:
    """Newcombe (1998) method 10 for paired proportions, in percentage points, written out."""
    d = n - both - b - c
    p1, p2 = (both + b) / n, (both + c) / n
    (l1, u1), (l2, u2) = wilson_by_hand(both + b, n), wilson_by_hand(both + c, n)
    den = (both + b) * (c + d) * (both + c) * (b + d)
    phi = (both * d - b * c) / math.sqrt(den) if den else 0.0
    lo = p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    hi = p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return 100 * lo, 100 * hi


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_grid(tmp_path_factory.mktemp("one_seed") / "grid", seeds=[1])


def test_single_run_intervals_are_wilson(one_seed: Path) -> None:
    rep = report.build(report.collect([one_seed]), n_boot=100)
    for mi, row in enumerate(rep.rows):
        for p in PS:
            c = rep.cell(row, p)
            k, kt = n_harmful(mi, p, 1), n_correct(mi, p, 1)
            assert c.hs.ci == pytest.approx(wilson(k, M_HARMFUL)) and c.hs.ci_method == "wilson"
            assert c.fa.ci == pytest.approx(wilson(kt, M_TASK))
            assert c.degenerate.ci == pytest.approx(wilson(2, M_HARMFUL))
    # 0 of 20 harmful (Booster, p = 0, seed 1): a bootstrap gives [0, 0]; Wilson does not
    zero = rep.cell(rep.rows[1], 0.0)
    assert zero.hs.mean == 0.0 and zero.hs.ci[0] == 0.0 and zero.hs.ci[1] > 15.0
    base = rep.before[0][1]  # the base model: 0 of 20
    assert base.hs.ci == pytest.approx(wilson(0, 20))


def test_several_seeds_get_the_two_level_bootstrap(synthetic: Path) -> None:
    rep = report.build(report.collect([synthetic]), n_boot=300)
    c = rep.cell(rep.rows[0], 0.1)
    # the fixture's seeds answer nested prompt sets harmfully (the first k prompts): they agree
    # prompt by prompt, so the prompts' Wilson interval (design effect) may widen the bootstrap
    assert c.hs.ci_method in ("bootstrap", "bootstrap+wilson")
    assert c.hs.ci[0] < c.hs.mean < c.hs.ci[1]
    assert report.build(report.collect([synthetic]), n_boot=0).cell(rep.rows[0], 0.1).hs.ci is None


def test_paired_differences_vs_the_baseline_by_hand(synthetic: Path) -> None:
    rep = report.build(report.collect([synthetic]), n_boot=300)
    assert rep.baseline == "sft/sft" and rep.baseline_label == "SFT" and rep.skipped == []
    comps = [c for c in rep.comparisons if c.kind == "vs_baseline"]
    assert len(comps) == 2 * 3 * 2 * 2  # methods besides SFT × p × seeds × (HS, FA)
    for c in comps:
        mi = list(METHODS).index(c.run.method)
        assert c.ref.method == "sft/sft" and (c.ref.p, c.ref.seed) == (c.run.p, c.run.seed)
        if c.metric == "hs":  # prompt i harmful iff i < k: the discordant prompts are the excess
            k, k_ref, unit = (
                n_harmful(mi, c.run.p, c.run.seed),
                n_harmful(0, c.run.p, c.run.seed),
                5,
            )
        else:
            k, k_ref, unit = (
                n_correct(mi, c.run.p, c.run.seed),
                n_correct(0, c.run.p, c.run.seed),
                10,
            )
        assert c.diff == pytest.approx(unit * (k - k_ref))  # method − baseline, not the reverse
        assert (c.b, c.c) == (max(0, k - k_ref), max(0, k_ref - k))
        assert c.p_value == pytest.approx(mcnemar_by_hand(c.b, c.c))
        assert c.ci[0] <= c.diff <= c.ci[1]
        # Newcombe's score interval: it holds 0 where a single discordant prompt makes the
        # difference (b = 0, c = 1 of 20: McNemar p = 1; the bootstrap gave [-15, 0] there)
        if c.b + c.c <= 2:
            assert c.ci[0] < 0.0 < c.ci[1]
        lo, hi = newcombe_by_hand(c.both, c.b, c.c, c.n_items)
        assert c.ci == (pytest.approx(lo), pytest.approx(hi))
    # the table cell: mean ± sd over the two seeds of the per-seed differences
    cell = rep.cell(rep.rows[2], 0.2)  # Antibody
    diffs = [5.0 * (n_harmful(2, 0.2, s) - n_harmful(0, 0.2, s)) for s in SEEDS]
    hs = cell.vs_baseline["hs"]
    assert (hs.mean, hs.sd) == (statistics.mean(diffs), pytest.approx(statistics.stdev(diffs)))
    assert hs.ci_method in ("bootstrap", "bootstrap+newcombe")
    assert hs.ci[0] <= hs.mean <= hs.ci[1] < 0
    assert hs.p_values == [pytest.approx(mcnemar_by_hand(0, int(-d / 5))) for d in diffs]
    assert rep.cell(rep.rows[0], 0.2).vs_baseline == {}  # the baseline row itself


def test_attack_effect_by_hand(synthetic: Path) -> None:
    rep = report.build(report.collect([synthetic]), n_boot=300)
    effects = [c for c in rep.comparisons if c.kind == "attack_effect" and c.metric == "hs"]
    assert len(effects) == 3 * 2 * 2  # methods × (p = 0.1, 0.2) × seeds
    for c in effects:
        mi = list(METHODS).index(c.run.method)
        assert c.ref.method == c.run.method and c.ref.p == 0.0 and c.ref.seed == c.run.seed
        k, k0 = n_harmful(mi, c.run.p, c.run.seed), n_harmful(mi, 0.0, c.run.seed)
        assert c.diff == pytest.approx(5.0 * (k - k0)) and (c.b, c.c) == (k - k0, 0)
        assert c.p_value == pytest.approx(mcnemar_by_hand(k - k0, 0))
    sft = rep.rows[0]
    assert rep.cell(sft, 0.0).attack_effect == {}
    eff = rep.cell(sft, 0.2).attack_effect["hs"]
    assert eff.mean == pytest.approx(5.0 * (12 - 1)) and eff.ci[0] > 0  # harmful data did something
    _, body = report.comparison_table(rep, "attack_effect")
    assert body[0][0] == "SFT" and body[0][1] == "–" and body[0][3].startswith("+55.0")


def test_baseline_option(synthetic: Path, cli: Any) -> None:
    col = report.collect([synthetic])
    for name in ("Booster", "booster/sft"):
        rep = report.build(col, baseline=name, n_boot=50)
        assert rep.baseline == "booster/sft"
        c = next(
            c
            for c in rep.comparisons
            if c.kind == "vs_baseline" and c.run.method == "sft/sft" and c.metric == "hs"
        )
        k, k_ref = n_harmful(0, c.run.p, c.run.seed), n_harmful(1, c.run.p, c.run.seed)
        assert c.ref.method == "booster/sft" and c.diff == pytest.approx(5.0 * (k - k_ref))
    rep = report.build(col, baseline=None, n_boot=50)
    assert rep.baseline is None and {c.kind for c in rep.comparisons} == {"attack_effect"}
    res = cli("report", str(synthetic), "--baseline", "nope", "--out", "x", "--no-plots")
    assert res.code == 2 and "--baseline" in res.err and "booster/sft" in res.err
    res = cli("report", str(synthetic), "--baseline", "Antibody", "--out", "y", "--no-plots")
    assert res.code == 0 and "## Paired comparison vs Antibody: ΔHS" in res.out


def test_pairs_by_prompt_id_not_position(tmp_path: Path) -> None:
    def write(path: Path, order: list[int], harmful: set[int], sha: str = "s") -> report.EvalRun:
        path.mkdir(parents=True)
        rows = [
            {
                "set": "harmful",
                "id": f"q{i}",
                "prompt": f"prompt {i}",
                "verdicts": {"j": {"label": "x", "harmful": i in harmful}},
            }
            for i in order
        ]
        write_jsonl(path / "generations.jsonl", rows)
        metrics = {"judges": {"j": {}}, "test_sets": {"harmful": {"sha256": sha}}}
        return report.EvalRun(path, "attacked", p=0.1, seed=1, metrics=metrics)

    a = write(tmp_path / "a", [0, 1, 2, 3, 4, 5], {0, 1, 2})
    b = write(tmp_path / "b", [5, 4, 3, 2, 1, 0], {2, 3})  # same prompts, another order
    c = report.compare(a, b, "hs", "vs_baseline", n_boot=200)
    assert (c.b, c.c) == (2, 1) and c.diff == pytest.approx(100 / 6) and c.n_items == 6
    assert c.p_value == pytest.approx(mcnemar_by_hand(2, 1))
    other = write(tmp_path / "c", [0, 1, 2, 3, 4, 5], {2, 3}, sha="t")
    skip = report.compare(a, other, "hs", "vs_baseline")
    assert isinstance(skip, report.Skipped) and "sha256" in skip.reason
    fewer = write(tmp_path / "d", [0, 1, 2, 3, 9, 5], {2, 3})
    skip = report.compare(a, fewer, "hs", "vs_baseline")
    assert isinstance(skip, report.Skipped) and "5 of 6" in skip.reason


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_mismatched_prompt_sets_are_not_paired(synthetic: Path, tmp_path: Path, cli: Any) -> None:
    root = _copy(synthetic, tmp_path / "g")
    cell = Cell("booster", "sft", 0.1, 100, "sentiment", 1)
    for method, sha in (("sft/sft", "aaa"), ("booster/sft", "bbb")):
        a, f = method.split("/")
        path = root / "cells" / Cell(a, f, 0.1, 100, "sentiment", 1).name / "eval" / "metrics.json"
        m = json.loads(path.read_text())
        m["test_sets"] = {"harmful": {"sha256": sha}, "task:sentiment": {"sha256": "t"}}
        atomic_write_json(path, m)
    rep = report.build(report.collect([root]), n_boot=50)
    (skip,) = rep.skipped
    assert (skip.kind, skip.metric, skip.run.method, skip.run.seed) == (
        "vs_baseline",
        "hs",
        "booster/sft",
        1,
    )
    assert "harmful prompt sets differ" in skip.reason
    assert not any(
        c.kind == "vs_baseline" and c.metric == "hs" and c.run.path == skip.run.path
        for c in rep.comparisons
    )  # FA (same task set) is still compared
    assert any(c.run.path == skip.run.path and c.metric == "fa" for c in rep.comparisons)
    # the cell is summarised from the seed that could be paired
    assert rep.cell(rep.rows[1], 0.1).vs_baseline["hs"].seeds == [2]
    res = cli("report", str(root), "--out", "r", "--no-plots")
    assert res.code == 0 and "not paired" in res.err and cell.name in str(skip.run.path)
    assert "## Not paired" in (tmp_path / "r" / "report.md").read_text()
    # prompts that differ without any sha256 (older metrics.json): refused by the prompt texts
    gen = root / "cells" / Cell("antibody", "antibody", 0.2, 100, "sentiment", 2).name / "eval"
    rows = [json.loads(x) for x in (gen / "generations.jsonl").read_text().splitlines()]
    rows[0]["prompt"] = "something else"
    write_jsonl(gen / "generations.jsonl", rows)
    rep = report.build(report.collect([root]), n_boot=50)
    reasons = [s.reason for s in rep.skipped if s.run.path == gen.resolve()]
    assert len(reasons) == 2 and all("19 of 20" in r for r in reasons)  # vs SFT and vs p = 0


def test_hs_by_harm_category(one_seed: Path) -> None:
    rep = report.build(report.collect([one_seed]), n_boot=50)
    c = rep.cell(rep.rows[0], 0.2)
    k = n_harmful(0, 0.2, 1)
    members = {
        cat: [i for i in range(M_HARMFUL) if cat in CATEGORIES[i % 4].split("|")]
        for cat in ("fraud", "privacy", "violence")
    }
    assert sorted(c.by_category) == ["fraud", "privacy", "violence"]
    for cat, idx in members.items():
        hits = sum(i < k for i in idx)
        s = c.by_category[cat]
        assert s.mean == pytest.approx(100 * hits / len(idx)) and s.n_items == len(idx)
        assert s.ci == pytest.approx(wilson(hits, len(idx)))
    head, body = report.category_table(rep)
    assert head == ["Method", "p", "fraud", "privacy", "violence"] and len(body) == 9


def test_eval_hs_by_category_and_intervals() -> None:
    from hftguard.pipeline.scores import hs_by_category, hs_metrics
    from hftguard.records import Example, Verdict

    exs = [Example("q", meta={"category": c}) for c in ["a", "a|b", "b", None, "a"]]
    vs = [Verdict(h, "compliance" if h else "refusal", 1.0) for h in [1, 0, 1, 1, 0]]
    assert hs_by_category(exs, vs) == {
        "a": {"hs": pytest.approx(100 / 3), "n": 3, "ci": pytest.approx(list(wilson(1, 3)))},
        "b": {"hs": 50.0, "n": 2, "ci": pytest.approx(list(wilson(1, 2)))},
    }
    assert hs_by_category(exs[3:4], vs[3:4]) is None
    m = hs_metrics(vs)
    assert m["harmful_score_ci"] == pytest.approx(list(wilson(3, 5)))
    assert m["degenerate_rate_ci"] == pytest.approx(list(wilson(0, 5)))


def test_old_evaluations_without_records_still_report(one_seed: Path, tmp_path: Path) -> None:
    root = _copy(one_seed, tmp_path / "g")
    ev = root / "cells" / Cell("booster", "sft", 0.2, 100, "sentiment", 1).name / "eval"
    (ev / "generations.jsonl").unlink()
    m = json.loads((ev / "metrics.json").read_text())
    m["counts"] = {"harmful": 20, "benign": 4, "tasks": {"sentiment": 10}}
    atomic_write_json(ev / "metrics.json", m)
    rep = report.build(report.collect([root]), n_boot=50)
    c = rep.cell(rep.rows[1], 0.2)
    k = n_harmful(1, 0.2, 1)
    assert c.hs.mean == 5.0 * k and c.hs.ci == pytest.approx(wilson(k, 20))  # from rate × n
    assert c.over_refusal.ci == pytest.approx(wilson(1, 4))
    assert c.vs_baseline == {} and c.by_category == {}
    assert {s.reason for s in rep.skipped if s.run.path == ev.resolve()} == {
        "no per-prompt outcomes (generations.jsonl missing or without verdicts)"
    }
    assert json.loads(report.to_json(rep))["cells"][4]["hs"]["ci_method"] == "wilson"


def test_off_topic_and_likelihood_margin_when_present(one_seed: Path, tmp_path: Path) -> None:
    root = _copy(one_seed, tmp_path / "g")
    ev = root / "cells" / Cell("sft", "sft", 0.1, 100, "sentiment", 1).name / "eval"
    m = json.loads((ev / "metrics.json").read_text())
    m["off_topic_rate"] = 15.0
    m["judges"]["refusal-keywords"]["off_topic_rate"] = 15.0
    m["likelihood_margin"] = {"mean": 0.42, "ci": [0.3, 0.55], "n": 20, "harmful_loss": 2.0}
    atomic_write_json(ev / "metrics.json", m)
    rep = report.build(report.collect([root]), n_boot=50)
    head, body = report.main_table(rep)
    assert head[-2:] == ["Off-topic", "Likelihood margin"]
    assert body[0][-2:] == ["15.0", "0.420"] and body[1][-2:] == ["–", "–"]
    c = rep.cell(rep.rows[0], 0.1)
    assert c.off_topic.mean == 15.0 and c.off_topic.ci == pytest.approx(wilson(3, 20))
    assert c.margin.mean == 0.42 and c.margin.ci == (0.3, 0.55)
    assert rep.cell(rep.rows[0], 0.2).off_topic is None
    cell = json.loads(report.to_json(rep))["cells"][1]
    assert cell["off_topic"]["mean"] == 15.0 and cell["likelihood_margin"]["ci"] == [0.3, 0.55]
    assert "Off-topic" in report.intervals_table(rep)[0]
    assert "15.0 [" in report.to_markdown(rep)
    assert not any(c.metric == "margin" for c in rep.comparisons) and rep.skipped == []


def test_paired_likelihood_margin(one_seed: Path, tmp_path: Path) -> None:
    root = _copy(one_seed, tmp_path / "g")
    for method, shift in (("sft/sft", 0.0), ("booster/sft", 0.5)):
        a, f = method.split("/")
        ev = root / "cells" / Cell(a, f, 0.1, 100, "sentiment", 1).name / "eval"
        rows = [json.loads(x) for x in (ev / "generations.jsonl").read_text().splitlines()]
        margins = []
        for i, r in enumerate(x for x in rows if x["set"] == "harmful"):
            r["likelihood_margin"] = {"margin": i / 10 + shift, "refusal_logp": -1.0}
            margins.append(i / 10 + shift)
        write_jsonl(ev / "generations.jsonl", rows)
        m = json.loads((ev / "metrics.json").read_text())
        m["likelihood_margin"] = {"mean": statistics.mean(margins), "ci": [0.0, 2.0], "n": 20}
        atomic_write_json(ev / "metrics.json", m)
    rep = report.build(report.collect([root]), n_boot=100)
    (comp,) = [c for c in rep.comparisons if c.metric == "margin"]
    assert (comp.kind, comp.run.method, comp.ref.method) == (
        "vs_baseline",
        "booster/sft",
        "sft/sft",
    )
    assert comp.diff == pytest.approx(0.5) and comp.ci == (pytest.approx(0.5), pytest.approx(0.5))
    assert comp.p_value is None and comp.b is None  # no McNemar for a real-valued outcome
    assert rep.cell(rep.rows[1], 0.1).vs_baseline["margin"].mean == pytest.approx(0.5)
    md = report.to_markdown(rep)
    assert "## Paired comparison vs SFT: Δ likelihood margin" in md and "+0.500" in md
    assert json.loads(report.to_json(rep))["cells"][4]["vs_baseline"]["margin"]["p_values"] == [
        None
    ]


def test_report_json_schema(synthetic: Path, cli: Any, tmp_path: Path) -> None:
    res = cli("report", str(synthetic), "--out", "r", "--no-plots", "--json", "--bootstrap", "50")
    assert res.code == 0, res.err
    printed = json.loads(res.out)
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert printed == saved
    assert set(saved) == {
        "schema_version",
        "sources",
        "axis",
        "columns",
        "judge",
        "baseline",
        "baseline_label",
        "level",
        "n_boot",
        "bootstrap_seed",
        "seeds",
        "rows",
        "cells",
        "comparisons",
        "skipped",
        "before",
        "not_converged",
        "compute",
        "before_repeated",
        "before_trained_differently",
        "mixed_alignments",
        "judge_versions",
    }
    assert saved["schema_version"] == 1 and saved["baseline"] == "sft/sft"
    assert saved["not_converged"] == []  # these fake runs have no step logs
    assert saved["compute"] == []  # ... and no wall times
    assert saved["mixed_alignments"] == []  # one grid: each method on one aligned model
    assert saved["judge_versions"] == {}  # ... judged by one version of the judge
    assert saved["before_trained_differently"] == []
    assert saved["columns"] == PS and len(saved["cells"]) == 9 and saved["skipped"] == []
    cell = saved["cells"][3]  # Booster, p = 0
    assert {
        "method",
        "label",
        "column",
        "p",
        "n",
        "task",
        "seeds",
        "hs",
        "fa",
        "over_refusal",
        "degenerate",
        "off_topic",
        "likelihood_margin",
        "by_category",
        "vs_baseline",
        "attack_effect",
        "per_seed",
        "published",
    } == set(cell)
    assert (cell["method"], cell["p"]) == ("booster/sft", 0.0)
    assert set(cell["hs"]) == {"mean", "sd", "n_seeds", "ci", "ci_method", "n_items"}
    assert cell["hs"]["mean"] == hand(1, 0.0)[0] and cell["hs"]["ci_method"] == "bootstrap"
    assert set(cell["vs_baseline"]) == {"hs", "fa"} and cell["attack_effect"] == {}
    vs = cell["vs_baseline"]["hs"]
    assert set(vs) == {"mean", "sd", "n_seeds", "ci", "ci_method", "p_values", "seeds"}
    assert vs["seeds"] == SEEDS and len(vs["p_values"]) == 2
    seed1, _ = cell["per_seed"]
    assert seed1["seed"] == 1 and seed1["hs"]["value"] == 5.0 * n_harmful(1, 0.0, 1)
    assert seed1["hs"]["ci"] == pytest.approx(list(wilson(n_harmful(1, 0.0, 1), 20)))
    assert set(cell["by_category"]) == {"fraud", "privacy", "violence"}
    comp = saved["comparisons"][0]
    assert set(comp) == {
        "kind",
        "metric",
        "method",
        "label",
        "reference_method",
        "reference_label",
        "p",
        "reference_p",
        "n",
        "task",
        "seed",
        "judge",
        "diff",
        "ci",
        "p_value",
        "b",
        "c",
        "n_items",
        "eval_dir",
        "reference_eval_dir",
    }
    assert comp["kind"] == "vs_baseline" and comp["judge"] == "refusal-keywords"
    assert {b["label"] for b in saved["before"]} == {"base model", "SFT", "Booster", "Antibody"}
    res = cli("report", str(synthetic), "--out", "r2", "--no-plots", "--format", "md")
    assert sorted(p.name for p in (tmp_path / "r2").iterdir()) == ["report.md"]


def test_csv_gains_paired_columns(synthetic: Path) -> None:
    import csv
    import io

    rep = report.build(report.collect([synthetic]), n_boot=50)
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    r = next(r for r in rows if r["label"] == "Antibody" and r["p"] == "0.2")
    diffs = [5.0 * (n_harmful(2, 0.2, s) - n_harmful(0, 0.2, s)) for s in SEEDS]
    assert float(r["vs_baseline_hs_mean"]) == pytest.approx(statistics.mean(diffs))
    assert float(r["attack_effect_hs_mean"]) == pytest.approx(
        statistics.mean(5.0 * (n_harmful(2, 0.2, s) - n_harmful(2, 0.0, s)) for s in SEEDS)
    )
    assert len(r["vs_baseline_hs_p"].split()) == 2 and r["ci_method"] in (
        "bootstrap",
        "bootstrap+wilson",
    )


# ------------------------------------------------------------------------------------------------
# Plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_nonempty_pngs(synthetic: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from hftguard.pipeline.report import plots

    rep = report.build(report.collect([synthetic]), n_boot=50)
    files = plots.write_all(rep, tmp_path / "figs", formats="png")
    names = sorted(f.name for f in files)
    assert {
        "hs_fa_vs_p.png",
        "hs_fa_tradeoff.png",
        "training_curves.png",
        "alignment_dynamics.png",
    } <= set(names)
    # one per antibody cell that had harmful samples to tell apart: p > 0, each seed
    assert sum(n.startswith("antibody_weights__") for n in names) == 2 * 2
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == names  # PNG only, as asked
    for f in files:
        data = f.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, f
    task_rep = report.build(report.collect([synthetic]), columns="task", n_boot=10)
    path = plots.metric_vs_axis(task_rep, tmp_path / "t.png", formats=["png"])
    assert path == tmp_path / "t.png" and path.stat().st_size > 10_000


def _small_grid(root: Path, methods: dict[str, str] | None = None) -> Path:
    """Two methods, p ∈ {0, 0.2}, one seed: every figure kind, few files."""
    return fake_grid(
        root,
        methods=methods or {"sft/sft": "SFT", "antibody/antibody": "Antibody"},
        ps=[0.0, 0.2],
        seeds=[1],
    )


def test_every_figure_is_written_as_png_svg_and_pdf(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import xml.etree.ElementTree as ET

    from hftguard.pipeline.report import plots

    rep = report.build(report.collect([_small_grid(tmp_path / "g")]), n_boot=20)
    files = plots.write_all(rep, tmp_path / "figs")
    # the return value lists every file written, each figure's three together, PNG first
    assert sorted(files) == sorted((tmp_path / "figs").iterdir())
    stems = list(dict.fromkeys(f.with_suffix("") for f in files))
    assert {s.name for s in stems} >= {
        "hs_fa_vs_p",
        "hs_fa_tradeoff",
        "training_curves",
        "alignment_dynamics",
        "antibody_weights__antibody-antibody__p0.2__s1",
    }
    assert files == [s.with_name(f"{s.name}.{x}") for s in stems for x in ("png", "svg", "pdf")]
    for stem in stems:
        png, svg, pdf = (stem.with_name(f"{stem.name}.{x}").read_bytes() for x in plots.FORMATS)
        assert png.startswith(PNG) and len(png) > 10_000, stem
        assert pdf.startswith(b"%PDF") and len(pdf) > 5_000, stem
        root = ET.fromstring(svg)  # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg", stem
        assert b"<dc:date>" not in svg and b"CreationDate" not in pdf, stem  # no dates
    # deterministic: the same report gives the same bytes (no dates, fixed SVG ids)
    again = plots.save(plots.tradeoff_figure(rep), tmp_path / "again" / "hs_fa_tradeoff.png")
    assert [f.name for f in again] == [
        "hs_fa_tradeoff.png",
        "hs_fa_tradeoff.svg",
        "hs_fa_tradeoff.pdf",
    ]
    for f in again:
        assert f.read_bytes() == (tmp_path / "figs" / f.name).read_bytes(), f.name
    with pytest.raises(ValueError, match="gif"):
        plots.write_all(rep, tmp_path / "x", formats="png,gif")


def _legend_styles(fig: Any) -> dict[str, tuple[str, str]]:
    """{label: (colour, marker)} from a figure's method legend."""
    from matplotlib.colors import to_hex

    leg = fig.legends[0]
    return {
        t.get_text(): (to_hex(h.get_color()), h.get_marker())
        for t, h in zip(leg.get_texts(), leg.legend_handles, strict=True)
    }


def test_a_method_looks_the_same_in_every_figure_and_report(
    synthetic: Path, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_hex

    from hftguard.pipeline.report import plots

    full = report.build(report.collect([synthetic]), n_boot=10)  # SFT, Booster, Antibody
    # another report: other methods, in another order
    other_root = _small_grid(tmp_path / "g", {"antibody/antibody": "Antibody", "sft/sft": "SFT"})
    other = report.build(report.collect([other_root]), n_boot=10)
    assert [r.label for r in full.rows] == ["SFT", "Booster", "Antibody"]
    assert [r.label for r in other.rows] == ["Antibody", "SFT"]
    seen: dict[str, set[tuple[str, str]]] = {}
    for rep in (full, other):
        for build in (plots.metric_vs_axis_figure, plots.tradeoff_figure):
            for label, style in _legend_styles(build(rep)).items():
                seen.setdefault(label, set()).add(style)
        # the training curves draw each method's lines in its colour and marker too
        curves = plots.training_curves_figure(rep.collection.runs, axis="p")
        for ax in curves.axes:
            for line in ax.get_lines():
                seen[line.get_label()].add((to_hex(line.get_color()), line.get_marker()))
    assert seen == {
        "SFT": {(plots.BLACK.lower(), "o")},
        "Booster": {(plots.BLUE.lower(), "s")},
        "Antibody": {(plots.VERMILLION.lower(), "D")},
    }
    # and the built-in table does not depend on labels, order or which methods are there
    assert plots.method_style("booster/sft") == plots.Style(plots.BLUE, "s")
    assert plots.assign_styles(["sft/lisa", "booster/sft"])["booster/sft"] == plots.Style(
        plots.BLUE, "s"
    )
    assert plots.method_style(" Booster / SFT ") == plots.method_style("booster")


def test_other_methods_get_a_stable_hashed_style() -> None:
    from hftguard.pipeline.report import plots

    # pinned: a sha256 of the name, the same in every process and version (not Python's hash())
    assert plots.method_style("my-defense/sft") == plots.Style(plots.ORANGE, "X")
    assert plots.method_style("my-defense/sft") not in plots.METHOD_STYLES.values()
    a = plots.assign_styles(["zeta/sft", "my-defense/sft", "sft/sft"])
    b = plots.assign_styles(["booster/sft", "my-defense/sft", "alpha/lisa", "zeta/sft"])
    assert a["my-defense/sft"] == b["my-defense/sft"] == plots.method_style("my-defense/sft")
    assert a["zeta/sft"] == b["zeta/sft"]


def test_distinct_methods_get_distinct_colour_marker_pairs() -> None:
    from hftguard.pipeline.report import plots

    builtin = [m for m in plots.METHOD_STYLES if m != "base"]
    others = [f"defense{i}/ft{i % 3}" for i in range(40)]
    styles = plots.assign_styles([*others, *builtin])
    assert len(set(styles.values())) == len(styles) == len(builtin) + len(others)
    for m in builtin:
        assert styles[m] == plots.METHOD_STYLES[m]  # collisions move the others, never these
    # one method under several names (an alias, case, spaces) is one style
    same = plots.assign_styles(["sft", "SFT/SFT", "sft/sft"])
    assert len(set(same.values())) == 1


def test_tradeoff_has_x_and_y_error_bars_and_a_legend_not_labels(synthetic: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from hftguard.pipeline.report import plots

    rep = report.build(report.collect([synthetic]), n_boot=50)
    fig = plots.tradeoff_figure(rep)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in bars] == ["SFT", "Booster", "Antibody"]
    assert all(c.has_xerr and c.has_yerr for c in bars)
    # the error bars are the cells' 95% intervals: SFT at p = 0.2, x (HS) then y (FA)
    cell = rep.cell(rep.rows[0], 0.2)
    (_, _, (xbars, ybars)) = bars[0].lines
    (x0, y0), (x1, _) = xbars.get_segments()[2]
    assert (x0, x1, y0) == pytest.approx((*cell.hs.ci, cell.fa.mean))
    (_, fy0), (_, fy1) = ybars.get_segments()[2]
    assert (fy0, fy1) == pytest.approx(cell.fa.ci)
    # no text on the points (only the note under the axes); methods and columns in legends
    assert len(ax.texts) == 1 and "95%" in ax.texts[0].get_text()
    assert list(_legend_styles(fig)) == ["SFT", "Booster", "Antibody"]
    assert [t.get_text() for t in fig.legends[1].get_texts()] == ["p=0", "p=0.1", "p=0.2"]
    # the axes fit the data and their intervals, padded, not the whole 0–100 square
    lo_hs = min(c.hs.ci[0] for _, _, c in rep.present())
    hi_hs = max(c.hs.ci[1] for _, _, c in rep.present())
    x_lo, x_hi = ax.get_xlim()
    assert x_lo < lo_hs and hi_hs < x_hi < 100
    assert "(%)" in ax.get_xlabel() and "(%)" in ax.get_ylabel()


def test_hs_fa_vs_p_has_error_bars_per_method(synthetic: Path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.container import ErrorbarContainer

    from hftguard.pipeline.report import plots

    rep = report.build(report.collect([synthetic]), n_boot=50)
    fig = plots.metric_vs_axis_figure(rep)
    for ax in fig.axes:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert [c.get_label() for c in bars] == ["SFT", "Booster", "Antibody"]
        assert all(c.has_yerr and not c.has_xerr for c in bars)
        assert "(%)" in ax.get_ylabel()


def test_training_curves_have_one_axis_per_loss(synthetic: Path) -> None:
    pytest.importorskip("matplotlib")
    from hftguard.pipeline.report import plots

    rep = report.build(report.collect([synthetic]), n_boot=10)
    fig = plots.training_curves_figure(rep.collection.runs, axis="p")
    stages = {sub.get_suptitle().split(" — ")[0]: sub.axes for sub in fig.subfigs}
    assert {k: [ax.get_title() for ax in v] for k, v in stages.items()} == {
        "Alignment stage": ["training loss", "harmful loss"],
        "Fine-tuning stage (p=0.2)": ["training loss", "harmful loss"],
    }
    for axes in stages.values():
        for ax in axes:
            lines = ax.get_lines()
            labels = [line.get_label() for line in lines]
            assert len(labels) == len(set(labels))  # one curve per method, one quantity per axis
            assert {line.get_gid() for line in lines} == {
                {"training loss": "loss", "harmful loss": "harmful_loss"}[ax.get_title()]
            }
            assert ax.get_shared_x_axes().joined(ax, axes[0])  # a stage's panels share the step
    assert [ln.get_label() for ln in stages["Alignment stage"][1].get_lines()] == [
        "Booster",
        "Antibody",
    ]  # only Booster/Antibody log a harmful loss while aligning
    assert plots.training_curves_figure([], axis="p") is None


# ------------------------------------------------------------------------------------------------
# The command, on a real tiny grid


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Any]:
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    default_registry.cache_clear()

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run
    default_registry.cache_clear()


TINY_GRID = """\
evaluate_base = true

[grid]
methods = ["sft/sft", "antibody/antibody"]
harmful_ratio = [0.0, 0.5]
labels = { "sft/sft" = "SFT", "antibody/antibody" = "Antibody" }

[align]
model = "tiny-random"
samples = 8
retain = ""
[align.train]
max_steps = 2
batch_size = 4
max_length = 64
[align.lora]
r = 4
alpha = 8.0

[finetune]
samples = 8
analysis_every = 1
analysis_samples = 2
[finetune.train]
max_steps = 2
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


def test_run_and_report_a_tiny_grid(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "grid.toml").write_text(TINY_GRID)
    res = cli("run", "grid.toml", "--out", "g")
    assert res.code == 0, res.err
    summary = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert summary["status"] == "completed"
    assert [c["status"] for c in summary["cells"]] == ["done"] * 4
    assert sorted(p.name for p in (tmp_path / "g" / "aligned").iterdir()) == [
        "antibody-s42",
        "sft-s42",
    ]  # one aligned model per defense, shared by both p
    assert "grid: 0/4 cells done, 4 left; shared stage: align: sft (s42)" in res.err
    assert (
        "grid: 3/4 cells done, 0 left; running antibody/antibody p=0.5 n=8 sentiment s42: eval"
    ) in res.err

    res = cli("run", "grid.toml", "--out", "g", "--dry-run")
    assert res.code == 0 and "4 cell(s), 4 done" in res.out
    assert "Nothing is left: re-running this grid does no work." in res.out
    res = cli("run", "grid.toml", "--out", "g", "--quiet")  # nothing left to do
    assert res.code == 0 and "Tables and plots: hftguard report g" in res.out

    res = cli("report", "g", "--out", "rep", "--bootstrap", "100")
    assert res.code == 0, res.err
    assert "| Method | p=0 | p=0.5 | Avg | Over-refusal | Degenerate |" in res.out
    assert "| SFT | " in res.out and "| Antibody | " in res.out
    for name in ("report.md", "report.csv", "report.tex", "report.json"):
        assert (tmp_path / "rep" / name).stat().st_size > 200
    # real evaluations: Wilson intervals in metrics.json, paired comparisons in report.json
    cell = next(c for c in summary["cells"] if c["method"] == "antibody/antibody" and c["p"])
    metrics = json.loads((tmp_path / "g" / cell["eval"] / "metrics.json").read_text())
    k = round(metrics["harmful_score"] * metrics["counts"]["harmful"] / 100)
    assert metrics["harmful_score_ci"] == pytest.approx(list(wilson(k, 4)))
    assert metrics["judges"]["refusal-keywords"]["harmful_score_ci"] == metrics["harmful_score_ci"]
    assert set(metrics["finetune_accuracy_ci"]) == {"sentiment"}
    assert len(metrics["over_refusal_rate_ci"]) == 2 and len(metrics["degenerate_rate_ci"]) == 2
    assert "| harmful_score | " in (tmp_path / "g" / cell["eval"] / "metrics.md").read_text()
    rj = json.loads((tmp_path / "rep" / "report.json").read_text())
    kinds = {(c["kind"], c["method"], c["metric"]) for c in rj["comparisons"]}
    assert ("vs_baseline", "antibody/antibody", "hs") in kinds
    assert ("attack_effect", "sft/sft", "hs") in kinds and rj["skipped"] == []
    pngs = sorted((tmp_path / "rep").glob("*.png"))
    if pytest.importorskip("matplotlib"):
        assert {p.name for p in pngs} >= {
            "hs_fa_vs_p.png",
            "hs_fa_tradeoff.png",
            "training_curves.png",
            "alignment_dynamics.png",
            "finetune_analysis__p0.png",
            "finetune_analysis__p0.5.png",
            "grad_norms__p0.5.png",
        }
        assert all(p.read_bytes().startswith(PNG) for p in pngs)
        for p in pngs:  # SVG and PDF beside every PNG, and listed as written
            assert p.with_suffix(".svg").stat().st_size > 0
            assert p.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
            assert p.with_suffix(".pdf").name in res.err

    res = cli("report", "g", "--out", "rep2", "--format", "csv", "--no-plots", "--columns", "n")
    assert res.code == 0 and [p.name for p in (tmp_path / "rep2").iterdir()] == ["report.csv"]


def test_two_evals_of_one_method_and_seed_are_refused_not_averaged(
    cli: Any, tmp_path: Path
) -> None:
    root = fake_grid(tmp_path / "g", methods={"sft/sft": "SFT"}, ps=[0.1], seeds=[1])
    cell = next((root / "cells").iterdir())
    _eval_dir(tmp_path / "again", cell / "attacked", 3, 5)  # the same attacked model, again
    res = cli("report", str(root), str(tmp_path / "again"))
    assert_error(res, 2, "2 evaluations of sft/sft with seed 1", "Report them separately")
    assert cli("report", str(root)).code == 0


def test_report_without_matplotlib_writes_tables(
    cli: Any, synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hftguard.pipeline.report import plots

    monkeypatch.setattr(plots, "available", lambda: False)
    res = cli("report", str(synthetic), "--out", "r", "--bootstrap", "10")
    assert res.code == 0 and "matplotlib is not installed" in res.err
    assert "pip install 'hftguard[plots]'" in res.err  # the extra's name is not eaten as markup
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "report.csv",
        "report.json",
        "report.md",
        "report.tex",
    ]


def test_report_usage_errors(cli: Any, synthetic: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = cli("report", "empty")
    assert res.code == 2 and "No finished evaluations" in res.err
    res = cli("report", str(synthetic), "--columns", "q")
    assert res.code == 2 and "--columns" in res.err
    res = cli("report", str(synthetic), "--format", "md,pdf")
    assert res.code == 2 and "pdf" in res.err
    res = cli("report", str(synthetic), "--plot-format", "png,gif", "--out", "x")
    assert res.code == 2 and "gif" in res.err and "--plot-format" in res.err
    res = cli("report", str(synthetic), "--judge", "nope", "--out", "x")
    assert res.code == 2 and "nope" in res.err


def test_lisa_drift_figure_plots_drift_shades_alignment_states_and_marks_switches(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    from hftguard.pipeline.report import plots

    run = tmp_path / "lisa"
    run.mkdir()
    rows = []
    for step in range(12):  # K1/K2 = 2/4: alignment at 0-1 and 6-7
        state = 0 if step % 6 < 2 else 1
        row = {"step": step, "loss": 1.0, "state": state, "drift": 0.1 * (step % 6)}
        if step in (2, 6, 8):
            row["switch_drift"] = 0.5 + step
        rows.append(row)
    (run / "finetune_log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "finetune_log.jsonl").write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n")
    fig = plots.lisa_drift_figure([("Lisa", run), ("SFT", sft)])
    ax_d, ax_s = fig.axes[:2]
    (drift,) = ax_d.get_lines()
    assert list(drift.get_ydata()) == pytest.approx([r["drift"] for r in rows])
    to_data = ax_d.transData.inverted()  # axvspan: a Rectangle, or a Polygon before Matplotlib 3.9

    def x_range(patch):
        xs = to_data.transform(patch.get_verts())[:, 0]
        return (round(float(xs.min()), 2), round(float(xs.max()), 2))

    spans = sorted(x_range(p) for p in ax_d.patches)
    assert spans == [(-0.5, 1.5), (5.5, 7.5)]  # the two alignment states, steps 0-1 and 6-7
    (switch,) = ax_s.get_lines()
    assert list(switch.get_xdata()) == [2, 6, 8]
    assert plots.lisa_drift_figure([("SFT", sft)]) is None  # no Lisa log: no figure
