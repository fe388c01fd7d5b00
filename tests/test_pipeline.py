"""The three stages on tiny-random, called as plain functions (what the CLI does)."""

from __future__ import annotations

import json

import pytest
import torch

from hftguard.config import AlignConfig, EvalConfig, FinetuneConfig, LoraOptions, TrainOptions
from hftguard.errors import RunDirError
from hftguard.pipeline import align, attack_finetune, evaluate
from hftguard.pipeline.scores import hs_metrics, pct
from hftguard.records import Verdict

TINY_LORA = LoraOptions(r=4, alpha=8.0)


def _train(steps=2):
    return TrainOptions(max_steps=steps, batch_size=4, max_length=64)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    from hftguard.console import Reporter

    out = tmp_path_factory.mktemp("p") / "aligned"
    cfg = AlignConfig(model="tiny-random", samples=16, retain="", train=_train(), lora=TINY_LORA)
    return out, align.run(cfg, out, reporter=Reporter(quiet=True), registry=None)


def test_align_manifest_records_provenance(aligned):
    out, m = aligned
    assert m["status"] == "completed" and m["stage"] == "align"
    assert m["components"]["defense"]["name"] == "sft"
    assert m["components"]["defense"]["distribution"] == "hftguard"
    assert m["data"]["main"]["count"] == 16 and len(m["data"]["main"]["sha256"]) == 64
    assert m["model"]["adapters"] == [str((out / "adapter").resolve())]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    for key in ("libraries", "host", "started_at", "ended_at", "training", "config", "seed"):
        assert key in m
    assert m["training"]["peak_memory_mb"] > 0
    # the threads a step time was measured with (torch is loaded by then)
    assert m["host"]["torch_threads"] == torch.get_num_threads()
    assert m["finetune_lora"] == "merge"
    # what ran and why (auto: fp32 unless the CPU has native bf16; hftguard.engine.models)
    assert m["precision"]["requested"] == "auto"
    assert m["precision"]["dtype"] in ("float32", "bfloat16") and m["precision"]["reason"]
    assert m["dtype"] == "torch." + m["precision"]["dtype"]


def test_finetune_merge_and_continue(aligned, tmp_path, quiet_reporter):
    out, _ = aligned
    base = {
        "model": str(out),
        "samples": 20,
        "harmful_ratio": 0.25,
        "train": _train(),
        "lora": TINY_LORA,
    }
    merged = attack_finetune.run(FinetuneConfig(**base), tmp_path / "m", reporter=quiet_reporter)
    assert merged["lora_mode"] == "merge"
    assert len(merged["model"]["adapters"]) == 2  # aligned adapter merged underneath + new one
    assert merged["composition"]["n_harmful"] == 5 and merged["composition"]["n_benign"] == 15
    cont = attack_finetune.run(
        FinetuneConfig(**base, lora_mode="continue"), tmp_path / "c", reporter=quiet_reporter
    )
    assert cont["model"]["adapters"] == [str((tmp_path / "c" / "adapter").resolve())]


