"""Evaluations of one method that rest on aligned models trained differently (two GPU leases
that each retrained SFT's alignment, one with a changed retain set; a CPU and a GPU grid): the
report names them, and does not pair across them. Before, it paired a p = 0.2 cell of one with
the p = 0 cell of the other as one method's attack effect, silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_report_attack import write_grid

from hftguard.pipeline import report
from hftguard.pipeline.grid import Cell

LABELS = {"sft/sft": "SFT"}


def _grid(root: Path, p: float, alignment: dict[str, Any]) -> Path:
    """SFT at ``p``, seeds 1 and 2; ``alignment``: merged into each aligned model's manifest."""
    cells = [(Cell("sft", "sft", p, 100, "sentiment", s), 16 if p else 2, 9, None) for s in (1, 2)]
    grid = write_grid(root, cells, ["sft/sft"], LABELS)
    for seed in (1, 2):
        path = grid / "aligned" / f"sft-s{seed}" / "manifest.json"
        m = json.loads(path.read_text())
        for key, value in alignment.items():
            m[key] = {**m.get(key, {}), **value} if isinstance(value, dict) else value
        path.write_text(json.dumps(m))
    return grid


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


SAME = {
    "data": {"main": {"count": 480, "sha256": "aaa"}},
    "dtype": "torch.bfloat16",
    "config": {"train": {"max_steps": 360, "precision": "auto"}, "defense_options": {"rho": 2}},
    "components": {"defense": {"name": "sft", "version": "1"}},
    "input_model": {"base_key": "k1"},
}


@pytest.mark.parametrize(
    ("other", "differ"),
    [
        ({"data": {"main": {"count": 480, "sha256": "bbb"}}}, "data"),
        ({"dtype": "torch.float32"}, "dtype"),
        ({"config": {"train": {"max_steps": 40}}}, "config (train.max_steps)"),
        ({"components": {"defense": {"name": "sft", "version": "2"}}}, "defense version"),
        ({"input_model": {"base_key": "k2"}}, "base weights"),  # SAME's base holds k1
    ],
)
def test_cells_on_different_alignments_are_not_paired(
    tmp_path: Path, other: dict[str, Any], differ: str
) -> None:
    attacked = _grid(tmp_path / "lease-1", 0.2, SAME)
    controls = _grid(tmp_path / "lease-2", 0.0, _merged(SAME, other))
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    assert not [c for c in rep.comparisons if c.kind == "attack_effect"]
    skipped = [s for s in rep.skipped if s.kind == "attack_effect"]
    assert len(skipped) == 2 * 2  # two seeds, HS and FA
    assert all("different aligned models" in s.reason and differ in s.reason for s in skipped)
    entries = {m.label: m for m in rep.mixed_alignments}
    assert set(entries) == {"SFT", "aligned (SFT)"}
    mixed, before = entries["SFT"], entries["aligned (SFT)"]
    # the aligned models' own evaluations (the Before table keeps one per seed) are named too
    assert before.label == "aligned (SFT)" and before.method == "sft"
    assert {tuple(d) for _, _, d in before.pairs} == {(differ,)}
    # the two leases' models of one seed differ (data: of one seed only); none within a lease
    leases = {(a.parent.parent.name, b.parent.parent.name) for a, b, _ in mixed.pairs}
    assert leases == {("lease-1", "lease-2")} and len(mixed.pairs) >= 2
    assert {tuple(d) for _, _, d in mixed.pairs} == {(differ,)}
    md = report.to_markdown(rep)
    assert "## Evaluations on aligned models trained differently" in md
    section = md.split("## Evaluations on aligned models trained differently")[1].split("##")[0]
    assert "lease-1" in section and "lease-2" in section
    # the Before table keeps lease-1's aligned model per seed; lease-2's is left out as a model
    # trained differently, not as "the same aligned model evaluated again"
    assert rep.before_repeated == []
    assert [(r.seed, d) for r, _, d in rep.before_differing] == [(1, [differ]), (2, [differ])]
    before_md = md.split("## Before fine-tuning")[1].split("##")[0]
    assert "the same aligned model" not in before_md
    assert "trained differently" in before_md and differ in before_md
    d = report.report_dict(rep)
    by_method = {m["method"]: m for m in d["mixed_alignments"]}
    assert set(by_method) == {"sft/sft", "sft"}
    assert by_method["sft/sft"]["pairs"][0]["differ"] == [differ]
    assert d["before_repeated"] == []
    left = d["before_trained_differently"]
    assert [x["differ"] for x in left] == [[differ], [differ]]
    assert all("lease-2" in x["eval"] and "lease-1" in x["kept"] for x in left)


