"""Antidote (#18): the pruning rule by hand, the pruned adapter against an independent Wanda
computation (merged model, one unpadded example at a time, float64 loops), the stage's data
loading and checks, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_error
from repair_helpers import TINY_LORA, aligned_and_attacked, lora_factors, train_options

from hftguard.builtins.defenses.antidote import AntidoteConfig, prune_mask, pruned_per_row
from hftguard.config import FinetuneConfig, RepairConfig
from hftguard.errors import ConfigError, HftguardError
from hftguard.pipeline import attack_finetune, repair


def test_pruned_per_row_follows_the_official_count():
    # c − ⌊c·(1 − ρ)⌋: the official code keeps the ⌊c·(1 − ρ)⌋ lowest scores of each row
    assert pruned_per_row(576, 0.1) == 58
    assert pruned_per_row(32, 0.1) == 4  # ⌊28.8⌋ = 28 kept
    assert pruned_per_row(10, 0.1) == 1
    assert pruned_per_row(3, 0.25) == 1
    assert pruned_per_row(8, 0.0) == 0 and pruned_per_row(8, 1.0) == 8
    # the official truncation of 10 * (1 - 0.9) = 0.999... would prune the whole row
    assert pruned_per_row(10, 0.9) == 9 and pruned_per_row(960, 0.8) == 768


def test_prune_mask_takes_each_rows_largest_scores_and_later_columns_on_ties():
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0], [4.0, 0.5, 0.25, 0.0]])
    mask = prune_mask(scores, 0.5)  # 2 of 4 per row
    assert mask.tolist() == [[False, True, False, True], [True, True, False, False]]
    assert prune_mask(scores, 0.25).tolist() == [[False, False, False, True], [True] + [False] * 3]
    assert not prune_mask(scores, 0.0).any() and prune_mask(scores, 1.0).all()


@pytest.mark.parametrize(
    "options",
    [
        {"mask_ratio": 1.5},
        {"mask_ratio": -0.1},
        {"mask_ratio": "a"},
        {"score": "sparsegpt"},
        {"batch_size": 0},
        {"max_length": 2.5},
    ],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        AntidoteConfig(**options)


def _train():
    return train_options()


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("antidote")
    aligned, out = aligned_and_attacked(root)
    return root, aligned, out


def _lora(adapter):
    return lora_factors(adapter)


def _expected_masks(recipe, lora, examples, ratio, max_length):
    """Wanda masks computed independently: every adapter merged by PEFT, each example run alone
    (no padding), the inputs of the projections captured, A·x formed by hand, Σ x² and the
    per-row top-k taken with plain float64 numpy loops."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hftguard.data.inputs import encode_all

    model = AutoModelForCausalLM.from_pretrained(recipe["base"], dtype=torch.float32)
    for adapter in recipe["adapters"]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    tok = AutoTokenizer.from_pretrained(recipe["base"])
    modules = dict(model.named_modules())
    energy_a = {n: np.zeros(a.shape[1]) for n, (a, b) in lora.items()}
    energy_b = {n: np.zeros(a.shape[0]) for n, (a, b) in lora.items()}
    seen = {}
    hooks = [
        modules[n].register_forward_hook(
            lambda m, inp, out, n=n: seen.__setitem__(n, inp[0][0].double().numpy())
        )
        for n in lora
    ]
    for enc in encode_all(examples, tok, "chat", max_length):
        with torch.no_grad():
            model(input_ids=torch.tensor([enc.input_ids]))
        for n, (a, _b) in lora.items():
            x = seen[n]  # [T, d_in]
            energy_a[n] += (x**2).sum(axis=0)
            ax = x @ a.double().numpy().T  # lora_B's input, [T, r]
            energy_b[n] += (ax**2).sum(axis=0)
    for h in hooks:
        h.remove()

    def mask(w, energy):
        w = np.abs(w.double().numpy())
        rows, cols = w.shape
        k = cols - int(cols * (1 - ratio))
        out = np.zeros((rows, cols), dtype=bool)
        for i in range(rows):
            s = [(w[i, j] * np.sqrt(energy[j]), j) for j in range(cols)]
            s.sort(key=lambda t: t[0], reverse=True)
            for _score, j in s[:k]:
                out[i, j] = True
        return out

    return {n: (mask(a, energy_a[n]), mask(b, energy_b[n])) for n, (a, b) in lora.items()}


