"""SafeLoRA and the repair stage (#18): the projection, the cosine and the layer selection against
direct float64 computations, the repaired adapter against an independent reconstruction of the
alignment update from the models themselves, the stage's checks, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import assert_error
from repair_helpers import TINY_LORA, aligned_and_attacked, lora_factors, train_options

from hftguard.builtins.defenses.safelora import (
    SafeLoRAConfig,
    layer_cosine,
    projection,
    selected,
)
from hftguard.config import FinetuneConfig, RepairConfig
from hftguard.errors import ConfigError, HftguardError
from hftguard.pipeline import attack_finetune, repair


def _np(t):
    return t.detach().to(torch.float64).numpy()


def test_projection_is_v_vt_over_the_frobenius_norm():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 5, generator=g)
    expected = np.zeros((6, 6))
    vn = _np(v)
    fro = math.sqrt(sum(x * x for x in vn.ravel()))
    for i in range(6):
        for j in range(6):
            expected[i, j] = sum(vn[i, k] * vn[j, k] for k in range(5)) / fro
    np.testing.assert_allclose(_np(projection(v)), expected, rtol=1e-12)


def test_layer_cosine_is_that_of_the_projected_and_original_updates():
    g = torch.Generator().manual_seed(1)
    v, a, b = (
        torch.randn(6, 5, generator=g),
        torch.randn(2, 5, generator=g),
        torch.randn(6, 2, generator=g),
    )
    c = projection(v)
    upd = _np(b) @ _np(a)
    proj = _np(c) @ upd
    expected = (proj * upd).sum() / (np.linalg.norm(proj) * np.linalg.norm(upd))
    assert layer_cosine(c, a, b) == pytest.approx(expected, rel=1e-12)
    # an update orthogonal to V's column space is projected to zero
    u = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    v_in = u[:, :2] @ torch.randn(2, 5, generator=g, dtype=torch.float64)
    b_out = u[:, 2:4] @ torch.randn(2, 2, generator=g, dtype=torch.float64)
    assert float(torch.linalg.matrix_norm(projection(v_in) @ b_out)) < 1e-12
    # and one that is V's own top singular direction keeps its direction: cosine 1
    s_u, _, s_vt = torch.linalg.svd(v.to(torch.float64))
    top_b, top_a = s_u[:, :1], s_vt[:1, :]
    assert layer_cosine(projection(v), top_a, top_b) == pytest.approx(1.0, abs=1e-12)


def test_selection_number_takes_the_k_smallest_with_ties_and_threshold_is_inclusive():
    cos = {"a": 0.9, "b": 0.1, "c": 0.4, "d": 0.4, "e": 0.7}
    assert selected(cos, SafeLoRAConfig(select="number", num_layers=2)) == ["b", "c", "d"]
    assert selected(cos, SafeLoRAConfig(select="number", num_layers=1)) == ["b"]
    assert selected(cos, SafeLoRAConfig(select="number", num_layers=0)) == []
    assert selected(cos, SafeLoRAConfig(select="number", num_layers=99)) == list(cos)
    assert selected(cos, SafeLoRAConfig(select="threshold", threshold=0.4)) == ["b", "c", "d"]


@pytest.mark.parametrize(
    "options",
    [{"select": "most"}, {"num_layers": -1}, {"num_layers": 1.5}, {"threshold": 2.0}],
)
def test_bad_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        SafeLoRAConfig(**options)


def _train():
    return train_options()


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    aligned, out = aligned_and_attacked(root)
    return root, aligned, out


def _weights(recipe_dict):
    """Linear weights of a recipe's model, merged by PEFT: independent of hftguard.engine.repair."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(recipe_dict["base"], dtype=torch.float32)
    for adapter in recipe_dict["adapters"]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("_proj")}


def _lora(adapter):
    return lora_factors(adapter)


def test_the_repaired_adapter_projects_exactly_the_least_aligned_layers(attacked, tmp_path):
    from hftguard.console import Reporter

    _, _, out = attacked
    manifest = repair.run(
        RepairConfig(model=str(out), defense="safelora", defense_options={"num_layers": 2}),
        tmp_path / "repaired",
        reporter=Reporter(quiet=True),
    )
    attacked_manifest = json.loads((out / "manifest.json").read_text())
    start = attacked_manifest["input_model"]  # the aligned model the attack started from
    w_aligned = _weights(start)
    w_base = _weights({"base": start["base"], "adapters": []})
    before, after = (
        _lora(attacked_manifest["model"]["adapters"][-1]),
        _lora(manifest["model"]["adapters"][-1]),
    )
    assert set(before) == set(after) and len(before) == 6  # q/k/v of 2 layers
    cos, proj = {}, {}
    for name, (a, b) in before.items():
        v = _np(w_aligned[name] - w_base[name])
        c = v @ v.T / np.linalg.norm(v)  # Frobenius
        upd = _np(b) @ _np(a)
        pu = c @ upd
        cos[name] = (pu * upd).sum() / (np.linalg.norm(pu) * np.linalg.norm(upd))
        proj[name] = c @ _np(b)
    want = sorted(cos, key=cos.get)[:2]
    assert manifest["repair"]["projected"] == 2
    for name, (a, b) in after.items():
        np.testing.assert_array_equal(_np(a), _np(before[name][0]))  # A never changes
        if name in want:
            np.testing.assert_allclose(_np(b), proj[name], rtol=1e-4, atol=1e-7)
        else:
            np.testing.assert_array_equal(_np(b), _np(before[name][1]))
    report = json.loads((tmp_path / "repaired" / "safelora.json").read_text())
    assert sorted(report["projected"]) == sorted(want)
    for name, value in report["cosine"].items():
        assert value == pytest.approx(cos[name], rel=1e-6)
    # the recipe: the aligned adapters, then the repaired one (the attack adapter is replaced)
    assert manifest["model"]["adapters"][:-1] == attacked_manifest["model"]["adapters"][:-1]
    assert manifest["model"]["adapters"][-1].startswith(str((tmp_path / "repaired").resolve()))


