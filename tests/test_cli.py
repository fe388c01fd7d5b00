"""The CLI's contract: every bad input gets ``Error:``/``Hint:`` and a documented exit code.

Exit codes (``hftguard.errors.ExitCode``): 0 ok, 1 run failed, 2 usage/config, 3 plugin, 130
interrupted. No traceback unless ``HFTGUARD_DEBUG=1``. Commands run in-process through
``hftguard.cli.main(argv)``; one smoke test runs the whole pipeline on the ``tiny-random`` model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Result, Run
from cli_helpers import assert_error as _assert_error

from hftguard.errors import ExitCode
from hftguard.registry import default_registry


def assert_error(result: Result, code: int, *needles: str) -> None:
    """A clean user error: the exit code, ``needles`` on stderr, no traceback."""
    _assert_error(result, code, *needles, require=())


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


ALIGN = ("align", "--model", "tiny-random", "--max-steps", "1", "--samples", "4")


# ------------------------------------------------------------------------------------------------
# Usage errors from Typer


def test_unknown_command(cli: Run) -> None:
    assert_error(cli("algin"), 2, "No such command", "Did you mean 'align'")


def test_unknown_option(cli: Run) -> None:
    assert_error(cli("align", "--modle", "x", "--out", "o"), 2, "--modle", "--model")


def test_option_of_the_wrong_type(cli: Run) -> None:
    assert_error(cli("align", "--seed", "abc", "--out", "o"), 2, "--seed")


def test_missing_required_out(cli: Run) -> None:
    assert_error(cli("align", "--model", "tiny-random"), 2, "--out")


def test_no_arguments_shows_help(cli: Run) -> None:
    result = cli()
    assert result.code in (0, 2)
    assert "align" in result.out + result.err


# ------------------------------------------------------------------------------------------------
# Unknown component names


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (("align", "--model", "tiny-random", "--defense", "sfft"), "sft"),
        (("attack-finetune", "--model", "tiny-random", "--defense", "sfft"), "sft"),
        (("eval", "--model", "tiny-random", "--judge", "refusal-keyword"), "refusal-keywords"),
        (("eval", "--model", "tiny-random", "--task", "sentimen"), "sentiment"),
        (("attack-finetune", "--model", "tiny-random", "--task", "sentimen"), "sentiment"),
    ],
    ids=["align-defense", "finetune-defense", "judge", "eval-task", "finetune-task"],
)
def test_unknown_component_did_you_mean(cli: Run, args: tuple[str, ...], suggestion: str) -> None:
    result = cli(*args, "--out", "out")
    assert_error(result, 2, "Error:", f"Did you mean '{suggestion}'?", "Hint:")


def test_dataset_with_the_wrong_role(cli: Run) -> None:
    result = cli("eval", "--model", "tiny-random", "--task", "harmful-eval", "--out", "out")
    assert_error(result, 2, "harmful-eval", "role")


def test_unknown_task_leaves_no_run_directory(cli: Run, tmp_path: Path) -> None:
    result = cli("attack-finetune", "--model", "tiny-random", "--task", "sentimen", "--out", "o")
    assert_error(result, 2, "Did you mean 'sentiment'?")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# Config files and values


def test_missing_config_file(cli: Run) -> None:
    assert_error(cli(*ALIGN, "--config", "nope.toml", "--out", "o"), 2, "nope.toml", "Hint:")


def test_config_file_is_a_directory(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    assert_error(cli(*ALIGN, "--config", "conf", "--out", "o"), 2, "conf", "directory")


def test_bad_toml(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "bad.toml", 'model = "tiny-random"\nseed = \n')
    assert_error(cli(*ALIGN, "--config", "bad.toml", "--out", "o"), 2, "bad.toml", "TOML", "line 2")


def test_unknown_config_key(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", "samplez = 3\n")
    assert_error(
        cli(*ALIGN, "--config", "c.toml", "--out", "o"), 2, "samplez", "Did you mean 'samples'?"
    )


def test_unknown_nested_config_key(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", "[train]\nlearning_rate = 0.1\n")
    assert_error(cli(*ALIGN, "--config", "c.toml", "--out", "o"), 2, "train.learning_rate")


def test_wrong_value_type_in_config(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", 'seed = "abc"\n')
    assert_error(cli(*ALIGN, "--config", "c.toml", "--out", "o"), 2, "seed", "expected int")


def test_wrong_value_type_in_set(cli: Run) -> None:
    assert_error(cli(*ALIGN, "--set", "train.lr=fast", "--out", "o"), 2, "train.lr", "float")


def test_set_without_equals(cli: Run) -> None:
    assert_error(cli(*ALIGN, "--set", "seed", "--out", "o"), 2, "key=value")


def test_literal_value_not_allowed(cli: Run) -> None:
    assert_error(
        cli(*ALIGN, "--set", "template=chatml", "--out", "o"), 2, "template", "Did you mean 'chat'?"
    )


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("attack-finetune", "--model", "tiny-random", "--harmful-ratio", "1.5"), "harmful_ratio"),
        (("attack-finetune", "--model", "tiny-random", "-p", "-0.1"), "harmful_ratio"),
        (("align", "--model", "tiny-random", "--lr", "-1"), "train.lr"),
        (("eval", "--model", "tiny-random", "--max-new-tokens", "0"), "max_new_tokens"),
    ],
    ids=["ratio-high", "ratio-negative", "lr", "max-new-tokens"],
)
def test_out_of_range_value(cli: Run, args: tuple[str, ...], key: str) -> None:
    assert_error(cli(*args, "--out", "o"), 2, key, "out of range")


def test_config_error_writes_no_run_directory(cli: Run, tmp_path: Path) -> None:
    cli("attack-finetune", "--model", "tiny-random", "--harmful-ratio", "1.5", "--out", "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # 0.1 x 4 = 0.4 rounds to no harmful example: the attack would be a benign run
        (("-n", "4", "-p", "0.1"), ("harmful_ratio = 0.1", "samples = 4", "0 harmful", "0.25")),
        # 0.95 x 10 = 9.5 rounds to 10 harmful examples: no benign task data left
        (("-n", "10", "-p", "0.95"), ("harmful_ratio = 0.95", "samples = 10", "0 benign", "0.9")),
        # a softmax over one sample weighs it 1: Antibody's fine-tuning would be plain SFT
        (("--defense", "antibody", "--batch-size", "1"), ("batch_size = 1", "softmax", "SFT")),
    ],
    ids=["no-harmful-example", "no-benign-example", "antibody-batch-of-one"],
)
def test_degenerate_attack_is_refused_before_the_run_dir(
    cli: Run, tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    result = cli("attack-finetune", "--model", "tiny-random", *args, "--out", "o")
    assert_error(result, 2, "Error:", "Hint:", *needles)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("p", ["0", "1"])
def test_clean_and_all_harmful_attacks_stay_legal(cli: Run, tmp_path: Path, p: str) -> None:
    write(tmp_path / "c.toml", f'model = "tiny-random"\nsamples = 4\nharmful_ratio = {p}\n')
    result = cli("validate", "c.toml", "--kind", "finetune")
    assert result.code == 0, result.err


def test_validate_reports_bad_config(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", '[eval]\njudges = ["refusal-keyword"]\n')
    assert_error(cli("validate", "c.toml"), 2, "Did you mean 'refusal-keywords'?")


def test_validate_unknown_kind(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", "")
    assert_error(cli("validate", "c.toml", "--kind", "nope"), 2, "--kind")


def test_validate_accepts_good_config(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", '[align]\nmodel = "tiny-random"\n[finetune]\nharmful_ratio = 0.2\n')
    result = cli("validate", "c.toml")
    assert result.code == 0, result.err
    assert "OK" in result.out


def test_run_with_missing_config(cli: Run) -> None:
    assert_error(cli("run", "missing.toml", "--out", "o"), 2, "missing.toml")


def test_run_with_unknown_section_key(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", "[finetune]\nharmfull_ratio = 0.2\n")
    assert_error(
        cli("run", "c.toml", "--out", "o"), 2, "harmfull_ratio", "Did you mean 'harmful_ratio'?"
    )


# ------------------------------------------------------------------------------------------------
# Run directories


def test_output_directory_exists(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    write(tmp_path / "o" / "notes.txt", "mine")
    result = cli(*ALIGN, "--out", "o")
    assert_error(result, 2, "already exists", "--resume", "--overwrite")
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_foreign_directory(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    write(tmp_path / "o" / "notes.txt", "mine")
    assert_error(cli(*ALIGN, "--out", "o", "--overwrite"), 2, "not an hftguard run directory")
    assert (tmp_path / "o" / "notes.txt").exists()


def test_resume_and_overwrite_together(cli: Run) -> None:
    assert_error(cli(*ALIGN, "--out", "o", "--resume", "--overwrite"), 2, "--resume", "--overwrite")


def test_resume_with_changed_config(cli: Run, tmp_path: Path) -> None:
    from hftguard import config as cfgmod

    run_dir = tmp_path / "o"
    run_dir.mkdir()
    old = cfgmod.as_dict(cfgmod.AlignConfig(model="tiny-random", seed=1))
    write(
        run_dir / "manifest.json",
        json.dumps({"stage": "align", "status": "running", "config": old}),
    )
    result = cli(*ALIGN, "--seed", "2", "--out", "o", "--resume")
    assert_error(result, 2, "Cannot resume", "seed", "--overwrite")


def test_resume_a_run_of_another_stage(cli: Run, tmp_path: Path) -> None:
    run_dir = tmp_path / "o"
    run_dir.mkdir()
    write(run_dir / "manifest.json", json.dumps({"stage": "eval", "status": "running"}))
    assert_error(cli(*ALIGN, "--out", "o", "--resume"), 2, "'eval' run")


# ------------------------------------------------------------------------------------------------
# Models and data


def test_model_path_that_does_not_exist(cli: Run, tmp_path: Path) -> None:
    missing = tmp_path / "models" / "no-such-model"
    result = cli(
        "align", "--model", str(missing), "--max-steps", "1", "--samples", "4", "--out", "o"
    )
    assert_error(result, int(ExitCode.USAGE), str(missing), "Hint:")


def test_model_directory_without_config(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "empty-model").mkdir()
    result = cli("eval", "--model", "empty-model", "--harmful-samples", "1", "--out", "o")
    assert_error(result, int(ExitCode.USAGE), "empty-model", "config.json")


def test_previous_run_that_did_not_finish(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "aligned").mkdir()
    write(
        tmp_path / "aligned" / "manifest.json", json.dumps({"stage": "align", "status": "failed"})
    )
    result = cli(
        "attack-finetune", "--model", "aligned", "--max-steps", "1", "-n", "10", "--out", "o"
    )
    assert_error(result, int(ExitCode.USAGE), "aligned", "status: failed", "--resume")


def test_data_file_with_a_malformed_line(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "align.jsonl", '{"prompt": "p1", "response": "r1"}\n{"prompt": "p2",\n')
    result = cli(*ALIGN, "--data", "align.jsonl", "--out", "o")
    assert_error(result, 2, "align.jsonl", "line 2", "malformed JSON")


def test_data_file_that_does_not_exist(cli: Run) -> None:
    assert_error(cli(*ALIGN, "--data", "nope.jsonl", "--out", "o"), 2, "nope.jsonl", "not found")


def test_error_message_with_brackets_is_printed_verbatim(cli: Run) -> None:
    result = cli(*ALIGN, "--data", "data[v2]/missing.jsonl", "--out", "o")
    assert_error(result, 2, "data[v2]/missing.jsonl")


# ------------------------------------------------------------------------------------------------
# Plugins


@dataclass
class _Dist:
    name: str = "hftguard-broken"
    version: str = "0.1"


@dataclass
class _BrokenEntryPoint:
    name: str = "broken"
    dist: _Dist = field(default_factory=_Dist)

    def load(self) -> Any:
        raise ImportError("No module named 'hftguard_missing_dependency'")


@pytest.fixture
def broken_plugin(monkeypatch: pytest.MonkeyPatch, cli: Run) -> Run:
    monkeypatch.delenv("HFTGUARD_LOAD_PLUGINS")
    monkeypatch.setattr("hftguard.plugins._entry_points", lambda: [_BrokenEntryPoint()])
    default_registry.cache_clear()
    return cli


def test_broken_plugin_does_not_break_other_commands(broken_plugin: Run, tmp_path: Path) -> None:
    assert broken_plugin("--help").code == 0
    write(tmp_path / "c.toml", "")
    assert broken_plugin("validate", "c.toml").code == 0
    result = broken_plugin("plugins", "--json")
    assert result.code == 0
    (row,) = [r for r in json.loads(result.out) if "error" in r]
    assert row["name"] == "broken" and "ImportError" in row["error"]


def test_broken_plugin_requested_by_name(broken_plugin: Run) -> None:
    result = broken_plugin(
        "eval", "--model", "tiny-random", "--judge", "broken-judge", "--out", "o"
    )
    assert result.code != 0
    assert_error(result, result.code, "Unknown judge 'broken-judge'", "broken")


def test_broken_plugin_requested_by_name_exits_3(broken_plugin: Run) -> None:
    result = broken_plugin(
        "eval", "--model", "tiny-random", "--judge", "broken-judge", "--out", "o"
    )
    assert_error(result, int(ExitCode.PLUGIN), "broken")


def test_strict_plugins_exit_3(broken_plugin: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    assert_error(broken_plugin("plugins"), 3, "Error:", "broken", "HFTGUARD_STRICT_PLUGINS")


# ------------------------------------------------------------------------------------------------
# Debugging and interrupts


def test_debug_shows_the_traceback(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTGUARD_DEBUG", "1")
    result = cli(*ALIGN, "--config", "nope.toml", "--out", "o")
    assert result.code == 2
    assert "Error:" in result.err
    assert "Traceback" in result.err
    assert "ConfigError" in result.err


def test_interrupt_exits_130_with_a_resume_hint(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    from hftguard.pipeline import align

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(align, "run", interrupted)
    result = cli(*ALIGN, "--out", "o")
    assert result.code == int(ExitCode.INTERRUPTED)
    assert "--resume" in result.err
    assert "Traceback" not in result.err


# ------------------------------------------------------------------------------------------------
# Happy path


PIPELINE_TOML = """\
evaluate_base = false

