"""``hftguard bench`` runs end to end on tiny-random and reports every section.

The benchmark is a command users run; these tests only check that it runs, that its JSON has the
documented keys and that the inputs it builds have the shapes it promises. Timings are never
asserted (the machine may be shared).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hftguard.cli import main
from hftguard.registry import default_registry

TINY = [
    "--model",
    "tiny-random",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--gen-prompts",
    "4",
    "--gen-batch-size",
    "2",
    "--max-new-tokens",
    "4",
]
DEFENSE_KEYS = {
    "stage",
    "defense",
    "theoretical_passes",
    "median_step_s",
    "mean_step_s",
    "step_times_s",
    "ratio_to_sft",
    "theoretical_ratio",
    "measured_over_theoretical",
    "within_10pct",
    "peak_memory_mb",
    "extra_memory_mb",
    "memory_kind",
    "tokens_per_step",
    "tokens_per_s",
    "model_tflops_per_s",
    "mfu",
}
LOOP_KEYS = {"median_step_s", "mean_step_s", "step_times_s", "tokens_per_s", "mfu"}
GENERATION_KEYS = {
    "prompts",
    "batch_size",
    "max_new_tokens",
    "one_at_a_time_s",
    "batched_s",
    "speedup",
    "identical",
    "mismatch_count",
    "mismatches",
}


@pytest.fixture(autouse=True)
def _builtins_only(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full bench on tiny-random (every section, every built-in defense), via the CLI."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFTGUARD_LOAD_PLUGINS", "")
        default_registry.cache_clear()
        code = main(["bench", *TINY, "--json", "--quiet", "--out", str(out)])
        default_registry.cache_clear()
    assert code == 0
    return json.loads(out.read_text())


def test_every_defense_of_both_stages_is_timed_against_its_sft(result: dict[str, Any]) -> None:
    rows = result["defenses"]
    reg = default_registry()
    expected = {("align", i.name) for i in reg.components("alignment-defense")}
    expected |= {("finetune", i.name) for i in reg.components("finetune-defense")}
    assert {(r["stage"], r["defense"]) for r in rows} == expected
    for row in rows:
        assert row.keys() >= DEFENSE_KEYS
        assert len(row["step_times_s"]) == 2
        assert row["median_step_s"] > 0
    sft = [r for r in rows if r["defense"] == "sft"]
    assert all(r["ratio_to_sft"] == 1.0 for r in sft)
    booster = next(r for r in rows if r["defense"] == "booster")
    assert booster["theoretical_ratio"] == 3.0


def test_every_repair_defense_is_timed_against_the_sft_step(result: dict[str, Any]) -> None:
    rep = result["repair"]
    reg = default_registry()
    assert {r["defense"] for r in rep["rows"]} == {i.name for i in reg.components("repair-defense")}
    sft = next(r for r in result["defenses"] if (r["stage"], r["defense"]) == ("align", "sft"))
    assert rep["sft_step_wall_s"] == sft["wall_median_step_s"]
    assert rep["calibration_batches"] == 3  # the bench's 6 harmful examples, batches of 2
    for row in rep["rows"]:
        assert row["median_s"] >= row["model_load_s"] >= 0
        assert row["compute_s"] == pytest.approx(row["median_s"] - row["model_load_s"])
        step = sft["wall_median_step_s"]
        assert row["sft_steps_measured"] == pytest.approx(row["compute_s"] / step)
    antidote = next(r for r in rep["rows"] if r["defense"] == "antidote")
    assert antidote["forward_passes"] == 6 and antidote["calibration_examples"] == 6
    assert antidote["sft_steps_theoretical"] == pytest.approx(6 / 3)
    safelora = next(r for r in rep["rows"] if r["defense"] == "safelora")
    assert safelora["forward_passes"] == 0 and safelora["sft_steps_theoretical"] is None


def test_repair_defenses_alone_get_the_sft_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", *TINY, "--skip", "trainer,generation,padding", "--defenses",
                 "repair:antidote", "--json", "--quiet"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["defense"]) for r in result["defenses"]] == [("align", "sft")]
    assert [r["defense"] for r in result["repair"]["rows"]] == ["antidote"]
    assert main(["bench", *TINY, "--defenses", "repair:antidot"]) == 2
    assert "antidote" in capsys.readouterr().err


def test_the_dry_run_reads_a_bench_result(result: dict[str, Any], tmp_path: Path) -> None:
    """`hftguard run --dry-run --timings-from BENCH.json` reads what `hftguard bench --json` writes:
    the model, and every defense row's ratio to SFT."""
    from hftguard.pipeline.grid.estimate import bench_ratios

    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    model, ratios = bench_ratios(path)
    assert model == result["model"]["name"]
    rows = {(r["stage"], r["defense"]): r["ratio_to_sft"] for r in result["defenses"]}
    assert ratios == rows and ratios[("align", "sft")] == 1.0 and ("align", "repnoise") in ratios


def test_trainer_section_compares_both_loops(result: dict[str, Any]) -> None:
    tr = result["trainer"]
    assert tr["hftguard"].keys() >= LOOP_KEYS and tr["transformers_trainer"].keys() >= LOOP_KEYS
    assert len(tr["hftguard"]["step_times_s"]) == len(tr["transformers_trainer"]["step_times_s"])
    assert tr["ratio"] > 0 and isinstance(tr["not_slower"], bool)