def test_cells_on_equally_trained_alignments_are_paired(tmp_path: Path) -> None:
    """Two leases that retrained the alignment the same way (same config, data, dtype): the
    report pairs across them, as before."""
    attacked = _grid(tmp_path / "lease-1", 0.2, SAME)
    same_way = {  # what does not change the model, or says the same differently
        "config": {
            "report_to": ["jsonl"],
            "train": {"max_steps": 360.0, "precision": "bf16", "checkpoint_every": 7},
            "defense_options": {"rho": 2.0},
        },
    }
    controls = _grid(tmp_path / "lease-2", 0.0, _merged(SAME, same_way))
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    effects = [c for c in rep.comparisons if c.kind == "attack_effect" and c.metric == "hs"]
    assert len(effects) == 2
    assert effects[0].diff == pytest.approx(5.0 * (16 - 2))
    assert rep.mixed_alignments == []
    assert "trained differently" not in report.to_markdown(rep)
    assert report.report_dict(rep)["mixed_alignments"] == []


@pytest.mark.parametrize("keys", [("k1", "k1"), (None, None)])
def test_one_base_named_by_alias_and_by_path(tmp_path: Path, keys: tuple[Any, Any]) -> None:
    """With the base weights' hash on both sides, an alias in one grid and the converted
    directory's path in the other are one base (before 2026-11-27 they were ``config (model)``,
    as they still are for manifests without the hash)."""
    names = ("smollm2-135m-instruct", "/home/u/.hftguard/models/smollm2-135m-instruct")
    sides = [
        {**SAME, "input_model": {"base_spec": n, **({"base_key": k} if k else {})}}
        for n, k in zip(names, keys, strict=True)
    ]
    attacked = _grid(tmp_path / "lease-1", 0.2, sides[0])
    controls = _grid(tmp_path / "lease-2", 0.0, sides[1])
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    effects = [c for c in rep.comparisons if c.kind == "attack_effect" and c.metric == "hs"]
    if keys[0]:
        assert len(effects) == 2 and rep.mixed_alignments == []
    else:
        assert effects == []
        reasons = {s.reason for s in rep.skipped if s.kind == "attack_effect"}
        assert reasons and all("config (model)" in r for r in reasons)


def test_one_grid_of_several_seeds_is_not_mixed(tmp_path: Path) -> None:
    """Without a fixed align_seed each seed has its aligned model, whose data (the retain
    requests drawn by seed) hashes differently: replicates, not models trained differently. A
    manifest from an older hftguard that lacks a field is not compared on it."""
    grid = write_grid(
        tmp_path / "g",
        [
            (Cell("sft", "sft", p, 100, "sentiment", s), 16 if p else 2, 9, None)
            for s in (1, 2)
            for p in (0.0, 0.2)
        ],
        ["sft/sft"],
        LABELS,
    )
    for seed, extra in ((1, {"dtype": "torch.float32"}), (2, {})):  # s2: an older manifest
        path = grid / "aligned" / f"sft-s{seed}" / "manifest.json"
        m = json.loads(path.read_text())
        m["data"] = {"main": {"count": 480, "sha256": f"data-of-seed-{seed}"}}
        path.write_text(json.dumps({**m, **extra}))
    rep = report.build(report.collect([grid]), n_boot=0)
    assert rep.mixed_alignments == []
    assert len([c for c in rep.comparisons if c.kind == "attack_effect"]) == 2 * 2


def test_a_cells_interval_pairs_seeds_by_prompt_not_by_file_position(tmp_path: Path) -> None:
    """Two seeds of one cell whose generations list the same prompts in two orders: the cell's
    HS interval resamples each seed's own prompts (nested), as for unequal prompt sets. Before,
    prompt i of one seed was paired with prompt i of the other, whatever it was."""
    from hftguard.pipeline.intervals import two_level_bootstrap

    cells = [(Cell("sft", "sft", 0.2, 100, "sentiment", s), 10, 9, None) for s in (1, 2)]
    grid = write_grid(tmp_path / "g", cells, ["sft/sft"], LABELS)
    gens = grid / "cells" / cells[1][0].name / "eval" / "generations.jsonl"
    rows = [json.loads(x) for x in gens.read_text().splitlines()]
    harmful = [r for r in rows if r.get("set") == "harmful"]
    gens.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [*reversed(harmful), *(r for r in rows if r not in harmful)]
        )
    )
    rep = report.build(report.collect([grid]), n_boot=400)
    hs = rep.cell(rep.rows[0], 0.2).hs
    runs = sorted(report.collect([grid]).runs, key=lambda r: str(r.path))
    flags = [r.harmful_flags(None) for r in runs if r.kind == "attacked"]
    _, lo, hi = two_level_bootstrap(flags, 400, 0, crossed=False)
    assert hs.ci == (pytest.approx(lo), pytest.approx(hi))


