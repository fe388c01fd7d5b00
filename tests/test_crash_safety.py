"""Never lose a run (#15): the final save keeps the checkpoints until it is durable, a torn log line
or a corrupt checkpoint does not stop ``--resume``, and ``hftguard report`` names damaged cells."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import Result, assert_error

from hftguard.builtins.defenses.sft import SFTAlign
from hftguard.config import AlignConfig, LoraOptions, TrainOptions
from hftguard.console import Reporter
from hftguard.data.inputs import encode_all
from hftguard.engine import models, training
from hftguard.errors import HftguardError
from hftguard.pipeline import align
from hftguard.records import Example
from hftguard.runs import open_run_dir

# ------------------------------------------------------------------------------------------------
# The CLI, in-process (as tests/test_cli.py)


def assert_clean_error(result: Result, code: int, *needles: str) -> None:
    assert_error(result, code, *needles, require=("Error:",))


# ------------------------------------------------------------------------------------------------
# The training loop driven directly (as tests/test_training.py)

STEPS = 6


def _data(tok: Any, n: int = 12) -> list[Any]:
    exs = [Example(f"question {i}", f"answer number {i}", "refusal") for i in range(n)]
    return encode_all(exs, tok, "chat", 64)


def _train(tmp_path: Path, tok: Any, name: str, defense: Any, resume: bool = False) -> Any:
    from training_helpers import train_tiny

    return train_tiny(
        tmp_path,
        tok,
        name,
        defense,
        _data(tok),
        resume=resume,
        target_modules=LoraOptions().target_modules,
        max_steps=STEPS,
    )


class _CrashAt(SFTAlign):
    at = 3

    def training_step(self, model: Any, batch: Any, ctx: Any) -> Any:
        if ctx.step == self.at:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


class _CrashAt5(_CrashAt):
    at = 5


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0)


@pytest.fixture
def full(tmp_path: Path, tiny_tok: Any) -> dict[str, torch.Tensor]:
    """The weights of an uninterrupted run."""
    return _train(tmp_path, tiny_tok, "full", SFTAlign())[0]


def _corrupt(path: Path) -> None:
    """Flip the last bytes of a file (tensor data, not the header: it still parses)."""
    data = bytearray(path.read_bytes())
    for i in range(1, 9):
        data[-i] ^= 0xFF
    path.write_bytes(bytes(data))


# --- item 6: a torn training log ---------------------------------------------------------------


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path, tiny_tok, full):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_tok, "crash", _CrashAt())  # steps 0-2 logged, checkpoint at 2
    log = tmp_path / "crash" / "train_log.jsonl"
    text = log.read_text()
    log.write_text(text[: len(text) - 12])  # the crash tore the line of step 2
    resumed, result = _train(tmp_path, tiny_tok, "crash", SFTAlign(), resume=True)
    assert result.resumed_from == 2
    _assert_same(full, resumed)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))


def test_a_torn_line_inside_the_log_is_a_clear_error(tmp_path, tiny_tok):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_tok, "crash", _CrashAt())
    log = tmp_path / "crash" / "train_log.jsonl"
    lines = log.read_text().splitlines()
    lines[0] = lines[0][:10]
    log.write_text("".join(x + "\n" for x in lines))
    with pytest.raises(HftguardError) as err:
        _train(tmp_path, tiny_tok, "crash", SFTAlign(), resume=True)
    assert "train_log.jsonl" in err.value.message and "line 1" in err.value.message
    assert err.value.hint and "--overwrite" in err.value.hint


def test_a_torn_last_antibody_weights_line_is_dropped(tmp_path, tiny_tok):
    from ft_defense_helpers import encode, lora_model, user_examples

    from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune

    class CrashAt3(AntibodyFinetune):
        def training_step(self, model: Any, batch: Any, ctx: Any) -> Any:
            if ctx.step == 3:
                raise KeyboardInterrupt
            return super().training_step(model, batch, ctx)

    main_data = encode(tiny_tok, user_examples(3, 5))

    def run(defense: Any, resume: bool = False) -> None:
        run_dir = open_run_dir(tmp_path / "ft", "finetune", resume=resume)
        if not resume:
            run_dir.update_manifest(stage="finetune", status="running")
        opts = TrainOptions(lr=1e-3, max_steps=5, batch_size=4, max_length=64, checkpoint_every=2)
        training.train(
            lora_model(tiny_tok),
            defense,
            main_data,
            {},
            opts,
            run_dir,
            Reporter(quiet=True),
            seed=0,
            pad_id=tiny_tok.pad_token_id,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )

    with pytest.raises(KeyboardInterrupt):
        run(CrashAt3())
    weights = tmp_path / "ft" / "antibody_weights.jsonl"
    text = weights.read_text()
    weights.write_text(text[: len(text) - 7])
    run(AntibodyFinetune(), resume=True)
    rows = [json.loads(x) for x in weights.read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == list(range(5))
    assert all(sum(r["step"] == s for r in rows) == 4 for s in range(5))


# --- item 6: verified checkpoints ---------------------------------------------------------------


def test_checkpoints_carry_file_hashes_and_the_last_two_are_kept(tmp_path, tiny_tok):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_tok, "crash", _CrashAt5())  # checkpoints at 2 and 4
    ckpts = tmp_path / "crash" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004"]
    state = json.loads((ckpts / "step-0000004" / "state.json").read_text())
    assert set(state["files"]) == {"trainable.safetensors", "state.pt"}
    assert all(len(h) == 64 for h in state["files"].values())


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, tiny_tok, full):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_tok, "crash", _CrashAt5())
    ckpts = tmp_path / "crash" / "checkpoints"
    _corrupt(ckpts / "step-0000004" / "trainable.safetensors")
    resumed, result = _train(tmp_path, tiny_tok, "crash", SFTAlign(), resume=True)
    assert result.resumed_from == 2  # the step-4 checkpoint failed its check
    _assert_same(full, resumed)


def test_every_checkpoint_corrupt_is_a_clear_error(tmp_path, tiny_tok):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, tiny_tok, "crash", _CrashAt5())
    ckpts = tmp_path / "crash" / "checkpoints"
    _corrupt(ckpts / "step-0000004" / "trainable.safetensors")
    (ckpts / "step-0000002" / "state.pt").write_bytes(b"")
    with pytest.raises(HftguardError) as err:
        _train(tmp_path, tiny_tok, "crash", SFTAlign(), resume=True)
    assert "checkpoint" in err.value.message and "--overwrite" in (err.value.hint or "")


# ------------------------------------------------------------------------------------------------
# Item 5: the final save, on a tiny align run (as tests/test_pipeline.py)

TINY_LORA = LoraOptions(r=4, alpha=8.0)
ALIGN_STEPS = 5
ALIGN_TOML = f"""\
model = "tiny-random"
samples = 16
retain = ""
[train]
max_steps = {ALIGN_STEPS}
batch_size = 4
max_length = 64
checkpoint_every = 2
[lora]
r = 4
alpha = 8.0
"""


def _align_cfg() -> AlignConfig:
    train = TrainOptions(max_steps=ALIGN_STEPS, batch_size=4, max_length=64, checkpoint_every=2)
    return AlignConfig(model="tiny-random", samples=16, retain="", train=train, lora=TINY_LORA)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The adapter of an uninterrupted align run."""
    out = tmp_path_factory.mktemp("crash") / "aligned"
    m = align.run(_align_cfg(), out, reporter=Reporter(quiet=True))
    assert m["status"] == "completed" and not (out / "checkpoints").exists()
    return _adapter(out)


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_final_save_keeps_the_training(tmp_path, monkeypatch, aligned):
    out = tmp_path / "a"
    with monkeypatch.context() as m:
        m.setattr(models, "save_adapter", _disk_full)
        with pytest.raises(OSError, match="No space left"):
            align.run(_align_cfg(), out, reporter=Reporter(quiet=True))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    # the training survives: a checkpoint at the last step (and the one before it)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-0000004", f"step-{ALIGN_STEPS:07d}"]

    m = align.run(_align_cfg(), out, reporter=Reporter(quiet=True), resume=True)
    assert m["status"] == "completed"
    assert m["training"]["resumed_from"] == ALIGN_STEPS  # no step trained again
    # the final loss and the step times of the first attempt, from its log
    assert m["training"]["final_loss"] is not None and m["training"]["step_time_median"] > 0
    assert not (out / "checkpoints").exists()  # removed once the completed manifest is written
    _assert_same(aligned, _adapter(out))
    log = [json.loads(x) for x in (out / "align_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(ALIGN_STEPS))


def test_a_crash_before_the_manifest_is_complete_keeps_the_checkpoints(tmp_path, monkeypatch):
    from hftguard.runs import RunDir

    out = tmp_path / "a"
    real = RunDir.update_manifest

    def crash_on_completion(self: RunDir, **fields: Any) -> dict[str, Any]:
        if fields.get("status") == "completed":
            raise KeyboardInterrupt
        return real(self, **fields)

    with monkeypatch.context() as m:
        m.setattr(RunDir, "update_manifest", crash_on_completion)
        with pytest.raises(KeyboardInterrupt):
            align.run(_align_cfg(), out, reporter=Reporter(quiet=True))
    assert (out / "checkpoints" / f"step-{ALIGN_STEPS:07d}" / "state.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_resume_with_every_checkpoint_corrupt_via_the_cli(tmp_path, monkeypatch, cli):
    (tmp_path / "align.toml").write_text(ALIGN_TOML)
    args = ("align", "--config", "align.toml", "--out", "o")
    with monkeypatch.context() as m:
        m.setattr(models, "save_adapter", _disk_full)
        with pytest.raises(OSError):
            cli(*args)
    ckpts = sorted((tmp_path / "o" / "checkpoints").iterdir())
    assert len(ckpts) == 2
    for ckpt in ckpts:
        _corrupt(ckpt / "trainable.safetensors")
    res = cli(*args, "--resume")
    assert_clean_error(res, 2, "checkpoint", "--overwrite")


# ------------------------------------------------------------------------------------------------
# Item 7: hftguard report on a grid with damaged or missing cells


@pytest.fixture
def small_grid(tmp_path: Path) -> Path:
    from test_report import fake_grid

    return fake_grid(
        tmp_path / "grid", methods={"sft/sft": "SFT", "booster/sft": "Booster"}, ps=[0.0, 0.1]
    )


def _cells(grid: Path) -> list[dict[str, Any]]:
    return json.loads((grid / "manifest.json").read_text())["cells"]


def test_report_names_damaged_and_missing_cells(small_grid, cli):
    cells = _cells(small_grid)
    bad_json = small_grid / cells[0]["eval"] / "manifest.json"
    bad_json.write_text('{"stage": "eval", "status": "compl')
    not_object = small_grid / cells[1]["eval"] / "manifest.json"
    not_object.write_text("[1, 2, 3]\n")
    shutil.rmtree(small_grid / cells[2]["eval"])
    failed = small_grid / cells[3]["eval"] / "manifest.json"
    failed.write_text(json.dumps({**json.loads(failed.read_text()), "status": "failed"}))

    res = cli("report", str(small_grid), "--out", "r", "--no-plots", "--bootstrap", "0")
    assert res.code == 0, res.err
    warnings = [x for x in res.err.splitlines() if "Warning:" in x]
    text = " ".join(res.err.split())  # rich may wrap long lines
    assert str(bad_json.parent) in text and "Unterminated string" in text
    assert str(not_object.parent) in text and "not a JSON object" in text
    assert f"{small_grid / cells[2]['eval']} (no such directory)" in text
    assert f"{failed.parent} (status 'failed')" in text
    assert len(warnings) == 4

    res = cli("report", str(small_grid), "--out", "r2", "--no-plots", "--strict")
    assert_clean_error(res, 1, "--strict")
    assert not (small_grid.parent / "r2").exists()


def test_report_strict_passes_on_a_complete_grid(small_grid, cli):
    res = cli("report", str(small_grid), "--out", "r", "--no-plots", "--bootstrap", "0", "--strict")
    assert res.code == 0, res.err
    assert "Warning:" not in res.err


def test_report_ignores_runs_moved_aside_by_overwrite(small_grid, cli):
    """A hidden `.NAME.replaced-*` copy (an --overwrite in progress, or kept after a failure) is
    not a cell of the grid: the report neither counts nor warns about it."""
    cells = _cells(small_grid)
    aside = small_grid / f".{cells[0]['eval']}.replaced-20261126T000000Z"
    shutil.copytree(small_grid / cells[0]["eval"], aside)
    (aside / "manifest.json").write_text("{broken")
    res = cli("report", str(small_grid), "--out", "r", "--no-plots", "--bootstrap", "0", "--strict")
    assert res.code == 0, res.err
    assert "Warning:" not in res.err and "replaced" not in res.err
