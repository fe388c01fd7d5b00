"""Every bad input gets ``Error:`` + ``Hint:`` and a documented exit code, never a traceback (#15).

Each test feeds the CLI one kind of bad input (a binary config file, a bogus device, an unwritable
``--out``, a damaged adapter, a model that needs remote code, a plugin that misbehaves, a Click
usage error, an unreachable hub...) and checks the exit code (2 for usage/config errors, 1 where
the run itself failed, 3 for a plugin), the ``Error:``/``Hint:`` lines and that no traceback is
printed. Runs in-process through ``hftguard.cli.main`` (a ``cli`` fixture like ``test_cli.py``'s)
on the ``tiny-random`` model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_cli import Run, assert_error, write

import hftguard
from hftguard import Judge, JudgeContext, Verdict
from hftguard.errors import ExitCode
from hftguard.registry import default_registry

ALIGN = (
    "align",
    "--model",
    "tiny-random",
    "--max-steps",
    "1",
    "--samples",
    "4",
    "--set",
    "retain=",
)
FINETUNE = ("attack-finetune", "--model", "tiny-random", "--max-steps", "1", "-n", "10")
EVAL = (
    "eval",
    "--model",
    "tiny-random",
    "--harmful-samples",
    "1",
    "--max-new-tokens",
    "2",
    "--set",
    "task_samples=1",
    "--set",
    "benign_prompts=",
    "--quiet",
)


def no_box(result: Any) -> None:
    """Not Click's/rich's boxed error panel."""
    assert "╭" not in result.err and "│" not in result.err, result.err


# ------------------------------------------------------------------------------------------------
# Config files that are not text


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01\xff\xfe\x00binary", b'model = "caf\xe9"\n'],
    ids=["binary", "latin-1"],
)
def test_config_file_that_is_not_utf8(cli: Run, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "c.toml").write_bytes(content)
    result = cli(*ALIGN, "--config", "c.toml", "--out", "o")
    assert_error(result, 2, "Error:", "c.toml", "UTF-8", "Hint:")
    assert not (tmp_path / "o").exists()


def test_run_config_file_that_is_not_utf8(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert_error(cli("run", "c.toml", "--out", "o"), 2, "c.toml", "UTF-8", "Hint:")
    assert_error(cli("validate", "c.toml"), 2, "c.toml", "UTF-8", "Hint:")


# ------------------------------------------------------------------------------------------------
# Devices


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((*ALIGN, "--set", "train.device=bogus"), "train.device"),
        ((*FINETUNE, "--set", "train.device=bogus"), "train.device"),
        ((*EVAL, "--set", "device=bogus"), "device"),
        ((*EVAL, "--set", "device=cuda:x"), "device"),
    ],
    ids=["align", "attack-finetune", "eval", "eval-bad-index"],
)
def test_bogus_device(cli: Run, tmp_path: Path, args: tuple[str, ...], key: str) -> None:
    result = cli(*args, "--out", "o")
    assert_error(result, 2, "Error:", key, "Hint:", "cpu", "cuda")
    assert not (tmp_path / "o").exists()  # refused with the config, before the run directory


@pytest.mark.parametrize("command", ["judge", "validate-judges"])
def test_bogus_device_of_judge_commands(cli: Run, tmp_path: Path, command: str) -> None:
    record = {"prompt": "p", "response": "r", "label": "refusal", "split": "dev"}
    write(tmp_path / "pairs.jsonl", json.dumps(record) + "\n")
    result = cli(command, "pairs.jsonl", "--device", "bogus", "--out", "o")
    assert_error(result, 2, "Error:", "device", "bogus", "Hint:")
    assert not (tmp_path / "o").exists()


def test_bogus_device_in_validate(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "c.toml", '[align.train]\ndevice = "gpu"\n')
    assert_error(cli("validate", "c.toml"), 2, "train.device", "gpu", "Did you mean 'cuda'?")


def test_valid_devices_are_accepted(cli: Run, tmp_path: Path) -> None:
    write(
        tmp_path / "c.toml",
        '[align.train]\ndevice = "cuda:1"\n[finetune.train]\ndevice = "mps"\n'
        '[eval]\ndevice = "cpu"\n',
    )
    result = cli("validate", "c.toml")
    assert result.code == 0, result.err


def test_pick_device_rejects_a_bogus_name_cleanly() -> None:
    from hftguard.engine import models
    from hftguard.errors import ModelError

    with pytest.raises(ModelError, match="bogus"):
        models.pick_device("bogus")


# ------------------------------------------------------------------------------------------------
# Output directories that cannot be written


@pytest.mark.parametrize(
    "args",
    [ALIGN, EVAL, ("run",)],
    ids=["align", "eval", "run"],
)
def test_out_inside_a_file(cli: Run, tmp_path: Path, args: tuple[str, ...]) -> None:
    write(tmp_path / "some_file", "mine")
    result = cli(*args, "--out", "some_file/run")
    assert_error(result, 2, "Error:", "some_file", "not a directory", "Hint:", "--out")
    assert (tmp_path / "some_file").read_text() == "mine"


def test_out_in_a_read_only_directory(cli: Run, tmp_path: Path) -> None:
    """Skipped where permissions are not enforced: root (with CAP_DAC_OVERRIDE) writes anyway.
    As root, run it without that capability: ``setpriv --inh-caps=-dac_override
    --bounding-set=-dac_override .venv/bin/python -m pytest ...``."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").write_text("")
        except PermissionError:
            pass
        else:
            pytest.skip("directory permissions are not enforced for this user (root)")
        result = cli(*ALIGN, "--out", "ro/run")
        assert_error(result, 2, "Error:", "ro/run", "Hint:", "--out")
        result = cli(*ALIGN, "--out", "ro")  # the directory itself exists, is empty, read-only
        assert_error(result, 2, "Error:", "ro", "Hint:", "--out")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(
    "out",
    ["/proc/hftguard-no-such-dir/run", "/sys/hftguard-test-run"],
    ids=["proc", "sys"],
)
def test_out_where_nothing_can_be_created(cli: Run, out: str) -> None:
    """Unwritable even for root: /proc and /sys do not take new directories."""
    top = Path(*Path(out).parts[:2])
    if not top.is_dir():
        pytest.skip(f"{top} does not exist here")
    for args in (ALIGN, EVAL, ("run",)):
        result = cli(*args, "--out", out)
        assert_error(result, 2, "Error:", out, "Hint:", "--out")