def test_the_base_model_evaluated_twice_counts_once() -> None:
    """Two grids that each hold a copy of the base model's evaluation (a second seed's --out):
    one model, not two seeds (before: "88.5 ± 0.0" over two "seeds" of the same evaluation).
    Two bases of other specs or other weights stay apart; so does one that does not say."""
    from types import SimpleNamespace

    from hftguard.pipeline.report.aggregate import _same_base

    def ev(spec: str | None, key: str | None = None, adapters: tuple[str, ...] = ()) -> Any:
        model = {
            "base_spec": spec,
            "adapters": list(adapters),
            **({"base_key": key} if key else {}),
        }
        return SimpleNamespace(manifest={"evaluated_model": model} if spec else {})

    assert _same_base(ev("smollm2-135m-instruct"), ev("smollm2-135m-instruct"))
    assert _same_base(ev("m", "k1"), ev("m", "k1")) and _same_base(ev("m", "k1"), ev("m"))
    assert not _same_base(ev("m", "k1"), ev("m", "k2"))
    assert not _same_base(ev("m"), ev("other"))
    assert not _same_base(ev(None), ev(None))
    assert not _same_base(ev("m", adapters=("a",)), ev("m", adapters=("a",)))


def test_a_defense_is_not_compared_with_a_baseline_on_other_base_weights(tmp_path: Path) -> None:
    """A defense's grid on one base and the baseline's grid on another (two machines whose
    "smollm2-135m-instruct" held other weights): ΔHS would measure the bases' difference with
    the defense's. Before, the pair was compared; the fingerprint check covered only one
    method's own alignments."""
    labels = {"sft/sft": "SFT", "booster/sft": "Booster"}

    def grid(root: Path, method: str, key: str) -> Path:
        a, f = method.split("/")
        cells = [(Cell(a, f, 0.2, 100, "sentiment", s), 10, 9, None) for s in (1, 2)]
        g = write_grid(root, cells, [method], labels)
        for s in (1, 2):
            path = g / "aligned" / f"{a}-s{s}" / "manifest.json"
            m = json.loads(path.read_text())
            path.write_text(json.dumps({**m, "input_model": {"base_key": key}}))
        return g

    def vs_baseline(rep: Any) -> list[Any]:
        return [c for c in rep.comparisons if c.kind == "vs_baseline"]

    same = report.build(
        report.collect(
            [grid(tmp_path / "a", "sft/sft", "k1"), grid(tmp_path / "b", "booster/sft", "k1")]
        ),
        n_boot=0,
        baseline="sft/sft",
    )
    assert len(vs_baseline(same)) == 2 * 2 and not same.skipped
    other = report.build(
        report.collect(
            [grid(tmp_path / "c", "sft/sft", "k1"), grid(tmp_path / "d", "booster/sft", "k2")]
        ),
        n_boot=0,
        baseline="sft/sft",
    )
    assert vs_baseline(other) == []
    skipped = [s for s in other.skipped if s.kind == "vs_baseline"]
    assert len(skipped) == 2 * 2
    assert all("different base weights" in s.reason and "k1" in s.reason for s in skipped)


