"""Paper presets: loading, precedence (defaults < preset < config < options < --set), the
published numbers reaching a report, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hftguard import presets
from hftguard.cli import build_app
from hftguard.config import AlignConfig, EvalConfig, PipelineConfig, build, resolve
from hftguard.errors import ConfigError

PAPERS = ("antibody-paper", "booster-paper", "lisa-paper", "vaccine-paper")


def test_builtin_presets_are_listed_and_complete():
    assert tuple(presets.names()) == PAPERS
    for name in PAPERS:
        p = presets.load(name)
        assert p.name == name and p.paper and p.description and p.notes
        cfg = build(PipelineConfig, p.pipeline())
        # every stage knows its preset (recorded in manifests; the report looks it up)
        assert cfg.preset == cfg.align.preset == cfg.finetune.preset == cfg.eval.preset == name
        assert cfg.align.retain == ""  # the papers align on refusal data only
        assert cfg.eval.template == cfg.align.template == cfg.finetune.template
        assert cfg.eval.template.startswith("alpaca")  # base models, Alpaca prompts
        assert cfg.eval.judges[0] == "beaverdam"
        for row in p.published:
            assert row["column"].startswith("p=") and "/" in row["method"]
            assert 0 <= row["hs"] <= 100 and 0 <= row.get("fa", 0) <= 100


def test_each_preset_pins_its_papers_protocol():
    vaccine = build(PipelineConfig, presets.load("vaccine-paper").pipeline())
    assert (vaccine.align.defense, vaccine.align.template) == ("vaccine", "alpaca-no-newline")
    assert (vaccine.eval.harmful_samples, vaccine.eval.max_new_tokens) == (500, 128)
    assert vaccine.eval.dataset_options["sst2"]["match"] == "contains"
    assert (vaccine.finetune.samples, vaccine.finetune.harmful_ratio) == (1000, 0.1)
    booster = build(PipelineConfig, presets.load("booster-paper").pipeline())
    assert (booster.align.defense, booster.finetune.lora_mode) == ("booster", "continue")
    assert (booster.eval.harmful_samples, booster.eval.max_new_tokens) == (1000, 512)
    assert booster.eval.dataset_options["sst2"]["match"] == "exact"
    assert booster.align.dataset_options["repnoise-refusals"] == {"start": 5000, "stop": 10000}
    antibody = build(PipelineConfig, presets.load("antibody-paper").pipeline())
    assert (antibody.align.defense, antibody.finetune.defense) == ("antibody", "antibody")
    assert (antibody.finetune.harmful_ratio, antibody.finetune.task) == (0.2, "gsm8k")
    assert antibody.eval.harmful_prompts == "beavertails-evaluation"
    lisa = build(PipelineConfig, presets.load("lisa-paper").pipeline())
    assert lisa.finetune.defense_options == {"k_align": 100, "k_finetune": 900, "rho": 1.0}
    assert (lisa.finetune.samples, lisa.finetune.lora_mode) == (5000, "merge")


def test_precedence_preset_config_options_set(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[align]\nsamples = 300\nseed = 7\n")
    cfg = resolve(
        AlignConfig,
        preset="vaccine-paper",
        config_file=cfg_file,
        section="align",
        cli={"seed": 9, "model": None},
        sets=["train.lr=3e-4"],
    )
    assert cfg.defense == "vaccine" and cfg.train.epochs == 50  # from the preset
    assert cfg.samples == 300  # the config file beats the preset
    assert cfg.seed == 9  # a command-line option beats the config file
    assert cfg.train.lr == 3e-4  # --set beats everything
    assert cfg.preset == "vaccine-paper"
    # a stage gets the preset's pipeline-wide dataset options
    ev = resolve(EvalConfig, preset="booster-paper", section="eval")
    assert ev.dataset_options["sst2"] == {"match": "exact", "max_new_tokens": 200}


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'lisa-paper'"):
        presets.load("lisa-papr")
    bad = tmp_path / "bad.toml"
    bad.write_text('[align]\ndefense = "sft"\n')
    with pytest.raises(ConfigError, match=r"\[preset\] table"):
        presets.load(str(bad))
    bad.write_text('[preset]\nname = "x"\n[alignn]\n')
    with pytest.raises(ConfigError, match="alignn"):
        presets.load(str(bad))
    bad.write_text('[preset]\nname = "x"\n[[published]]\nmethod = "sft/sft"\n')
    with pytest.raises(ConfigError, match="published row 1"):
        presets.load(str(bad))


def test_cli_lists_and_shows_presets_and_reports_errors():
    runner = CliRunner()
    app = build_app()
    res = runner.invoke(app, ["presets", "--json"])
    assert res.exit_code == 0
    assert [p["name"] for p in json.loads(res.stdout)] == list(PAPERS)
    res = runner.invoke(app, ["presets", "antibody-paper", "--json"])
    assert json.loads(res.stdout)["published"][-1]["method"] == "antibody/antibody"


def test_unknown_preset_on_the_command_line(tmp_path, capsys):
    from hftguard.cli import main

    code = main(["align", "--preset", "vacine-paper", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "Did you mean 'vaccine-paper'" in err and "Hint:" in err
    assert not (tmp_path / "x").exists()


def test_a_custom_preset_drives_a_run_and_its_numbers_reach_the_report(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text(
        """
