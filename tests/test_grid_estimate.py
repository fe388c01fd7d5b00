"""The dry-run's estimate of what is left of a grid (hftguard/pipeline/grid/estimate.py): steps
left per stage and defense (an unfinished run resumes from its last checkpoint), step times
measured on the grid itself or scaled from SFT's by the declared passes, evaluations at the median
finished evaluation's wall time. Checked against a sum done by hand on a grid run with fake
stages."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_grid import BASE, FakeStages, quiet

from hftguard.pipeline import grid
from hftguard.pipeline.grid.estimate import describe, estimate, steps_done
from hftguard.registry import default_registry

P02 = "sft__sft__p0.2__n20__sentiment__s42"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    return FakeStages(monkeypatch)


def _load() -> grid.Grid:
    data = {
        **BASE,
        "align": {**BASE["align"], "train": {"max_steps": 10}},
        "finetune": {**BASE["finetune"], "train": {"max_steps": 20}},
        "grid": {"align_defense": ["sft", "booster"], "harmful_ratio": [0.0, 0.2]},
    }
    return grid.load(data)


def _log(path: Path, stage: str, times: list[float]) -> None:
    rows = [{"step": i, "loss": 1.0, "step_time": t} for i, t in enumerate(times)]
    (path / f"{stage}_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _wall(path: Path, seconds: float) -> None:
    m = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**m, "wall_time_s": seconds}))


def _span(path: Path, seconds: float, end: datetime | None = None) -> datetime:
    """A finished run that took ``seconds`` from opening its directory to ``end`` (default: its
    recorded end). Returns its start. (A start moved before an input's end would make the grid
    call the run stale: move the inputs first.)"""
    m = json.loads((path / "manifest.json").read_text())
    end = end or datetime.fromisoformat(m["ended_at"])
    start = end - timedelta(seconds=seconds)
    m |= {"started_at": start.isoformat(), "ended_at": end.isoformat()}
    (path / "manifest.json").write_text(json.dumps(m))
    return start


@pytest.fixture
def half_done(fake: FakeStages, tmp_path: Path) -> tuple[grid.Grid, Path]:
    """SFT's alignment, its p = 0 cell and the base model are done; its p = 0.2 attack stopped
    at a checkpoint after 5 of 20 steps; Booster's alignment failed at once."""
    g, out = _load(), tmp_path / "out"
    fake.fail |= {"aligned/booster-s42", f"cells/{P02}/attacked"}
    with pytest.raises(grid.GridFailed):
        grid.run(g, out, reporter=quiet())
    _log(out / "aligned" / "sft-s42", "align", [2.0, 2.0, 4.0])  # median 2
    _log(out / "cells" / "sft__sft__p0__n20__sentiment__s42" / "attacked", "finetune", [1, 3, 5.0])
    attacked = out / "cells" / P02 / "attacked"
    _log(attacked, "finetune", [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0])  # 7 logged, checkpoint at 5
    (attacked / "checkpoints" / "step-0000005").mkdir(parents=True)
    _wall(out / "evals" / "base", 60.0)
    _wall(out / "evals" / "aligned-sft-s42", 120.0)
    _wall(out / "cells" / "sft__sft__p0__n20__sentiment__s42" / "eval", 90.0)
    return g, out


def test_the_estimate_by_hand(half_done: tuple[grid.Grid, Path]) -> None:
    g, out = half_done
    est = estimate(g, out, default_registry())
    rows = {(r["stage"], r["defense"]): r for r in est["training"]}
    assert set(rows) == {("align", "booster"), ("finetune", "sft")}
    # Booster's alignment: never measured, so SFT's median step (2 s) x its 3 passes; 10 steps
    booster = rows[("align", "booster")]
    assert (booster["runs"], booster["steps"], booster["basis"]) == (1, 10, "passes")
    assert booster["s_per_step"] == pytest.approx(6.0) and booster["seconds"] == pytest.approx(60)
    # fine-tuning: the p = 0.2 SFT cell resumes at its checkpoint (15 left, not 13 or 20), the two
    # Booster cells are new (20 each); the step time is the median of the runs' medians (3, 5)
    ft = rows[("finetune", "sft")]
    assert (ft["runs"], ft["steps"], ft["basis"]) == (3, 15 + 20 + 20, "measured")
    assert ft["s_per_step"] == pytest.approx(4.0)
    # evaluations: Booster's aligned model, the SFT p = 0.2 cell, both Booster cells; 90 s each
    assert est["evaluations_left"] == 4 and est["eval_seconds"] == pytest.approx(90.0)
    assert est["seconds"] == pytest.approx(60 + 55 * 4.0 + 4 * 90.0)
    # the fake stages take no time beyond their steps (0 s a run), measured on SFT's runs; for
    # Booster's alignment that is SFT's, a lower bound: the total is one
    assert (ft["s_per_run"], ft["run_basis"]) == (0.0, "measured")
    assert (booster["s_per_run"], booster["run_basis"]) == (0.0, "sft")
    assert not est["complete"] and est["repairs_left"] == 0
    text = "\n".join(describe(est))
    assert "alignment booster: 1 run(s), 10 steps left × 6.00 s (SFT's × its passes)" in text
    assert "fine-tuning sft: 3 run(s), 55 steps left × 4.00 s (measured here)" in text
    assert "evaluations: 4 left × 2 min ≈ 6 min" in text
    assert "In all ≈ 11 min for one process" in text and "lower bound" in text