# ------------------------------------------------------------------------------------------------
# Damaged adapters


def _aligned_run_with_a_damaged_adapter(root: Path, content: bytes | None) -> Path:
    """A finished align run whose adapter_model.safetensors is ``content`` (None: truncated)."""
    from peft import LoraConfig, get_peft_model

    from hftguard.engine import models
    from hftguard.testing import tiny_model, tiny_tokenizer

    base = models.resolve("tiny-random").recipe
    run = root / "aligned"
    adapter = run / "adapter"
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(tiny_model(tiny_tokenizer(), seed=0), lora).save_pretrained(adapter)
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if content is None else content)
    manifest = {
        "schema_version": 1,
        "stage": "align",
        "status": "completed",
        "config": {"model": "tiny-random"},
        "started_at": "2026-01-01T00:00:00+00:00",
        "model": {
            "base": base.base,
            "base_spec": "tiny-random",
            "adapters": [str(adapter.resolve())],
        },
    }
    write(run / "manifest.json", json.dumps(manifest))
    return run


@pytest.mark.parametrize("content", [None, b"garbage", b""], ids=["truncated", "garbage", "empty"])
@pytest.mark.parametrize("stage", ["attack-finetune", "eval"])
def test_damaged_adapter(cli: Run, tmp_path: Path, stage: str, content: bytes | None) -> None:
    _aligned_run_with_a_damaged_adapter(tmp_path, content)
    args = FINETUNE if stage == "attack-finetune" else EVAL
    args = (args[0], "--model", "aligned", *args[3:])
    result = cli(*args, "--out", "o")
    assert_error(
        result, 2, "Error:", "adapter_model.safetensors", "damaged", "Hint:", "aligned", "re-run"
    )