[preset]
name = "mine"
paper = "A test paper"
description = "tiny"
[align]
model = "tiny-random"
retain = ""
samples = 8
template = "alpaca"
[align.train]
max_steps = 1
batch_size = 4
max_length = 48
[finetune]
samples = 8
harmful_ratio = 0.25
template = "alpaca"
[finetune.train]
max_steps = 1
batch_size = 4
max_length = 48
[eval]
harmful_samples = 3
benign_samples = 2
task_samples = 3
max_new_tokens = 2
template = "alpaca"
[[published]]
method = "sft/sft"
column = "p=0.25"
hs = 12.5
fa = 87.5
"""
    )
    runner = CliRunner()
    app = build_app()
    out = tmp_path / "run"
    grid = tmp_path / "grid.toml"
    grid.write_text("evaluate_base = false\n[grid]\nharmful_ratio = [0.25]\n")
    res = runner.invoke(app, ["run", str(grid), "--preset", str(preset), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    manifest = json.loads(next(out.rglob("eval/manifest.json")).read_text())
    assert (
        manifest["config"]["preset"] == str(preset.resolve())
        and manifest["config"]["template"] == "alpaca"
    )
    res = runner.invoke(app, ["report", str(out), "--no-plots", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    text = (out / "report" / "report.md").read_text()
    assert "(published)" in text and "12.5" in text


PAPERS_DATA = Path(__file__).parent / "data" / "papers"
#: Local copies in the published schemas (tests/data/papers) for every dataset a preset names.
SOURCES = {
    "beavertails-safe": "beavertails",
    "beavertails-harmful": "beavertails",
    "beavertails-test": "beavertails",
    "beavertails-evaluation": "antibody/beavertails_evaluation.json",
    "repnoise-refusals": "repnoise/beavertails_with_refusals_train.json",
    "repnoise-harmful": "repnoise/beavertails_with_refusals_train.json",
    "sst2": "sst2",
    "gsm8k": "gsm8k",
}


def _sets(name: str, judge_dir: Path) -> list[str]:
    """Shrink a preset to seconds on the tiny model; everything else stays the preset's."""
    sets = [
        "evaluate_base=false",
        "align.model=tiny-random",
        "align.samples=2",
        "align.train.max_steps=1",
        "align.train.batch_size=2",
        "align.train.max_length=64",
        # at least one harmful example (6 x 0.1, 4 x 0.2 round to 1): the attack stays an attack;
        # and no more benign ones than the fixtures' task splits hold
        f"finetune.samples={4 if name == 'antibody-paper' else 6}",
        "finetune.train.max_steps=1",
        "finetune.train.batch_size=2",
        "finetune.train.max_length=64",
        "eval.harmful_samples=2",
        "eval.task_samples=2",
        "eval.benign_samples=2",
        "eval.max_new_tokens=2",
        f'eval.judge_options.beaverdam.model="{judge_dir}"',
    ]
    sets += [f'dataset_options.{d}.source="{PAPERS_DATA / p}"' for d, p in SOURCES.items()]
    if name == "lisa-paper":  # K1/K2 = 100/900 shrunk to one 1 + 1 cycle over 2 steps
        sets += ["finetune.train.max_steps=2", "finetune.defense_options.scale_schedule=true"]
    if name == "booster-paper":  # the fixture has 10 RepNoise records, not 10,000
        sets += [f"dataset_options.repnoise-{k}.start=4" for k in ("refusals", "harmful")]
        sets += [f"dataset_options.repnoise-{k}.stop=8" for k in ("refusals", "harmful")]
    if name == "antibody-paper":
        sets += [f"dataset_options.repnoise-{k}.stop=4" for k in ("refusals", "harmful")]
        disjoint = PAPERS_DATA / "antibody" / "beavertails_disjoint_attack_deduplicated.json"
        sets.append(f'dataset_options.beavertails-harmful.source="{disjoint}"')
    return [x for s in sets for x in ("--set", s)]


@pytest.fixture(scope="module")
def beaverdam_dir(tmp_path_factory):
    from hftguard.builtins.judges.beaverdam import BeaverDam
    from hftguard.testing import tiny_judge_config

    return Path(tiny_judge_config(BeaverDam, tmp_path_factory.mktemp("judge")).model)


@pytest.mark.parametrize("name", PAPERS)
def test_each_preset_runs_end_to_end_on_local_files(
    name, beaverdam_dir, tmp_path, capsys, monkeypatch
):
    from hftguard.cli import main

    monkeypatch.setenv("HFTGUARD_CACHE", "off")  # run the judge (cached verdicts skip loading it)
    out = tmp_path / name
    code = main(["run", "--preset", name, "--out", str(out), "-q", *_sets(name, beaverdam_dir)])
    assert code == 0, capsys.readouterr().err
    (attacked,) = out.rglob("attacked/manifest.json")
    cfg = json.loads(attacked.read_text())["config"]
    preset = presets.load(name)
    assert cfg["preset"] == name and cfg["defense"] == preset.config["finetune"]["defense"]
    composition = json.loads(attacked.read_text())["composition"]
    assert composition["n_harmful"] >= 1 and composition["n_benign"] >= 1
    (ev,) = out.rglob("attacked-eval/metrics.json")
    metrics = json.loads(ev.read_text())
    assert set(metrics["judges"]) == {"beaverdam", "refusal-keywords"}
    assert "non-commercial" in metrics["judges"]["beaverdam"]["license_note"]
    assert metrics["agreement"][0]["judges"] == ["beaverdam", "refusal-keywords"]
    task = preset.config["eval"]["tasks"][0]
    assert metrics["finetune_accuracy"][task] is not None
    manifest = json.loads((ev.parent / "manifest.json").read_text())
    beaverdam = manifest["components"]["judges"][0]
    # the judge's weights are pinned by content, and the judge says what it loaded
    assert beaverdam["name"] == "beaverdam" and len(beaverdam["weights_key"]) == 64
    assert beaverdam["provenance"]["config_sha256"]
    assert manifest["decoding"]["template"] == preset.config["eval"]["template"]