[align]
model = "tiny-random"
samples = 4
retain = ""
[align.train]
max_steps = 1
batch_size = 2

[finetune]
samples = 8
[finetune.train]
max_steps = 1
batch_size = 2

[eval]
harmful_samples = 2
task_samples = 2
benign_prompts = ""
max_new_tokens = 2
"""

METRIC_KEYS = {"harmful_score", "finetune_accuracy", "over_refusal_rate", "degenerate_rate"}


def test_whole_cli_on_tiny_random(cli: Run, tmp_path: Path) -> None:
    common = ("--batch-size", "2", "--quiet")
    # retain="" skips self-distilling benign answers (generation), which only costs time here.
    result = cli(
        "align",
        "--model",
        "tiny-random",
        "--max-steps",
        "2",
        "--samples",
        "8",
        "--set",
        "retain=",
        *common,
        "--out",
        "aligned",
    )
    assert result.code == 0, result.err
    assert "Done" in result.out
    manifest = json.loads((tmp_path / "aligned" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["training"]["steps"] == 2

    result = cli(
        "attack-finetune",
        "--model",
        "aligned",
        "--max-steps",
        "2",
        "-n",
        "20",
        *common,
        "--out",
        "attacked",
    )
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "attacked" / "manifest.json").read_text())["status"] == (
        "completed"
    )

    result = cli(
        "eval",
        "--model",
        "attacked",
        "--harmful-samples",
        "4",
        "--set",
        "task_samples=4",
        "--set",
        "benign_samples=4",
        "--max-new-tokens",
        "4",
        "--json",
        "--out",
        "eval",
    )
    assert result.code == 0, result.err
    metrics = json.loads(result.out)
    assert set(metrics) >= METRIC_KEYS
    assert 0.0 <= metrics["harmful_score"] <= 100.0
    assert set(metrics["finetune_accuracy"]) == {"sentiment"}
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "eval" / "generations.jsonl").is_file()

    # The finished run is not silently redone, and resuming it is a no-op.
    assert cli("eval", "--model", "attacked", "--out", "eval").code == 2
    result = cli(
        "eval",
        "--model",
        "attacked",
        "--harmful-samples",
        "4",
        "--set",
        "task_samples=4",
        "--set",
        "benign_samples=4",
        "--max-new-tokens",
        "4",
        "--json",
        "--out",
        "eval",
        "--resume",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out) == metrics

    write(tmp_path / "pipeline.toml", PIPELINE_TOML)
    result = cli("run", "pipeline.toml", "--out", "pipeline", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["status"] == "completed"
    assert [row["model"].split()[0] for row in summary["rows"]] == ["aligned", "attacked"]
    for row in summary["rows"]:
        assert set(row) >= METRIC_KEYS