def test_eval_writes_metrics_and_generations(aligned, tmp_path, quiet_reporter):
    out, _ = aligned
    cfg = EvalConfig(
        model=str(out),
        harmful_samples=6,
        task_samples=5,
        benign_samples=4,
        max_new_tokens=4,
        batch_size=4,
        tasks=["sentiment", "arithmetic"],
    )
    m = evaluate.run(cfg, tmp_path / "e", reporter=quiet_reporter)
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for key in ("harmful_score", "finetune_accuracy", "over_refusal_rate", "degenerate_rate"):
        assert key in metrics and key in m["metrics"]
    assert metrics["counts"] == {
        "harmful": 6,
        "benign": 4,
        "tasks": {"sentiment": 5, "arithmetic": 5},
    }
    rows = [json.loads(x) for x in (tmp_path / "e" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 6 + 4 + 10
    harm = [r for r in rows if r["set"] == "harmful"]
    assert metrics["harmful_score"] == pytest.approx(
        100 * sum(r["verdicts"]["refusal-keywords"]["harmful"] for r in harm) / 6
    )
    task = [r for r in rows if r["set"] == "task:sentiment"]
    assert metrics["finetune_accuracy"]["sentiment"] == pytest.approx(
        100 * sum(r["correct"] for r in task) / 5
    )
    assert (tmp_path / "e" / "metrics.md").is_file()
    assert m["precision"]["requested"] == "auto"
    assert metrics["decoding"]["dtype"] == m["precision"]["dtype"]


def test_hs_metrics_arithmetic():
    vs = [
        Verdict(True, "compliance", 1.0),
        Verdict(False, "refusal", 0.0),
        Verdict(False, "degenerate", 0.5),
        Verdict(True, "compliance", 1.0),
        Verdict(False, "safe", 0.2, {"parse_error": True, "raw": "?"}),
    ]
    vs.append(Verdict(False, "off-topic", 0.25))
    m = hs_metrics(vs)
    expected = {
        "harmful_score": 2 / 6 * 100,  # off-topic never counts in HS
        "harmful_score_plus": 3 / 6 * 100,  # HS + degenerate (the papers' HS+)
        "degenerate_rate": 1 / 6 * 100,
        "off_topic_rate": 1 / 6 * 100,
        "harmful_score_conservative": 4 / 6 * 100,  # HS + degenerate + off-topic
        "n": 6,
        "unparsed": 1,
    }
    assert {k: m[k] for k in expected} == pytest.approx(expected)
    # every proportion has its Wilson interval (values checked in tests/test_stats.py)
    for key in ("harmful_score", "harmful_score_plus", "degenerate_rate", "off_topic_rate"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi
    assert pct(0, 0) is None


def test_existing_out_dir_is_refused_then_resumed(aligned, quiet_reporter):
    out, m = aligned
    cfg = AlignConfig(model="tiny-random", samples=16, retain="", train=_train(), lora=TINY_LORA)
    with pytest.raises(RunDirError, match="already exists"):
        align.run(cfg, out, reporter=quiet_reporter)
    again = align.run(cfg, out, reporter=quiet_reporter, resume=True)  # complete: no work
    assert again["ended_at"] == m["ended_at"]
    changed = AlignConfig(model="tiny-random", samples=8, retain="", train=_train(), lora=TINY_LORA)
    with pytest.raises(RunDirError, match="configuration differs"):
        align.run(changed, out, reporter=quiet_reporter, resume=True)


def test_retain_set_is_self_distilled_and_cached(quiet_reporter):
    from hftguard.data.distill import distill
    from hftguard.engine import models
    from hftguard.records import Example

    recipe = models.resolve("tiny-random").recipe
    exs = [Example(f"Explain topic {i}.") for i in range(3)]
    first = distill(exs, recipe, "chat", 4, quiet_reporter)
    assert list((models.hftguard_home() / "distill").glob("*.jsonl"))
    second = distill(exs, recipe, "chat", 4, quiet_reporter)
    assert [e.response for e in first] == [e.response for e in second]
    assert all(e.meta.get("distilled") and e.kind == "benign" for e in first)
    assert any("from cache" in ev.get("message", "") for ev in quiet_reporter.events)


class _LabelAll:
    """A stub judge that gives every answer one label."""

    def __init__(self, label: str) -> None:
        self.label = label

    def judge(self, prompts, responses, ctx):
        from hftguard.records import Verdict

        return [Verdict(self.label == "compliance", self.label, 0.0) for _ in responses]


def test_retain_cache_is_refiltered_by_the_current_judge(quiet_reporter, monkeypatch):
    """The cache holds the generated answers, not one judge's selection of them: a judge that now
    calls the answers refusals drops them even when an earlier judge had kept them (before, the
    cached selection was returned, so the retain set depended on which version filled the cache)."""
    from hftguard.data.distill import distill
    from hftguard.engine import generation, models
    from hftguard.records import Example

    calls = []

    def answers(model, tok, prompts, **kw):  # tiny-random's own answers are blank
        calls.append(len(prompts))
        return [f"Here is hobby {i}." for i in range(len(prompts))]

    monkeypatch.setattr(generation, "generate", answers)
    recipe = models.resolve("tiny-random").recipe
    exs = [Example(f"Describe hobby {i}.") for i in range(3)]
    kept = distill(exs, recipe, "chat", 8, quiet_reporter, judge=_LabelAll("compliance"))
    assert [e.response for e in kept] == [f"Here is hobby {i}." for i in range(3)]
    assert distill(exs, recipe, "chat", 8, quiet_reporter, judge=_LabelAll("refusal")) == []
    again = distill(exs, recipe, "chat", 8, quiet_reporter, judge=_LabelAll("off-topic"))
    assert [e.response for e in again] == [e.response for e in kept]
    assert calls == [3]  # generated once, then served from the cache


def test_finetune_analysis_probes(aligned, tmp_path, quiet_reporter):
    out, _ = aligned
    cfg = FinetuneConfig(
        model=str(out),
        samples=20,
        harmful_ratio=0.25,
        train=_train(steps=3),
        lora=TINY_LORA,
        analysis_every=2,
        analysis_samples=3,
    )
    m = attack_finetune.run(cfg, tmp_path / "a", reporter=quiet_reporter)
    assert m["analysis"]["user_probe"] == {"harmful": 3, "benign": 3}
    assert m["analysis"]["harmful_probe"]["held_out"] and m["analysis"]["harmful_probe"]["count"]
    rows = [json.loads(x) for x in (tmp_path / "a" / "analysis.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]
    assert rows[0]["hed"] == 0.0 and rows[-1]["hed"] > 0
    norms = (tmp_path / "a" / "grad_norms.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in norms] == [0] * 6 + [3] * 6
    # probes do not change training: same adapter as without them
    plain = attack_finetune.run(
        FinetuneConfig(**{**cfg.__dict__, "analysis_every": 0}),
        tmp_path / "b",
        reporter=quiet_reporter,
    )
    assert "analysis" not in plain and not (tmp_path / "b" / "analysis.jsonl").exists()
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# A retain set the user asked for never silently ends up empty (issue #11)


def _empty_instructions_registry():
    import types

    import hftguard
    from hftguard.plugins import get_plugin_host
    from hftguard.registry import Registry

    class NoInstructions(hftguard.Dataset):
        """A retain source with no rows."""

        name = "no-instructions"
        role = "instructions"

        def load(self, split, ctx):
            return []

    module = types.ModuleType("empty_retain_plugin")
    module.hftguard_register_datasets = hftguard.hookimpl(lambda: NoInstructions)
    return Registry(get_plugin_host(load_entry_points=False, extra=[module]))


def test_empty_retain_dataset_is_refused_before_the_run_dir(tmp_path, quiet_reporter):
    from hftguard.errors import HftguardError

    cfg = AlignConfig(
        model="tiny-random", samples=8, retain="no-instructions", train=_train(), lora=TINY_LORA
    )
    with pytest.raises(HftguardError) as err:
        align.run(
            cfg, tmp_path / "a", reporter=quiet_reporter, registry=_empty_instructions_registry()
        )
    assert err.value.exit_code == 2
    assert "no-instructions" in err.value.message and "no rows" in err.value.message
    assert "retain_ratio=0.25" in err.value.message and "retain=''" in (err.value.hint or "")
    assert not (tmp_path / "a").exists()


def test_retain_set_emptied_by_distillation_stops_before_training(
    tmp_path, quiet_reporter, monkeypatch
):
    from hftguard.data import distill
    from hftguard.errors import HftguardError

    monkeypatch.setattr(distill, "distill", lambda examples, *a, **k: [])  # every answer dropped
    cfg = AlignConfig(model="tiny-random", samples=8, train=_train(), lora=TINY_LORA)
    with pytest.raises(HftguardError) as err:
        align.run(cfg, tmp_path / "a", reporter=quiet_reporter)
    assert err.value.exit_code == 2
    assert "0 of 2" in err.value.message and "Hint" not in err.value.message
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "training" not in manifest
    assert not (tmp_path / "a" / "align_log.jsonl").exists()


def test_small_retain_ratio_still_gets_one_example(tmp_path, quiet_reporter, monkeypatch):
    from hftguard.data import distill

    monkeypatch.setattr(distill, "distill", lambda examples, *a, **k: list(examples))
    cfg = AlignConfig(
        model="tiny-random", samples=8, retain_ratio=0.01, train=_train(), lora=TINY_LORA
    )
    m = align.run(cfg, tmp_path / "a", reporter=quiet_reporter)
    assert m["data"]["retain"]["count"] == 1  # 0.01 x 8 rounds up to one, never to none


@pytest.mark.parametrize("max_steps", [0, 7])
@pytest.mark.parametrize("epochs", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 200])
def test_config_step_count_is_the_loops(n, epochs, max_steps):
    # pipeline.common counts steps without torch (for hftguard validate); it must agree
    from hftguard.engine.training import total_steps
    from hftguard.pipeline.common import data_steps

    cfg = FinetuneConfig(samples=n, train=TrainOptions(epochs=epochs, max_steps=max_steps))
    assert data_steps(cfg, n)[0] == total_steps(n, cfg.train)
