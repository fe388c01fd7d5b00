"""``hftguard run`` grids: expansion and naming, shared stages, skipping, resume, content caching.

The stage functions are replaced by fakes that write a completed manifest and count their calls, so
these tests check the grid's bookkeeping in milliseconds; tests/test_report.py runs a real grid on
the tiny-random model.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hftguard import config as cfgmod
from hftguard.console import Reporter
from hftguard.errors import ConfigError, HftguardError, RunDirError
from hftguard.pipeline import align, attack_finetune, cache, evaluate, grid, repair
from hftguard.records import Verdict
from hftguard.runs import atomic_write_json, stamp

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "evaluate_base": True,
    "align": {"model": "tiny-random", "retain": "", "train": {"max_steps": 1}},
    "finetune": {"samples": 20, "train": {"max_steps": 1}},
    "eval": {"harmful_samples": 4},
}


def load(**grid_table: Any) -> grid.Grid:
    return grid.load({**BASE, "grid": grid_table})


# ------------------------------------------------------------------------------------------------
# Expansion and naming


def test_axes_expand_to_their_product_with_readable_names() -> None:
    g = load(
        align_defense=["sft", "booster"],
        finetune_defense="sft",
        harmful_ratio=[0.0, 0.1, 0.2],
        seed=[42, 43],
    )
    assert len(g.cells) == 2 * 3 * 2
    names = [c.name for c in g.cells]
    assert len(set(names)) == len(names)
    assert "booster__sft__p0.1__n20__sentiment__s43" in names
    assert "sft__sft__p0__n20__sentiment__s42" in names
    assert g.cells[0].label == "sft/sft p=0 n=20 sentiment s42"
    # one group per aligned model, in first-seen order, each holding every p of its seed
    groups = g.groups()
    assert [k for k, _ in groups] == [("sft", 42), ("sft", 43), ("booster", 42), ("booster", 43)]
    assert all(len(cells) == 3 for _, cells in groups)
    lay = grid.Layout(Path("OUT"), g)
    cell = g.cells[4]
    assert lay.aligned("booster", 43) == Path("OUT/aligned/booster-s43")
    assert lay.aligned_eval("booster", 43) == Path("OUT/evals/aligned-booster-s43")
    assert lay.attacked(cell) == Path(f"OUT/cells/{cell.name}/attacked")
    assert lay.cell_eval(cell) == Path(f"OUT/cells/{cell.name}/eval")
    assert lay.base_eval() == Path("OUT/evals/base")


def test_missing_axes_take_the_base_config_values() -> None:
    g = load(harmful_ratio=[0.05, 0.1, 0.1])  # duplicates are dropped
    assert [c.p for c in g.cells] == [0.05, 0.1]
    c = g.cells[0]
    assert (c.align, c.finetune, c.n, c.task, c.seed) == ("sft", "sft", 20, "sentiment", 42)
    assert not g.seed_axis and not g.task_axis


def test_explicit_methods_and_labels() -> None:
    g = load(
        methods=["sft/sft", "antibody/antibody", "sft/lisa"],
        harmful_ratio=[0.1],
        labels={"sft/lisa": "Lisa"},
    )
    assert [c.method for c in g.cells] == ["sft/sft", "antibody/antibody", "sft/lisa"]
    assert [k for k, _ in g.groups()] == [("sft", 42), ("antibody", 42)]  # sft shared by 2
    assert g.method_label("sft/lisa") == "Lisa" and g.method_label("sft/sft") == "sft/sft"


def test_align_seed_fixes_the_alignment_and_the_seed_axis_varies_fine_tuning_only() -> None:
    g = load(align_defense=["sft", "booster"], harmful_ratio=[0.2], seed=[42, 43, 44], align_seed=7)
    # one aligned model per alignment defense, at seed 7, serving all three fine-tuning seeds
    groups = g.groups()
    assert [k for k, _ in groups] == [("sft", 7), ("booster", 7)]
    assert [[c.seed for c in cells] for _, cells in groups] == [[42, 43, 44], [42, 43, 44]]
    assert g.align_config("booster", g.align_seed(g.cells[4])).seed == 7
    f = g.finetune_config(g.cells[4], "OUT/aligned/booster-s7")
    assert (f.seed, f.model) == (43, "OUT/aligned/booster-s7")
    # without it the seed axis sets both stages' seeds
    assert [k for k, _ in load(harmful_ratio=[0.2], seed=[42, 43]).groups()] == [
        ("sft", 42),
        ("sft", 43),
    ]


def test_align_seed_runs_each_alignment_once(fake: FakeStages, tmp_path: Path) -> None:
    g = load(harmful_ratio=[0.0, 0.2], seed=[1, 2, 3], align_seed=9)
    summary = grid.run(g, tmp_path / "out", reporter=quiet())
    assert fake.calls == {"align": 1, "finetune": 6, "eval": 1 + 1 + 6}
    assert (tmp_path / "out" / "aligned" / "sft-s9").is_dir()
    assert {r.get("seed") for r in summary["rows"] if r["kind"] == "attacked"} == {1, 2, 3}
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["grid"]["align_seed"] == 9


def test_cell_configs() -> None:
    data = {
        **BASE,
        "align": {**BASE["align"], "defense": "booster", "defense_options": {"lam": 3.0}},
        "grid": {
            "align_defense": ["sft", "booster", "antibody"],
            "harmful_ratio": [0.2],
            "samples": [40],
            "task": ["arithmetic"],
            "seed": [7],
            "align_options": {"antibody": {"eta": 4.0}},
            "finetune_options": {"sft": {}},
        },
    }
    g = grid.load(data)
    # base options apply to the base defense only; per-defense options overlay them
    assert g.align_config("booster", 7).defense_options == {"lam": 3.0}
    assert g.align_config("sft", 7).defense_options == {}
    assert g.align_config("antibody", 7).defense_options == {"eta": 4.0}
    a = g.align_config("sft", 7)
    assert (a.defense, a.seed, a.model) == ("sft", 7, "tiny-random")
    cell = g.cells[0]
    f = g.finetune_config(cell, "OUT/aligned/sft-s7")
    assert (f.model, f.harmful_ratio, f.samples, f.task, f.seed) == (
        "OUT/aligned/sft-s7",
        0.2,
        40,
        "arithmetic",
        7,
    )
    e = g.cell_eval_config(cell, "OUT/cells/x/attacked")
    assert e.tasks == ["arithmetic"] and e.seed == 42  # eval prompts do not follow the seed axis
    assert g.eval_config("m").tasks == ["arithmetic"]


def test_no_grid_table_is_the_single_pipeline() -> None:
    data = cfgmod.load_toml(ROOT / "configs" / "demo.toml")
    g = grid.load(data)
    assert not g.is_grid and len(g.cells) == 1
    base = cfgmod.build(cfgmod.PipelineConfig, data)
    assert g.align_config("sft", 42) == base.align
    assert g.finetune_config(g.cells[0], "X") == dataclasses.replace(base.finetune, model="X")
    assert g.cell_eval_config(g.cells[0], "Y") == dataclasses.replace(base.eval, model="Y")
    lay = grid.Layout(Path("OUT"), g)
    assert [
        lay.base_eval(),
        lay.aligned("sft", 42),
        lay.aligned_eval("sft", 42),
        lay.attacked(g.cells[0]),
        lay.cell_eval(g.cells[0]),
    ] == [
        Path("OUT") / n
        for n in ("base-eval", "aligned", "aligned-eval", "attacked", "attacked-eval")
    ]


def test_skip_align_and_none_fine_tune_the_base_model() -> None:
    g = grid.load({**BASE, "skip_align": True, "grid": {"harmful_ratio": [0.1]}})
    assert g.cells[0].align == grid.NO_ALIGN
    g = load(align_defense=["none", "sft"])
    assert [c.align for c in g.cells] == ["none", "sft"]


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ({"harmfull_ratio": [0.1]}, "Did you mean 'harmful_ratio'"),
        ({"harmful_ratio": [0.1, 1.5]}, "grid.harmful_ratio"),
        ({"samples": []}, "empty list"),
        ({"seed": ["x"]}, "grid.seed[0]"),
        ({"align_seed": [42, 43]}, "grid.align_seed must be one integer"),
        ({"align_seed": True}, "grid.align_seed must be one integer"),
        ({"methods": ["sft"]}, "align/finetune"),
        ({"methods": ["sft/sft/safelora/x"]}, "align/finetune/repair"),
        ({"repair_options": {"safelora": 3}}, "table of tables"),
        ({"methods": ["sft/sft"], "align_defense": ["sft"]}, "cannot be combined"),
        ({"align_options": {"booster": 5}}, "table of tables"),
    ],
)
def test_bad_grid_tables_are_config_errors(table: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(**table)
    assert needle in str(err.value)


def test_check_resolves_every_component_name(registry: Any) -> None:
    # BASE fine-tunes for 1 step: Lisa without alignment states (0/900) has no cycle to finish
    grid.check(
        load(finetune_defense=["sft", "lisa"], finetune_options={"lisa": {"k_align": 0}}), registry
    )
    with pytest.raises(ConfigError, match="lisaa"):
        grid.check(load(finetune_defense=["sft", "lisaa"]), registry)
    with pytest.raises(ConfigError, match="defense_options"):
        grid.check(
            load(align_defense=["booster"], align_options={"booster": {"lamm": 1}}), registry
        )


def test_repair_methods_add_a_third_stage_and_its_options(registry: Any) -> None:
    g = load(
        methods=["sft/sft", "sft/sft/safelora"],
        harmful_ratio=[0.2],
        repair_options={"safelora": {"num_layers": 3}},
    )
    grid.check(g, registry)
    plain, repaired = g.cells
    assert (plain.method, repaired.method) == ("sft/sft", "sft/sft/safelora")
    assert plain.attack_name == plain.name == repaired.attack_name != repaired.name
    assert "repair" not in plain.coords() and repaired.coords()["repair"] == "safelora"
    r = g.repair_config(repaired, "OUT/cells/x/attacked")
    assert (r.model, r.defense, r.defense_options) == (
        "OUT/cells/x/attacked",
        "safelora",
        {"num_layers": 3},
    )
    with pytest.raises(ConfigError, match="safeloar"):
        grid.check(load(methods=["sft/sft/safeloar"]), registry)
    with pytest.raises(ConfigError, match="num_layer"):
        grid.check(
            load(methods=["sft/sft/safelora"], repair_options={"safelora": {"num_layer": 1}}),
            registry,
        )


def test_repair_cells_share_the_attacked_model_and_rerun_does_no_work(
    fake: FakeStages, tmp_path: Path
) -> None:
    g = load(methods=["sft/sft", "sft/sft/safelora"], harmful_ratio=[0.2], seed=[1])
    out = tmp_path / "out"
    summary = grid.run(g, out, reporter=quiet())
    # one alignment, ONE attack serving both cells, one repair; evals: base, aligned, 2 cells
    assert fake.calls == {"align": 1, "finetune": 1, "repair": 1, "eval": 4}
    cell = out / "cells" / g.cells[0].attack_name
    assert {p.name for p in cell.iterdir()} == {
        "attacked",
        "eval",
        "repaired-safelora",
        "eval-safelora",
    }
    repaired_eval = json.loads((cell / "eval-safelora" / "manifest.json").read_text())
    assert repaired_eval["config"]["model"] == f"cells/{g.cells[0].attack_name}/repaired-safelora"
    rows = {r["cell"]: r for r in grid.plan(g, out)}
    assert [r["repair"] for r in rows.values()] == ["-", "done"]
    assert all(r["status"] == "done" for r in rows.values())
    assert [c.get("repaired") for c in summary["cells"]] == [
        None,
        f"cells/{g.cells[0].attack_name}/repaired-safelora",
    ]
    before = len(fake.log)
    grid.run(g, out, reporter=quiet())
    assert len(fake.log) == before  # every stage was done: no stage function was called
    assert {p.name for p in cell.iterdir()} == {
        "attacked",
        "eval",
        "repaired-safelora",
        "eval-safelora",
    }


def test_fine_tuning_baselines_are_grid_methods(registry: Any) -> None:
    methods = ["sft/kl", "sft/mixing", "sft/mixing-joint", "sft/ewc"]
    g = load(methods=methods, finetune_options={"ewc": {"fisher_batches": 2}})
    grid.check(g, registry)
    assert [c.method for c in g.cells] == methods
    configs = {c.finetune: g.finetune_config(c, "aligned") for c in g.cells}
    assert {name: cfg.defense for name, cfg in configs.items()} == {
        "kl": "kl",
        "mixing": "mixing",
        "mixing-joint": "mixing-joint",
        "ewc": "ewc",
    }
    assert configs["ewc"].defense_options == {"fisher_batches": 2}
    small_batch = grid.load(
        {
            **BASE,
            "finetune": {**BASE["finetune"], "train": {"max_steps": 1, "batch_size": 2}},
            "grid": {"methods": ["sft/mixing-joint"]},
        }
    )
    with pytest.raises(ConfigError, match="guide_batch_size = 4"):  # before any stage runs
        grid.check(small_batch, registry)


def test_check_refuses_a_lisa_schedule_longer_than_the_run(registry: Any) -> None:
    with pytest.raises(ConfigError, match=r"100\+900 = 1000 steps; this run has 1 step"):
        grid.check(load(finetune_defense=["sft", "lisa"]), registry)


def test_shipped_papers_grid_is_valid(registry: Any) -> None:
    g = grid.load_file(ROOT / "configs" / "grid-papers-small.toml")
    grid.check(g, registry)
    assert {c.method for c in g.cells} == {
        "sft/sft",
        "vaccine/sft",
        "booster/sft",
        "antibody/sft",
        "antibody/antibody",
        "sft/lisa",
    }
    assert sorted({c.p for c in g.cells}) == [0.0, 0.1, 0.2]
    assert len(g.cells) == 18 and len(g.groups()) == 4  # sft/lisa shares SFT's aligned model
    demo = cfgmod.build(cfgmod.PipelineConfig, cfgmod.load_toml(ROOT / "configs" / "demo.toml"))
    for stage in ("align", "finetune"):  # the demo's model and LoRA; half its step budget
        ours, theirs = getattr(g.base, stage), getattr(demo, stage)
        assert (ours.lora, ours.model) == (theirs.lora, theirs.model)
        assert ours.train.max_steps * 2 == theirs.train.max_steps
    lisa = g.finetune_options["lisa"]  # Lisa's 1:9 schedule fits the fine-tuning budget
    assert lisa["k_align"] + lisa["k_finetune"] == g.base.finetune.train.max_steps
    assert (g.base.align.samples, g.base.align.retain, g.base.align.retain_ratio) == (
        demo.align.samples,
        demo.align.retain,
        demo.align.retain_ratio,
    )
    assert (g.base.eval.judges, g.base.eval.max_new_tokens) == (
        demo.eval.judges,
        demo.eval.max_new_tokens,
    )
    assert g.cells[0].n == demo.finetune.samples


# ------------------------------------------------------------------------------------------------
# Running with fake stages


class FakeStages:
    """Stand-ins for align/attack_finetune/evaluate.run that open the run dir like the real stages
    (``start_run``: refuses an existing dir, resumes, rejects a changed config), write a completed
    manifest and count their calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: set[str] = set()  # suffixes of run dirs whose stage raises
        for name, module in (
            ("align", align),
            ("finetune", attack_finetune),
            ("repair", repair),
            ("eval", evaluate),
        ):
            monkeypatch.setattr(module, "run", self._fake(name))

    def _fake(self, stage: str) -> Any:
        def run(
            cfg: Any, out: Any, *, resume: bool = False, overwrite: bool = False, **kw: Any
        ) -> dict[str, Any]:
            from hftguard.pipeline.common import start_run

            out = Path(out)
            self.calls[stage] += 1
            self.log.append((stage, out.as_posix(), {"resume": resume, "overwrite": overwrite}))
            run_dir, done = start_run(
                out,
                stage,
                cfg,
                resume=resume,
                overwrite=overwrite,
                command=None,
                model_root=kw.get("model_root"),
            )
            if done:
                return run_dir.read_manifest()
            try:  # the stage's lock on its run directory is released at its end, as in guard()
                if any(out.as_posix().endswith(f) for f in self.fail):
                    run_dir.update_manifest(status="failed")
                    raise HftguardError(f"boom in {out}")
                metrics = {"harmful_score": 10.0, "finetune_accuracy": {"s": 50.0}}
                return run_dir.update_manifest(
                    status="completed",
                    ended_at=stamp(),  # as the real stages write it
                    **({"metrics": metrics} if stage == "eval" else {}),
                )
            finally:
                run_dir.release()

        return run


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    return FakeStages(monkeypatch)


