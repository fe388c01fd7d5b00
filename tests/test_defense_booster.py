"""Booster (docs/components/booster.md): grad = g_a + lam (g_h - g_h'),
theta' = theta - alpha g_h/||g_h||."""

from __future__ import annotations

import math

import pytest
import torch
from defense_helpers import (
    assert_grads_close,
    batch,
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

from hftguard.builtins.defenses.booster import Booster, BoosterConfig
from hftguard.config import build
from hftguard.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def _expected(model, a, h, lam, alpha):
    """Independent computation: explicit theta' on a deep copy, plain autograd everywhere."""
    g_h = ref_grads(model, h)
    theta_p = moved_copy(model, g_h, -alpha / (norm(g_h) + 1e-7))
    g_hp = ref_grads(theta_p, h)
    g_a = ref_grads(model, a)
    d = [x - y for x, y in zip(g_h, g_hp, strict=True)]
    with torch.no_grad():
        losses = (float(hf_loss(model, h)), float(hf_loss(theta_p, h)))
    return [ga + lam * di for ga, di in zip(g_a, d, strict=True)], g_a, g_h, d, losses


@pytest.mark.parametrize(("lam", "alpha"), [(5.0, 0.1), (25.0, 0.5)])
def test_gradient_matches_plain_autograd(tiny_tok, lam, alpha):
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    expected, _, g_h, _, (h0, h1) = _expected(model, a, h, lam, alpha)
    metrics = Booster(BoosterConfig(lam=lam, alpha=alpha)).training_step(
        model, a, fake_ctx(model, h)
    )
    assert_grads_close(written_grads(model), expected)
    assert metrics["harmful_grad_norm"] == pytest.approx(norm(g_h), rel=1e-5)
    assert metrics["harmful_loss"] == pytest.approx(h0, rel=1e-5)
    assert metrics["harmful_loss_perturbed"] == pytest.approx(h1, rel=1e-5)
    assert metrics["loss_change"] == pytest.approx(h0 - h1, rel=1e-4)
    with torch.no_grad():
        assert metrics["loss"] == pytest.approx(float(hf_loss(model, a)), rel=1e-5)


def test_signs_of_alpha_and_lambda(tiny_tok):
    """theta' is a *descent* step on h (loss_change > 0), and the regularizer enters with +lam."""
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    _, g_a, _, d, _ = _expected(model, a, h, 5.0, 0.1)
    metrics = Booster(BoosterConfig(lam=5.0, alpha=0.1)).training_step(model, a, fake_ctx(model, h))
    assert metrics["loss_change"] > 0  # h(theta) - h(theta - alpha g_h/||g_h||)
    assert metrics["harmful_loss_perturbed"] < metrics["harmful_loss"]
    extra = [g - ga for g, ga in zip(written_grads(model), g_a, strict=True)]
    assert inner(extra, d) / (norm(extra) * norm(d)) == pytest.approx(1.0, abs=1e-4)
    assert norm(extra) == pytest.approx(5.0 * norm(d), rel=1e-4)


def test_parameters_restored_exactly(tiny_tok):
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    before = snapshot(model)
    Booster(BoosterConfig(alpha=0.37)).training_step(model, a, fake_ctx(model, h))
    for (_, p), q in zip(trainable(model), before, strict=True):
        assert torch.equal(p, q)


def test_lambda_zero_is_plain_sft(tiny_tok):
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    expected = ref_grads(model, a)
    Booster(BoosterConfig(lam=0.0)).training_step(model, a, fake_ctx(model, h))
    assert_grads_close(written_grads(model), expected)


def test_config_and_registration(registry):
    assert registry.get("alignment-defense", "booster").cls is Booster
    assert (Booster.passes, Booster.streams, Booster.finetune_lora) == (3, ("harmful",), "continue")
    cfg = build(BoosterConfig, {"lam": 25})
    assert cfg.lam == 25.0 and cfg.alpha == 0.1
    with pytest.raises(ConfigError):
        build(BoosterConfig, {"alpha": -1})


def test_two_steps_through_the_loop(tmp_path, tiny_tok):
    records = train_two_steps(tmp_path, tiny_tok, Booster(), with_harmful=True)
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        for key in (
            "loss",
            "harmful_loss",
            "harmful_loss_perturbed",
            "loss_change",
            "harmful_grad_norm",
        ):
            assert math.isfinite(r[key]), key
