"""nan and inf never pass as options, and a step that makes the weights non-finite fails the run.

Before: ``train.lr=inf --max-steps 1`` completed with non-finite weights (eval then reported HS 0 %
for a model that emits nothing); ``nan`` for lr, epochs, warmup ratio, max_grad_norm or LoRA
alpha gave a traceback or silently turned a feature off (every comparison with nan is false).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

from hftguard import config as cfgmod
from hftguard.cli import main
from hftguard.errors import ConfigError
from hftguard.registry import default_registry

BAD = ["nan", "inf", "-inf"]


def _float_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every float option of a config dataclass, nested tables included."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _float_fields(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif tp is float:
            out.append(f"{prefix}{f.name}")
    return out


STAGE_FLOATS = [
    (cls, path)
    for cls in (cfgmod.AlignConfig, cfgmod.FinetuneConfig, cfgmod.EvalConfig)
    for path in _float_fields(cls)
]


def _component_floats() -> list[tuple[str, type, str]]:
    reg = default_registry()
    rows = []
    for info in reg.all_components():
        cls = getattr(info.cls, "Config", None)
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        rows += [(info.name, cls, path) for path in _float_fields(cls)]
    return rows


def test_every_stage_float_option_exists() -> None:
    paths = {p for _, p in STAGE_FLOATS}
    # the options the bug report names are among them (the test would be empty otherwise)
    assert {"train.lr", "train.epochs", "train.warmup_ratio", "train.max_grad_norm"} <= paths
    assert "lora.alpha" in paths and "harmful_ratio" in paths


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize(("cls", "path"), STAGE_FLOATS, ids=lambda x: getattr(x, "__name__", x))
def test_stage_float_options_reject_non_finite(cls: type, path: str, value: str) -> None:
    with pytest.raises(ConfigError, match="not a finite number"):
        cfgmod.resolve(cls, sets=[f"{path}={value}"])


def test_component_float_options_reject_non_finite() -> None:
    rows = _component_floats()
    names = {name for name, _, _ in rows}
    assert {"booster", "vaccine", "lisa", "antibody"} <= names, names
    for name, cls, path in rows:
        for value in BAD:
            with pytest.raises(ConfigError, match="finite"):
                cfgmod.build(cls, cfgmod.parse_sets([f"{path}={value}"]), name)


def test_dataclasses_built_in_python_are_checked_too() -> None:
    cfg = cfgmod.AlignConfig(train=cfgmod.TrainOptions(lr=float("inf")))
    with pytest.raises(ConfigError, match=r"train\.lr"):
        cfgmod.validate_stage(cfg)
    cfg = cfgmod.FinetuneConfig(harmful_ratio=float("nan"))
    with pytest.raises(ConfigError, match="harmful_ratio"):
        cfgmod.validate_stage(cfg)


@pytest.mark.parametrize(
    "args",
    [
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--epochs", "inf"],
        ["--set", "train.warmup_ratio=nan"],
        ["--set", "train.max_grad_norm=nan"],
        ["--set", "lora.alpha=inf"],
        ["--set", "train.lr=1e39"],  # finite, but not a float32: the optimizer cannot step
    ],
)
def test_cli_rejects_non_finite_before_the_run_dir(
    args: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    out = tmp_path / "run"
    code = main(["align", "--model", "tiny-random", "--out", str(out), "--max-steps", "1", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Error:" in err and "Hint:" in err and "Traceback" not in err
    assert not out.exists()


def test_a_step_that_breaks_the_weights_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer's update leaves an inf in a weight (here injected): the run is failed, not
    completed, and no adapter is written."""
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    step = torch.optim.AdamW.step

    def poisoned(self: Any, *a: Any, **k: Any) -> Any:
        result = step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "run"
    argv = ["align", "--model", "tiny-random", "--out", str(out), "--max-steps", "1"]
    code = main([*argv, "--set", "retain=''", "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "diverged at step 0" in err and "weights" in err and "Hint:" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert not (out / "adapter").exists()