def quiet() -> Reporter:
    return Reporter(quiet=True)


def test_one_aligned_model_serves_every_p(fake: FakeStages, tmp_path: Path) -> None:
    g = load(align_defense=["sft", "booster"], harmful_ratio=[0.0, 0.1, 0.2])
    summary = grid.run(g, tmp_path / "out", reporter=quiet())
    assert fake.calls == {"align": 2, "finetune": 6, "eval": 1 + 2 + 6}
    assert summary["status"] == "completed"
    assert [c["status"] for c in summary["cells"]] == ["done"] * 6
    ft_models = {
        json.loads((tmp_path / "out" / c["attacked"] / "manifest.json").read_text())["config"][
            "model"
        ]
        for c in summary["cells"]
    }
    assert ft_models == {"aligned/sft-s42", "aligned/booster-s42"}  # relative to the grid root
    kinds = Counter(r["kind"] for r in summary["rows"])
    assert kinds == {"base": 1, "aligned": 2, "attacked": 6}
    assert {e["kind"] for e in summary["evals"]} == {"base", "aligned"}
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["grid"]["harmful_ratio"] == [0.0, 0.1, 0.2]


def test_rerun_skips_every_finished_stage(fake: FakeStages, tmp_path: Path) -> None:
    g = load(harmful_ratio=[0.0, 0.1], seed=[1, 2])
    grid.run(g, tmp_path / "out", reporter=quiet())
    fake.calls.clear()
    reporter = quiet()
    summary = grid.run(g, tmp_path / "out", reporter=reporter)
    assert sum(fake.calls.values()) == 0
    assert len(summary["rows"]) == 1 + 2 + 4  # results are still collected from the run dirs
    assert any("4 cells (4 already done)" in e.get("message", "") for e in reporter.events)
    assert all(r["status"] == "done" for r in grid.plan(g, tmp_path / "out"))