def test_attacks_of_the_base_model_itself_on_other_weights_are_named(tmp_path: Path) -> None:
    """Fine-tuning the base model with no alignment (method none/sft) in two grids whose base
    held other weights: no aligned model to compare, so the attack read the base itself; its
    recorded base_key is compared instead."""

    def grid(root: Path, p: float, key: str) -> Path:
        cells = [(Cell("sft", "sft", p, 100, "sentiment", 1), 16 if p else 2, 9, None)]
        g = write_grid(root, cells, ["none/sft"], LABELS)
        path = g / "cells" / cells[0][0].name / "attacked" / "manifest.json"
        m = json.loads(path.read_text())
        del m["aligned_run"]
        m["config"]["model"] = "smollm2-135m-instruct"
        m["input_model"] = {"base_spec": "smollm2-135m-instruct", "adapters": [], "base_key": key}
        path.write_text(json.dumps(m))
        # no aligned model, and so no evaluation of one (write_grid writes both)
        shutil.rmtree(g / "aligned")
        shutil.rmtree(g / "evals")
        grid_m = json.loads((g / "manifest.json").read_text())
        entries = [{**c, "align": "none"} for c in grid_m["cells"]]  # a cell of method none/sft
        (g / "manifest.json").write_text(json.dumps({**grid_m, "cells": entries, "evals": []}))
        return g

    rep = report.build(
        report.collect([grid(tmp_path / "a", 0.2, "k1"), grid(tmp_path / "b", 0.0, "k2")]), n_boot=0
    )
    attacked = [r for r in report.collect([tmp_path / "a"]).runs if r.kind == "attacked"]
    assert [r.align for r in attacked] == ["none"]  # the attack of the base itself
    assert not [c for c in rep.comparisons if c.kind == "attack_effect"]
    skipped = [s for s in rep.skipped if s.kind == "attack_effect"]
    assert len(skipped) == 2 and all("different base weights" in s.reason for s in skipped)
    assert [tuple(d) for m in rep.mixed_alignments for *_, d in m.pairs] == [("base weights",)]
    entry = report.report_dict(rep)["mixed_alignments"][0]
    assert list(entry["pairs"][0]) == ["attacked", "differ"]  # attacked models, not aligned
    same = report.build(
        report.collect([grid(tmp_path / "c", 0.2, "k1"), grid(tmp_path / "d", 0.0, "k1")]), n_boot=0
    )
    assert len([c for c in same.comparisons if c.kind == "attack_effect"]) == 2
    assert same.mixed_alignments == []


def _judged_by(grid: Path, version: str, **options: Any) -> Path:
    """Record in every evaluation of ``grid`` that refusal-keywords ``version`` judged it."""
    for path in grid.rglob("manifest.json"):
        m = json.loads(path.read_text())
        if m.get("stage") == "eval":
            judge = {"name": "refusal-keywords", "version": version, "options": options}
            path.write_text(json.dumps({**m, "components": {"judges": [judge]}}))
    return grid


def test_evaluations_judged_by_two_versions_of_the_judge_are_not_compared(tmp_path: Path) -> None:
    """A grid continued on a newer hftguard keeps its earlier evaluations' verdicts (v4) beside
    new ones (v5): a paired ΔHS across them measures the judges' difference too (the judge audit,
    docs/results/calibrated-field-cpu/judge-audit). Before, they were compared silently."""
    attacked = _judged_by(_grid(tmp_path / "a", 0.2, SAME), "5", window=200)
    controls = _judged_by(_grid(tmp_path / "b", 0.0, SAME), "4", window=200)
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    assert not [c for c in rep.comparisons if c.kind == "attack_effect" and c.metric == "hs"]
    skipped = [s for s in rep.skipped if s.kind == "attack_effect"]
    assert len(skipped) == 2 and all("different versions" in s.reason for s in skipped)
    assert "v4" in skipped[0].reason and "v5" in skipped[0].reason
    assert (
        len(rep.judge_versions) == 2 and sum(rep.judge_versions.values()) == 8
    )  # 2 cells, 2 aligned
    assert "## Evaluations judged by different versions of the judge" in report.to_markdown(rep)
    assert len(report.report_dict(rep)["judge_versions"]) == 2
    # other options of one version are another judge too; the same record is one judge
    _judged_by(controls, "5", window=100)
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    assert len([s for s in rep.skipped if "different versions" in s.reason]) == 2
    _judged_by(controls, "5", window=200)
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    assert len([c for c in rep.comparisons if c.kind == "attack_effect"]) == 2 * 2
    assert rep.judge_versions == {} and "judge_versions" not in str(rep.skipped)


def test_a_judge_version_gap_skips_hs_only_and_other_judges_are_not_versions(
    tmp_path: Path,
) -> None:
    """FA and the likelihood margin do not depend on the judge: only HS is left out. Two
    different judges are not two versions of one (compare() says "different headline judges")."""
    attacked = _judged_by(_grid(tmp_path / "a", 0.2, SAME), "5")
    controls = _judged_by(_grid(tmp_path / "b", 0.0, SAME), "4")
    rep = report.build(report.collect([attacked, controls]), n_boot=0)
    kept = {c.metric for c in rep.comparisons if c.kind == "attack_effect"}
    left = {s.metric for s in rep.skipped if s.kind == "attack_effect"}
    assert kept == {"fa"} and left == {"hs"}
    for path in controls.rglob("manifest.json"):
        m = json.loads(path.read_text())
        if m.get("stage") == "eval":
            other = {"name": "goal-overlap", "version": "2", "options": {}}
            path.write_text(json.dumps({**m, "components": {"judges": [other]}}))
    from hftguard.pipeline.report.paired import judged_apart

    runs = report.collect([attacked, controls]).runs
    a = next(r for r in runs if r.kind == "attacked" and r.p == 0.2)
    b = next(r for r in runs if r.kind == "attacked" and r.p == 0.0)
    assert judged_apart(a, b, None) is None  # not versions of one judge
    assert report.build(report.collect([attacked, controls]), n_boot=0).judge_versions == {}