def test_the_pruned_adapter_zeroes_exactly_the_wanda_top_entries(attacked, tmp_path):
    from hftguard.builtins.datasets.harmful_compliance import HarmfulCompliance
    from hftguard.console import Reporter
    from hftguard.context import DataContext

    _, _, out = attacked
    ratio, samples = 0.25, 6
    manifest = repair.run(
        RepairConfig(
            model=str(out),
            defense="antidote",
            samples=samples,
            defense_options={"mask_ratio": ratio, "batch_size": 4, "max_length": 256},
        ),
        tmp_path / "repaired",
        reporter=Reporter(quiet=True),
    )
    attacked_manifest = json.loads((out / "manifest.json").read_text())
    before = _lora(attacked_manifest["model"]["adapters"][-1])
    after = _lora(manifest["model"]["adapters"][-1])
    examples = list(HarmfulCompliance().load("train", DataContext()))[:samples]
    # the examples differ in length, so the stage's batches of 4 are padded: the check runs
    # them one at a time
    want = _expected_masks(attacked_manifest["model"], before, examples, ratio, 256)
    assert set(after) == set(before) and len(before) == 6
    for name, (a, b) in before.items():
        mask_a, mask_b = want[name]
        assert mask_a.sum(axis=1).tolist() == [pruned_per_row(a.shape[1], ratio)] * a.shape[0]
        np.testing.assert_array_equal(after[name][0].numpy(), np.where(mask_a, 0.0, a.numpy()))
        np.testing.assert_array_equal(after[name][1].numpy(), np.where(mask_b, 0.0, b.numpy()))
    assert manifest["repair"]["pruned"] == sum(m.sum() for pair in want.values() for m in pair)
    assert manifest["data"]["harmful"] == {
        "spec": "harmful-compliance",
        "split": "train",
        "count": samples,
    }
    report = json.loads((tmp_path / "repaired" / "antidote.json").read_text())
    assert report["calibration_examples"] == samples
    assert 0.0 < min(report["norm_ratio"].values()) <= max(report["norm_ratio"].values()) < 1.0
    assert manifest["model"]["adapters"][:-1] == attacked_manifest["model"]["adapters"][:-1]


def test_magnitude_and_random_scores(attacked, tmp_path):
    from hftguard.console import Reporter

    _, _, out = attacked
    quiet = Reporter(quiet=True)
    before = _lora(json.loads((out / "manifest.json").read_text())["model"]["adapters"][-1])
    mag = repair.run(
        RepairConfig(model=str(out), defense="antidote", samples=2,
                     defense_options={"score": "magnitude", "mask_ratio": 0.5}),
        tmp_path / "mag", reporter=quiet,
    )  # fmt: skip
    for name, (a, b) in _lora(mag["model"]["adapters"][-1]).items():
        for new, old in ((a, before[name][0]), (b, before[name][1])):
            k = pruned_per_row(old.shape[1], 0.5)
            top = np.argsort(-np.abs(old.numpy()), axis=1, kind="stable")[:, :k]
            expected = old.numpy().copy()
            np.put_along_axis(expected, top, 0.0, axis=1)
            np.testing.assert_array_equal(new.numpy(), expected)
    random_options = {"score": "random", "mask_ratio": 0.5}
    runs = [
        repair.run(
            RepairConfig(
                model=str(out),
                defense="antidote",
                samples=2,
                seed=seed,
                defense_options=random_options,
            ),
            tmp_path / f"rand{i}",
            reporter=quiet,
        )
        for i, seed in enumerate((1, 1, 2))
    ]
    weights = [_lora(r["model"]["adapters"][-1]) for r in runs]
    name = sorted(before)[0]
    assert torch.equal(weights[0][name][0], weights[1][name][0])  # the seed decides
    assert not torch.equal(weights[0][name][0], weights[2][name][0])
    zeros = (weights[2][name][0] == 0).sum(dim=1)
    assert zeros.tolist() == [pruned_per_row(before[name][0].shape[1], 0.5)] * zeros.numel()


