"""Vaccine (docs/components/vaccine.md): the update is the gradient under
eps_l = rho G_l / ||G||_global."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from defense_helpers import (
    assert_grads_close,
    batch,
    fake_ctx,
    hf_loss,
    lora_model,
    norm,
    one_thread,
    ref_grads,
    snapshot,
    train_two_steps,
    trainable,
    written_grads,
)

from hftguard.builtins.defenses.vaccine import Vaccine, VaccineConfig
from hftguard.engine import steps


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def _attn(model):
    """The attention modules, found by hand (not with the helper under test)."""
    return [layer.self_attn for layer in model.base_model.model.model.layers]


@contextmanager
def _hooks(modules, fn):
    handles = [m.register_forward_hook(fn(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _reference(model, b, rho):
    """(eps per layer, expected parameter gradient), computed with plain autograd."""
    mods = _attn(model)
    outs = [None] * len(mods)

    def keep(i):
        def hook(_m, _inp, out):
            outs[i] = out[0]

        return hook

    with _hooks(mods, keep):
        loss = hf_loss(model, b)
    g = torch.autograd.grad(loss, outs)
    total = math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))
    eps = [rho * x / (total + 1e-7) for x in g]

    def add(i):
        def hook(_m, _inp, out):
            return (out[0] + eps[i], *out[1:])

        return hook

    with _hooks(mods, add):
        expected = ref_grads(model, b)
    return eps, g, expected


def test_gradient_matches_plain_autograd(tiny_tok):
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    eps, _, expected = _reference(model, b, 2.0)
    metrics = Vaccine(VaccineConfig(rho=2.0)).training_step(model, b, fake_ctx(model))
    assert_grads_close(written_grads(model), expected)
    assert metrics["eps_norm"] == pytest.approx(2.0, rel=1e-6)
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["loss_clean"])
    assert norm([e.reshape(-1) for e in eps]) == pytest.approx(2.0, rel=1e-6)


def _outputs_norm(model, b, modules):
    """The joint L2 norm of the given modules' first outputs, by forward hooks (independent)."""
    outs = [None] * len(modules)

    def keep(i):
        def hook(_m, _inp, out):
            outs[i] = out[0].detach()

        return hook

    with torch.no_grad(), _hooks(modules, keep):
        hf_loss(model, b)
    return math.sqrt(sum(float((o.double() ** 2).sum()) for o in outs))


@pytest.mark.parametrize("rho", [0.5, 4.0])
def test_logs_the_perturbation_against_the_attention_outputs(tiny_tok, rho):
    """activation_norm: the joint norm of every layer's attention output over the batch, the same
    way eps is normalised; eps_ratio = rho / that (the perturbation's size, for choosing rho)."""
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    expected = _outputs_norm(model, b, _attn(model))
    first_layer_only = _outputs_norm(model, b, _attn(model)[:1])
    assert expected > first_layer_only * 1.01  # the test can tell a joint norm from one layer's
    metrics = Vaccine(VaccineConfig(rho=rho)).training_step(model, b, fake_ctx(model))
    assert float(metrics["activation_norm"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["eps_ratio"]) == pytest.approx(rho / expected, rel=1e-5)


def test_eps_is_normalised_globally_not_per_layer(tiny_tok, monkeypatch):
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    _, g, _ = _reference(model, b, 3.0)
    seen = []
    real = steps.add_to_outputs

    def spy(modules, deltas):
        seen.append([d.detach().clone() for d in deltas])
        return real(modules, deltas)

    monkeypatch.setattr(steps, "add_to_outputs", spy)  # the kit, where defenses import from
    Vaccine(VaccineConfig(rho=3.0)).training_step(model, b, fake_ctx(model))
    (eps,) = seen
    assert len(eps) == model.config.num_hidden_layers == 2
    per_layer = [norm([e]) for e in eps]
    # Global radius rho; each layer's share is ||G_l|| / ||G|| (per-layer normalisation would give
    # rho for every layer and sqrt(L) * rho in total).
    assert math.sqrt(sum(x * x for x in per_layer)) == pytest.approx(3.0, rel=1e-6)
    total = norm(list(g))
    for e_l, g_l, n_l in zip(eps, g, per_layer, strict=True):
        assert n_l == pytest.approx(3.0 * norm([g_l]) / total, rel=1e-5)
        assert n_l < 3.0 - 1e-3
        torch.testing.assert_close(e_l, 3.0 * g_l / total, rtol=1e-5, atol=1e-8)
        assert e_l.shape == (*b.input_ids.shape, model.config.hidden_size)  # whole batch tensor


def test_perturbation_increases_the_loss(tiny_tok):
    """Sign check: eps is an ascent direction (a minus sign would lower the loss)."""
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    metrics = Vaccine(VaccineConfig(rho=0.5)).training_step(model, b, fake_ctx(model))
    assert metrics["loss"] > metrics["loss_clean"]
    with torch.no_grad():
        assert metrics["loss_clean"] == pytest.approx(float(hf_loss(model, b)), rel=1e-5)


def test_parameters_restored_and_hooks_removed(tiny_tok):
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    before = snapshot(model)
    with torch.no_grad():
        clean = float(hf_loss(model, b))
    Vaccine().training_step(model, b, fake_ctx(model))
    for (_, p), q in zip(trainable(model), before, strict=True):
        assert torch.equal(p, q)
    assert all(not m._forward_hooks for m in _attn(model))
    with torch.no_grad():
        assert float(hf_loss(model, b)) == clean


def test_rho_zero_is_plain_sft(tiny_tok):
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    expected = ref_grads(model, b)
    Vaccine(VaccineConfig(rho=0.0)).training_step(model, b, fake_ctx(model))
    assert_grads_close(written_grads(model), expected)


def test_registered_and_declared(registry):
    info = registry.get("alignment-defense", "vaccine")
    assert info.cls is Vaccine
    assert Vaccine.passes == 2 and Vaccine.finetune_lora == "merge" and Vaccine.streams == ()
    assert VaccineConfig().rho == 2.0


def test_two_steps_through_the_loop(tmp_path, tiny_tok):
    records = train_two_steps(tmp_path, tiny_tok, Vaccine(), with_harmful=False)
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        assert math.isfinite(r["loss"]) and math.isfinite(r["loss_clean"])
        assert r["eps_norm"] == pytest.approx(2.0, rel=1e-6)
