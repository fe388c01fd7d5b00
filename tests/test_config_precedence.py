"""One precedence for every entry point: defaults (per stage) < preset < config file < options <
``--set``, whether a stage is resolved by ``hftguard run``, by its own command or by the Python API.

The bug this pins: the same ``[finetune]`` table (no ``[finetune.train]``) trained at lr 1e-5
under ``hftguard run`` and at 5e-4 under ``hftguard attack-finetune --config``, because the stage
command always passed a (possibly empty) ``train`` table and rebuilding ``TrainOptions`` from it
dropped the fine-tuning stage's own defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from hftguard import config as cfgmod
from hftguard.cli import main
from hftguard.config import AlignConfig, EvalConfig, FinetuneConfig, PipelineConfig
from hftguard.errors import ConfigError

STAGES: dict[str, tuple[str, type]] = {
    "align": ("align", AlignConfig),
    "finetune": ("attack-finetune", FinetuneConfig),
    "eval": ("eval", EvalConfig),
}
#: Fields ``hftguard run`` sets per cell from the previous stage's output, not from the config.
RUN_SETS = {"align": set(), "finetune": {"model"}, "eval": {"model"}}


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Replace the stage functions and the grid runner: record the configs they are handed."""
    from hftguard.pipeline import align, attack_finetune, evaluate, grid

    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    seen: dict[str, Any] = {}

    def stage(name: str, result: dict[str, Any]) -> Any:
        def fake(cfg: Any, out: Path, **_: Any) -> dict[str, Any]:
            seen[name] = cfg
            return result

        return fake

    monkeypatch.setattr(align, "run", stage("align", {"training": {}}))
    monkeypatch.setattr(attack_finetune, "run", stage("finetune", {"training": {}}))
    monkeypatch.setattr(evaluate, "run", stage("eval", {"metrics": {}}))

    def fake_grid(g: Any, out: Path, **_: Any) -> dict[str, Any]:
        (cell,) = g.cells
        seen["run"] = {
            "align": g.align_config(cell.align, g.align_seed(cell)),
            "finetune": g.finetune_config(cell, "MODEL"),
            "eval": g.cell_eval_config(cell, "MODEL"),
        }
        return {"rows": [], "wall_time_s": 0}

    monkeypatch.setattr(grid, "run", fake_grid)
    return seen


def _cli(*argv: str) -> None:
    code = main(list(argv))
    assert code == 0, argv


def _without(cfg: Any, names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in names}


