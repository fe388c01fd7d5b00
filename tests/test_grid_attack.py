"""Attack hyperparameters as grid axes (``[grid.attack]``) and screening as a grid defense (#19).

Uses the fake stages of tests/test_grid.py: the grid's bookkeeping (names, configs, sharing,
resume) is checked in milliseconds without training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_grid import BASE, FakeStages, load, quiet

from hftguard.errors import ConfigError
from hftguard.pipeline import grid


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    return FakeStages(monkeypatch)


# ------------------------------------------------------------------------------------------------
# Expansion, names, configs


def test_attack_axes_multiply_the_other_axes() -> None:
    g = load(
        harmful_ratio=[0.0, 0.2],
        attack={"lr": [1e-5, 1e-4, 5e-4], "lora_r": [8, 32]},
    )
    assert len(g.cells) == 2 * 3 * 2
    names = [c.name for c in g.cells]
    assert len(set(names)) == len(names)
    cell = next(c for c in g.cells if c.p == 0.2 and c.attack_dict() == {"lr": 1e-4, "lora_r": 8})
    # deterministic, short, filesystem-safe; today's name with the setting appended
    assert cell.name == "sft__sft__p0.2__n20__sentiment__s42__lr0.0001__r8"
    assert cell.label == "sft/sft p=0.2 n=20 sentiment s42 lr=0.0001 lora_r=8"
    assert cell.coords()["attack"] == {"lr": 1e-4, "lora_r": 8}
    assert cell.method == "sft/sft"  # the attack is not part of the defense
    # one aligned model serves every attack setting (alignment does not depend on the attack)
    assert [k for k, _ in g.groups()] == [("sft", 42)]
    f = g.finetune_config(cell, "aligned/sft-s42")
    assert (f.train.lr, f.lora.r, f.harmful_ratio) == (1e-4, 8, 0.2)
    assert f.lora.alpha == g.base.finetune.lora.alpha  # untouched settings keep the base values
    assert g.axes["attack"] == {"lr": [1e-5, 1e-4, 5e-4], "lora_r": [8, 32]}


def test_every_attack_key_sets_its_fine_tuning_option() -> None:
    g = load(
        attack={
            "lr": [2e-5],
            "max_steps": [7],
            "batch_size": [4],
            "lora_r": [16],
            "lora_alpha": [8.0],
            "harmful": ["data/my harmful.jsonl"],
        }
    )
    (cell,) = g.cells
    f = g.finetune_config(cell, "m")
    assert (f.train.lr, f.train.max_steps, f.train.batch_size) == (2e-5, 7, 4)
    assert (f.lora.r, f.lora.alpha, f.harmful) == (16, 8.0, "data/my harmful.jsonl")
    # canonical key order, whatever order the table was written in; the file is named by its stem
    assert cell.name.startswith("sft__sft__p0.1__n20__sentiment__s42__lr2e-05__steps7__bs4__r16__")
    tail = cell.name.split("__")[-1]
    assert tail.startswith("h-my-harmful-") and len(tail) <= 24
    assert "/" not in cell.name and " " not in cell.name
    # epochs (needs max_steps = 0 to mean anything)
    e = grid.load(
        {
            **BASE,
            "finetune": {"samples": 20, "train": {"max_steps": 0}},
            "grid": {"attack": {"epochs": [1, 2.5]}},
        }
    )
    assert [c.name.split("__")[-1] for c in e.cells] == ["ep1", "ep2.5"]
    assert [e.finetune_config(c, "m").train.epochs for c in e.cells] == [1.0, 2.5]


def test_cells_without_attack_axes_keep_their_names() -> None:
    """Grids from before [grid.attack] (e.g. a running calibrated grid) must still resume."""
    g = load(methods=["sft/sft", "sft/sft/safelora"], harmful_ratio=[0.2], seed=[42, 43])
    assert [c.name for c in g.cells] == [
        "sft__sft__p0.2__n20__sentiment__s42",
        "sft__sft__p0.2__n20__sentiment__s43",
        "sft__sft__p0.2__n20__sentiment__s42__r-safelora",
        "sft__sft__p0.2__n20__sentiment__s43__r-safelora",
    ]
    assert g.cells[0].label == "sft/sft p=0.2 n=20 sentiment s42"
    assert "attack" not in g.cells[0].coords() and "screen" not in g.cells[0].coords()
    assert "attack" not in g.axes
    ROOT = Path(__file__).resolve().parents[1]
    cal = grid.load_file(ROOT / "configs" / "calibrated-small.toml")
    assert "antibody__antibody__p0.2__n320__sentiment__s42" in [c.name for c in cal.cells]


@pytest.mark.parametrize(
    ("attack", "needle"),
    [
        ({"lrr": [1e-5]}, "Did you mean 'lr'"),
        ({"steps": [10]}, "Did you mean 'max_steps'"),
        ({"lr": 1e-5}, "must be a list"),
        ({"lr": []}, "empty list"),
        ({"lr": ["fast"]}, "grid.attack.lr[0]"),
        ({"lora_r": [8.5]}, "grid.attack.lora_r[0]"),
        ({"lr": [-1e-5]}, "grid.attack.lr"),
        ({"lora_r": [0]}, "grid.attack.lora_r"),
        ({"harmful": [""]}, "grid.attack.harmful"),
        ({"harmful_ratio": [0.1]}, "already an axis"),
        ({"samples": [10]}, "already an axis"),
        ({"epochs": [1, 2]}, "max_steps"),  # BASE trains by max_steps: epochs would do nothing
    ],
)
def test_bad_attack_tables_are_config_errors(attack: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(attack=attack)
    assert needle in str(err.value), str(err.value)
    assert err.value.hint  # how to fix it


def test_attack_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"grid\.attack must be a table"):
        load(attack=[1e-5])


def test_check_validates_each_attack_setting(registry: Any) -> None:
    g = load(finetune_defense=["lisa"], attack={"max_steps": [1, 2000]})
    with pytest.raises(ConfigError, match="this run has 1 step"):  # Lisa's schedule per setting
        grid.check(g, registry)


# ------------------------------------------------------------------------------------------------
# Running


def test_attack_settings_share_the_aligned_model_and_rerun_does_no_work(
    fake: FakeStages, tmp_path: Path
) -> None:
    g = load(harmful_ratio=[0.2], attack={"lr": [1e-5, 1e-4]})
    out = tmp_path / "out"
    summary = grid.run(g, out, reporter=quiet())
    assert fake.calls == {"align": 1, "finetune": 2, "eval": 1 + 1 + 2}
    assert [c["attack"] for c in summary["cells"]] == [{"lr": 1e-5}, {"lr": 1e-4}]
    assert summary["grid"]["attack"] == {"lr": [1e-5, 1e-4]}
    attacked = [r for r in summary["rows"] if r["kind"] == "attacked"]
    assert [r["attack"] for r in attacked] == [{"lr": 1e-5}, {"lr": 1e-4}]
    before = len(fake.log)
    grid.run(g, out, reporter=quiet())
    assert len(fake.log) == before
    assert all(r["status"] == "done" for r in grid.plan(g, out))
    rows = grid.plan(g, out)
    assert [r["attack setting"] for r in rows] == ["lr=1e-05", "lr=0.0001"]


def test_plan_rows_of_grids_without_attack_axes_are_unchanged(tmp_path: Path) -> None:
    rows = grid.plan(load(harmful_ratio=[0.1]), tmp_path / "out")
    assert set(rows[0]) == {"cell", "align", "attack", "repair", "eval", "status", "dir"}


def test_dry_run_table_has_an_attack_column() -> None:
    from hftguard.cli.stages import _plan_table

    row = {"cell": "c", "align": "-", "attack": "new", "repair": "-", "eval": "new"}
    cols, body = _plan_table([{**row, "status": "left", "attack setting": "lr=1e-05"}])
    assert cols == ["cell", "attack setting", "align", "attack-finetune", "eval", "status"]
    assert body == [["c", "lr=1e-05", "-", "new", "new", "left"]]
    cols, _ = _plan_table([{**row, "status": "left"}])
    assert cols == ["cell", "align", "attack-finetune", "eval", "status"]


# ------------------------------------------------------------------------------------------------
# Screening as a fine-tuning-stage defense in grids


def test_screening_is_written_on_the_fine_tuning_defense() -> None:
    g = load(
        methods=["sft/sft", "sft/sft+screen:refusal-keywords", "booster/lisa+screen:goal-overlap"],
        harmful_ratio=[0.2],
    )
    plain, screened, lisa = g.cells
    assert screened.method == "sft/sft+screen:refusal-keywords"
    assert (screened.finetune, screened.screen) == ("sft", "refusal-keywords")
    assert screened.name == "sft__sft__p0.2__n20__sentiment__s42__screen-refusal-keywords"
    assert plain.name == "sft__sft__p0.2__n20__sentiment__s42"
    assert screened.coords()["screen"] == "refusal-keywords"
    assert g.finetune_config(screened, "m").screen == "refusal-keywords"
    assert g.finetune_config(plain, "m").screen == ""
    assert (lisa.finetune, g.finetune_config(lisa, "m").defense) == ("lisa", "lisa")
    assert [k for k, _ in g.groups()] == [("sft", 42), ("booster", 42)]  # screening: no realign
    # the product form and a repair after a screened attack
    g2 = load(finetune_defense=["sft", "sft+screen:refusal-keywords"])
    assert [c.method for c in g2.cells] == ["sft/sft", "sft/sft+screen:refusal-keywords"]
    g3 = load(methods=["sft/sft+screen:refusal-keywords/safelora"])
    assert (g3.cells[0].screen, g3.cells[0].repair) == ("refusal-keywords", "safelora")
    assert g3.cells[0].method == "sft/sft+screen:refusal-keywords/safelora"


@pytest.mark.parametrize(
    ("methods", "needle"),
    [
        (["sft/sft+screen"], "screen:JUDGE"),
        (["sft/sft+screen:"], "screen:JUDGE"),
        (["sft/sft+filter:x"], "screen:JUDGE"),
    ],
)
def test_bad_screen_suffixes_are_config_errors(methods: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(methods=methods)


def test_check_resolves_the_screening_judge(registry: Any) -> None:
    grid.check(load(methods=["sft/sft+screen:refusal-keywords"]), registry)
    with pytest.raises(ConfigError, match="refusal-keyword"):
        grid.check(load(methods=["sft/sft+screen:refusal-keyword"]), registry)


def test_shipped_attack_sweep_is_valid(registry: Any) -> None:
    ROOT = Path(__file__).resolve().parents[1]
    g = grid.load_file(ROOT / "configs" / "attack-sweep-small.toml")
    grid.check(g, registry)
    assert len(g.cells) == 18 and [k for k, _ in g.groups()] == [("sft", 42), ("booster", 42)]
    assert {c.method for c in g.cells} == {
        "sft/sft",
        "booster/sft",
        "sft/sft+screen:refusal-keywords",
    }
    assert g.axes["attack"] == {"lr": [5e-5, 2e-4, 1e-3], "max_steps": [15, 30]}


def test_shipped_calibrated_field_shares_the_calibrated_sft_stages(registry: Any) -> None:
    """configs/calibrated-field.toml (#18) runs in the calibrated protocol: its SFT alignment, its
    SFT attacks and their evaluations are the same stages as configs/calibrated-small.toml's, so a
    calibrated grid's finished ones can be copied over instead of run again."""
    import dataclasses

    ROOT = Path(__file__).resolve().parents[1]
    field = grid.load_file(ROOT / "configs" / "calibrated-field.toml")
    cal = grid.load_file(ROOT / "configs" / "calibrated-small.toml")
    grid.check(field, registry)
    assert dataclasses.asdict(field.align_config("sft", 42)) == dataclasses.asdict(
        cal.align_config("sft", 42)
    )
    cal_cells = {c.name: c for c in cal.cells}
    shared = [c for c in field.cells if c.name in cal_cells]
    assert {c.method for c in shared} == {"sft/sft"} and len(shared) == 2
    for c in shared:
        other = cal_cells[c.name]
        assert dataclasses.asdict(field.finetune_config(c, "m")) == dataclasses.asdict(
            cal.finetune_config(other, "m")
        )
        assert dataclasses.asdict(field.cell_eval_config(c, "m")) == dataclasses.asdict(
            cal.cell_eval_config(other, "m")
        )
    assert {c.method for c in field.cells} >= {
        "repnoise/sft",
        "t-vaccine/sft",
        "sft/kl",
        "sft/ewc",
        "sft/mixing",
        "sft/mixing-joint",
        "sft/sft/safelora",
        "sft/sft/antidote",
    }


def test_shipped_calibrated_attack_sweep_is_valid(registry: Any) -> None:
    """configs/calibrated-attack-sweep.toml (#19): the calibrated protocol's aligned models and
    its settings, with lr and max_steps as attack axes around the calibrated point."""
    import dataclasses

    ROOT = Path(__file__).resolve().parents[1]
    g = grid.load_file(ROOT / "configs" / "calibrated-attack-sweep.toml")
    cal = grid.load_file(ROOT / "configs" / "calibrated-small.toml")
    grid.check(g, registry)
    assert len(g.cells) == 24
    assert g.axes["attack"] == {"lr": [2e-5, 4e-5, 8e-5], "max_steps": [200, 400]}
    for align in ("sft", "booster", "antibody"):
        assert dataclasses.asdict(g.align_config(align, 42)) == dataclasses.asdict(
            cal.align_config(align, 42)
        )
    # the calibrated point is the calibrated grid's attack, step for step
    point = next(
        c
        for c in g.cells
        if c.method == "sft/sft" and c.attack_dict() == {"lr": 4e-5, "max_steps": 400}
    )
    same = next(c for c in cal.cells if c.name == point.attack_name.split("__lr")[0])
    assert dataclasses.asdict(g.finetune_config(point, "m")) == dataclasses.asdict(
        cal.finetune_config(same, "m")
    )