def test_what_cannot_be_timed_is_said(half_done: tuple[grid.Grid, Path]) -> None:
    g, out = half_done
    (out / "aligned" / "sft-s42" / "align_log.jsonl").unlink()  # no alignment step measured
    est = estimate(g, out, default_registry())
    booster = next(r for r in est["training"] if r["stage"] == "align")
    assert booster["s_per_step"] is None and booster["seconds"] is None
    assert not est["complete"]
    text = "\n".join(describe(est))
    assert "alignment booster: 1 run(s), 10 steps left, no step time measured" in text
    assert "(a lower bound: some work above is not timed)" in text


def test_a_finished_grid_has_nothing_left(fake: FakeStages, tmp_path: Path) -> None:
    g = _load()
    grid.run(g, tmp_path / "out", reporter=quiet())
    est = estimate(g, tmp_path / "out", default_registry())
    assert est["training"] == [] and est["evaluations_left"] == 0
    assert describe(est) == ["Nothing is left: re-running this grid does no work."]


def test_steps_done_reads_the_last_checkpoint(tmp_path: Path) -> None:
    assert steps_done(tmp_path) == 0
    for name in ("step-0000050", "step-0000300", "step-0000100", "step-junk", ".tmp-step-0000350"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert steps_done(tmp_path) == 300


def test_repair_cells_share_their_attack_and_repairs_are_named(tmp_path: Path) -> None:
    g = grid.load({**BASE, "grid": {"methods": ["sft/sft", "sft/sft/safelora"], "seed": [1]}})
    est = estimate(g, tmp_path / "out", default_registry())  # nothing has run
    rows = {(r["stage"], r["defense"]): r for r in est["training"]}
    assert rows[("finetune", "sft")]["runs"] == 1  # one attack serves both cells
    assert est["repairs_left"] == 1 and est["evaluations_left"] == 1 + 1 + 2
    assert est["seconds"] is None and not est["complete"]  # nothing measured yet
    text = "\n".join(describe(est))
    assert "repair safelora: 1 left, none finished here yet to time" in text
    assert "evaluations: 4 left, none finished here yet" in text


def _repair_grid(fake: FakeStages, tmp_path: Path) -> tuple[grid.Grid, Path]:
    """SafeLoRA after SFT at p = 0 and 0.2; the p = 0.2 repair failed, p = 0's took 30 s."""
    data = {**BASE, "grid": {"methods": ["sft/sft/safelora"], "harmful_ratio": [0.0, 0.2]}}
    g, out = grid.load(data), tmp_path / "out"
    fake.fail |= {"cells/sft__sft__p0.2__n20__sentiment__s42/repaired-safelora"}
    with pytest.raises(grid.GridFailed):
        grid.run(g, out, reporter=quiet())
    _wall(out / "cells" / "sft__sft__p0__n20__sentiment__s42" / "repaired-safelora", 30.0)
    return g, out


def test_repairs_are_timed_by_their_defense(fake: FakeStages, tmp_path: Path) -> None:
    """The dry-run said "repairs: N left, not timed" even after the grid had repaired models."""
    g, out = _repair_grid(fake, tmp_path)
    est = estimate(g, out, default_registry())
    assert est["repairs"] == [
        {"defense": "safelora", "runs": 1, "s_per_run": 30.0, "basis": "measured", "seconds": 30.0}
    ]
    assert est["repairs_left"] == 1
    assert "repair safelora: 1 left × 30 s (measured here) ≈ 30 s" in "\n".join(describe(est))
    # and from another grid, for one that has repaired nothing yet
    other = estimate(g, tmp_path / "fresh", default_registry(), timings_from=[out])
    rep = next(r for r in other["repairs"] if r["defense"] == "safelora")
    assert (rep["runs"], rep["s_per_run"], rep["basis"]) == (2, 30.0, "elsewhere")


def test_what_a_run_costs_beyond_its_steps_is_measured(half_done: tuple[grid.Grid, Path]) -> None:
    """EWC's Fisher (400 forward/backward passes before step 0) and an alignment's retain set
    were in no estimate: only steps were."""
    g, out = half_done
    p0 = out / "cells" / "sft__sft__p0__n20__sentiment__s42" / "attacked"  # steps 1 + 3 + 5 s
    first = datetime.fromisoformat(json.loads((p0 / "manifest.json").read_text())["started_at"])
    # SFT's alignment (steps 2 + 2 + 4 s, median 2) took 36 s: 30 beyond its 3 steps at their
    # median (a first step that also did a one-time set-up counts that as set-up), ending 100 s
    # before p0
    _span(out / "aligned" / "sft-s42", 36.0, end=first - timedelta(seconds=100))
    _span(p0, 19.0)  # 10 s beyond its steps (its wall_time_s is not read: it starts later)
    _wall(p0, 9.0)
    est = estimate(g, out, default_registry())
    rows = {(r["stage"], r["defense"]): r for r in est["training"]}
    ft = rows[("finetune", "sft")]
    assert (ft["s_per_run"], ft["run_basis"]) == (pytest.approx(10.0), "measured")
    assert ft["runs"] == 3 and ft["seconds"] == pytest.approx(55 * 4.0 + 3 * 10.0)  # +10 s each
    booster = rows[("align", "booster")]  # never ran: SFT's alignment's 30 s, a lower bound
    assert (booster["s_per_run"], booster["run_basis"]) == (pytest.approx(30.0), "sft")
    assert booster["seconds"] == pytest.approx(10 * 6.0 + 30.0) and not est["complete"]
    text = "\n".join(describe(est))
    assert "× 4.00 s (measured here) + 10 s a run beyond its steps ≈ 4 min" in text
    assert "× 6.00 s (SFT's × its passes) + 30 s a run beyond its steps (SFT's) ≈ 2 min" in text
    # a resumed run's times span its invocations: it measures nothing beyond its steps
    m = json.loads((p0 / "manifest.json").read_text())
    (p0 / "manifest.json").write_text(
        json.dumps({**json.loads((p0 / "manifest.json").read_text()), "resumed_at": "then"})
    )
    again = estimate(g, out, default_registry())
    ft = next(r for r in again["training"] if r["stage"] == "finetune")
    assert (ft["s_per_run"], ft["run_basis"]) == (None, None)  # p0 was SFT's only finished one
    assert "(measured here) + a run's set-up, not measured yet ≈" in "\n".join(describe(again))
    # a span below the steps' sum (clock trouble) counts as nothing beyond them, not less
    (p0 / "manifest.json").write_text(json.dumps(m))
    _span(p0, 5.0)
    low = estimate(g, out, default_registry())
    ft = next(r for r in low["training"] if r["stage"] == "finetune")
    assert (ft["s_per_run"], ft["run_basis"]) == (0.0, "measured")


def _bench(path: Path, model: str, rows: list[tuple[str, str, float]]) -> Path:
    defenses = [{"stage": st, "defense": d, "ratio_to_sft": r} for st, d, r in rows]
    path.write_text(json.dumps({"model": {"name": model}, "defenses": defenses}))
    return path


def test_a_bench_ratio_scales_sft_where_passes_would(
    half_done: tuple[grid.Grid, Path], tmp_path: Path
) -> None:
    """RepNoise declares 2 passes and costs 7 SFT steps on SmolLM2 (its logit lens): the
    dry-run said 1.3 h for an alignment that took 4.5. A bench of the model measures the ratio."""
    g, out = half_done
    model = g.base.align.model
    bench = _bench(
        tmp_path / "bench.json",
        model,
        [("align", "sft", 1.0), ("align", "booster", 5.0), ("finetune", "sft", 1.0)],
    )
    est = estimate(g, out, default_registry(), timings_from=[bench])
    rows = {(r["stage"], r["defense"]): r for r in est["training"]}
    booster = rows[("align", "booster")]
    assert (booster["basis"], booster["s_per_step"]) == ("bench", pytest.approx(2.0 * 5.0))
    assert rows[("finetune", "sft")]["basis"] == "measured"  # a measurement beats any ratio
    assert "× 10.00 s (SFT's × the bench's ratio)" in "\n".join(describe(est))
    # the ratio is to the bench's own SFT step of the same stage
    _bench(bench, model, [("align", "sft", 2.0), ("align", "booster", 5.0)])
    est = estimate(g, out, default_registry(), timings_from=[bench])
    booster = next(r for r in est["training"] if r["defense"] == "booster")
    assert booster["s_per_step"] == pytest.approx(2.0 * 2.5)
    # without the defense's row (or SFT's), the passes scale as before
    _bench(bench, model, [("align", "booster", 5.0)])
    est = estimate(g, out, default_registry(), timings_from=[bench])
    assert next(r for r in est["training"] if r["defense"] == "booster")["basis"] == "passes"


def test_what_the_passes_leave_out_is_said(
    half_done: tuple[grid.Grid, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defense whose declared passes leave part of its cost out (RepNoise's logit lens) says
    so beside the estimate they scale; the others say nothing more."""
    from hftguard.builtins.defenses.booster import Booster
    from hftguard.builtins.defenses.repnoise import RepNoise

    assert "logit lens" in RepNoise.passes_note
    g, out = half_done
    text = "\n".join(describe(estimate(g, out, default_registry())))
    assert "(SFT's × its passes) + " in text and "hftguard bench" not in text
    monkeypatch.setattr(Booster, "passes_note", "its extra heads are not counted")
    est = estimate(g, out, default_registry())
    booster = next(r for r in est["training"] if r["defense"] == "booster")
    assert booster["note"] == "its extra heads are not counted"
    line = next(x for x in describe(est) if x.startswith("alignment booster"))
    assert line.endswith(
        "(its extra heads are not counted; `hftguard bench --json` measures it: --timings-from)"
    )


def test_a_bench_in_another_precision_or_device_is_refused(
    half_done: tuple[grid.Grid, Path], tmp_path: Path
) -> None:
    """A defense's cost relative to SFT differs between fp32 and bf16, and between a CPU and a
    GPU: a bench that says where it ran is used only for a grid that trains the same way here."""
    from hftguard.errors import ConfigError
    from hftguard.pipeline.grid.estimate import training_setting

    g, out = half_done
    device, dtype = training_setting(g.base.align.train)
    assert training_setting(g.base.finetune.train) == (device, dtype)
    bench = _bench(tmp_path / "b.json", g.base.align.model, [("align", "sft", 1.0)])
    rows = [("align", "sft", 1.0), ("align", "booster", 5.0)]
    other = "float16" if dtype != "float16" else "float32"
    for env, refused in (
        ({"device": f"{device}:0" if device == "cuda" else device, "dtype": dtype}, False),
        ({"device": device, "dtype": other}, True),
        ({"device": "cuda:0" if device != "cuda" else "cpu", "dtype": dtype}, True),
    ):
        data = json.loads(_bench(bench, g.base.align.model, rows).read_text())
        bench.write_text(json.dumps({**data, "environment": env}))
        if refused:
            with pytest.raises(ConfigError, match=r"that bench ran in .* this grid's align stage"):
                estimate(g, out, default_registry(), timings_from=[bench])
        else:
            est = estimate(g, out, default_registry(), timings_from=[bench])
            assert next(r for r in est["training"] if r["defense"] == "booster")["basis"] == "bench"


def test_a_bench_of_another_model_or_no_bench_is_refused(
    half_done: tuple[grid.Grid, Path], tmp_path: Path
) -> None:
    from hftguard.errors import ConfigError

    g, out = half_done
    bench = _bench(tmp_path / "b.json", "smollm2-135m-instruct", [("align", "booster", 7.0)])
    with pytest.raises(ConfigError, match="that bench timed smollm2-135m-instruct; this grid"):
        estimate(g, out, default_registry(), timings_from=[bench])
    bench.write_text(json.dumps({"model": {"name": "x"}, "runs": {}, "precision_comparison": {}}))
    with pytest.raises(ConfigError, match="compared several precisions"):
        estimate(g, out, default_registry(), timings_from=[bench])
    # rows that are not rows are passed over, not a traceback
    bench.write_text(json.dumps({"model": {"name": g.base.align.model}, "defenses": [1, None]}))
    assert estimate(g, out, default_registry(), timings_from=[bench])["seconds"] is not None
    for text in ("{not json", "[1, 2]", json.dumps({"model": {"name": "x"}})):
        bench.write_text(text)
        with pytest.raises(ConfigError, match=f"--timings-from {bench}: "):
            estimate(g, out, default_registry(), timings_from=[bench])


def test_timings_from_another_grid(half_done: tuple[grid.Grid, Path], tmp_path: Path) -> None:
    """A grid that has measured nothing takes the step and evaluation times of one that ran."""
    g, ran = half_done
    fresh = estimate(g, tmp_path / "fresh", default_registry())
    assert fresh["seconds"] is None  # nothing to time by
    est = estimate(g, tmp_path / "fresh", default_registry(), timings_from=[ran])
    rows = {(r["stage"], r["defense"]): r for r in est["training"]}
    assert rows[("align", "sft")]["basis"] == "elsewhere"
    assert rows[("align", "sft")]["s_per_step"] == pytest.approx(2.0)
    assert rows[("finetune", "sft")]["s_per_step"] == pytest.approx(4.0)
    # Booster's alignment ran nowhere: scaled from the other grid's SFT step
    assert rows[("align", "booster")]["basis"] == "passes"
    assert rows[("align", "booster")]["s_per_step"] == pytest.approx(6.0)
    assert est["eval_seconds"] == pytest.approx(90.0)
    assert "× 2.00 s (measured in --timings-from)" in "\n".join(describe(est))


def test_timings_from_needs_a_dry_run_and_a_directory(cli: Any, tmp_path: Path) -> None:
    from cli_helpers import assert_error

    (tmp_path / "g.toml").write_text(
        'evaluate_base = false\n[align]\nmodel = "tiny-random"\nretain = ""\n'
        "[grid]\nharmful_ratio = [0.2]\n"
    )
    res = cli("run", "g.toml", "--out", "o", "--timings-from", str(tmp_path))
    assert_error(res, 2, "--timings-from only estimates a plan: it needs --dry-run.")
    assert not (tmp_path / "o").exists()
    res = cli("run", "g.toml", "--out", "o", "--dry-run", "--timings-from", "nowhere")
    assert_error(res, 2, "--timings-from nowhere: no such directory or file.")
    res = cli("run", "g.toml", "--out", "o", "--dry-run", "--timings-from", str(tmp_path))
    assert res.code == 0, res.err
    assert "no step time measured yet (here or in --timings-from)" in res.out
    # a bench file: read, checked, and a bad one refused before anything is printed
    (tmp_path / "bench.json").write_text("{}")
    res = cli("run", "g.toml", "--out", "o", "--dry-run", "--timings-from", "bench.json")
    assert_error(res, 2, "--timings-from bench.json: not a `hftguard bench` result")
    assert "cell" not in res.out
    _bench(tmp_path / "bench.json", "tiny-random", [("align", "sft", 1.0)])
    res = cli("run", "g.toml", "--out", "o", "--dry-run", "--timings-from", "bench.json")
    assert res.code == 0, res.err


def test_a_short_evaluation_is_not_shown_as_zero_minutes() -> None:
    """On the H100 an evaluation took ~9 s, and the dry-run said "22 left × 0 min ≈ 3 min"."""
    est = {
        "training": [],
        "evaluations_left": 22,
        "eval_seconds": 9.0,
        "repairs_left": 0,
        "seconds": 198.0,
        "complete": True,
    }
    assert "evaluations: 22 left × 9 s ≈ 3 min" in "\n".join(describe(est))


def test_the_json_plan_carries_the_estimate(cli: Any, tmp_path: Path) -> None:
    """`run --dry-run --json` printed the cells only; the estimate was for the eye alone."""
    (tmp_path / "g.toml").write_text(
        'evaluate_base = false\n[align]\nmodel = "tiny-random"\nretain = ""\n'
        "[align.train]\nmax_steps = 7\n[finetune.train]\nmax_steps = 9\n"
        "[grid]\nharmful_ratio = [0.0, 0.2]\n"
    )
    res = cli("run", "g.toml", "--out", "o", "--dry-run", "--json")
    assert res.code == 0, res.err
    got = json.loads(res.out)
    assert got["out"] == "o" and [c["status"] for c in got["cells"]] == ["left", "left"]
    rows = {(r["stage"], r["defense"]): r for r in got["estimate"]["training"]}
    assert (rows[("align", "sft")]["runs"], rows[("align", "sft")]["steps"]) == (1, 7)
    assert (rows[("finetune", "sft")]["runs"], rows[("finetune", "sft")]["steps"]) == (2, 18)
    assert got["estimate"]["evaluations_left"] == 3 and got["estimate"]["seconds"] is None
    assert not (tmp_path / "o").exists()


def test_a_bench_and_a_grid_name_one_model_by_alias_or_by_path(tmp_path: Path) -> None:
    from hftguard.pipeline.grid.estimate import _same_model

    (tmp_path / "m").mkdir()
    (tmp_path / "x").mkdir()
    assert _same_model("smollm2-135m-instruct", "smollm2-135m-instruct")
    assert _same_model(str(tmp_path / "m"), str(tmp_path / "x" / ".." / "m"))
    assert not _same_model(str(tmp_path / "m"), str(tmp_path / "n"))  # one does not exist
    assert not _same_model("smollm2-135m-instruct", "tiny-random")


def test_a_narrowed_plan_takes_the_times_measured_beside_it(
    half_done: tuple[grid.Grid, Path], tmp_path: Path
) -> None:
    """A plan narrowed by --set to a ratio not run yet (calibrated-small's p = 0.1 column beside
    its finished p = 0.2 cells) takes the step, run and evaluation times of the other runs under
    the same --out (basis "beside"), not "no step time measured yet"; its own come first."""
    _, out = half_done
    data = {
        **BASE,
        "evaluate_base": False,
        "align": {**BASE["align"], "train": {"max_steps": 10}},
        "finetune": {**BASE["finetune"], "train": {"max_steps": 20}},
        "grid": {"align_defense": ["sft"], "harmful_ratio": [0.1]},
    }
    narrowed = grid.load(data)
    alone = estimate(narrowed, tmp_path / "fresh", default_registry())
    assert alone["training"][0]["s_per_step"] is None
    est = estimate(narrowed, out, default_registry())
    (ft,) = est["training"]  # SFT's alignment is done and in the plan: only the attack is left
    # the step: the median of the two SFT attacks' medians under --out (3 and 5), as measured
    assert (ft["stage"], ft["steps"], ft["basis"]) == ("finetune", 20, "beside")
    assert ft["s_per_step"] == pytest.approx(4.0)
    assert ft["run_basis"] == "beside" and ft["s_per_run"] == pytest.approx(0.0)
    # evaluations: the plan's own (the aligned model's, 120 s) before those beside it (median 90)
    assert est["evaluations_left"] == 1 and est["eval_seconds"] == pytest.approx(120.0)
    assert est["seconds"] == pytest.approx(20 * 4.0 + 120.0) and est["complete"]
    assert "× 4.00 s (measured under --out, outside this plan)" in "\n".join(describe(est))
    # a run kept aside under --out (a hidden copy --overwrite made) is not a run of its own
    aside = out / "cells" / ".aside" / "attacked"
    aside.mkdir(parents=True)
    done = out / "cells" / "sft__sft__p0__n20__sentiment__s42" / "attacked"
    (aside / "manifest.json").write_text((done / "manifest.json").read_text())
    _log(aside, "finetune", [99.0] * 5)
    assert estimate(narrowed, out, default_registry())["training"][0]["s_per_step"] == 4.0
    # a plan with nothing of its own measured: Booster's alignment scales SFT's step measured
    # beside it by its passes (2 s x 3), its evaluations take the median of those beside it
    booster = grid.load({**data, "grid": {"align_defense": ["booster"], "harmful_ratio": [0.1]}})
    b = estimate(booster, out, default_registry())
    rows = {r["stage"]: r for r in b["training"]}
    assert (rows["align"]["basis"], rows["align"]["s_per_step"]) == ("passes", pytest.approx(6.0))
    assert b["evaluations_left"] == 2 and b["eval_seconds"] == pytest.approx(90.0)
    # --timings-from comes after what was measured beside the plan
    other = tmp_path / "other"
    (other / "run").mkdir(parents=True)
    m = json.loads((done / "manifest.json").read_text())
    (other / "run" / "manifest.json").write_text(json.dumps(m))
    _log(other / "run", "finetune", [9.0, 9.0])
    again = estimate(narrowed, out, default_registry(), timings_from=[other])
    assert again["training"][0]["s_per_step"] == pytest.approx(4.0)
    fresh = estimate(narrowed, tmp_path / "fresh", default_registry(), timings_from=[other])
    rows = {r["stage"]: r for r in fresh["training"]}
    assert (rows["finetune"]["s_per_step"], rows["finetune"]["basis"]) == (9.0, "elsewhere")