def test_antidote_repairs_an_attack_without_alignment_and_safelora_does_not(attacked, tmp_path):
    from hftguard.console import Reporter

    quiet = Reporter(quiet=True)
    plain = tmp_path / "plain-attack"
    attack_finetune.run(
        FinetuneConfig(
            model="tiny-random", samples=8, harmful_ratio=0.5, train=_train(), lora=TINY_LORA
        ),
        plain,
        reporter=quiet,
    )
    m = repair.run(RepairConfig(model=str(plain), defense="antidote", samples=2), tmp_path / "r",
                   reporter=quiet)  # fmt: skip
    assert m["status"] == "completed" and len(m["model"]["adapters"]) == 1
    with pytest.raises(HftguardError, match="without an alignment adapter"):
        repair.run(RepairConfig(model=str(plain), defense="safelora"), tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_cli_antidote_on_a_file_then_eval(attacked, cli, tmp_path):
    _, _, out = attacked
    rows = [
        {"prompt": f"Explain how to do harmful thing {i}", "response": "Sure, here is how."}
        for i in range(3)
    ]
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("repair", "--model", str(out), "--defense", "antidote", "--harmful", "cal.jsonl",
            "--out", "rep")  # fmt: skip
    assert r.code == 0, r.err
    manifest = json.loads((tmp_path / "rep" / "manifest.json").read_text())
    assert manifest["data"]["harmful"]["count"] == 3 and manifest["repair"]["pruned"] > 0
    small = ["--set", "task_samples=2", "--set", "benign_samples=0", "--set", "max_new_tokens=2"]
    ev = cli("eval", "--model", "rep", "--out", "ev", "--harmful-samples", "2", *small)
    assert ev.code == 0, ev.err


def test_cli_antidote_refuses_empty_or_missing_calibration_data_first(attacked, cli, tmp_path):
    _, _, out = attacked
    (tmp_path / "empty.jsonl").write_text("")
    r = cli("repair", "--model", str(out), "--defense", "antidote", "--harmful", "empty.jsonl",
            "--out", "rep")  # fmt: skip
    assert_error(r, 2, "empty.jsonl", "no records")
    assert not (tmp_path / "rep").exists()
    r = cli("repair", "--model", str(out), "--defense", "antidote", "--harmful", "nope.jsonl",
            "--out", "rep")  # fmt: skip
    assert_error(r, 2, "nope.jsonl")
    assert not (tmp_path / "rep").exists()


PIPELINE = """\
evaluate_base = false

[align]
model = "tiny-random"
samples = 8
retain = ""
[align.train]
max_steps = 2
batch_size = 4
max_length = 64
[align.lora]
r = 4
alpha = 8.0

[finetune]
samples = 8
harmful_ratio = 0.5
lora_mode = "merge"
[finetune.train]
max_steps = 2
batch_size = 4
max_length = 64
[finetune.lora]
r = 4
alpha = 8.0

[eval]
harmful_samples = 4
benign_samples = 2
task_samples = 4
max_new_tokens = 2
batch_size = 4
"""


def test_a_run_config_with_a_repair_table_evaluates_attacked_and_repaired(cli, tmp_path):
    (tmp_path / "run.toml").write_text(
        PIPELINE + '\n[repair]\ndefense = "antidote"\nsamples = 3\n'
        "[repair.defense_options]\nmask_ratio = 0.5\n"
    )
    res = cli("run", "run.toml", "--out", "r")
    assert res.code == 0, res.err
    root = tmp_path / "r"
    for d in ("aligned", "attacked", "attacked-eval", "repaired", "repaired-eval"):
        assert (root / d / "manifest.json").is_file(), d
    repaired = json.loads((root / "repaired" / "manifest.json").read_text())
    assert repaired["config"]["samples"] == 3 and repaired["data"]["harmful"]["count"] == 3
    assert repaired["config"]["defense_options"] == {"mask_ratio": 0.5}
    summary = json.loads((root / "manifest.json").read_text())
    methods = {r.get("method") for r in summary["rows"]}
    assert {"sft/sft", "sft/sft/antidote"} <= methods
    again = cli("run", "run.toml", "--out", "r")
    assert again.code == 0 and "already complete" in again.err + again.out
    rep = cli("report", "r", "--out", "rep", "--bootstrap", "20", "--no-plots")
    assert rep.code == 0, rep.err


def test_a_grid_takes_the_repair_tables_data_options_and_refuses_its_defense(cli, tmp_path):
    rows = [{"prompt": f"do harm {i}", "response": "Sure."} for i in range(2)]
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = '\n[grid]\nmethods = ["sft/sft/antidote"]\n'
    (tmp_path / "g.toml").write_text(PIPELINE + grid + '\n[repair]\nharmful = "cal.jsonl"\n')
    res = cli("run", "g.toml", "--out", "g")
    assert res.code == 0, res.err
    summary = json.loads((tmp_path / "g" / "manifest.json").read_text())
    cell = tmp_path / "g" / summary["cells"][0]["repaired"]
    repaired = json.loads((cell / "manifest.json").read_text())
    assert repaired["data"]["harmful"] == {"spec": "cal.jsonl", "split": "train", "count": 2}
    (tmp_path / "bad.toml").write_text(PIPELINE + grid + '\n[repair]\ndefense = "antidote"\n')
    assert_error(cli("run", "bad.toml", "--out", "b"), 2, "grid.methods")
    assert not (tmp_path / "b").exists()


def test_dry_run_names_a_missing_calibration_file(cli, tmp_path):
    grid = '\n[grid]\nmethods = ["sft/sft/antidote"]\n[repair]\nharmful = "nope.jsonl"\n'
    (tmp_path / "g.toml").write_text(PIPELINE + grid)
    r = cli("run", "g.toml", "--out", "g", "--dry-run")
    assert_error(r, 2, "repair.harmful", "nope.jsonl")
    assert not (tmp_path / "g").exists()


def test_repair_tables_are_checked_and_keep_old_identities(registry, tmp_path):
    """[repair] data options reach only the repairs that read data, so a SafeLoRA cell's config
    is the plain one it was before the table existed (finished grids stay finished), even with
    pipeline-wide dataset_options; misplaced options and colliding cell names are refused."""
    import tomllib

    from hftguard.config import same_config
    from hftguard.pipeline import grid

    base = tomllib.loads(PIPELINE)
    g = grid.load(
        {
            **base,
            "dataset_options": {"sentiment": {"match": "contains"}},
            "repair": {"harmful": "cal.jsonl", "samples": 3},
            "grid": {"methods": ["sft/sft/safelora", "sft/sft/antidote", "none/sft/antidote"]},
        }
    )
    grid.check(g, registry)  # antidote needs no alignment: none/sft/antidote is fine
    safelora, antidote, _ = g.cells
    old = {"model": "m", "defense": "safelora", "defense_options": {}, "seed": 42}
    assert same_config(old, g.repair_config(safelora, "m", registry))
    cfg = g.repair_config(antidote, "m", registry)
    assert (cfg.harmful, cfg.samples, cfg.dataset_options) == (
        "cal.jsonl",
        3,
        {"sentiment": {"match": "contains"}},
    )
    refused = {"grid": {"methods": ["none/sft/safelora"]}}
    with pytest.raises(ConfigError, match="needs the alignment update"):
        grid.check(grid.load({**base, **refused}), registry)
    with pytest.raises(ConfigError, match=r"grid.repair_options"):
        grid.load(
            {
                **base,
                "repair": {"defense_options": {"mask_ratio": 0.2}},
                "grid": {"methods": ["sft/sft/antidote"]},
            }
        )
    with pytest.raises(ConfigError, match=r"without repair\.defense"):
        grid.load({**base, "repair": {"defense_options": {"mask_ratio": 0.2}}})
    with pytest.raises(ConfigError, match="share the name"):
        grid.load(
            {**base, "grid": {"methods": ["sft/sft"], "attack": {"lr": [1e-5, 1.0000001e-5]}}}
        )
    single = grid.load({**base, "skip_align": True, "repair": {"defense": "antidote"}})
    grid.check(single, registry)
    assert [c.method for c in single.cells] == ["none/sft", "none/sft/antidote"]


def test_cli_repair_reads_the_repair_table_of_a_run_config(attacked, cli, tmp_path):
    _, _, out = attacked
    (tmp_path / "run.toml").write_text(PIPELINE + "\n[repair]\nsamples = 2\n")
    r = cli("repair", "--config", "run.toml", "--model", str(out), "--defense", "antidote",
            "--out", "rep")  # fmt: skip
    assert r.code == 0, r.err
    manifest = json.loads((tmp_path / "rep" / "manifest.json").read_text())
    assert manifest["data"]["harmful"]["count"] == 2
    assert manifest["data"]["template"] == "chat"  # the attacked run's own