# ------------------------------------------------------------------------------------------------
# A model that needs its own (remote) code


def test_model_that_needs_remote_code(cli: Run, tmp_path: Path) -> None:
    from hftguard.engine import models

    custom = tmp_path / "custom-model"
    custom.mkdir()
    tiny = Path(models.resolve("tiny-random").recipe.base)
    for f in tiny.iterdir():
        if f.name != "config.json":
            (custom / f.name).write_bytes(f.read_bytes())
    config = {
        "model_type": "my-custom-lm",
        "architectures": ["MyCustomLM"],
        "auto_map": {
            "AutoConfig": "configuration_my.MyConfig",
            "AutoModelForCausalLM": "modeling_my.MyCustomLM",
        },
    }
    write(custom / "config.json", json.dumps(config))
    for args in (EVAL, FINETUNE):
        result = cli(args[0], "--model", "custom-model", *args[3:], "--out", f"o-{args[0]}")
        assert_error(
            result,
            2,
            "Error:",
            "custom-model",
            "my-custom-lm",
            "remote code",
            "not executed",
            "Hint:",
            "transformers",
        )


# ------------------------------------------------------------------------------------------------
# Plugins


@dataclass
class _Dist:
    name: str
    version: str = "0.1"


@dataclass
class _EntryPoint:
    name: str
    dist: _Dist
    module: Any

    def load(self) -> Any:
        return self.module


def _plugin(monkeypatch: pytest.MonkeyPatch, name: str, dist: str, **hooks: Any) -> None:
    import types

    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hftguard.hookimpl(fn))
    monkeypatch.delenv("HFTGUARD_LOAD_PLUGINS", raising=False)
    monkeypatch.setattr(
        "hftguard.plugins._entry_points", lambda: [_EntryPoint(name, _Dist(dist), module)]
    )
    default_registry.cache_clear()


@dataclass
class RequiredConfig:
    """A plugin judge option without a default: the user must give it."""

    endpoint: str


class RequiredOptionJudge(Judge):
    """A judge whose Config has a field without a default."""

    name = "needs-endpoint"
    Config = RequiredConfig

    def judge(
        self, prompts: Sequence[str], responses: Sequence[str], ctx: JudgeContext
    ) -> list[Verdict]:
        return [Verdict(False, "refusal", 0.0) for _ in responses]


class ExplodingJudge(Judge):
    """A plugin judge whose judge() raises."""

    name = "exploding-judge"

    def judge(
        self, prompts: Sequence[str], responses: Sequence[str], ctx: JudgeContext
    ) -> list[Verdict]:
        raise RuntimeError("the judge's backend exploded")