def test_generation_section_reports_speed_and_identity(result: dict[str, Any]) -> None:
    gen = result["generation"]
    assert gen.keys() >= GENERATION_KEYS
    assert gen["prompts"] == 4 and gen["batch_size"] == 2
    assert gen["identical"] == (gen["mismatch_count"] == 0)
    for mismatch in gen["mismatches"]:
        assert {"index", "min_top2_logit_margin", "one_at_a_time", "batched"} <= mismatch.keys()


def test_data_and_environment_are_recorded(result: dict[str, Any]) -> None:
    for stream in ("alignment", "harmful", "user"):
        counts = result["data"][stream]
        assert counts == {"examples": 2, "tokens": 32, "response_tokens": 16}
    assert result["environment"]["device"] == "cpu"
    assert result["model"]["trainable_parameters"] > 0
    assert result["skipped"] == []


def test_tables_print(result: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from hftguard.bench import print_report

    print_report(result)
    text = capsys.readouterr().out
    assert "align/booster" in text and "Trainer" in text and "Generation" in text
    assert "Repair defenses" in text and "antidote" in text


def test_skip_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", *TINY, "--skip", "trainer,defenses", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Generation" in out and "Defenses" not in out


def test_bad_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", "tiny-random", "--skip", "generaton"]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert main(["bench", "--model", "tiny-random", "--defenses", "boster"]) == 2
    assert "Did you mean 'booster'" in capsys.readouterr().err


def test_fixed_length_encoding(tiny_tok: Any) -> None:
    from hftguard.bench import encode_fixed, select_defenses
    from hftguard.data.inputs import IGNORE_INDEX
    from hftguard.records import Example

    examples = [
        Example("hi", "a much longer answer than the prompt, repeated", "harmful"),
        Example("a long prompt " * 20, "ok", "benign"),
    ]
    for enc in encode_fixed(examples, tiny_tok, 20):
        assert len(enc.input_ids) == len(enc.labels) == 20
        assert sum(lab != IGNORE_INDEX for lab in enc.labels) == 10
        assert enc.refusal is not None and enc.refusal.input_ids[:10] == enc.input_ids[:10]
    picked = select_defenses(default_registry(), ["align:booster,lisa"])
    assert picked == [
        ("align", "sft"),
        ("align", "booster"),
        ("finetune", "sft"),
        ("finetune", "lisa"),
    ]


def test_mismatch_explanation(tiny_lm: Any, tiny_tok: Any) -> None:
    from hftguard.bench import _explain_mismatch

    info = _explain_mismatch(
        tiny_lm, tiny_tok, "<|im_start|>user\nhi<|im_end|>\n", "abc", "abd", 3, 4
    )
    assert info["index"] == 3 and info["first_difference_at_char"] == 2
    assert info["min_top2_logit_margin"] >= 0 and 0 <= info["min_margin_at_step"] < 4


def test_precisions_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--precision fp32,bf16 runs every section per precision and compares them."""
    out = tmp_path / "b.json"
    args = [*TINY, "--defenses", "align:booster", "--skip", "trainer", "--precision", "fp32,bf16"]
    assert main(["bench", *args, "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Precision side by side" in text and "outputs differing" in text
    result = json.loads(out.read_text())
    assert list(result["runs"]) == ["fp32", "bf16"]
    assert result["runs"]["fp32"]["environment"]["dtype"] == "float32"
    assert result["runs"]["bf16"]["environment"]["dtype"] == "bfloat16"
    cmp = result["precision_comparison"]
    assert cmp["baseline"] == "fp32"
    rows = {(r["stage"], r["defense"]): r for r in cmp["defenses"]}
    assert set(rows) == {("align", "sft"), ("align", "booster")}
    booster = rows[("align", "booster")]
    fp32_row = next(r for r in result["runs"]["fp32"]["defenses"] if r["defense"] == "booster")
    bf16_row = next(r for r in result["runs"]["bf16"]["defenses"] if r["defense"] == "booster")
    assert booster["fp32_step_s"] == fp32_row["median_step_s"]
    assert booster["bf16_speedup"] == pytest.approx(
        fp32_row["median_step_s"] / bf16_row["median_step_s"]
    )
    assert booster["fp32_speedup"] == 1.0
    gen = cmp["generation"]
    assert gen["fp32"]["outputs_differing_from_baseline"] == 0
    a = result["runs"]["fp32"]["generation"]["batched_outputs"]
    b = result["runs"]["bf16"]["generation"]["batched_outputs"]
    assert gen["bf16"]["outputs_differing_from_baseline"] == sum(
        x != y for x, y in zip(a, b, strict=True)
    )


def test_precision_list_is_validated(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--model", "tiny-random", "--precision", "fp32,bf61"]) == 2
    assert "unknown bf61" in capsys.readouterr().err
    assert main(["bench", "--model", "tiny-random", "--precision", "fp32,fp32"]) == 2
    assert "once" in capsys.readouterr().err


def test_padding_section(result: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    pad = result["padding"]
    assert set(pad["training"]) == {"alignment", "harmful", "user"}
    for d in pad["training"].values():
        assert 0 <= d["grouped"]["pad_share"] <= d["random"]["pad_share"] < 1
    from hftguard.bench import print_report

    print_report(result)
    assert "Padding" in capsys.readouterr().out
