"""``hftguard export`` (issue #16): a stage's model taken out of hftguard loads with plain
transformers (or PEFT) as the same model eval measures; the model card names the stages; bad
input stops before anything is written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from hftguard.cli import main
from hftguard.config import AlignConfig, EvalConfig, FinetuneConfig, LoraOptions, TrainOptions
from hftguard.pipeline import align, attack_finetune, evaluate

TINY_LORA = LoraOptions(r=4, alpha=8.0)
PROMPTS = ["How do I bake bread?", "Tell me a story about a cat.", "2 + 2 ="]


def _train(steps=2):
    return TrainOptions(max_steps=steps, batch_size=4, max_length=64, lr=5e-3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """An aligned run, an attacked run stacked on it (two adapters) and an eval of the latter."""
    from hftguard.console import Reporter

    quiet = Reporter(quiet=True)
    root = tmp_path_factory.mktemp("export")
    aligned = root / "aligned"
    align.run(
        AlignConfig(
            model="tiny-random",
            defense="vaccine",
            samples=8,
            retain="",
            train=_train(),
            lora=TINY_LORA,
        ),
        aligned,
        reporter=quiet,
        registry=None,
    )
    attacked = root / "cell" / "attacked"
    attack_finetune.run(
        FinetuneConfig(
            model=str(aligned),
            samples=8,
            harmful_ratio=0.5,
            train=_train(),
            lora=TINY_LORA,
            seed=7,
        ),
        attacked,
        reporter=quiet,
    )
    ev = root / "cell" / "eval"
    evaluate.run(
        EvalConfig(
            model=str(attacked),
            harmful_samples=4,
            task_samples=2,
            benign_samples=2,
            max_new_tokens=4,
            batch_size=4,
            tasks=["sentiment"],
        ),
        ev,
        reporter=quiet,
    )
    return {"root": root, "aligned": aligned, "attacked": attacked, "eval": ev}


def _recipe(run_dir: Path):
    from hftguard.engine import models

    return models.resolve(str(run_dir)).recipe


def _eval_model(run_dir: Path):
    from hftguard.engine import models

    return models.load_for_eval(_recipe(run_dir), torch.device("cpu"), torch.float32)


def _batch(tok) -> dict[str, torch.Tensor]:
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _export(*args: str, capsys=None) -> tuple[int, str, str]:
    code = main(["export", *args, "--quiet"])
    if capsys is None:
        return code, "", ""
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture(scope="module")
def merged(stack):
    out = stack["root"] / "exports" / "merged"
    assert main(["export", str(stack["attacked"]), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def unmerged(stack):
    out = stack["root"] / "exports" / "unmerged"
    code = main(["export", str(stack["attacked"]), "--out", str(out), "--no-merge", "--quiet"])
    assert code == 0
    return out


def test_merged_export_is_the_evaluated_model(stack, merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hftguard.engine.generation import generate

    assert len(_recipe(stack["attacked"]).adapters) == 2  # a real stack: aligned + attack
    ours, our_tok = _eval_model(stack["attacked"])
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    assert next(plain.parameters()).dtype == torch.float32
    assert tok.chat_template == our_tok.chat_template
    a = generate(ours, our_tok, PROMPTS, max_new_tokens=8)
    b = generate(plain, tok, PROMPTS, max_new_tokens=8)
    assert a == b
    batch = _batch(tok)
    assert torch.allclose(_logits(ours, batch), _logits(plain, batch), atol=1e-5, rtol=0)
    # the weights really differ from the plain base: the adapters were merged
    base = AutoModelForCausalLM.from_pretrained(_recipe(stack["attacked"]).base)
    assert not torch.allclose(_logits(base, batch), _logits(plain, batch), atol=1e-4)
    gen = json.loads((merged / "generation_config.json").read_text())
    assert gen.get("eos_token_id") is not None
    assert {p.name for p in merged.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "hftguard_export.json",
    }
    assert not list(merged.parent.glob(".merged.export-*"))  # the temp dir was renamed


def test_unmerged_export_is_base_plus_adapter(stack, unmerged):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours, _ = _eval_model(stack["attacked"])
    tok = AutoTokenizer.from_pretrained(unmerged / "adapter")
    batch = _batch(tok)
    want = _logits(ours, batch)
    base = AutoModelForCausalLM.from_pretrained(unmerged / "base")
    peft = PeftModel.from_pretrained(base, unmerged / "adapter").eval()
    assert torch.allclose(want, _logits(peft, batch), atol=1e-5, rtol=0)
    cfg = json.loads((unmerged / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((unmerged / "base").resolve())
    # the adapter alone finds its base through adapter_config.json
    auto = AutoPeftModelForCausalLM.from_pretrained(unmerged / "adapter").eval()
    assert torch.allclose(want, _logits(auto, batch), atol=1e-5, rtol=0)
    # loading the run's own adapter on the base it names would be another model
    raw = json.loads((stack["attacked"] / "adapter" / "adapter_config.json").read_text())
    wrong = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(raw["base_model_name_or_path"]),
        stack["attacked"] / "adapter",
    ).eval()
    assert not torch.allclose(want, _logits(wrong, batch), atol=1e-4)


def test_model_card_names_stages_defenses_and_eval(stack, merged, unmerged):
    card = (merged / "README.md").read_text()
    assert "tiny-random" in card
    assert "**Alignment** (`align`" in card and "**Fine-tuning (attack)** (`finetune`" in card
    assert card.index("`align`") < card.index("`finetune`")
    assert "defense: `vaccine`" in card and "defense: `sft`" in card
    assert "p (harmful_ratio) = 0.5" in card and "seed 7" in card
    assert str(stack["aligned"]) in card and str(stack["attacked"]) in card
    assert "HS % (harmful score)" in card and str(stack["eval"].resolve()) in card
    assert "library_name: transformers" in card
    prov = json.loads((merged / "hftguard_export.json").read_text())
    assert [s["stage"] for s in prov["stages"]] == ["align", "finetune"]
    assert prov["merged"] is True and len(prov["adapters"]) == 2
    card = (unmerged / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card


def test_single_adapter_on_a_cached_alias_writes_its_base(stack, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "x"
    assert _export(str(stack["aligned"]), "--out", str(out), "--no-merge")[0] == 0
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((out / "base").resolve())
    ours, tok = _eval_model(stack["aligned"])
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter"
    )
    batch = _batch(tok)
    assert torch.allclose(_logits(ours, batch), _logits(model.eval(), batch), atol=1e-5, rtol=0)


def test_single_adapter_on_a_local_model_keeps_that_base(stack, tmp_path, quiet_reporter):
    local = tmp_path / "my-model"
    shutil.copytree(_recipe(stack["aligned"]).base, local)
    run = tmp_path / "aligned-local"
    cfg = AlignConfig(model=str(local), samples=8, retain="", train=_train(1), lora=TINY_LORA)
    align.run(cfg, run, reporter=quiet_reporter)
    out = tmp_path / "x"
    assert _export(str(run), "--out", str(out), "--no-merge")[0] == 0
    assert not (out / "base").exists()
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(local.resolve())
    assert f"`{local.resolve()}`" in (out / "README.md").read_text()


def test_bf16_export(stack, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert _export(str(stack["aligned"]), "--out", str(out), "--dtype", "bf16")[0] == 0
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def _refused(capsys, args, out: Path, *, match: str) -> str:
    before = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    code, _, err = _export(*args, "--out", str(out), capsys=capsys)
    assert code == 2, err
    assert "Error:" in err and "Hint:" in err and match in err, err
    assert "Traceback" not in err
    after = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert after == before  # nothing written (no --out, no temp dir)
    return err


def test_eval_run_is_refused(stack, tmp_path, capsys):
    err = _refused(capsys, [str(stack["eval"])], tmp_path / "o", match="'eval' run")
    assert "export the run it evaluated" in err


def test_non_run_dir_is_refused(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hi")
    _refused(capsys, [str(plain)], tmp_path / "o", match="not an hftguard run directory")
    _refused(capsys, [str(tmp_path / "missing")], tmp_path / "o", match="not a directory")


def test_grid_root_is_refused(tmp_path, capsys):
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "manifest.json").write_text(
        json.dumps({"stage": "pipeline", "status": "completed", "config": {}})
    )
    err = _refused(capsys, [str(grid)], tmp_path / "o", match="'pipeline' run")
    assert "cells/CELL/attacked" in err


def test_existing_non_empty_out_is_refused(stack, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(capsys, [str(stack["aligned"])], out, match="not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_empty_out_is_used(stack, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _export(str(stack["aligned"]), "--out", str(out))[0] == 0
    assert (out / "model.safetensors").is_file()


def test_push_to_hub_offline_fails_fast(stack, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    err = _refused(
        capsys,
        [str(stack["attacked"]), "--push-to-hub", "me/attacked"],
        tmp_path / "o",
        match="HF_HUB_OFFLINE",
    )
    assert time.monotonic() - start < 10
    assert "hf upload me/attacked" in err


def test_push_to_hub_unreachable_fails_fast(stack, tmp_path, capsys, monkeypatch):
    from hftguard import network

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(network, "hub_reachable", lambda timeout=3.0: False)
    _refused(
        capsys,
        [str(stack["attacked"]), "--push-to-hub", "me/attacked"],
        tmp_path / "o",
        match="cannot be reached",
    )
    _refused(
        capsys,
        [str(stack["attacked"]), "--push-to-hub", "not a repo!"],
        tmp_path / "o",
        match="not a hub repository id",
    )
