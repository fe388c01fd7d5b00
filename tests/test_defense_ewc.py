"""EWC (docs/components/ewc.md): the diagonal Fisher against autograd on the same alignment batches,
the penalty gradient 2λF(θ − θ₀) against autograd of the written-out penalty, resume, the CLI in
both LoRA modes."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
import torch
from ft_defense_helpers import (
    alignment_examples,
    batch_of,
    context,
    encode,
    grads,
    lora_model,
    sgd_step,
    train_in_loop,
    trainable,
    user_examples,
    zero_grads,
)

from hftguard.builtins.defenses.ewc import EWC, EWCOptions
from hftguard.config import build
from hftguard.errors import ConfigError, StopRequested


class _Stream:
    """The alignment stream: a fixed cycle of small batches; records every draw."""

    def __init__(self, tok, n_batches=3):
        enc = encode(tok, alignment_examples(2 * n_batches), refusal_view=False)
        self.batches = [batch_of(tok, enc[2 * i : 2 * i + 2]) for i in range(n_batches)]
        self.draws = 0

    def __call__(self, name):
        assert name == "alignment"
        b = self.batches[self.draws % len(self.batches)]
        self.draws += 1
        return b


def _hf_loss(model, b):
    return model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss


def _hand_fisher(model, batches):
    """Σ_batches (∇ HF-loss)², one plain autograd call per batch."""
    params = [p for _, p in trainable(model)]
    fisher = [torch.zeros_like(p) for p in params]
    for b in batches:
        for f, g in zip(fisher, torch.autograd.grad(_hf_loss(model, b), params), strict=True):
            f += g * g
    return fisher


def _hand_grads(model, b, theta0, fisher, lam):
    """Autograd of HF-loss + λ Σ F ⊙ (θ − θ₀)², the penalty written out."""
    zero_grads(model)
    penalty = sum(
        (f * (p - t0) ** 2).sum()
        for (_, p), t0, f in zip(trainable(model), theta0, fisher, strict=True)
    )
    (_hf_loss(model, b) + lam * penalty).backward()
    g = grads(model)
    zero_grads(model)
    return g


def _setup(tiny_tok, **opts):
    model = lora_model(tiny_tok)
    user = batch_of(tiny_tok, encode(tiny_tok, user_examples(2, 3), refusal_view=False))
    stream = _Stream(tiny_tok)
    defense = EWC(EWCOptions(**{"fisher_batches": 3, **opts}))
    defense.setup(context(model, next_batch=stream))
    return defense, model, user, stream


def test_fisher_is_the_sum_of_squared_alignment_gradients_at_theta0(tiny_tok):
    defense, model, user, stream = _setup(tiny_tok, fisher_batches=5)
    theta0 = [p.detach().clone() for _, p in trainable(model)]
    expected = _hand_fisher(model, [stream.batches[i % 3] for i in range(5)])  # 5 draws, cycled
    metrics = defense.training_step(model, user, context(model, next_batch=stream))
    assert stream.draws == 5
    for (n, _), e in zip(trainable(model), expected, strict=True):
        torch.testing.assert_close(defense.fisher[n], e, rtol=1e-5, atol=1e-12)
    assert float(metrics["fisher_sum"]) == pytest.approx(float(sum(e.sum() for e in expected)))
    # the step is an SFT step at θ = θ₀ (penalty and its gradient are 0) ...
    got = grads(model)
    for a, b in zip(got, _hand_grads(model, user, theta0, expected, 1.0), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert float(metrics["penalty"]) == 0.0
    # ... and later steps draw no more alignment batches
    zero_grads(model)
    defense.training_step(model, user, context(model, step=1, next_batch=stream))
    assert stream.draws == 5 and "fisher_sum" not in defense.training_step(
        model, user, context(model, step=2, next_batch=stream)
    )


def test_gradient_adds_two_lambda_fisher_times_the_drift(tiny_tok):
    defense, model, user, stream = _setup(tiny_tok)
    theta0 = [p.detach().clone() for _, p in trainable(model)]
    fisher = _hand_fisher(model, stream.batches)
    defense.training_step(model, user, context(model, next_batch=stream))  # computes F at θ₀
    sgd_step(model, lr=5.0)  # θ ≠ θ₀
    # λ large enough that the penalty's gradient is as large as the cross-entropy's
    with torch.no_grad():
        drift = [f * (p - t) for (_, p), t, f in zip(trainable(model), theta0, fisher, strict=True)]
    zero_grads(model)
    _hf_loss(model, user).backward()
    ce_norm = torch.sqrt(sum((g**2).sum() for g in grads(model)))
    lam = float(ce_norm / (2 * torch.sqrt(sum((d**2).sum() for d in drift))))
    defense.config.lam = lam

    zero_grads(model)
    metrics = defense.training_step(model, user, context(model, step=1, next_batch=stream))
    got = grads(model)
    expected = _hand_grads(model, user, theta0, fisher, lam)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
    with torch.no_grad():
        penalty = lam * sum(
            float((f * (p - t) ** 2).sum())
            for (_, p), t, f in zip(trainable(model), theta0, fisher, strict=True)
        )
    assert float(metrics["penalty"]) == pytest.approx(penalty, rel=1e-4)
    # a test that would catch a dropped factor 2, a sign flip or the unweighted ‖θ − θ₀‖²
    ones = [torch.ones_like(f) for f in fisher]
    for wrong in (
        _hand_grads(model, user, theta0, fisher, lam / 2),
        _hand_grads(model, user, theta0, fisher, -lam),
        _hand_grads(model, user, theta0, ones, lam),
    ):
        assert any(
            not torch.allclose(a, b, rtol=1e-3, atol=1e-7) for a, b in zip(got, wrong, strict=True)
        )


def test_state_dict_round_trip_keeps_theta0_and_the_fisher(tiny_tok):
    defense, model, user, stream = _setup(tiny_tok)
    defense.training_step(model, user, context(model, next_batch=stream))
    buf = io.BytesIO()  # as the loop does: torch.save, then load with weights_only=True
    torch.save(defense.state_dict(), buf)
    buf.seek(0)
    restored = EWC(EWCOptions(fisher_batches=3))
    restored.load_state_dict(torch.load(buf, weights_only=True))
    sgd_step(model)
    restored.setup(context(model, step=1, next_batch=stream))
    draws = stream.draws
    restored.training_step(model, user, context(model, step=1, next_batch=stream))
    assert stream.draws == draws  # no new Fisher after a resume
    for n in defense.fisher:
        assert torch.equal(restored.fisher[n], defense.fisher[n])
        assert torch.equal(restored.theta0[n], defense.theta0[n])


class _CrashAt3(EWC):
    def training_step(self, model, batch, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


def test_interrupted_run_resumes_identically_through_the_loop(tmp_path, tiny_tok):
    main = encode(tiny_tok, user_examples(2, 6), refusal_view=False)
    streams = {"alignment": encode(tiny_tok, alignment_examples(8), refusal_view=False)}
    pad = tiny_tok.pad_token_id
    opts = EWCOptions(lam=1e4, fisher_batches=2)
    full = train_in_loop(
        tmp_path, "full", lora_model(tiny_tok), EWC(opts), main, streams, pad_id=pad, steps=6
    )
    kw = {"pad_id": pad, "steps": 6, "checkpoint_every": 2}
    with pytest.raises(KeyboardInterrupt):
        train_in_loop(tmp_path, "x", lora_model(tiny_tok), _CrashAt3(opts), main, streams, **kw)
    resumed = train_in_loop(
        tmp_path, "x", lora_model(tiny_tok), EWC(opts), main, streams, resume=True, **kw
    )
    for n, value in full.items():
        torch.testing.assert_close(resumed[n], value, rtol=0, atol=0)


class _TermDuringFisher(EWC):
    """Sends this process SIGTERM while the Fisher's second alignment batch is drawn."""

    draws = 0

    def training_step(self, model, batch, ctx):
        draw = ctx.next_batch

        def counted(name):
            type(self).draws += 1
            if type(self).draws == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return draw(name)

        ctx.next_batch = counted
        try:
            return super().training_step(model, batch, ctx)
        finally:
            ctx.next_batch = draw