def test_a_resumed_subset_keeps_the_earlier_cells_and_method_order(
    fake: FakeStages, tmp_path: Path
) -> None:
    # A grid resumed with a subset of its methods (`--set grid.methods=[...]`) used to leave a
    # root manifest naming only that subset: the report's row order followed the last resume.
    out = tmp_path / "out"
    first = load(
        methods=["sft/sft", "booster/sft"],
        harmful_ratio=[0.0, 0.2],
        labels={"sft/sft": "SFT", "booster/sft": "Booster"},
    )
    grid.run(first, out, reporter=quiet())
    later = load(methods=["vaccine/sft"], harmful_ratio=[0.2], labels={"vaccine/sft": "Vaccine"})
    summary = grid.run(later, out, reporter=quiet())
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == summary | {"rows": on_disk["rows"]}
    assert on_disk["grid"]["methods"] == ["vaccine/sft"]  # this invocation's axes
    assert on_disk["grid"]["method_order"] == ["sft/sft", "booster/sft", "vaccine/sft"]
    assert on_disk["grid"]["labels"] == {
        "sft/sft": "SFT",
        "booster/sft": "Booster",
        "vaccine/sft": "Vaccine",
    }
    cells = {c["name"]: c for c in on_disk["cells"]}
    assert len(cells) == 2 * 2 + 1 and all(c["status"] == "done" for c in cells.values())
    assert [c["name"] for c in on_disk["cells"] if not c.get("earlier")] == [
        c.name for c in later.cells
    ]
    assert {c["method"] for c in on_disk["cells"] if c.get("earlier")} == {"sft/sft", "booster/sft"}
    assert {e["eval"] for e in on_disk["evals"]} == {
        "evals/base",
        "evals/aligned-sft-s42",
        "evals/aligned-booster-s42",
        "evals/aligned-vaccine-s42",
    }
    # a third invocation (the first subset again) keeps the earliest order, lists each cell once
    grid.run(load(methods=["booster/sft"], harmful_ratio=[0.2]), out, reporter=quiet())
    again = json.loads((out / "manifest.json").read_text())
    assert again["grid"]["method_order"] == ["sft/sft", "booster/sft", "vaccine/sft"]
    assert sorted(c["name"] for c in again["cells"]) == sorted(cells)
    # --overwrite starts a new grid: nothing is carried over
    fresh = grid.run(later, out, reporter=quiet(), overwrite=True)
    assert fresh["grid"]["method_order"] == ["vaccine/sft"] and len(fresh["cells"]) == 1


