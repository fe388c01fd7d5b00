"""Antibody alignment stage (docs/components/antibody.md):
g_a + lambda_bar d + lambda_refusal g_r'."""

from __future__ import annotations

import json
import math

import pytest
import torch
from defense_helpers import (
    assert_grads_close,
    batch,
    encoded,
    fake_ctx,
    hf_loss,
    inner,
    lora_model,
    moved_copy,
    norm,
    one_thread,
    ref_grads,
    snapshot,
    train_two_steps,
    trainable,
    written_grads,
)

from hftguard.builtins.defenses.antibody_align import (
    AntibodyAlign,
    AntibodyAlignConfig,
    ema_lambda,
    raw_lambda,
)
from hftguard.builtins.defenses.booster import Booster, BoosterConfig
from hftguard.config import TrainOptions, build
from hftguard.engine import training
from hftguard.errors import ConfigError, HftguardError

T = torch.tensor


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def _pieces(model, a, h, alpha):
    """g_a, g_h, g_h', g_r' (at an explicitly built theta') and d, with plain autograd."""
    g_h = ref_grads(model, h)
    theta_p = moved_copy(model, g_h, -alpha / (norm(g_h) + 1e-7))
    g_hp = ref_grads(theta_p, h)
    g_rp = ref_grads(theta_p, h.refusal)
    g_a = ref_grads(model, a)
    d = [x - y for x, y in zip(g_h, g_hp, strict=True)]
    with torch.no_grad():
        r_loss = float(hf_loss(theta_p, h.refusal))
    return g_a, g_h, g_hp, g_rp, d, r_loss


# ---- lambda_t on hand-made vectors -------------------------------------------------------------


def test_raw_lambda_each_mode_by_hand():
    # two tensors, so the inner product and norms must be global
    g_a = [T([1.0, 0.0]), T([[2.0]])]
    d = [T([1.0, 1.0]), T([[0.0]])]
    # <g_a, d> = 1, ||g_a|| = sqrt(5), ||d|| = sqrt(2)
    cos = 1.0 / (math.sqrt(5.0) * math.sqrt(2.0) + 1e-8)
    assert raw_lambda("cosine", 5.0, g_a, d) == pytest.approx(5.0 - cos)
    assert raw_lambda("kkt", 5.0, g_a, d) == pytest.approx(5.0 - 1.0 / 2.0)
    assert raw_lambda("constant", 5.0, g_a, d) == 5.0
    # max(0, .): g_a parallel to d and a small eta
    assert raw_lambda("cosine", 0.5, d, d) == 0.0
    assert raw_lambda("kkt", 0.5, [T([3.0, 3.0]), T([[0.0]])], d) == 0.0  # 0.5 - 6/2 < 0


def test_kkt_lambda_is_capped_and_handles_zero_d():
    g_a = [T([-1.0, 0.0])]
    tiny_d = [T([1e-3, 0.0])]  # eta - <g_a,d>/||d||^2 = 5 + 1000
    assert raw_lambda("kkt", 5.0, g_a, tiny_d, lambda_max=50.0) == 50.0
    assert raw_lambda("kkt", 5.0, g_a, tiny_d, lambda_max=2000.0) == pytest.approx(1005.0)
    assert raw_lambda("kkt", 5.0, g_a, [T([0.0, 0.0])]) == 5.0  # ratio taken as 0
    assert raw_lambda("cosine", 5.0, g_a, [T([0.0, 0.0])]) == 5.0


def test_ema_over_three_steps():
    m = 0.9
    raws = [4.0, 6.0, 5.0]
    bar = None
    values = []
    for r in raws:
        bar = ema_lambda(bar, r, m)
        values.append(bar)
    assert values == pytest.approx([4.0, 0.9 * 4.0 + 0.1 * 6.0, 0.9 * 4.2 + 0.1 * 5.0])
    assert values[2] == pytest.approx(4.28)
    assert ema_lambda(4.0, 6.0, 0.0) == 6.0  # ema = 0: raw value


def test_ema_inside_training_step_over_three_steps(tiny_tok):
    model = lora_model(tiny_tok)
    h = batch(tiny_tok, "harmful", 2)
    defense = AntibodyAlign(AntibodyAlignConfig(ema=0.5, lambda_mode="kkt"))
    raws, bars = [], []
    for step in range(3):  # different alignment batches -> different raw lambdas
        m = defense.training_step(model, batch(tiny_tok, "refusal", step), fake_ctx(model, h, step))
        raws.append(float(m["lambda_raw"]))  # metrics may be 0-d tensors
        bars.append(float(m["lambda"]))
    assert len(set(raws)) == 3
    assert bars[0] == raws[0]
    assert bars[1] == pytest.approx(0.5 * raws[0] + 0.5 * raws[1])
    assert bars[2] == pytest.approx(0.5 * bars[1] + 0.5 * raws[2])


