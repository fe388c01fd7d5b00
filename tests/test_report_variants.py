"""Runs of one method whose defenses differ in their options (a sweep of Vaccine's rho, each
value in its own run directory) are rows of their own in one report, "Booster (lam=3)", each
paired with the baseline and with its own p = 0 run; their aligned models are rows of their own
in the "before" table. Before, the attacked evaluations were refused as duplicate seeds, and the
aligned models of the two option values were averaged as if they were seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_attack import write_grid

from hftguard.errors import RunDirError
from hftguard.pipeline import report
from hftguard.pipeline.grid import Cell

LABELS = {"sft/sft": "SFT", "booster/sft": "Booster"}


def _grid(root: Path, methods: list[str], seeds: tuple[int, ...], k_harm: int, lam: float) -> Path:
    cells = []
    for method in methods:
        a, f = method.split("/")
        for seed in seeds:
            for p in (0.0, 0.2):
                k = k_harm if (a == "booster" and p) else (18 if p else 2)
                cells.append((Cell(a, f, p, 100, "sentiment", seed), k, 9, None))
    grid = write_grid(root, cells, methods, LABELS)
    for seed in seeds:
        path = grid / "aligned" / f"booster-s{seed}" / "manifest.json"
        if path.exists():
            m = json.loads(path.read_text())
            m["config"]["defense_options"] = {"lam": lam}
            path.write_text(json.dumps(m))
    return grid


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("variants")
    return [
        _grid(tmp / "a", ["sft/sft", "booster/sft"], (1, 2), 4, 5.0),  # lam 5.0 (a TOML float)
        _grid(tmp / "b", ["booster/sft"], (1, 2), 12, 3.0),
        _grid(tmp / "c", ["booster/sft"], (3,), 4, 5),  # lam 5 (a --set integer): the same value
    ]


def test_option_values_are_rows_of_their_own(sweep: list[Path]) -> None:
    rep = report.build(report.collect(sweep), n_boot=200)
    rows = {r.label: r for r in rep.rows}
    assert set(rows) == {"SFT", "Booster (lam=5)", "Booster (lam=3)"}
    lam5, lam3 = rows["Booster (lam=5)"], rows["Booster (lam=3)"]
    assert lam5.method == lam3.method == "booster/sft"
    cell5, cell3 = rep.cells[(lam5.key, 0.2)], rep.cells[(lam3.key, 0.2)]
    assert cell5.seeds == [1, 2, 3] and cell3.seeds == [1, 2]  # lam 5 and 5.0 agree
    assert cell5.hs.mean == pytest.approx(20.0) and cell3.hs.mean == pytest.approx(60.0)
    # each paired with SFT of the same seed: (4 - 18) / 20 and (12 - 18) / 20
    assert cell3.vs_baseline["hs"].mean == pytest.approx(-30.0)
    assert cell3.vs_baseline["hs"].seeds == [1, 2]
    # ... and with its own p = 0 run, not the other value's
    effects = [c for c in rep.comparisons if c.kind == "attack_effect" and c.metric == "hs"]
    for c in effects:
        assert c.run.variant == c.ref.variant and c.run.path.parents[3] == c.ref.path.parents[3]
    assert sum(c.run.variant == {"lam": 3.0} for c in effects) == 2


def test_aligned_models_with_other_options_are_not_averaged_as_seeds(sweep: list[Path]) -> None:
    rep = report.build(report.collect(sweep), n_boot=0)
    before = {label: c for label, c, _ in rep.before}
    assert before["Booster (lam=5)"].seeds == [1, 2, 3]
    assert before["Booster (lam=3)"].seeds == [1, 2]
    d = report.report_dict(rep)
    cells = [c for c in d["cells"] if c["method"] == "booster/sft"]
    assert sorted(c["variant"]["lam"] for c in cells) == [3.0, 3.0, 5.0, 5.0]
    assert "variant" not in next(c for c in d["cells"] if c["method"] == "sft/sft")
    csv_text = report.to_csv(rep)
    assert csv_text.splitlines()[0].split(",").count("variant") == 1
    lines = csv_text.splitlines()
    col = lines[0].split(",").index("variant")
    assert sorted(line.split(",")[col] for line in lines[1:] if ",booster/sft," in line) == [
        "lam=3",
        "lam=3",
        "lam=5",
        "lam=5",
    ]
    md = report.to_markdown(rep)
    assert "| Booster (lam=3) |" in md and "| SFT |" in md and "SFT ()" not in md


def test_one_option_value_gives_no_variant(sweep: list[Path]) -> None:
    rep = report.build(report.collect(sweep[:1]), n_boot=0)
    assert [r.label for r in rep.rows] == ["SFT", "Booster"]
    assert "variant" not in report.to_csv(rep).splitlines()[0].split(",")


def test_the_same_options_twice_are_still_refused(sweep: list[Path], tmp_path: Path) -> None:
    twin = _grid(tmp_path / "twin", ["booster/sft"], (1,), 12, 3.0)
    with pytest.raises(RunDirError, match="average them as if they were seeds"):
        report.build(report.collect([sweep[1], twin]), n_boot=0)


def test_two_aligned_models_alone_are_not_averaged(sweep: list[Path]) -> None:
    """The aligned models' evaluations given one by one: no attacked row to refuse them, so the
    old report silently averaged lam = 5 and lam = 3 as two evaluations of one model."""
    evals = [g / "evals" / "aligned-booster-s1" for g in sweep[:2]]
    rep = report.build(report.collect(evals), n_boot=0)
    assert sorted(label for label, _, _ in rep.before) == ["booster (lam=3)", "booster (lam=5)"]
    assert all(c.seeds == [1] for _, c, _ in rep.before)


def test_a_float_and_an_integer_of_one_value_are_no_variant(sweep: list[Path]) -> None:
    rep = report.build(report.collect([sweep[0], sweep[2]]), n_boot=0)  # lam 5.0 and lam 5
    assert [r.label for r in rep.rows] == ["SFT", "Booster"]
    assert rep.cells[(rep.rows[1].key, 0.2)].seeds == [1, 2, 3]


def test_an_aligned_model_evaluated_again_counts_once(sweep: list[Path], tmp_path: Path) -> None:
    """A sweep directory that copied the grid's aligned model and its evaluation: the Before
    table keeps one evaluation per model and seed and names the other."""
    copy = _grid(tmp_path / "copy", ["booster/sft"], (1,), 12, 5.0)  # lam 5.0 as in grid a
    again = copy / "evals" / "aligned-booster-s1"
    rep = report.build(report.collect([sweep[0], again]), n_boot=0)
    before = {label: c for label, c, _ in rep.before}
    assert before["Booster"].seeds == [1, 2]  # not [1, 1, 2]
    first = sweep[0] / "evals" / "aligned-booster-s1"
    kept = {r.path for r in before["Booster"].runs if r.seed == 1}
    assert len(rep.before_repeated) == 1 and kept | {rep.before_repeated[0].path} == {first, again}
    assert "Evaluated again, the same model (and seed)" in report.to_markdown(rep)
    assert report.report_dict(rep)["before_repeated"] == [str(rep.before_repeated[0].path)]


def test_figures_draw_a_variant_like_its_row(sweep: list[Path]) -> None:
    """The secondary figures (training curves, alignment dynamics) tell the variants apart as the
    main figures do: the first row of a method solid, the next dashed, same colour."""
    from hftguard.pipeline.report.plots import LINESTYLES, _line, _variants, report_styles

    rep = report.build(report.collect(sweep[:2]), n_boot=0)
    styles = report_styles(rep)
    first, second = styles["Booster (lam=5)"], styles["Booster (lam=3)"]
    assert first.color == second.color and first.marker == second.marker
    rows = {r.label: r for r in rep.rows}
    index = _variants(rep.rows)
    assert (
        (first.variant, second.variant)
        == (
            index[rows["Booster (lam=5)"].key],
            index[rows["Booster (lam=3)"].key],
        )
        == (0, 1)
    )
    assert "ls" not in _line(first, [0, 1]) and _line(second, [0, 1])["ls"] == LINESTYLES[1]


def test_a_variant_that_did_not_converge_is_named_by_its_row(sweep: list[Path]) -> None:
    """The convergence check names the row a reader sees (and the sweep pick matches on)."""
    log = sweep[1] / "aligned" / "booster-s1" / "align_log.jsonl"
    saved = log.read_text()
    try:
        rows = [{"step": i, "loss": 2.5 if i < 50 else 5.8} for i in range(100)]
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        rep = report.build(report.collect(sweep[:2]), n_boot=0)
    finally:
        log.write_text(saved)
    (item,) = rep.not_converged
    assert item.labels == ["Booster (lam=3)"]  # the attacked row (and its aligned model's)


def test_the_per_seed_comparisons_name_the_variant(sweep: list[Path]) -> None:
    """Found on the GPU run's report: Lisa's rho = 0.1 and rho = 10 were both "Lisa" in the
    per-seed table and the JSON's comparisons, so their lines could not be told apart."""
    from hftguard.pipeline.report import render

    rep = report.build(report.collect(sweep[:2]), n_boot=50)
    rows = render.pairs_table(rep)[1]
    hs_vs_sft = {r[1] for r in rows if r[0] == "vs baseline" and r[5] == "HS"}
    assert hs_vs_sft == {"Booster (lam=5)", "Booster (lam=3)"}
    as_json = report.report_dict(rep)["comparisons"]
    assert {c.get("variant") for c in as_json if c["method"] == "booster/sft"} == {
        "lam=5",
        "lam=3",
    }
    # the attack effect's reference is the variant's own p = 0 run, named with its variant
    effects = [c for c in as_json if c["kind"] == "attack_effect" and c["method"] == "booster/sft"]
    assert effects and all(c["reference_variant"] == c["variant"] for c in effects)


def test_a_report_over_relative_paths_shows_them_relative(
    sweep: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The committed H100 report, built from runs/gpu/..., named /work/main/runs/gpu/... in its
    notes and JSON: paths under the working directory are shown relative to it."""
    import os

    monkeypatch.chdir(sweep[0].parent)
    rel = [Path(os.path.relpath(p)) for p in sweep[:2]]
    rep = report.build(report.collect(rel), n_boot=0)
    text = json.dumps(report.report_dict(rep)) + report.to_markdown(rep)
    assert str(sweep[0].parent) not in text
    assert f'"eval_dir": "{rel[0]}/' in text or f'"eval_dir": "{rel[1]}/' in text
    monkeypatch.chdir(tmp_path)  # elsewhere: absolute
    assert str(sweep[0]) in json.dumps(report.report_dict(rep))