def test_a_failed_cell_does_not_stop_the_grid_and_is_retried(
    fake: FakeStages, tmp_path: Path
) -> None:
    g = load(harmful_ratio=[0.0, 0.1, 0.2])
    bad = g.cells[1]
    fake.fail.add(f"cells/{bad.name}/attacked")
    with pytest.raises(grid.GridFailed, match="1 of 3 cells failed") as err:
        grid.run(g, tmp_path / "out", reporter=quiet())
    summary = err.value.summary
    assert [c["status"] for c in summary["cells"]] == ["done", "failed", "done"]
    assert summary["failures"][0]["cells"] == [bad.name]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "failed"
    assert fake.calls == {"align": 1, "finetune": 3, "eval": 1 + 1 + 2}

    fake.fail.clear()
    fake.calls.clear()
    fake.log.clear()
    summary = grid.run(g, tmp_path / "out", reporter=quiet())
    assert summary["status"] == "completed"
    assert fake.calls == {"finetune": 1, "eval": 1}  # only the failed cell
    _, path, how = fake.log[0]
    assert path.endswith(f"{bad.name}/attacked") and how == {"resume": True, "overwrite": False}


def test_a_failed_aligned_model_skips_its_cells_only(fake: FakeStages, tmp_path: Path) -> None:
    g = load(align_defense=["sft", "booster"], harmful_ratio=[0.0, 0.1])
    fake.fail.add("aligned/booster-s42")
    with pytest.raises(grid.GridFailed, match="2 of 4 cells failed"):
        grid.run(g, tmp_path / "out", reporter=quiet())
    assert fake.calls["finetune"] == 2  # the sft cells ran