# ---- the full gradient ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cosine", "kkt"])
def test_gradient_matches_plain_autograd(tiny_tok, mode):
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    g_a, g_h, g_hp, g_rp, d, r_loss = _pieces(model, a, h, 0.1)
    if mode == "cosine":
        lam = max(0.0, 5.0 - inner(g_a, d) / (norm(g_a) * norm(d) + 1e-8))
    else:
        lam = min(50.0, max(0.0, 5.0 - inner(g_a, d) / inner(d, d)))
    expected = [ga + lam * di + 0.05 * gr for ga, di, gr in zip(g_a, d, g_rp, strict=True)]
    defense = AntibodyAlign(AntibodyAlignConfig(lambda_mode=mode))
    metrics = defense.training_step(model, a, fake_ctx(model, h))
    assert_grads_close(written_grads(model), expected)
    assert metrics["lambda_raw"] == pytest.approx(lam, rel=1e-5)
    assert metrics["lambda"] == metrics["lambda_raw"]  # first step: EMA starts at the raw value
    assert metrics["refusal_loss_perturbed"] == pytest.approx(r_loss, rel=1e-5)
    assert metrics["norm_harmful"] == pytest.approx(norm(g_h), rel=1e-5)
    assert metrics["norm_harmful_perturbed"] == pytest.approx(norm(g_hp), rel=1e-5)
    assert metrics["norm_diff"] == pytest.approx(norm(d), rel=1e-4)
    assert metrics["norm_final"] == pytest.approx(norm(expected), rel=1e-4)
    assert metrics["cos_safe_harmful"] == pytest.approx(
        inner(g_a, g_h) / (norm(g_a) * norm(g_h)), rel=1e-4, abs=1e-6
    )
    assert all(math.isfinite(v) for v in metrics.values())


def _raw_lambda_by_hand(mode, g_a, d, eta=5.0, lambda_max=50.0):
    if mode == "cosine":  # released code: max(0, eta - cos(g_a, d)), cos with +1e-8
        return max(0.0, eta - inner(g_a, d) / (norm(g_a) * norm(d) + 1e-8))
    return min(lambda_max, max(0.0, eta - inner(g_a, d) / inner(d, d)))  # kkt


@pytest.mark.parametrize(("mode", "ema"), [("cosine", 0.99), ("kkt", 0.5)])
def test_gradient_at_step_three_uses_the_ema_of_lambda(tiny_tok, mode, ema):
    """At step 1 the EMA equals the raw lambda, so only a later step tells them apart.

    Three steps, each on a different alignment batch and after a plain SGD step on the written
    gradient (so theta moves as in the loop); the step-3 gradient is compared with
    g_a + lambda_bar_3 d + 0.05 g_r', where lambda_bar_3 is the EMA of the raw lambdas of the three
    steps, each computed by hand with plain autograd at that step's parameters.
    """
    model = lora_model(tiny_tok)
    h = batch(tiny_tok, "harmful", 2)
    defense = AntibodyAlign(AntibodyAlignConfig(lambda_mode=mode, ema=ema))
    bar = None
    raws = []
    for step in range(3):
        a = batch(tiny_tok, "refusal", step)
        g_a, _, _, g_rp, d, _ = _pieces(model, a, h, 0.1)
        raw = _raw_lambda_by_hand(mode, g_a, d)
        raws.append(raw)
        bar = raw if bar is None else ema * bar + (1.0 - ema) * raw
        metrics = defense.training_step(model, a, fake_ctx(model, h, step))
        written = written_grads(model)
        if step < 2:
            with torch.no_grad():
                for (_, p), g in zip(trainable(model), written, strict=True):
                    p.sub_(0.05 * g)
                    p.grad = None
    expected = [ga + bar * di + 0.05 * gr for ga, di, gr in zip(g_a, d, g_rp, strict=True)]
    with_raw = [ga + raw * di + 0.05 * gr for ga, di, gr in zip(g_a, d, g_rp, strict=True)]
    # the test only means something if the raw-lambda gradient is clearly different
    assert abs(bar - raw) > 1e-3
    gap = norm([x - y for x, y in zip(expected, with_raw, strict=True)])
    assert gap > 1e-3 * norm(expected), (bar, raws)
    assert_grads_close(written, expected)
    assert float(metrics["lambda_raw"]) == pytest.approx(raw, rel=1e-5)
    assert float(metrics["lambda"]) == pytest.approx(bar, rel=1e-5)


def test_signs_of_alpha_lambda_and_refusal(tiny_tok):
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    g_a, _, _, g_rp, d, _ = _pieces(model, a, h, 0.1)
    cfg = AntibodyAlignConfig(lambda_mode="constant", eta=3.0, ema=0.0, lambda_refusal=0.5)
    metrics = AntibodyAlign(cfg).training_step(model, a, fake_ctx(model, h))
    assert metrics["loss_change"] > 0  # theta' descends the harmful loss
    extra = [g - ga - 3.0 * di for g, ga, di in zip(written_grads(model), g_a, d, strict=True)]
    assert inner(extra, g_rp) / (norm(extra) * norm(g_rp)) == pytest.approx(1.0, abs=1e-4)
    assert norm(extra) == pytest.approx(0.5 * norm(g_rp), rel=1e-4)
    no_ref = [g - ga for g, ga in zip(written_grads(model), g_a, strict=True)]
    assert inner(no_ref, d) > 0


