"""The real embedded model (SmolLM2-135M-Instruct), briefly: resolve + convert, align 2 steps,
eval."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_embedded_model_pipeline(tmp_path, monkeypatch):
    import os

    from hftguard.config import AlignConfig, EvalConfig, TrainOptions
    from hftguard.console import Reporter
    from hftguard.pipeline import align, evaluate

    # Reuse a developer's converted model if HFTGUARD_HOME is set; else convert into the test home.
    monkeypatch.setenv("HFTGUARD_HOME", os.environ["HFTGUARD_HOME"])
    rep = Reporter(quiet=True)
    cfg = AlignConfig(samples=8, retain="", train=TrainOptions(max_steps=2, batch_size=2))
    manifest = align.run(cfg, tmp_path / "aligned", reporter=rep)
    assert manifest["status"] == "completed"
    assert manifest["model"]["base_spec"] == "smollm2-135m-instruct"
    assert manifest["training"]["steps"] == 2
    # the chat EOS ends every answer and stops generation (tests/test_special_tokens.py says why)
    from transformers import AutoTokenizer

    from hftguard.engine.models import _smollm2_dir

    tok = AutoTokenizer.from_pretrained(str(_smollm2_dir()))
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|im_end|>", 2, 2)
    ecfg = EvalConfig(
        model=str(tmp_path / "aligned"),
        harmful_samples=4,
        task_samples=2,
        benign_samples=2,
        max_new_tokens=8,
        batch_size=4,
    )
    out = evaluate.run(ecfg, tmp_path / "eval", reporter=rep)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert out["status"] == "completed"
    assert metrics["counts"] == {"harmful": 4, "benign": 2, "tasks": {"sentiment": 2}}
    assert 0.0 <= metrics["harmful_score"] <= 100.0
    lines = (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(x)["response"] is not None for x in lines)