def test_changed_eval_config_redoes_evals_not_training(fake: FakeStages, tmp_path: Path) -> None:
    g = load(harmful_ratio=[0.0, 0.1])
    grid.run(g, tmp_path / "out", reporter=quiet())
    fake.calls.clear()
    fake.log.clear()
    changed = grid.load(
        {
            **BASE,
            "eval": {**BASE["eval"], "judges": ["refusal-keywords"], "max_new_tokens": 32},
            "grid": {"harmful_ratio": [0.0, 0.1]},
        }
    )
    grid.run(changed, tmp_path / "out", reporter=quiet())
    assert fake.calls == {"eval": 1 + 1 + 2}
    assert all(how == {"resume": False, "overwrite": True} for _, _, how in fake.log)


def test_changed_training_config_is_refused(fake: FakeStages, tmp_path: Path) -> None:
    grid.run(load(harmful_ratio=[0.1]), tmp_path / "out", reporter=quiet())
    fake.log.clear()
    g = grid.load(
        {
            **BASE,
            "finetune": {**BASE["finetune"], "train": {"max_steps": 2}},
            "grid": {"harmful_ratio": [0.1]},
        }
    )
    with pytest.raises(grid.GridFailed, match="configuration differs"):
        grid.run(g, tmp_path / "out", reporter=quiet())
    # resumed, never overwritten: an hour of training is not discarded silently
    assert fake.log == [
        (
            "finetune",
            (tmp_path / "out" / f"cells/{g.cells[0].name}/attacked").as_posix(),
            {"resume": True, "overwrite": False},
        )
    ]


