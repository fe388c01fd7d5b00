"""Issue #15, security: pickle weights, names that become paths, plugins that exit or take over.

1. Weights load only as safetensors: a LoRA adapter saved as ``adapter_model.bin`` and a judge model
   saved as ``pytorch_model.bin`` are refused (``ModelError``) before anything is loaded, unless
   ``HFTGUARD_TRUST_PICKLE=1``.
2. Component names become file names: a name with ``/``, ``..``, a leading dot, whitespace or a
   control character is refused when the registry is built, and every path built from a name is
   checked to stay inside its directory.
3. A plugin that raises ``SystemExit``/``KeyboardInterrupt`` while loading is recorded like any
   other broken plugin (a real Ctrl-C still stops hftguard), and a plugin command cannot replace a
   built-in one.
"""

from __future__ import annotations

import json
import signal
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hftguard
from hftguard import Judge, JudgeContext, Verdict
from hftguard.components import TaskDataset
from hftguard.errors import ExitCode, ModelError, PluginError, RunDirError
from hftguard.plugins import get_plugin_host
from hftguard.registry import Registry, default_registry

# ------------------------------------------------------------------------------------------------
# 1. Pickle weights


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hftguard.testing import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("base") / "model"
    tok = tiny_tokenizer()
    tiny_model(tok, seed=0).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _save_adapter(base_dir: Path, out: Path, *, safe: bool) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(base, cfg).save_pretrained(out, safe_serialization=safe)
    return out