@pytest.mark.parametrize(
    ("stage", "field", "value"),
    [
        ("aligned", "dtype", "torch.float32"),
        ("attacked", "dtype", "torch.float32"),
        ("eval", "precision", {"requested": "auto", "dtype": "float32"}),
    ],
)
def test_a_defense_is_not_compared_with_a_baseline_run_in_another_dtype(
    tmp_path: Path, stage: str, field: str, value: Any
) -> None:
    """A defense's cells trained (or generated) in bf16 against a baseline's in fp32: a CPU
    with native bf16 picks bf16 under precision = "auto" where an AVX2 CPU picks fp32, so two
    grids of one config from two machines differ in it (the field grid, seventeenth session).
    ΔHS would measure the dtypes with the defense. Before, the pair was compared silently."""
    labels = {"sft/sft": "SFT", "booster/sft": "Booster"}
    bf16 = {
        "aligned": ("dtype", "torch.bfloat16"),
        "attacked": ("dtype", "torch.bfloat16"),
        "eval": ("precision", {"requested": "auto", "dtype": "bfloat16"}),
    }

    def grid(root: Path, method: str, changed: bool) -> Path:
        a, f = method.split("/")
        cells = [(Cell(a, f, 0.2, 100, "sentiment", s), 10, 9, None) for s in (1, 2)]
        g = write_grid(root, cells, [method], labels)
        for path in g.rglob("manifest.json"):
            where = path.parent.name if path.parent.parent.name != "aligned" else "aligned"
            if where in bf16:
                key, default = bf16[where]
                m = json.loads(path.read_text())
                m[key] = value if changed and where == stage else default
                path.write_text(json.dumps(m))
        return g

    def build(changed: bool, root: Path) -> Any:
        runs = report.collect(
            [grid(root / "a", "sft/sft", False), grid(root / "b", "booster/sft", changed)]
        )
        return report.build(runs, n_boot=0, baseline="sft/sft")

    same = build(False, tmp_path / "same")
    assert len([c for c in same.comparisons if c.kind == "vs_baseline"]) == 2 * 2
    assert not same.skipped
    other = build(True, tmp_path / "other")
    assert [c for c in other.comparisons if c.kind == "vs_baseline"] == []
    skipped = [s for s in other.skipped if s.kind == "vs_baseline"]
    assert len(skipped) == 2 * 2
    name = {"aligned": "alignment", "attacked": "attack", "eval": "generation"}[stage]
    assert all(
        "different dtypes" in s.reason and f"{name} float32 vs bfloat16" in s.reason
        for s in skipped
    ), skipped[0].reason


def test_attack_effects_need_attacks_run_in_one_dtype(tmp_path: Path) -> None:
    """p = 0.2 against p = 0 of one method on one aligned model: compared when both attacks ran
    in one dtype, left out (and named) when one ran in bf16 and the other in fp32."""

    def attacks_in(grid: Path, dtype: str) -> Path:
        for path in grid.rglob("manifest.json"):
            if path.parent.name == "attacked":
                m = json.loads(path.read_text())
                path.write_text(json.dumps({**m, "dtype": dtype}))
        return grid

    same = [
        attacks_in(_grid(tmp_path / "a", 0.2, SAME), "torch.float32"),
        attacks_in(_grid(tmp_path / "b", 0.0, SAME), "torch.float32"),
    ]
    rep = report.build(report.collect(same), n_boot=0)
    assert len([c for c in rep.comparisons if c.kind == "attack_effect"]) == 2 * 2
    assert not rep.skipped
    attacks_in(same[1], "torch.bfloat16")
    rep = report.build(report.collect(same), n_boot=0)
    assert not [c for c in rep.comparisons if c.kind == "attack_effect"]
    skipped = [s for s in rep.skipped if s.kind == "attack_effect"]
    assert len(skipped) == 2 * 2
    assert all("attack float32 vs bfloat16" in s.reason for s in skipped)