def test_a_rebuilt_aligned_model_makes_its_cells_stale(fake: FakeStages, tmp_path: Path) -> None:
    g = load(harmful_ratio=[0.1])
    grid.run(g, tmp_path / "out", reporter=quiet())
    aligned = tmp_path / "out" / "aligned" / "sft-s42" / "manifest.json"
    m = json.loads(aligned.read_text())
    atomic_write_json(aligned, {**m, "ended_at": "2999-01-01T00:00:00+00:00"})
    fake.calls.clear()
    reporter = quiet()
    grid.run(g, tmp_path / "out", reporter=reporter)
    assert fake.calls == {"finetune": 1, "eval": 2}  # attacked + its eval, and the aligned eval
    assert any("rebuilding" in e.get("message", "") for e in reporter.events)


def test_progress_names_the_grid_position_and_stage(fake: FakeStages, tmp_path: Path) -> None:
    reporter = quiet()
    grid.run(
        load(align_defense=["booster"], harmful_ratio=[0.0, 0.1]), tmp_path / "o", reporter=reporter
    )
    msgs = [e["message"] for e in reporter.events if e["event"] == "info"]
    assert "grid: 0/2 cells done, 2 left; shared stage: align: booster (s42)" in msgs
    assert (
        "grid: 1/2 cells done, 0 left; running booster/sft p=0.1 n=20 sentiment s42: "
        "attack-finetune: sft, p=0.1, n=20"
    ) in msgs