def test_constant_mode_without_refusal_or_ema_is_booster(tiny_tok):
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    m1, m2 = lora_model(tiny_tok), lora_model(tiny_tok)
    cfg = AntibodyAlignConfig(
        lambda_mode="constant", eta=7.0, lambda_refusal=0.0, ema=0.0, alpha=0.2
    )
    AntibodyAlign(cfg).training_step(m1, a, fake_ctx(m1, h))
    Booster(BoosterConfig(lam=7.0, alpha=0.2)).training_step(m2, a, fake_ctx(m2, h))
    for x, y in zip(written_grads(m1), written_grads(m2), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_parameters_restored_exactly(tiny_tok):
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    before = snapshot(model)
    AntibodyAlign(AntibodyAlignConfig(alpha=0.37)).training_step(model, a, fake_ctx(model, h))
    for (_, p), q in zip(trainable(model), before, strict=True):
        assert torch.equal(p, q)


def test_missing_refusal_view_is_a_clear_error(tiny_tok):
    model = lora_model(tiny_tok)
    a = batch(tiny_tok, "refusal", 0)
    h = batch(tiny_tok, "harmful", 2, refusal_view=False)
    with pytest.raises(HftguardError, match="refusal view"):
        AntibodyAlign().training_step(model, a, fake_ctx(model, h))


# ---- state, config, registration, loop ----------------------------------------------------------


def test_state_dict_round_trip(tiny_tok):
    model = lora_model(tiny_tok)
    h = batch(tiny_tok, "harmful", 2)
    first = AntibodyAlign(AntibodyAlignConfig(ema=0.9))
    assert first.state_dict() == {"lambda_bar": None}
    for step in range(2):
        first.training_step(model, batch(tiny_tok, "refusal", step), fake_ctx(model, h, step))
    state = json.loads(json.dumps(first.state_dict()))  # JSON-able
    second = AntibodyAlign(AntibodyAlignConfig(ema=0.9))
    second.load_state_dict(state)
    assert second.lambda_bar == first.lambda_bar is not None
    a3 = batch(tiny_tok, "refusal", 2)
    m1 = first.training_step(model, a3, fake_ctx(model, h, 2))
    m2 = second.training_step(model, a3, fake_ctx(model, h, 2))
    assert m1["lambda"] == m2["lambda"]


def test_ema_survives_checkpoint_resume(tmp_path, tiny_tok):
    from hftguard.console import Reporter
    from hftguard.runs import open_run_dir

    class Crash(AntibodyAlign):
        def training_step(self, model, batch, ctx):
            if ctx.step == 3:
                raise KeyboardInterrupt
            return super().training_step(model, batch, ctx)

    def run(name, defense, resume=False):
        model = lora_model(tiny_tok)
        rd = open_run_dir(tmp_path / name, "align", resume=resume)
        if not resume:
            rd.update_manifest(stage="align", status="running")
        opts = TrainOptions(lr=1e-3, max_steps=4, batch_size=3, checkpoint_every=2)
        training.train(
            model,
            defense,
            encoded(tiny_tok, "refusal", 0, 6),
            {"harmful": encoded(tiny_tok, "harmful", 0, 6)},
            opts,
            rd,
            Reporter(quiet=True),
            seed=1,
            pad_id=tiny_tok.pad_token_id,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        lines = (rd.path / "train_log.jsonl").read_text().splitlines()
        return [json.loads(x)["lambda"] for x in lines]

    cfg = AntibodyAlignConfig(ema=0.5, lambda_mode="kkt")
    full = run("full", AntibodyAlign(cfg))
    with pytest.raises(KeyboardInterrupt):
        run("crash", Crash(cfg))
    resumed = run("crash", AntibodyAlign(cfg), resume=True)  # a fresh instance: EMA from checkpoint
    assert resumed == pytest.approx(full, rel=1e-6)


def test_lambda_mode_is_validated_with_a_hint():
    with pytest.raises(ConfigError, match="Did you mean 'cosine'"):
        build(AntibodyAlignConfig, {"lambda_mode": "cosin"})
    with pytest.raises(ConfigError):
        AntibodyAlignConfig(ema=1.0)
    cfg = build(AntibodyAlignConfig, {"lambda_mode": "kkt", "eta": 2})
    assert (cfg.alpha, cfg.eta, cfg.ema, cfg.lambda_refusal, cfg.lambda_max) == (
        0.1,
        2.0,
        0.99,
        0.05,
        50.0,
    )


def test_registered_and_declared(registry):
    assert registry.get("alignment-defense", "antibody").cls is AntibodyAlign
    assert AntibodyAlign.passes == 4 and AntibodyAlign.refusal_view
    assert AntibodyAlign.streams == ("harmful",) and AntibodyAlign.finetune_lora == "continue"


def test_two_steps_through_the_loop(tmp_path, tiny_tok):
    records = train_two_steps(tmp_path, tiny_tok, AntibodyAlign(), with_harmful=True)
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        for key in ("loss", "harmful_loss", "refusal_loss_perturbed", "lambda", "lambda_raw"):
            assert math.isfinite(r[key]), key