def test_plugin_config_field_without_a_default(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin(
        monkeypatch,
        "needs_endpoint",
        "hftguard-needs-endpoint",
        hftguard_register_judges=lambda: RequiredOptionJudge,
    )
    result = cli(*EVAL, "--judge", "needs-endpoint", "--out", "o")
    assert_error(
        result, 2, "Error:", "judge_options.needs-endpoint.endpoint", "required", "Hint:", "--set"
    )
    assert not (tmp_path / "o").exists()
    write(tmp_path / "c.toml", '[eval]\njudges = ["needs-endpoint"]\n')
    assert_error(cli("validate", "c.toml"), 2, "judge_options.needs-endpoint.endpoint")
    # given, it is accepted
    write(
        tmp_path / "c.toml",
        '[eval]\njudges = ["needs-endpoint"]\n'
        '[eval.judge_options.needs-endpoint]\nendpoint = "http://x"\n',
    )
    result = cli("validate", "c.toml")
    assert result.code == 0, result.err


def test_plugin_judge_that_raises(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin(
        monkeypatch,
        "exploding",
        "hftguard-exploding",
        hftguard_register_judges=lambda: ExplodingJudge,
    )
    result = cli(*EVAL, "--judge", "exploding-judge", "--out", "o")
    assert_error(
        result,
        int(ExitCode.PLUGIN),
        "Error:",
        "exploding-judge",
        "hftguard-exploding",
        "RuntimeError",
        "the judge's backend exploded",
        "Hint:",
    )
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["status"] == "failed"


def test_plugin_judge_that_raises_debug_shows_the_cause(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plugin(
        monkeypatch,
        "exploding",
        "hftguard-exploding",
        hftguard_register_judges=lambda: ExplodingJudge,
    )
    monkeypatch.setenv("HFTGUARD_DEBUG", "1")
    result = cli(*EVAL, "--judge", "exploding-judge", "--out", "o")
    assert result.code == int(ExitCode.PLUGIN)
    assert "Traceback" in result.err and "the judge's backend exploded" in result.err


# ------------------------------------------------------------------------------------------------
# Click/Typer usage errors


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("algin",), ("No such command 'algin'", "Did you mean 'align'", "'hftguard --help'")),
        (("align", "--modle", "x", "--out", "o"), ("--modle", "'hftguard align --help'")),
        (("align", "--model", "tiny-random"), ("--out", "'hftguard align --help'")),
        (("align", "--seed", "abc", "--out", "o"), ("--seed", "'hftguard align --help'")),
        (("validate",), ("config_file", "'hftguard validate --help'")),
        (("run", "a.toml", "b.toml"), ("b.toml", "'hftguard run --help'")),
    ],
    ids=["unknown-command", "unknown-option", "missing-option", "bad-type", "missing-arg", "extra"],
)
def test_usage_errors(cli: Run, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    result = cli(*args)
    assert_error(result, 2, "Error:", "Hint: Run", *needles)
    no_box(result)
    assert result.err.lstrip().startswith("Error:"), result.err


def test_help_is_unchanged(cli: Run) -> None:
    result = cli("align", "--help")
    assert result.code == 0
    assert "Usage:" in result.out and "--model" in result.out
    assert "Error:" not in result.err
    result = cli("--help")
    assert result.code == 0 and "align" in result.out


def test_no_arguments_still_shows_help(cli: Run) -> None:
    result = cli()
    assert result.code in (0, 2)
    assert "align" in result.out + result.err
    assert "Error:" not in result.err


# ------------------------------------------------------------------------------------------------
# Ctrl-C


def test_interrupted_run_hint_does_not_suggest_resume(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hftguard.pipeline import grid

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(grid, "run", interrupted)
    write(tmp_path / "c.toml", '[align]\nmodel = "tiny-random"\n')
    result = cli("run", "c.toml", "--out", "o")
    assert result.code == int(ExitCode.INTERRUPTED)
    assert "--resume" not in result.err
    assert "Re-run the same command" in result.err
    assert "Traceback" not in result.err


# ------------------------------------------------------------------------------------------------
# validate / run --dry-run: every path problem at once, before anything is written

BAD_PATHS = """\
[align]
model = "models/no-such-model"
data = "missing-alignment.jsonl"
[finetune]
task = "missing-task.csv"
[eval]
harmful_prompts = "prompts/missing-harmful.jsonl"
judges = ["refusal-keywords", "hf-classifier"]
[eval.judge_options.hf-classifier]
model = "./judges/no-such-classifier"
[dataset_options.sst2]
source = "./copies/no-such-sst2"
"""

BAD_PATH_NEEDLES = (
    "models/no-such-model",
    "missing-alignment.jsonl",
    "missing-task.csv",
    "prompts/missing-harmful.jsonl",
    "judges/no-such-classifier",
    "copies/no-such-sst2",
)


def test_validate_lists_every_missing_path(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    write(tmp_path / "c.toml", BAD_PATHS)
    result = cli("validate", "c.toml")
    assert_error(result, 2, "Error:", "6 ", *BAD_PATH_NEEDLES, "Hint:")


def test_dry_run_lists_every_missing_path_and_writes_nothing(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    write(tmp_path / "c.toml", BAD_PATHS)
    result = cli("run", "c.toml", "--dry-run", "--out", "o")
    assert_error(result, 2, "Error:", *BAD_PATH_NEEDLES, "Hint:")
    assert not (tmp_path / "o").exists()


def test_validate_lists_path_problems_with_a_name_error(cli: Run, tmp_path: Path) -> None:
    write(
        tmp_path / "c.toml",
        '[align]\ndata = "missing.jsonl"\n[eval]\njudges = ["refusal-keyword"]\n',
    )
    result = cli("validate", "c.toml")
    assert_error(result, 2, "missing.jsonl", "Did you mean 'refusal-keywords'?")


def test_validate_stage_kinds_check_paths(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "e.toml", 'model = "./nope-model"\nharmful_prompts = "nope.jsonl"\n')
    assert_error(cli("validate", "e.toml", "--kind", "eval"), 2, "nope-model", "nope.jsonl")
    write(tmp_path / "f.toml", 'model = "./nope-run"\ntask = "nope.csv"\n')
    assert_error(cli("validate", "f.toml", "--kind", "finetune"), 2, "nope-run", "nope.csv")


def test_validate_accepts_existing_paths(cli: Run, tmp_path: Path) -> None:
    write(tmp_path / "align.jsonl", '{"prompt": "p", "response": "r"}\n')
    write(tmp_path / "c.toml", '[align]\nmodel = "tiny-random"\ndata = "align.jsonl"\n')
    result = cli("validate", "c.toml")
    assert result.code == 0, result.err


def test_validate_reports_an_unfinished_run_as_model(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "aligned").mkdir()
    write(
        tmp_path / "aligned" / "manifest.json", json.dumps({"stage": "align", "status": "failed"})
    )
    write(tmp_path / "f.toml", 'model = "aligned"\n')
    assert_error(cli("validate", "f.toml", "--kind", "finetune"), 2, "aligned", "failed")


# ------------------------------------------------------------------------------------------------
# An unreachable hub


def test_unreachable_hub_fails_in_seconds(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hub endpoint that refuses connections at once (the discard port of this machine), and an
    # empty Hugging Face cache: the model can be found nowhere.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    t0 = time.monotonic()
    result = cli("eval", "--model", "some-org/some-model", *EVAL[3:], "--out", "o")
    elapsed = time.monotonic() - t0
    assert_error(
        result, 2, "Error:", "some-org/some-model", "cannot be reached", "Hint:", "--model"
    )
    assert "it is not offline" not in result.err
    assert "Retrying" not in result.err
    assert elapsed < 20, f"took {elapsed:.0f} s"


def test_offline_hub_hint(cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    result = cli("eval", "--model", "some-org/some-model", *EVAL[3:], "--out", "o")
    assert_error(result, 2, "Error:", "some-org/some-model", "HF_HUB_OFFLINE", "Hint:")
    assert "must be reachable" not in result.err


def test_unreachable_hub_with_a_cached_model_goes_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached hub model on a machine where the hub does not answer is loaded from the cache:
    the process goes offline instead of retrying the hub for every file."""
    from hftguard.engine import models

    cache = tmp_path / "hf-cache"
    repo = cache / "models--some-org--some-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # unset, and restored after the test
    for var in ("TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    models.before_loading("some-org/some-model")  # no error: it is cached
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_hub_model_that_needs_remote_code_is_named_as_such() -> None:
    """A hub model with custom code fails inside transformers; its ValueError is recognised."""
    from hftguard.engine import models

    exc = ValueError(
        "The repository org/custom contains custom code which must be executed to correctly "
        "load the model. Please pass the argument `trust_remote_code=True` to allow custom code "
        "to be run."
    )
    err = models.load_error("org/custom", "model", exc)
    assert "remote code is not executed" in err.message
    assert "org/custom" in err.message and err.hint