def test_single_pipeline_stops_at_its_stage_error(fake: FakeStages, tmp_path: Path) -> None:
    fake.fail.add("/aligned")
    cfg = cfgmod.build(cfgmod.PipelineConfig, BASE)
    with pytest.raises(HftguardError, match="boom") as err:
        grid.run(cfg, tmp_path / "out", reporter=quiet())
    assert not isinstance(err.value, grid.GridFailed)
    assert fake.calls == {"eval": 1, "align": 1}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "failed"


def test_interrupt_is_recorded(
    fake: FakeStages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(attack_finetune, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grid.run(load(harmful_ratio=[0.1, 0.2]), tmp_path / "out", reporter=quiet())
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "interrupted"


def test_overwrite_refuses_a_foreign_directory(fake: FakeStages, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    with pytest.raises(RunDirError, match="not an hftguard run directory"):
        grid.run(load(), tmp_path / "out", reporter=quiet(), overwrite=True)


# ------------------------------------------------------------------------------------------------
# Content cache


def _model_dir(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_model.safetensors").write_bytes(weights)
    (path / "adapter_config.json").write_text("{}")
    return path


def test_model_key_follows_the_weights(tmp_path: Path) -> None:
    base = _model_dir(tmp_path / "base", b"base")
    (base / "config.json").write_text('{"a": 1}')
    a1 = _model_dir(tmp_path / "a1", b"one")
    a2 = _model_dir(tmp_path / "a2", b"two")

    def key(*adapters: Path) -> str:
        return cache.model_key({"base": str(base), "adapters": [str(a) for a in adapters]})

    k = key(a1, a2)
    assert k == key(a1, a2)
    assert len({k, key(a2, a1), key(a1), key()}) == 4  # order and set of adapters matter
    _model_dir(tmp_path / "copy", b"one")
    assert key(tmp_path / "copy", a2) == k  # content, not path
    (a1 / "adapter_model.safetensors").write_bytes(b"ONE")
    assert key(a1, a2) != k
    (base / "config.json").write_text('{"a": 2}')
    assert key(tmp_path / "copy", a2) != k
    assert cache.model_key({"base": "org/model"}) != cache.model_key({"base": "org/other"})


def test_generation_and_verdict_keys_cover_what_determines_them() -> None:
    dec = {"max_new_tokens": 64, "do_sample": False, "batch_size": 16}
    k = cache.generation_key("m", ["a", "b"], dec)
    assert k == cache.generation_key("m", ["a", "b"], dict(reversed(dec.items())))
    assert (
        len(
            {
                k,
                cache.generation_key("m2", ["a", "b"], dec),
                cache.generation_key("m", ["b", "a"], dec),
                cache.generation_key("m", ["a", "b", "c"], dec),
                cache.generation_key("m", ["a", "b"], {**dec, "max_new_tokens": 65}),
                cache.generation_key("m", ["a", "b"], {**dec, "batch_size": 8}),
            }
        )
        == 6
    )

    @dataclasses.dataclass
    class Info:
        name: str = "refusal-keywords"
        version: str = "1"
        distribution: str = "hftguard"
        distribution_version: str = "0.1.0"

    @dataclasses.dataclass
    class Opts:
        threshold: float = 0.5

    j = cache.judge_identity(Info(), Opts())
    v = cache.verdict_key(j, ["p"], ["r"])
    assert v == cache.verdict_key(cache.judge_identity(Info(), Opts()), ["p"], ["r"])
    assert (
        len(
            {
                v,
                cache.verdict_key(cache.judge_identity(Info(version="2"), Opts()), ["p"], ["r"]),
                cache.verdict_key(cache.judge_identity(Info(), Opts(0.6)), ["p"], ["r"]),
                cache.verdict_key(cache.judge_identity(Info(name="other"), Opts()), ["p"], ["r"]),
                cache.verdict_key(
                    cache.judge_identity(Info(distribution_version="0.2"), Opts()), ["p"], ["r"]
                ),
                cache.verdict_key(j, ["p"], ["r2"]),
                cache.verdict_key(j, ["p2"], ["r"]),
            }
        )
        == 7
    )


def test_cached_generate_and_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    calls: Counter[str] = Counter()

    def gen() -> list[str]:
        calls["gen"] += 1
        return ["r1", "r2"]

    def judge() -> list[Verdict]:
        calls["judge"] += 1
        return [Verdict(True, "compliance", 0.9, {"kw": "sure"}), Verdict(False, "refusal", 0.0)]

    dec = {"max_new_tokens": 4}
    reporter = quiet()
    assert cache.cached_generate("m", ["p1", "p2"], dec, gen, reporter=reporter) == ["r1", "r2"]
    assert cache.cached_generate("m", ["p1", "p2"], dec, gen, reporter=reporter) == ["r1", "r2"]
    assert calls["gen"] == 1
    assert any("2 generations from cache" in e.get("message", "") for e in reporter.events)
    cache.cached_generate("m", ["p1", "p3"], dec, gen)
    assert calls["gen"] == 2

    first = cache.cached_verdicts("kw", None, ["p1", "p2"], ["r1", "r2"], judge)
    again = cache.cached_verdicts("kw", None, ["p1", "p2"], ["r1", "r2"], judge)
    assert again == first and again[0].detail == {"kw": "sure"} and calls["judge"] == 1
    cache.cached_verdicts("another-judge", None, ["p1", "p2"], ["r1", "r2"], judge)
    assert calls["judge"] == 2  # adding a judge judges; it never regenerates

    monkeypatch.setenv("HFTGUARD_CACHE", "off")
    cache.cached_generate("m", ["p1", "p2"], dec, gen)
    assert calls["gen"] == 3
    monkeypatch.delenv("HFTGUARD_CACHE")
    for f in (tmp_path / "home" / "cache" / "generations").rglob("*.json"):
        f.write_text("{damaged")
    assert cache.cached_generate("m", ["p1", "p2"], dec, gen) == ["r1", "r2"]
    assert calls["gen"] == 4
    with pytest.raises(ValueError, match="1 responses for 2 prompts"):
        cache.cached_generate("m", ["x", "y"], dec, lambda: ["only one"])