def test_repair_refuses_a_run_that_is_not_an_attack(attacked, tmp_path):
    _, aligned, _ = attacked
    with pytest.raises(HftguardError, match="not a finished attack-finetune run"):
        repair.run(RepairConfig(model=str(aligned), defense="safelora"), tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing written before the check


def test_cli_repair_then_eval(attacked, cli, tmp_path):
    _, _, out = attacked
    r = cli("repair", "--model", str(out), "--defense", "safelora", "--out", "rep", "--set",
            "defense_options.num_layers=3")  # fmt: skip
    assert r.code == 0, r.err
    manifest = json.loads((tmp_path / "rep" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["repair"]["projected"] >= 3
    again = cli("repair", "--model", str(out), "--defense", "safelora", "--out", "rep", "--resume",
                "--set", "defense_options.num_layers=3")  # fmt: skip
    assert again.code == 0 and "nothing to do" in again.err + again.out
    small = ["--set", "task_samples=2", "--set", "benign_samples=0", "--set", "max_new_tokens=2"]
    ev = cli("eval", "--model", "rep", "--out", "ev", "--harmful-samples", "2", *small)
    assert ev.code == 0, ev.err
    exp = cli("export", "rep", "--out", "exp")  # the repaired model, merged, with a model card
    assert exp.code == 0, exp.err
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "then repaired" in card and "**Repair (after fine-tuning)**" in card
    assert "**Fine-tuning (attack)**" in card and "`safelora`" in card


def test_cli_repair_unknown_defense_is_a_clear_error(attacked, cli):
    _, _, out = attacked
    r = cli("repair", "--model", str(out), "--defense", "safelora2", "--out", "rep")
    assert_error(r, 2, "Unknown repair defense", "Did you mean 'safelora'")


REPAIR_GRID = """\
evaluate_base = false

[grid]
methods = ["sft/sft", "sft/sft/safelora"]
harmful_ratio = [0.5]
labels = { "sft/sft" = "SFT", "sft/sft/safelora" = "SFT + SafeLoRA" }
[grid.repair_options.safelora]
num_layers = 2

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


def test_a_grid_with_a_repair_method_runs_reports_and_resumes(cli, tmp_path):
    (tmp_path / "grid.toml").write_text(REPAIR_GRID)
    res = cli("run", "grid.toml", "--out", "g")
    assert res.code == 0, res.err
    summary = json.loads((tmp_path / "g" / "manifest.json").read_text())
    plain, fixed = summary["cells"]
    assert plain["attacked"] == fixed["attacked"]  # one attacked model, repaired once
    assert fixed["repaired"].endswith("/repaired-safelora") and "repaired" not in plain
    repaired = json.loads((tmp_path / "g" / fixed["repaired"] / "manifest.json").read_text())
    assert repaired["repair"]["projected"] == 2
    res = cli("run", "grid.toml", "--out", "g", "--dry-run")
    assert res.code == 0 and "2 cell(s), 2 done" in res.out and "repair" in res.out
    res = cli("report", "g", "--out", "rep", "--bootstrap", "50", "--no-plots")
    assert res.code == 0, res.err
    assert "| SFT | " in res.out and "| SFT + SafeLoRA | " in res.out
    rj = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert ("vs_baseline", "sft/sft/safelora", "hs") in {
        (c["kind"], c["method"], c["metric"]) for c in rj["comparisons"]
    }


def test_c_b_without_forming_c_and_the_norm_ratio():
    from hftguard.builtins.defenses.safelora import _cosine_and_ratio, project_b

    g = torch.Generator().manual_seed(3)
    v, a, b = (
        torch.randn(7, 5, generator=g),
        torch.randn(3, 5, generator=g),
        torch.randn(7, 3, generator=g),
    )
    np.testing.assert_allclose(_np(project_b(v, b)), _np(projection(v)) @ _np(b), rtol=1e-12)
    cos, ratio = _cosine_and_ratio(project_b(v, b), a, b)
    assert cos == pytest.approx(layer_cosine(projection(v), a, b), rel=1e-12)
    upd = _np(b) @ _np(a)
    assert ratio == pytest.approx(np.linalg.norm(_np(projection(v)) @ upd) / np.linalg.norm(upd))


def test_repair_overwrites_and_refuses_an_attack_without_alignment(attacked, tmp_path):
    from hftguard.console import Reporter

    quiet = Reporter(quiet=True)
    _, _, out = attacked
    cfg = RepairConfig(model=str(out), defense="safelora", defense_options={"num_layers": 1})
    first = repair.run(cfg, tmp_path / "r", reporter=quiet)
    again = repair.run(
        RepairConfig(model=str(out), defense="safelora", defense_options={"num_layers": 4}),
        tmp_path / "r",
        reporter=quiet,
        overwrite=True,
    )
    assert (first["repair"]["projected"], again["repair"]["projected"]) == (1, 4)
    plain = tmp_path / "plain-attack"  # fine-tuned straight from the base model: no alignment
    attack_finetune.run(
        FinetuneConfig(
            model="tiny-random", samples=8, harmful_ratio=0.5, train=_train(), lora=TINY_LORA
        ),
        plain,
        reporter=quiet,
    )
    with pytest.raises(HftguardError, match="without an alignment adapter"):
        repair.run(RepairConfig(model=str(plain), defense="safelora"), tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_grid_check_refuses_repairs_that_would_have_nothing_to_repair(registry):
    from hftguard.pipeline import grid

    base = {
        "align": {"model": "tiny-random", "retain": "", "train": {"max_steps": 1}},
        "finetune": {"samples": 20, "train": {"max_steps": 1}},
    }
    with pytest.raises(ConfigError, match="lora_mode 'continue'"):  # Booster's single LoRA
        grid.check(grid.load({**base, "grid": {"methods": ["booster/sft/safelora"]}}), registry)
    with pytest.raises(ConfigError, match="without alignment"):
        grid.check(grid.load({**base, "grid": {"methods": ["none/sft/safelora"]}}), registry)
    merged = {**base, "finetune": {**base["finetune"], "lora_mode": "merge"}}
    grid.check(grid.load({**merged, "grid": {"methods": ["booster/sft/safelora"]}}), registry)


def test_orthogonal_projector_is_the_projection_onto_vs_column_space():
    from hftguard.builtins.defenses.safelora import (
        _cosine_and_ratio,
        column_basis,
        project_b_orthogonal,
    )

    g = torch.Generator().manual_seed(4)
    v = torch.randn(8, 2, generator=g) @ torch.randn(2, 6, generator=g)  # rank 2
    a, b = torch.randn(3, 6, generator=g), torch.randn(8, 3, generator=g)
    assert column_basis(v).shape == (8, 2)
    vn = _np(v)
    p = vn @ np.linalg.pinv(vn, rcond=1e-5)  # the projector onto range(V), computed another way
    np.testing.assert_allclose(_np(project_b_orthogonal(v, b)), p @ _np(b), atol=1e-12)
    cos, ratio = _cosine_and_ratio(project_b_orthogonal(v, b), a, b)
    upd = _np(b) @ _np(a)
    # for an orthogonal projector <PΔ, Δ> = ‖PΔ‖², so the cosine equals the norm ratio
    assert ratio == pytest.approx(np.linalg.norm(p @ upd) / np.linalg.norm(upd), rel=1e-10)
    assert cos == pytest.approx(ratio, rel=1e-10)
    # an update inside range(V) is kept whole; the official C would rescale it
    inside = _np(v)[:, :3]
    kept = project_b_orthogonal(v, torch.from_numpy(inside))
    np.testing.assert_allclose(_np(kept), inside, atol=1e-12)
    with pytest.raises(ConfigError, match="projector"):
        SafeLoRAConfig(projector="svd")


def test_repair_with_the_orthogonal_projector(attacked, tmp_path):
    from hftguard.console import Reporter

    _, _, out = attacked
    manifest = repair.run(
        RepairConfig(
            model=str(out),
            defense="safelora",
            defense_options={"num_layers": 2, "projector": "orthogonal"},
        ),
        tmp_path / "repaired",
        reporter=Reporter(quiet=True),
    )
    attacked_manifest = json.loads((out / "manifest.json").read_text())
    start = attacked_manifest["input_model"]
    w_aligned, w_base = _weights(start), _weights({"base": start["base"], "adapters": []})
    before = _lora(attacked_manifest["model"]["adapters"][-1])
    after = _lora(manifest["model"]["adapters"][-1])
    cos, proj = {}, {}
    for name, (a, b) in before.items():
        v = _np(w_aligned[name] - w_base[name])
        p = v @ np.linalg.pinv(v, rcond=1e-5)
        upd = _np(b) @ _np(a)
        cos[name] = np.linalg.norm(p @ upd) / np.linalg.norm(upd)
        proj[name] = p @ _np(b)
    want = sorted(cos, key=cos.get)[:2]
    for name, (_a, b) in after.items():
        if name in want:
            np.testing.assert_allclose(_np(b), proj[name], rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_array_equal(_np(b), _np(before[name][1]))
