"""``hftguard plugins -v`` shows each component option as the ``--set`` key that sets it.

Every key it shows is checked the way a stage command checks its config before it creates a run
directory (``config.resolve`` + ``check_components``, as ``hftguard validate`` does), and one of
each kind through the CLI itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hftguard import config as cfgmod
from hftguard.cli import main
from hftguard.cli.inspect import plugin_rows, set_key
from hftguard.pipeline.common import check_components
from hftguard.registry import default_registry

STAGES: dict[str, tuple[type[Any], str | None, list[str]]] = {
    # kind: (stage config, section, --set selecting the component NAME)
    "alignment-defense": (cfgmod.AlignConfig, "align", ["defense={name!r}"]),
    # Lisa refuses a run shorter than its default cycle (1000 steps)
    "finetune-defense": (
        cfgmod.FinetuneConfig,
        "finetune",
        ["defense={name!r}", "train.max_steps=1000"],
    ),
    "repair-defense": (cfgmod.RepairConfig, None, ["defense={name!r}", "model='attacked'"]),
    "judge": (cfgmod.EvalConfig, "eval", ["judges=[{name!r}]"]),
    "dataset": (cfgmod.AlignConfig, "align", []),
}


@pytest.fixture
def builtins_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower()


def _options() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (row["kind"], row["name"], opt)
        for row in plugin_rows(verbose=True)
        if "error" not in row
        for opt in row.get("options", [])
    ]


@pytest.mark.usefixtures("builtins_only")
def test_every_shown_key_sets_its_option() -> None:
    options = _options()
    assert {kind for kind, _, _ in options} == set(STAGES)
    reg = default_registry()
    checked = 0
    for kind, name, opt in options:
        key = opt["set"]
        assert key == set_key(kind, name, opt["name"])
        assert key.endswith(f".{opt['name']}")
        default = opt["default"]
        if not isinstance(default, (bool, int, float, str)):
            continue  # None, lists...: no TOML spelling of the default needed for the check
        cls, section, select = STAGES[kind]
        sets = [s.format(name=name).replace("'", '"') for s in select]
        cfg = cfgmod.resolve(cls, section=section, sets=[*sets, f"{key}={_toml(default)}"])
        check_components(cfg, reg)  # builds the component's Config from those options
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part) if not isinstance(node, dict) else node[part]
        assert node == default, key
        checked += 1
    assert checked > 40


@pytest.mark.usefixtures("builtins_only")
def test_report_sinks_take_no_options() -> None:
    assert set_key("report-sink", "markdown", "x") is None


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.usefixtures("builtins_only")
def test_plugins_verbose_shows_the_working_form(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "plugins", "-v")
    assert code == 0
    assert "--set defense_options.alpha=VALUE" in out
    assert "--set judge_options.refusal-keywords.window=VALUE" in out
    assert "--set dataset_options.sentiment.match=VALUE" in out
    assert "--set alpha " not in out
    assert "Options: on `hftguard align --defense NAME`" in out

    code, out, _ = _cli(capsys, "plugins", "-v", "--json")
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    (window,) = [o for o in rows["judge", "refusal-keywords"]["options"] if o["name"] == "window"]
    assert window["set"] == "judge_options.refusal-keywords.window"


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("align", "--defense", "booster"), "defense_options.alpha"),
        (("attack-finetune", "--defense", "lisa"), "defense_options.rho"),
        (("eval", "--judge", "refusal-keywords"), "judge_options.refusal-keywords.window"),
        (("align",), "dataset_options.sentiment.match"),
    ],
)
@pytest.mark.usefixtures("builtins_only")
def test_the_shown_form_reaches_the_option_on_the_stage_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], key: str
) -> None:
    """A wrong-typed value is refused naming the option: the key reached it (no run starts)."""
    common = ("--model", "tiny-random", "--out", "run")
    code, _, err = _cli(capsys, *args, *common, "--set", f"{key}=[1]")
    assert code == 2, err
    assert key in err and "expected" in err
    assert not (tmp_path / "run").exists()
    # the form `plugins -v` used to show is no option at all
    code, _, err = _cli(capsys, *args, *common, "--set", f"{key.rsplit('.', 1)[1]}=1")
    assert code == 2 and "Unknown option" in err


@pytest.mark.usefixtures("builtins_only")
def test_validate_accepts_the_shown_keys_in_a_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "align.toml"
    config.write_text(
        'model = "tiny-random"\ndefense = "booster"\n'
        "defense_options.alpha = 0.2\n"
        'dataset_options.sentiment.match = "contains"\n',
        encoding="utf-8",
    )
    code, out, err = _cli(capsys, "validate", str(config), "--kind", "align")
    assert code == 0, err
    assert "valid align config" in out
    config.write_text(config.read_text().replace("0.2", "[1]"), encoding="utf-8")
    code, _, err = _cli(capsys, "validate", str(config), "--kind", "align")
    assert code == 2 and "defense_options.alpha" in err