def test_sigterm_during_the_fisher_stops_before_its_end_and_resumes_identically(tmp_path, tiny_tok):
    """The Fisher (hundreds of batches on a real run) is not waited for: a stop asked for during
    it ends the run at the next batch, keeps nothing of step 0, and the re-run computes the same
    Fisher from the same batches (hftguard.context.StepContext.stop_point)."""
    main = encode(tiny_tok, user_examples(2, 6), refusal_view=False)
    streams = {"alignment": encode(tiny_tok, alignment_examples(8), refusal_view=False)}
    pad = tiny_tok.pad_token_id
    opts = EWCOptions(lam=1e4, fisher_batches=5)
    full = train_in_loop(
        tmp_path, "full", lora_model(tiny_tok), EWC(opts), main, streams, pad_id=pad, steps=4
    )
    kw = {"pad_id": pad, "steps": 4, "checkpoint_every": 2}
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopRequested, match=r"during the Fisher's computation in step 1 of 4"):
        train_in_loop(
            tmp_path, "x", lora_model(tiny_tok), _TermDuringFisher(opts), main, streams, **kw
        )
    assert signal.getsignal(signal.SIGTERM) == before
    assert _TermDuringFisher.draws == 2  # stopped before the third of five batches
    assert not list((tmp_path / "x" / "checkpoints").glob("step-*"))
    resumed = train_in_loop(
        tmp_path, "x", lora_model(tiny_tok), EWC(opts), main, streams, resume=True, **kw
    )
    for n, value in full.items():
        torch.testing.assert_close(resumed[n], value, rtol=0, atol=0)