def _resolve_everywhere(
    captured: dict[str, Any],
    tmp_path: Path,
    *,
    file: str | None = None,
    preset: str | None = None,
    stage_options: dict[str, list[str]] | None = None,
    run_sets: list[str] | None = None,
    stage_sets: dict[str, list[str]] | None = None,
    api_cli: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The config of each stage as run, the stage command and the Python API resolve it."""
    common: list[str] = []
    path = None
    if file is not None:
        path = tmp_path / "cfg.toml"
        path.write_text(file)
    if preset:
        common += ["--preset", preset]
    run_args = ["run", *([str(path)] if path else []), "--out", str(tmp_path / "grid"), *common]
    for s in run_sets or []:
        run_args += ["--set", s]
    _cli(*run_args)
    got: dict[str, dict[str, Any]] = {"run": captured.pop("run")}
    got["command"], got["api"] = {}, {}
    for section, (command, cls) in STAGES.items():
        args = [command, "--out", str(tmp_path / section), *common]
        if path:
            args += ["--config", str(path)]
        args += (stage_options or {}).get(section, [])
        for s in (stage_sets or {}).get(section, []):
            args += ["--set", s]
        _cli(*args)
        got["command"][section] = captured.pop(section)
        got["api"][section] = cfgmod.resolve(
            cls,
            config_file=path,
            preset=preset,
            cli=(api_cli or {}).get(section),
            sets=(stage_sets or {}).get(section),
        )
    return got


def _assert_same(got: dict[str, dict[str, Any]]) -> None:
    for section in STAGES:
        skip = RUN_SETS[section]
        run = _without(got["run"][section], skip)
        assert _without(got["command"][section], skip) == run, section
        assert _without(got["api"][section], skip) == run, section
        # and with nothing skipped, the stage command and the API agree field for field
        assert got["command"][section] == got["api"][section], section


def test_defaults_are_the_same_everywhere(captured: dict[str, Any], tmp_path: Path) -> None:
    got = _resolve_everywhere(captured, tmp_path)
    _assert_same(got)
    assert got["command"]["finetune"] == FinetuneConfig()
    assert got["command"]["align"] == AlignConfig()
    assert got["command"]["finetune"].train.lr == 1e-5  # the fine-tuning stage's own default


def test_a_finetune_table_without_train_keeps_the_stage_lr(
    captured: dict[str, Any], tmp_path: Path
) -> None:
    got = _resolve_everywhere(captured, tmp_path, file="[finetune]\nharmful_ratio = 0.2\n")
    _assert_same(got)
    for where in ("run", "command", "api"):
        assert got[where]["finetune"].train.lr == 1e-5, where
        assert got[where]["finetune"].harmful_ratio == 0.2, where


def test_python_api_builds_with_the_stage_defaults() -> None:
    built = cfgmod.build(FinetuneConfig, {"train": {"max_steps": 3}})
    assert built.train == dataclasses.replace(FinetuneConfig().train, max_steps=3)
    assert cfgmod.build(FinetuneConfig, {"train": {}}) == FinetuneConfig()
    pipeline = cfgmod.build(PipelineConfig, {"finetune": {"train": {}}})
    assert pipeline.finetune == FinetuneConfig()


def _other_value(tp: Any, default: Any, name: str) -> Any:
    """A valid value of type ``tp`` that differs from ``default``."""
    origin = get_origin(tp)
    if origin is Literal:
        return next(c for c in get_args(tp) if c != default)
    if dataclasses.is_dataclass(tp):
        return _every_field(tp, default)
    if tp is bool:
        return not default
    if tp is int:
        return default + 3
    if tp is float:
        return round(default / 2 + 0.3, 6) if default <= 1 else default * 2
    if name == "device":
        return "cpu"  # a device string is checked (config.check_device)
    if name == "task_scoring":
        return "number"  # one of the file tasks' scoring rules (hftguard.data.filetask)
    if name == "report_to":
        return ["jsonl"]  # tracker names are checked when a stage command starts
    if tp is str:
        return f"{default or name}-x"
    if origin is list:
        return [*default, "extra"] if default else ["one", "two"]
    if origin is dict or tp is dict:
        return {"some-dataset": {"source": f"/data/{name}"}}
    raise AssertionError(f"no test value for {name}: {tp}")


def _every_field(cls: type, instance: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: _other_value(hints[f.name], getattr(instance, f.name), f.name)
        for f in dataclasses.fields(cls)
        if f.name != "preset"  # set by --preset, tested below
    }


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    import json

    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) or k.endswith("options")}
    tables = {k: v for k, v in data.items() if k not in scalars}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    for k, v in scalars.items():
        if isinstance(v, dict):
            inner = ", ".join(
                f'"{dk}" = {{ {", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in dv.items())} }}'
                for dk, dv in v.items()
            )
            lines.append(f"{k} = {{ {inner} }}")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for k, v in tables.items():
        lines.append(_toml(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines) + "\n"


def test_every_field_from_a_file_is_the_same_everywhere(
    captured: dict[str, Any], tmp_path: Path
) -> None:
    changed = {section: _every_field(cls, cls()) for section, (_, cls) in STAGES.items()}
    for table in changed.values():
        if "train" in table:  # valid ranges: epochs > 0 with max_steps set, warmup in [0, 1]
            table["train"]["warmup_ratio"] = 0.25
    changed["finetune"]["harmful_ratio"] = 0.3
    got = _resolve_everywhere(captured, tmp_path, file=_toml(changed))
    _assert_same(got)
    # every field really changed: nothing was dropped on the way
    for section, (_, cls) in STAGES.items():
        resolved, default = got["command"][section], cls()
        for f in dataclasses.fields(cls):
            if f.name == "preset":
                continue
            assert getattr(resolved, f.name) != getattr(default, f.name), (section, f.name)


def test_layers_apply_in_one_order_everywhere(captured: dict[str, Any], tmp_path: Path) -> None:
    """preset < file < options < --set: each layer overrides the one below it, for each stage."""
    file = (
        "[align]\nsamples = 11\n[align.train]\nlr = 0.002\nbatch_size = 3\n"
        "[finetune]\nsamples = 40\n[finetune.train]\nmax_steps = 9\n"
        "[eval]\nharmful_samples = 5\nmax_new_tokens = 9\n"
        "[dataset_options.sst2]\nmatch = 'contains'\n"
    )
    stage_options = {
        "align": ["--batch-size", "6", "--seed", "7"],
        "finetune": ["--max-steps", "12", "--seed", "7"],
        "eval": ["--max-new-tokens", "11", "--seed", "7"],
    }
    stage_sets = {
        "align": ["train.batch_size=5"],
        "finetune": ["samples=44"],
        "eval": ["max_new_tokens=13"],
    }
    run_sets = [
        "align.train.batch_size=5",
        "finetune.train.max_steps=12",
        "finetune.samples=44",
        "eval.max_new_tokens=13",
    ]
    got = _resolve_everywhere(
        captured,
        tmp_path,
        file=file,
        preset="booster-paper",
        stage_options=stage_options,
        run_sets=[*run_sets, "align.seed=7", "finetune.seed=7", "eval.seed=7"],
        stage_sets=stage_sets,
        api_cli={
            "align": {"train": {"batch_size": 6}, "seed": 7},
            "finetune": {"train": {"max_steps": 12}, "seed": 7},
            "eval": {"max_new_tokens": 11, "seed": 7},
        },
    )
    _assert_same(got)
    align, ft, ev = (got["command"][s] for s in ("align", "finetune", "eval"))
    assert align.preset == ft.preset == ev.preset == "booster-paper"
    assert align.samples == 11 and align.train.lr == 0.002  # file over preset
    assert align.train.batch_size == 5  # --set over option over file
    assert ft.train.max_steps == 12 and ft.samples == 44  # option over file; --set over file
    assert ev.max_new_tokens == 13 and ev.harmful_samples == 5
    assert align.seed == ft.seed == ev.seed == 7
    # the pipeline-wide dataset options reach every stage the same way
    for stage in (align, ft, ev):
        assert stage.dataset_options["sst2"]["match"] == "contains"
    # a preset value nothing overrides survives (booster-paper's fine-tuning lr)
    from hftguard import presets

    preset_ft = presets.load("booster-paper").config["finetune"]
    assert ft.train.lr == preset_ft["train"]["lr"]


def test_a_scalar_where_a_table_belongs_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text("train = 5\n")
    with pytest.raises(ConfigError, match="train"):
        cfgmod.resolve(FinetuneConfig, config_file=path, cli={"train": {"lr": 1e-4}})
    with pytest.raises(ConfigError, match="table"):
        cfgmod.resolve(FinetuneConfig, config_file=path)
    for order in (["train=5", "train.lr=1e-4"], ["train.lr=1e-4", "train=5"]):
        with pytest.raises(ConfigError, match="both as a value and a table"):
            cfgmod.resolve(FinetuneConfig, sets=order)


def test_the_stage_command_rejects_a_scalar_train_with_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    path = tmp_path / "cfg.toml"
    path.write_text("[finetune]\ntrain = 5\n")
    code = main(["attack-finetune", "--config", str(path), "--lr", "1e-4", "--out", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "Error:" in err and "Hint:" in err and "train" in err