@pytest.fixture(scope="module")
def pickle_adapter(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _save_adapter(base_dir, tmp_path_factory.mktemp("adapter") / "pickle", safe=False)
    assert (path / "adapter_model.bin").is_file()
    assert not (path / "adapter_model.safetensors").exists()
    return path


@pytest.fixture(scope="module")
def safe_adapter(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _save_adapter(base_dir, tmp_path_factory.mktemp("adapter") / "safe", safe=True)
    assert (path / "adapter_model.safetensors").is_file()
    return path


@pytest.fixture
def no_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HFTGUARD_TRUST_PICKLE", raising=False)


def _no_peft_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to load an adapter fail the test: refusal must come first."""
    import peft

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an adapter was loaded before it was checked")

    monkeypatch.setattr(peft.PeftModel, "from_pretrained", refuse)


def _assert_pickle_refusal(exc: ModelError, filename: str) -> None:
    assert filename in exc.message
    assert "safetensors" in exc.message
    assert exc.hint and "safe_serialization=True" in exc.hint
    assert "HFTGUARD_TRUST_PICKLE" in exc.hint and "execute" in exc.hint
    assert exc.exit_code == ExitCode.USAGE


def test_pickle_adapter_is_refused_for_eval(
    base_dir: Path, pickle_adapter: Path, no_trust: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from hftguard.engine import models

    _no_peft_loading(monkeypatch)
    recipe = models.ModelRecipe(str(base_dir), "tiny", [str(pickle_adapter)])
    with pytest.raises(ModelError) as info:
        models.load_for_eval(recipe, torch.device("cpu"), torch.float32)
    _assert_pickle_refusal(info.value, "adapter_model.bin")


def test_pickle_adapter_is_refused_for_continued_training(
    base_dir: Path, pickle_adapter: Path, no_trust: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from hftguard.engine import models

    _no_peft_loading(monkeypatch)
    recipe = models.ModelRecipe(str(base_dir), "tiny", [str(pickle_adapter)])
    with pytest.raises(ModelError) as info:
        models.load_for_training(
            recipe, "continue", None, torch.device("cpu"), torch.float32, seed=0
        )
    _assert_pickle_refusal(info.value, "adapter_model.bin")


def test_safetensors_adapter_loads(base_dir: Path, safe_adapter: Path, no_trust: None) -> None:
    import torch

    from hftguard.engine import models

    recipe = models.ModelRecipe(str(base_dir), "tiny", [str(safe_adapter)])
    model, _tok = models.load_for_eval(recipe, torch.device("cpu"), torch.float32)
    assert not model.training


def test_trusted_pickle_adapter_loads(
    base_dir: Path, pickle_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from hftguard.engine import models

    monkeypatch.setenv("HFTGUARD_TRUST_PICKLE", "1")
    recipe = models.ModelRecipe(str(base_dir), "tiny", [str(pickle_adapter)])
    models.load_for_eval(recipe, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def pickle_judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier saved the old way: ``pytorch_model.bin`` (a pickle), no safetensors."""
    import torch

    from hftguard.testing import tiny_classifier, tiny_tokenizer

    path = tmp_path_factory.mktemp("judge") / "pickle"
    tok = tiny_tokenizer()
    model = tiny_classifier(tok, ("LABEL_0", "LABEL_1"), seed=0)
    model.config.save_pretrained(path)
    tok.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def _load_judge(path: Path) -> Any:
    import torch

    from hftguard.builtins.judges.model_judge import load_pretrained

    return load_pretrained(
        "hf-classifier",
        str(path),
        "sequence-classification",
        revision="",
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def test_pickle_judge_model_is_refused(
    pickle_judge_dir: Path, no_trust: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the judge's tokenizer was loaded before its weights were checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(ModelError) as info:
        _load_judge(pickle_judge_dir)
    _assert_pickle_refusal(info.value, "pytorch_model.bin")
    assert "hf-classifier" in info.value.message


def test_pickle_judge_model_is_refused_through_the_judge(
    pickle_judge_dir: Path, no_trust: None
) -> None:
    from hftguard.builtins.judges.hf_classifier import HfClassifier, HfClassifierConfig

    judge = HfClassifier(HfClassifierConfig(model=str(pickle_judge_dir)))
    with pytest.raises(ModelError, match=r"pytorch_model\.bin"):
        judge.judge(["p"], ["r"], JudgeContext(device="cpu", batch_size=1))
    assert judge.model is None


def test_safetensors_judge_model_loads(tmp_path: Path, no_trust: None) -> None:
    from hftguard.testing import save_tiny_judge_model

    path = save_tiny_judge_model(tmp_path / "safe", "sequence-classification")
    model, _tok, _path, is_hub = _load_judge(path)
    assert not is_hub and not model.training


def test_trusted_pickle_judge_model_loads(
    pickle_judge_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFTGUARD_TRUST_PICKLE", "1")
    _load_judge(pickle_judge_dir)


def test_pickle_base_model_is_refused_with_a_clear_error(
    pickle_judge_dir: Path, no_trust: None
) -> None:
    from hftguard.engine import models

    with pytest.raises(ModelError) as info:
        models.load_base(str(pickle_judge_dir))
    _assert_pickle_refusal(info.value, "pytorch_model.bin")


# ------------------------------------------------------------------------------------------------
# 2. Names that become file names


@dataclass
class FakeDist:
    name: str
    version: str = "0.1"


@dataclass
class FakeEntryPoint:
    name: str
    dist: FakeDist
    loader: Callable[[], Any]

    def load(self) -> Any:
        return self.loader()


def plugin_module(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hftguard.hookimpl(fn))
    return module


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeEntryPoint]]:
    """The fake installed entry points (append to it), with the process registry rebuilt."""
    eps: list[FakeEntryPoint] = []
    monkeypatch.setattr("hftguard.plugins._entry_points", lambda: list(eps))
    for var in ("HFTGUARD_LOAD_PLUGINS", "HFTGUARD_DISABLE_PLUGINS", "HFTGUARD_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    default_registry.cache_clear()
    yield eps
    default_registry.cache_clear()


def _judge_named(name: str) -> type[Judge]:
    class Named(Judge):
        """A judge with a chosen name."""

        def judge(
            self, prompts: Sequence[str], responses: Sequence[str], ctx: JudgeContext
        ) -> list[Verdict]:
            return [Verdict(False, "refusal", 0.0) for _ in responses]

    Named.name = name
    return Named


def _task_named(name: str) -> type[TaskDataset]:
    class Named(TaskDataset):
        """A task with a chosen name."""

        def load(self, split: str, ctx: Any) -> list[Any]:
            return []

        def score(self, examples: Sequence[Any], completions: Sequence[str]) -> list[bool]:
            return []

    Named.name = name
    return Named


@pytest.mark.parametrize(
    ("kind", "hook", "make"),
    [
        ("judge", "hftguard_register_judges", _judge_named),
        ("dataset", "hftguard_register_datasets", _task_named),
    ],
)
def test_name_with_a_path_is_refused_at_registration(
    entry_points: list[FakeEntryPoint], kind: str, hook: str, make: Callable[[str], type]
) -> None:
    evil = plugin_module("fake_evil", **{hook: lambda: make("../evil")})
    entry_points.append(FakeEntryPoint("evil", FakeDist("hftguard-evil", "6.6"), lambda: evil))
    registry = Registry(get_plugin_host())
    assert "../evil" not in {i.name for i in registry.components(kind)}
    (failure,) = registry.host.failures
    assert (failure.name, failure.distribution) == ("evil", "hftguard-evil")
    assert "'../evil'" in failure.error and "hftguard-evil" in failure.error
    with pytest.raises(PluginError):
        registry.get(kind, "../evil")


def test_name_with_a_path_is_a_plugin_error_in_strict_mode(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    evil = plugin_module("fake_evil", hftguard_register_judges=lambda: _judge_named("../evil"))
    entry_points.append(FakeEntryPoint("evil", FakeDist("hftguard-evil"), lambda: evil))
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as info:
        Registry(get_plugin_host()).components("judge")
    assert "'../evil'" in info.value.message and "hftguard-evil" in info.value.message


BAD_NAMES = [
    "../evil", "a/b", "a\\b", "..", ".", ".hidden", "a..b", "a b", " a", "a\tb", "a\nb",
    "a\x00b", "a\x1bb", "Evil", "", "-a", "ä", "a" * 101,
]  # fmt: skip
GOOD_NAMES = ["goal-overlap", "sft", "gsm8k", "llama-guard-3.1", "my_judge", "a", "x" * 100]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str) -> None:
    from hftguard.names import check_name

    with pytest.raises(ValueError, match="invalid name"):
        check_name(name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_are_accepted(name: str) -> None:
    from hftguard.names import check_name

    check_name(name)


def test_every_builtin_and_installed_name_is_valid(entry_points: list[FakeEntryPoint]) -> None:
    from hftguard.names import check_name

    registry = Registry(get_plugin_host(load_entry_points=False))
    for info in registry.all_components():
        check_name(info.name)
    assert registry.host.failures == []
    import hftguard_example_judge as example  # the example plugin in plugins/

    for cls in example.hftguard_register_judges():
        check_name(cls.name)


def test_path_helper_keeps_names_inside(tmp_path: Path) -> None:
    from hftguard.names import name_path

    root = tmp_path / "run"
    assert name_path(root / "external", "alpacaeval", ".json") == (
        root / "external" / "alpacaeval.json"
    )
    for name in ("../../evil", "../evil", "/etc/passwd", "a/../../b"):
        with pytest.raises(RunDirError, match="outside"):
            name_path(root / "external", name, ".json", root=root)


def test_path_helper_refuses_a_symlink_out(tmp_path: Path) -> None:
    from hftguard.names import name_path

    root = tmp_path / "run"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "external").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunDirError, match="outside"):
        name_path(root / "external", "ok", ".json", root=root)


def test_external_outputs_cannot_escape_the_run_dir(tmp_path: Path) -> None:
    """A task name that escapes (registration bypassed) must not write outside the run."""
    from hftguard.pipeline.evaluate import _write_external

    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    with pytest.raises(RunDirError):
        _write_external(run, "../../evil", [], [], "model")
    assert not (tmp_path / "out" / "evil.json").exists()
    assert not list(tmp_path.rglob("evil.json"))


# ------------------------------------------------------------------------------------------------
# 3. Plugins that exit, interrupt, or hijack commands


def _raiser(exc: BaseException) -> Callable[[], Any]:
    def load() -> Any:
        raise exc

    return load


@pytest.mark.parametrize(
    "exc", [SystemExit(0), SystemExit(1), SystemExit("bye"), KeyboardInterrupt(), GeneratorExit()]
)
def test_plugin_that_exits_at_import_is_recorded(
    entry_points: list[FakeEntryPoint], exc: BaseException
) -> None:
    entry_points.append(FakeEntryPoint("exiter", FakeDist("hftguard-exiter"), _raiser(exc)))
    host = get_plugin_host()
    (failure,) = host.failures
    assert (failure.name, failure.distribution) == ("exiter", "hftguard-exiter")
    assert failure.error.startswith(type(exc).__name__)
    assert Registry(host).get("judge", "refusal-keywords").name == "refusal-keywords"


def test_plugin_that_exits_at_import_is_a_plugin_error_in_strict_mode(
    entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_points.append(FakeEntryPoint("exiter", FakeDist("hftguard-exiter"), _raiser(SystemExit)))
    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="exiter"):
        get_plugin_host()


@pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="needs signal.raise_signal")
def test_a_real_ctrl_c_while_loading_plugins_still_stops(
    entry_points: list[FakeEntryPoint],
) -> None:
    def interrupted() -> Any:
        signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        raise AssertionError("SIGINT did not interrupt")

    entry_points.append(FakeEntryPoint("slow", FakeDist("hftguard-slow"), interrupted))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        get_plugin_host()
    assert signal.getsignal(signal.SIGINT) is before


def test_registration_hook_that_exits_is_recorded() -> None:
    def bye() -> None:
        sys.exit(2)

    bad = plugin_module("fake_bye", hftguard_register_judges=bye)
    registry = Registry(get_plugin_host(load_entry_points=False, extra=[bad]))
    assert registry.get("judge", "refusal-keywords")
    assert [f.error for f in registry.host.failures] == ["SystemExit: 2"]


def test_commands_hook_that_exits_is_recorded() -> None:
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    def bye(app: Any) -> None:
        raise KeyboardInterrupt

    host = get_plugin_host(
        load_entry_points=False, extra=[plugin_module("fake_bye", hftguard_register_commands=bye)]
    )
    app = build_app(host)
    assert [f.name for f in host.failures] == ["fake_bye"]
    assert CliRunner().invoke(app, ["--help"]).exit_code == 0


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from hftguard.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("exc", [SystemExit(0), SystemExit("plugin says bye"), KeyboardInterrupt()])
def test_help_and_plugins_work_with_a_plugin_that_exits(
    entry_points: list[FakeEntryPoint],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    entry_points.append(FakeEntryPoint("exiter", FakeDist("hftguard-exiter"), _raiser(exc)))
    code, out, err = _main(capsys, "--help")
    assert code == 0, err
    assert "align" in out and "plugins" in out
    default_registry.cache_clear()
    code, out, err = _main(capsys, "plugins", "--json")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["name"] == "exiter"]
    assert len(rows) == 1 and rows[0]["kind"] == "broken-plugin"
    assert rows[0]["distribution"] == "hftguard-exiter"
    assert type(exc).__name__ in rows[0]["error"]


def _clashing_commands(app: Any) -> None:
    import typer

    @app.command("align")
    def align() -> None:
        """HIJACKED align."""
        print("hijacked")

    @app.command("hello", rich_help_panel="Plugin commands")
    def hello() -> None:
        """Say hello."""
        print("hello from a plugin")

    group = typer.Typer(help="HIJACKED eval group.")

    @group.command("x")
    def x() -> None:
        print("hijacked")

    app.add_typer(group, name="eval")


def test_a_plugin_command_cannot_replace_a_builtin(
    entry_points: list[FakeEntryPoint],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    clash = plugin_module("fake_clash", hftguard_register_commands=_clashing_commands)
    entry_points.append(FakeEntryPoint("clash", FakeDist("hftguard-clash"), lambda: clash))
    code, out, err = _main(capsys, "align", "--help")
    assert code == 0, err
    assert "HIJACKED" not in out and "--defense" in out
    default_registry.cache_clear()
    code, out, err = _main(capsys, "eval", "--help")
    assert code == 0, err
    assert "HIJACKED" not in out
    default_registry.cache_clear()
    code, out, err = _main(capsys, "hello")
    assert code == 0, err
    assert "hello from a plugin" in out
    default_registry.cache_clear()
    code, out, err = _main(capsys, "plugins", "--json")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["name"] == "clash"]
    assert [r["kind"] for r in rows] == ["command-clash"]
    assert "'align'" in rows[0]["error"] and "'eval'" in rows[0]["error"]
    assert rows[0]["distribution"] == "hftguard-clash"
    default_registry.cache_clear()
    code, out, err = _main(capsys, "plugins")
    assert code == 0, err
    assert "clash" in out and "'align'" in out


def test_a_plugin_cannot_remove_builtin_commands() -> None:
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    def vandal(app: Any) -> None:
        app.registered_commands.clear()
        app.registered_groups.clear()

    host = get_plugin_host(
        load_entry_points=False,
        extra=[plugin_module("fake_vandal", hftguard_register_commands=vandal)],
    )
    app = build_app(host)
    reference = build_app(get_plugin_host(load_entry_points=False))
    assert len(app.registered_commands) == len(reference.registered_commands)
    assert len(app.registered_groups) == len(reference.registered_groups)
    assert [f.name for f in host.failures] == ["fake_vandal"]
    result = CliRunner().invoke(app, ["align", "--help"])
    assert result.exit_code == 0, result.output


def test_two_plugins_cannot_both_add_one_command_name() -> None:
    from typer.testing import CliRunner

    from hftguard.cli import build_app

    def first(app: Any) -> None:
        @app.command("hello")
        def hello() -> None:
            print("first")

    def second(app: Any) -> None:
        @app.command("hello")
        def hello() -> None:
            print("second")

    host = get_plugin_host(
        load_entry_points=False,
        extra=[
            plugin_module("fake_first", hftguard_register_commands=first),
            plugin_module("fake_second", hftguard_register_commands=second),
        ],
    )
    app = build_app(host)
    assert [(f.name, f.kind) for f in host.failures] == [("fake_second", "command-clash")]
    assert "first" in CliRunner().invoke(app, ["hello"]).output


def test_strict_mode_makes_a_command_clash_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    from hftguard.cli import build_app

    monkeypatch.setenv("HFTGUARD_STRICT_PLUGINS", "1")
    clash = plugin_module("fake_clash", hftguard_register_commands=_clashing_commands)
    with pytest.raises(PluginError, match="'align' clashes with a built-in command"):
        build_app(get_plugin_host(load_entry_points=False, extra=[clash]))


def test_installed_plugin_that_exits_at_import(tmp_path: Path) -> None:
    """Real entry-point discovery in a subprocess: a module that calls sys.exit() on import."""
    import os
    import subprocess

    (tmp_path / "hftguard_exiting_plugin.py").write_text('import sys\nsys.exit("bye")\n')
    info = tmp_path / "hftguard_exiting_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hftguard-exiting\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hftguard]\nexiting = hftguard_exiting_plugin\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGUARD_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        HFTGUARD_HOME=str(tmp_path / "home"),
        COLUMNS="200",
    )

    def hftguard_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hftguard", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )

    proc = hftguard_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "align" in proc.stdout and "plugins" in proc.stdout
    proc = hftguard_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout) if r["name"] == "exiting"]
    assert row["kind"] == "broken-plugin" and row["distribution"] == "hftguard-exiting"
    assert row["error"] == "SystemExit: bye"