def test_options_are_validated():
    assert build(EWCOptions, {}) == EWCOptions(lam=0.001, fisher_batches=400)
    with pytest.raises(ConfigError, match="lam"):
        build(EWCOptions, {"lam": -1})
    with pytest.raises(ConfigError, match="fisher_batches"):
        build(EWCOptions, {"fisher_batches": 0})


def _ft(cli, out, model, *extra):
    return cli(
        "attack-finetune",
        "--model",
        model,
        "--defense",
        "ewc",
        "--task",
        "sentiment",
        "--harmful-ratio",
        "0.2",
        "--samples",
        "16",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--quiet",
        "--set",
        "train.max_length=64",
        "--set",
        "lora.r=4",
        "--set",
        "defense_options.fisher_batches=2",
        "--out",
        out,
        *extra,
    )


def _log(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_attack_finetune_cli_in_both_lora_modes(cli, tmp_path):
    r = _ft(cli, "X", "tiny-random")
    assert r.code == 0, r.out + r.err
    merge = _log(tmp_path / "X" / "finetune_log.jsonl")
    assert [row["step"] for row in merge] == [0, 1]
    assert merge[0]["penalty"] == 0.0 and merge[1]["penalty"] > 0
    # merge: a fresh adapter (B = 0) gives lora_A no gradient at θ₀, hence no Fisher
    assert 0 < merge[0]["fisher_zero_share"] < 1

    r = cli(
        "align",
        "--model",
        "tiny-random",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--quiet",
        "--set",
        "train.max_length=64",
        "--set",
        "lora.r=4",
        "--set",
        "retain=",
        "--out",
        "A",
    )
    assert r.code == 0, r.out + r.err
    r = _ft(cli, "C", "A", "--lora-mode", "continue")
    assert r.code == 0, r.out + r.err
    manifest = json.loads((tmp_path / "C" / "manifest.json").read_text())
    assert manifest["lora_mode"] == "continue"
    # continue (the repos' single LoRA): θ₀ is the alignment adapter, every entry has a Fisher
    assert _log(tmp_path / "C" / "finetune_log.jsonl")[0]["fisher_zero_share"] == 0.0
