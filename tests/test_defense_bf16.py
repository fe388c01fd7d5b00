"""Every defense's gradient under CPU bf16 autocast (issue #13).

The loop (``training.train``) runs ``defense.training_step`` inside
``torch.autocast(device.type, dtype=torch.bfloat16)`` for bf16 runs; the LoRA parameters stay fp32
and the defenses assemble their gradients in fp32. Here each defense's step runs under CPU bf16
autocast on the tiny LoRA model, and its written gradient is compared with an *independent* fp32
reference (plain autograd, no autocast, written here and not with the defense's helpers) within a
stated tolerance. A second reference with a typical bug of that defense (a flipped sign, a dropped
normalisation, wrong weights) must fall *outside* the same tolerance, so the tolerance is tight
enough to mean something. Each step must also restore the parameters exactly and write fp32
gradients.

The distance is (rel, cos): rel = ||g - g_ref|| / ||g_ref||, cos = <g, g_ref> / (||g|| ||g_ref||),
global over all LoRA tensors (float64). The observed numbers are noted next to each tolerance,
which is about 3x the observed bf16 error (torch 2.13 on an AVX2 CPU without native bf16, where
bf16 maths is emulated; the numbers are deterministic).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import ft_defense_helpers as ft
import pytest
import torch
from defense_helpers import (
    batch,
    encoded,
    fake_ctx,
    inner,
    lora_model,
    moved_copy,
    norm,
    one_thread,
    ref_grads,
    snapshot,
    trainable,
    written_grads,
)
from test_defense_vaccine import _attn
from test_defense_vaccine import _reference as _vaccine_reference

from hftguard.builtins.defenses.antibody_align import AntibodyAlign, AntibodyAlignConfig
from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune, AntibodyFinetuneOptions
from hftguard.builtins.defenses.booster import Booster, BoosterConfig
from hftguard.builtins.defenses.lisa import Lisa, LisaOptions
from hftguard.builtins.defenses.sft import SFTAlign, SFTFinetune
from hftguard.builtins.defenses.vaccine import Vaccine, VaccineConfig
from hftguard.engine import training
from hftguard.records import Example


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ---- distances and tolerances -------------------------------------------------------------------


@dataclass(frozen=True)
class Tol:
    """g is within tolerance of g_ref when rel <= rel and cos >= 1 - cos_eps."""

    rel: float
    cos_eps: float


def distance(g: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[float, float]:
    """(||g - ref|| / ||ref||, cos(g, ref)), global over all tensors, in float64."""
    diff = [x.double() - y.double() for x, y in zip(g, ref, strict=True)]
    return norm(diff) / norm(ref), inner(g, ref) / (norm(g) * norm(ref))


def within(g, ref, tol: Tol) -> bool:
    rel, cos = distance(g, ref)
    return rel <= tol.rel and cos >= 1.0 - tol.cos_eps


def assert_close_bf16(g, ref, tol: Tol) -> None:
    rel, cos = distance(g, ref)
    assert rel <= tol.rel and cos >= 1.0 - tol.cos_eps, (rel, 1.0 - cos, tol)


def assert_caught(g, wrong, tol: Tol) -> None:
    """The bf16 gradient must NOT pass for the gradient of a buggy implementation."""
    rel, cos = distance(g, wrong)
    assert not within(g, wrong, tol), (rel, 1.0 - cos, tol)


def assert_clean_step(model, before) -> None:
    """Parameters restored bit for bit, still fp32; every written gradient fp32."""
    for (name, p), q in zip(trainable(model), before, strict=True):
        assert p.dtype == torch.float32, name
        assert torch.equal(p, q), name
        assert p.grad is not None and p.grad.dtype == torch.float32, name


# ---- independent fp32 references (plain autograd, no autocast) ----------------------------------


def booster_reference(model, a, h, lam, alpha, normalise=True):
    """g_a + lam (g_h - g_h'), g_h' at theta' = theta - alpha g_h/||g_h|| (an explicit copy)."""
    g_h = ref_grads(model, h)
    step = -alpha / (norm(g_h) + 1e-7) if normalise else -alpha
    theta_p = moved_copy(model, g_h, step)
    g_hp = ref_grads(theta_p, h)
    g_a = ref_grads(model, a)
    return [ga + lam * (x - y) for ga, x, y in zip(g_a, g_h, g_hp, strict=True)]


def antibody_pieces(model, a, h, alpha, normalise=True):
    """g_a, d = g_h - g_h', g_r' (refusal view of h at theta'), with plain autograd."""
    g_h = ref_grads(model, h)
    step = -alpha / (norm(g_h) + 1e-7) if normalise else -alpha
    theta_p = moved_copy(model, g_h, step)
    g_hp = ref_grads(theta_p, h)
    g_rp = ref_grads(theta_p, h.refusal)
    g_a = ref_grads(model, a)
    return g_a, [x - y for x, y in zip(g_h, g_hp, strict=True)], g_rp


def antibody_combine(g_a, d, g_rp, lam, lam_refusal):
    return [ga + lam * di + lam_refusal * gr for ga, di, gr in zip(g_a, d, g_rp, strict=True)]


def vaccine_reference(model, b, rho):
    """Gradient with eps_l = rho G_l / ||G||_global added to each attention output (the fp32
    reference of tests/test_defense_vaccine.py)."""
    return _vaccine_reference(model, b, rho)[2]


def seq_mean_reference(model, b):
    """A typical SFT bug: the mean over sequences of per-sequence token means (not token mean)."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
    targets = b.labels[:, 1:]
    mask = targets != -100
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.clamp_min(0).reshape(-1), reduction="none"
    ).view_as(targets)
    loss = ((nll * mask).sum(1) / mask.sum(1)).mean()
    params = [p for _, p in trainable(model)]
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def ft_scores(model, enc):
    """Per-sample r = mean NLL(refusal) - mean NLL(task), from plain one-example forwards."""
    with torch.no_grad():
        r = []
        for e in enc:
            (st, nt), (sr, nr) = ft.example_nll(model, e), ft.example_nll(model, e.refusal)
            r.append(float(sr) / nr - float(st) / nt)
    return torch.tensor(r, dtype=torch.float64)


def ft_weighted_grad(model, enc, w):
    """Autograd of L = sum_i w_i sum_t l_it / sum_i w_i N_i, one example at a time."""
    params = [p for _, p in trainable(model)]
    num, den = 0.0, 0.0
    for wi, e in zip(w.tolist(), enc, strict=True):
        s, n = ft.example_nll(model, e)
        num = num + wi * s
        den += wi * n
    return [g.detach() for g in torch.autograd.grad(num / den, params)]


def lisa_reference(model, b, anchor, rho):
    """Autograd of CE + (rho/2) sum_p ||theta_p - anchor_p||^2."""
    params = trainable(model)
    prox = sum(((p - anchor[n]) ** 2).sum() for n, p in params)
    loss = training.lm_loss(model, b) + 0.5 * rho * prox
    return [g.detach() for g in torch.autograd.grad(loss, [p for _, p in params])]


# ---- SFT ----------------------------------------------------------------------------------------

# Observed: align batch rel 8.3e-3, 1-cos 3.5e-5; fine-tuning batch rel 6.3e-3, 1-cos 2.0e-5.
TOL_SFT = Tol(rel=0.025, cos_eps=1e-4)


def _prompt_in_loss(b):
    """The batch with the prompt tokens left in the labels (a typical SFT masking bug)."""
    c = copy.copy(b)
    c.labels = torch.where(b.attention_mask.bool(), b.input_ids, -100)
    return c


def test_sft_align_under_bf16(tiny_tok):
    model = lora_model(tiny_tok)
    a = batch(tiny_tok, "refusal", 0)
    ref = ref_grads(model, a)
    before = snapshot(model)
    with bf16():
        SFTAlign().training_step(model, a, fake_ctx(model))
    g = written_grads(model)
    assert_clean_step(model, before)
    assert_close_bf16(g, ref, TOL_SFT)
    # prompt tokens in the loss: bf16 rel 1.44, 1-cos 0.31; the sign flipped: rel 2.0
    assert_caught(g, ref_grads(model, _prompt_in_loss(a)), TOL_SFT)
    assert_caught(g, [-x for x in ref], TOL_SFT)


def test_sft_finetune_under_bf16(tiny_tok):
    """On user data of very different lengths (3 to 54 response tokens), so a per-sequence mean
    differs from the token mean (on the equal-length align batch the two coincide)."""
    model = ft.lora_model(tiny_tok)
    b = ft.batch_of(tiny_tok, ft.encode(tiny_tok, ft.user_examples(2, 4), refusal_view=False))
    ref = ref_grads(model, b)
    before = snapshot(model)
    with bf16():
        SFTFinetune().training_step(model, b, ft.context(model))
    g = written_grads(model)
    assert_clean_step(model, before)
    assert_close_bf16(g, ref, TOL_SFT)
    # per-sequence mean: bf16 rel 0.87, 1-cos 0.49; prompt in the loss: rel 1.14, 1-cos 0.67
    assert_caught(g, seq_mean_reference(model, b), TOL_SFT)
    assert_caught(g, ref_grads(model, _prompt_in_loss(b)), TOL_SFT)


# ---- Vaccine ------------------------------------------------------------------------------------

# rho = 2 (the default) already moves the gradient a lot: the fp32 gradients at rho and 2 rho are
# rel 0.48 apart, at rho and -rho rel 1.28, at rho and 0 (plain SFT) rel 1.65.
# Observed bf16 vs reference: rel 1.1e-2, 1-cos 6.0e-5.
TOL_VACCINE = Tol(rel=0.035, cos_eps=2e-4)


def test_vaccine_under_bf16(tiny_tok):
    rho = 2.0
    model = lora_model(tiny_tok)
    b = batch(tiny_tok, "refusal")
    ref = vaccine_reference(model, b, rho)
    before = snapshot(model)
    with bf16():
        Vaccine(VaccineConfig(rho=rho)).training_step(model, b, fake_ctx(model))
    g = written_grads(model)
    assert_clean_step(model, before)
    assert all(not m._forward_hooks for m in _attn(model))
    assert_close_bf16(g, ref, TOL_VACCINE)
    # rho x 2: bf16 rel 0.48, 1-cos 0.11; eps sign flipped: rel 1.28, 1-cos 0.98
    assert_caught(g, vaccine_reference(model, b, 2 * rho), TOL_VACCINE)
    assert_caught(g, vaccine_reference(model, b, -rho), TOL_VACCINE)


# ---- Booster and Antibody (alignment): the parameter perturbation under autocast ----------------

# Regression (issue #13): autocast caches the bf16 copy of every fp32 leaf parameter that requires
# grad the first time an op casts it, and drops that cache only when the outermost autocast region
# exits. ``gradients.perturbed`` moves theta to theta' in place *inside* the loop's autocast region;
# before it cleared the cache, every forward at theta' ran on the cached bf16 copy of theta:
# g_h' == g_h and h(theta') == h(theta) bit for bit, the sharpness term d = g_h - g_h' was exactly
# 0 and the written gradient that of lam = 0 (Booster: plain SFT; Antibody: g_a + lambda_refusal
# g_r with g_r at theta, lambda = eta because cos(g_a, 0) = 0). Both cache settings must pass.
AUTOCAST_CACHE = [
    pytest.param(True, id="autocast"),
    pytest.param(False, id="autocast-no-weight-cache"),
]


def bf16_cache(cache: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache)


# lam = 25, alpha = 0.5 (the authors' GSM8K lambda): the regulariser dominates, the fp32 gradient
# is rel 25 away from lam = 0, rel 2.0 from -lam; ||g_h|| = 0.33, so dropping the normalisation
# shrinks the step ~3x: rel 0.69 away.
# Observed bf16 vs reference (cache off): rel 7.0e-3, 1-cos 2.3e-5. With the cache (the product):
# rel 0.98, 1-cos 0.50 -- and rel 8.3e-3 from the lam = 0 gradient.
TOL_BOOSTER = Tol(rel=0.02, cos_eps=1e-4)


@pytest.mark.parametrize("cache", AUTOCAST_CACHE)
def test_booster_under_bf16(tiny_tok, cache):
    lam, alpha = 25.0, 0.5
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    ref = booster_reference(model, a, h, lam, alpha)
    before = snapshot(model)
    with bf16_cache(cache):
        Booster(BoosterConfig(lam=lam, alpha=alpha)).training_step(model, a, fake_ctx(model, h))
    g = written_grads(model)
    assert_clean_step(model, before)
    assert_close_bf16(g, ref, TOL_BOOSTER)
    # -lam: bf16 rel 2.04, 1-cos 2.0; alpha g_h unnormalised: rel 0.69, 1-cos 0.037; lam = 0: rel 25
    assert_caught(g, booster_reference(model, a, h, -lam, alpha), TOL_BOOSTER)
    assert_caught(g, booster_reference(model, a, h, lam, alpha, normalise=False), TOL_BOOSTER)
    assert_caught(g, ref_grads(model, a), TOL_BOOSTER)


# Cosine lambda (default, eta 5, first step so the EMA is the raw value), lambda_refusal = 0.5
# instead of 0.05: with 0.05 the refusal term is only rel 0.023 of the gradient, inside any bf16
# tolerance, so a sign error on it would be invisible; with 0.5 flipping it moves it rel 0.25.
# Observed bf16 vs reference (cache off): rel 1.6e-2, 1-cos 1.1e-4. With the cache (the product):
# rel 0.66, 1-cos 0.19.
TOL_ANTIBODY = Tol(rel=0.05, cos_eps=4e-4)


@pytest.mark.parametrize("cache", AUTOCAST_CACHE)
def test_antibody_align_under_bf16(tiny_tok, cache):
    alpha, eta, lam_r = 0.1, 5.0, 0.5
    model = lora_model(tiny_tok)
    a, h = batch(tiny_tok, "refusal", 0), batch(tiny_tok, "harmful", 2)
    g_a, d, g_rp = antibody_pieces(model, a, h, alpha)
    lam = max(0.0, eta - inner(g_a, d) / (norm(g_a) * norm(d) + 1e-8))
    ref = antibody_combine(g_a, d, g_rp, lam, lam_r)
    before = snapshot(model)
    cfg = AntibodyAlignConfig(alpha=alpha, eta=eta, lambda_refusal=lam_r)
    with bf16_cache(cache):
        AntibodyAlign(cfg).training_step(model, a, fake_ctx(model, h))
    g = written_grads(model)
    assert_clean_step(model, before)
    assert_close_bf16(g, ref, TOL_ANTIBODY)
    # -lambda: bf16 rel 2.14, 1-cos 1.41; refusal sign flipped: rel 0.25, 1-cos 0.019;
    # theta' = theta - alpha g_h (unnormalised): rel 0.82, 1-cos 0.065
    assert_caught(g, antibody_combine(g_a, d, g_rp, -lam, lam_r), TOL_ANTIBODY)
    assert_caught(g, antibody_combine(g_a, d, g_rp, lam, -lam_r), TOL_ANTIBODY)
    g_a2, d2, g_rp2 = antibody_pieces(model, a, h, alpha, normalise=False)
    assert_caught(g, antibody_combine(g_a2, d2, g_rp2, lam, lam_r), TOL_ANTIBODY)


# ---- Antibody (fine-tuning stage) ---------------------------------------------------------------

# tau = 0.25: the tiny model's scores r are small (|r| < 0.11), so at tau = 1 the softmax is
# nearly uniform (uniform weights only rel 0.034 away); at tau = 0.25 uniform weights are rel 0.12
# away and softmax(-r) rel 0.28.
# Observed bf16 vs reference: rel 5.2e-3, 1-cos 1.2e-5.
TOL_ANTIBODY_FT = Tol(rel=0.015, cos_eps=5e-5)


def test_antibody_finetune_under_bf16(tiny_tok):
    tau = 0.25
    model = ft.lora_model(tiny_tok)
    enc = ft.encode(tiny_tok, ft.user_examples(2, 4))
    b = ft.batch_of(tiny_tok, enc)
    r = ft_scores(model, enc)
    ref = ft_weighted_grad(model, enc, torch.softmax(r / tau, dim=0))
    before = snapshot(model)
    opts = AntibodyFinetuneOptions(tau=tau, log_samples=False)
    with bf16():
        AntibodyFinetune(opts).training_step(model, b, ft.context(model))
    g = written_grads(model)
    assert_clean_step(model, before)
    assert_close_bf16(g, ref, TOL_ANTIBODY_FT)
    # uniform weights: bf16 rel 0.12, 1-cos 7.3e-3; softmax(-r): rel 0.28, 1-cos 0.039
    uniform = torch.full((len(enc),), 1.0 / len(enc), dtype=torch.float64)
    assert_caught(g, ft_weighted_grad(model, enc, uniform), TOL_ANTIBODY_FT)
    assert_caught(g, ft_weighted_grad(model, enc, torch.softmax(-r / tau, dim=0)), TOL_ANTIBODY_FT)


# ---- Lisa ---------------------------------------------------------------------------------------

# rho = 1 (the default), no warm-up; the steps before the checked one (SGD lr 0.5, under bf16 like
# the loop) move theta away from the anchor, so the proximal term is rel 0.49-0.51 of the
# gradient (dropping it is visible) and flipping its sign moves the gradient rel 0.66-0.68.
# Observed bf16 vs reference: alignment state rel 9.4e-3, 1-cos 4.3e-5; fine-tuning state rel
# 8.5e-3, 1-cos 3.5e-5.
TOL_LISA = Tol(rel=0.03, cos_eps=1.5e-4)


def _lisa_alignment_batch(tok):
    exs = [
        Example(f"How do I hurt someone, case {i}?", "I cannot help with that.", "refusal")
        for i in range(2)
    ]
    return ft.batch_of(tok, ft.encode(tok, exs, refusal_view=False))


@pytest.mark.parametrize(
    ("steps_before", "state"), [pytest.param(1, 0.0, id="align"), pytest.param(3, 1.0, id="ft")]
)
def test_lisa_under_bf16(tiny_tok, steps_before, state):
    rho = 1.0
    model = ft.lora_model(tiny_tok)
    user = ft.batch_of(tiny_tok, ft.encode(tiny_tok, ft.user_examples(1, 3), refusal_view=False))
    aligned = _lisa_alignment_batch(tiny_tok)
    drawn: list[str] = []

    def next_batch(name):
        drawn.append(name)
        return aligned

    def ctx(step):
        return ft.context(model, step=step, total_steps=12, next_batch=next_batch)

    defense = Lisa(LisaOptions(k_align=2, k_finetune=3, rho=rho, proximal_warmup=0.0))
    defense.setup(ctx(0))
    for step in range(steps_before):  # K1 = 2 alignment steps, then fine-tuning
        ft.zero_grads(model)
        with bf16():
            defense.training_step(model, user, ctx(step))
        ft.sgd_step(model)
    anchor = dict(defense._anchor())  # no switch at the checked step
    ft.zero_grads(model)
    n_drawn = len(drawn)
    before = snapshot(model)
    with bf16():
        metrics = defense.training_step(model, user, ctx(steps_before))
    g = written_grads(model)
    assert metrics["state"] == state
    used = aligned if len(drawn) > n_drawn else user
    assert (used is aligned) == (state == 0.0)
    ref = lisa_reference(model, used, anchor, rho)
    assert_clean_step(model, before)
    assert_close_bf16(g, ref, TOL_LISA)
    # -rho: bf16 rel 0.66-0.68, 1-cos 0.04-0.08; rho = 0 (term dropped): rel 0.49-0.51
    assert_caught(g, lisa_reference(model, used, anchor, -rho), TOL_LISA)
    assert_caught(g, lisa_reference(model, used, anchor, 0.0), TOL_LISA)


# ---- two steps through the real loop under bf16 -------------------------------------------------


@pytest.fixture(scope="module")
def booster_bf16_run(tmp_path_factory, tiny_tok):
    """Booster (3 passes) for 2 steps through ``training.train`` with dtype=bf16, so the loop
    itself wraps each step in ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    import json

    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.runs import open_run_dir

    defense = Booster()
    model = lora_model(tiny_tok)
    initial = snapshot(model)
    main = encoded(tiny_tok, "refusal", 0, 6, defense.refusal_view)
    streams = {"harmful": encoded(tiny_tok, "harmful", 0, 6, defense.refusal_view)}
    run = open_run_dir(tmp_path_factory.mktemp("bf16-loop") / defense.name, "align")
    run.update_manifest(stage="align", status="running")
    with one_thread():
        training.train(
            model,
            defense,
            main,
            streams,
            TrainOptions(lr=1e-3, max_steps=2, batch_size=3),
            run,
            Reporter(quiet=True),
            seed=1,
            pad_id=tiny_tok.pad_token_id,
            device=torch.device("cpu"),
            dtype=torch.bfloat16,
        )
    lines = (run.path / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines], model, initial


def test_booster_two_steps_through_the_loop_under_bf16(booster_bf16_run):
    records, model, initial = booster_bf16_run
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        for key in ("loss", "harmful_loss", "harmful_loss_perturbed", "loss_change", "grad_norm"):
            assert math.isfinite(r[key]), key
    for name, p in trainable(model):
        assert p.dtype == torch.float32, name
        assert torch.isfinite(p).all(), name
    assert any(not torch.equal(p, q) for (_, p), q in zip(trainable(model), initial, strict=True))


def test_booster_loop_under_bf16_sees_the_perturbed_loss(booster_bf16_run):
    records, _, _ = booster_bf16_run
    for r in records:
        assert r["loss_change"] != 0.0
        assert r["harmful_loss_perturbed"] != r["harmful_loss"]
