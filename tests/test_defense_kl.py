"""KL to the aligned model (docs/components/kl.md): the gradient of CE + λ·KL against a hand-written
KL on a frozen copy of the starting model, the teacher, resume, options, the CLI."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from ft_defense_helpers import (
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

from hftguard.builtins.defenses.kl import KL, KLOptions
from hftguard.config import build
from hftguard.errors import ConfigError


def _setup(tiny_tok, **opts):
    """A LoRA model, a user batch, a KL defense set up at the model's start (θ₀), and a frozen
    deep copy of that starting model (the independent teacher)."""
    model = lora_model(tiny_tok)
    user = batch_of(tiny_tok, encode(tiny_tok, user_examples(2, 3), refusal_view=False))
    defense = KL(KLOptions(**opts))
    defense.setup(context(model))
    teacher = copy.deepcopy(model).eval()
    return defense, model, user, teacher


def _move(model, user, steps=2):
    """Plain SGD steps on the user loss, so θ ≠ θ₀ (otherwise KL and its gradient are 0)."""
    from hftguard.engine.training import lm_loss

    for _ in range(steps):
        zero_grads(model)
        lm_loss(model, user).backward()
        sgd_step(model, lr=2.0)


def _hand_kl(student_logits, teacher_logits, positions, direction):
    """mean over ``positions`` of Σ_v p (log p − log q), written out with softmax/log."""
    s = torch.softmax(student_logits.double(), dim=-1)
    t = torch.softmax(teacher_logits.double(), dim=-1)
    p, q = (t, s) if direction == "teacher-student" else (s, t)
    per_position = (p * (torch.log(p) - torch.log(q))).sum(dim=-1)
    return (per_position * positions).sum() / positions.sum()


def _hand_grads(model, teacher, b, lam, direction, tokens):
    """Autograd of the HF causal-LM loss + λ·(hand KL) on an independent teacher copy."""
    zero_grads(model)
    with torch.no_grad():
        t_logits = teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels)
    if tokens == "response":
        positions = (b.labels[:, 1:] != -100).double()
    else:
        positions = b.attention_mask[:, 1:].double()
    kl = _hand_kl(out.logits[:, :-1], t_logits[:, :-1], positions, direction)
    (out.loss + lam * kl).backward()
    g = grads(model)
    zero_grads(model)
    return g, float(out.loss.detach()), float(kl.detach())


@pytest.mark.parametrize("direction", ["teacher-student", "student-teacher"])
@pytest.mark.parametrize("tokens", ["all", "response"])
@pytest.mark.parametrize("head_at_rows", [True, False])
def test_gradient_is_that_of_ce_plus_lambda_kl(
    tiny_tok, direction, tokens, head_at_rows, monkeypatch
):
    """``head_at_rows``: the LM head runs at the KL's positions only (Llama-like models), or the
    full forward's logits are taken there (any other architecture)."""
    lam = 3.0
    defense, model, user, teacher = _setup(tiny_tok, lam=lam, direction=direction, tokens=tokens)
    assert not user.attention_mask.bool().all()  # padding, which 'all' leaves out, is there
    _move(model, user)
    import hftguard.engine.steps as steps

    assert steps.decoder_and_head(model) is not None  # the tiny model can take the split path
    if not head_at_rows:
        monkeypatch.setattr(steps, "decoder_and_head", lambda m: None)
    zero_grads(model)
    metrics = defense.training_step(model, user, context(model, step=2))
    got = grads(model)
    expected, ce, kl = _hand_grads(model, teacher, user, lam, direction, tokens)
    assert kl > 1e-4  # the KL term is really exercised
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert float(metrics["loss"]) == pytest.approx(ce, rel=1e-5)
    # fp32 against the float64 hand computation: a KL of ~3e-4 is a difference of log-probs of
    # size ~5, so fp32's rounding leaves ~1e-7 of it (3.5e-8, i.e. 1.1e-4 relative, seen on an
    # AVX-512 CPU); a wrong normalisation or λ moves it by a factor
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert float(metrics["kl_term"]) == pytest.approx(lam * kl, rel=1e-4, abs=lam * 1e-7)
    # the test would see a wrong direction, a missing λ or a sign flip in the KL term
    other = "student-teacher" if direction == "teacher-student" else "teacher-student"
    for wrong in (
        _hand_grads(model, teacher, user, lam, other, tokens)[0],
        _hand_grads(model, teacher, user, 1.0, direction, tokens)[0],
        _hand_grads(model, teacher, user, -lam, direction, tokens)[0],
    ):
        assert any(
            not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(got, wrong, strict=True)
        )


def _rel(a, b):
    num = sum(float(((x.double() - y.double()) ** 2).sum()) for x, y in zip(a, b, strict=True))
    return (num / sum(float((y.double() ** 2).sum()) for y in b)) ** 0.5


def test_under_bf16_autocast_the_teacher_is_theta0_and_the_gradient_fp32(tiny_tok):
    """The loop runs a step in one autocast region; the teacher forward at θ₀ must not leave
    cached bf16 copies of θ₀ for the student forward (``parameters_at`` clears them)."""
    defense, model, user, teacher = _setup(tiny_tok, lam=3.0)
    _move(model, user)
    zero_grads(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metrics = defense.training_step(model, user, context(model, step=2))
    got = grads(model)
    assert all(g.dtype == torch.float32 for g in got)
    expected, _, kl = _hand_grads(model, teacher, user, 3.0, "teacher-student", "all")
    sft_only = _hand_grads(model, teacher, user, 0.0, "teacher-student", "all")[0]
    # observed (torch 2.13, AVX2 CPU, emulated bf16): rel 0.008 to the fp32 reference, 0.22 to
    # the gradient without the KL term (what a student forward on stale θ₀ casts would give)
    assert _rel(got, expected) < 0.03
    assert _rel(got, sft_only) > 0.1
    assert float(metrics["kl"]) == pytest.approx(kl, rel=0.1)


@pytest.mark.parametrize("tokens", ["all", "response"])
def test_data_parallel_shards_average_to_the_global_step(tiny_tok, tokens):
    """Two simulated processes (rows rank::2, the sampler's loss_tokens, the all-reduce of the
    KL's position count) average to the one-process gradient."""
    import dataclasses

    defense, model, user, _ = _setup(tiny_tok, lam=3.0, tokens=tokens)
    _move(model, user)
    zero_grads(model)
    defense.training_step(model, user, context(model, step=2))
    single = grads(model)
    ce_tokens = float((user.labels[:, 1:] != -100).sum())
    positions = ce_tokens if tokens == "response" else float(user.attention_mask[:, 1:].sum())
    total = None
    for rank in range(2):
        shard = dataclasses.replace(
            user,
            input_ids=user.input_ids[rank::2],
            attention_mask=user.attention_mask[rank::2],
            labels=user.labels[rank::2],
            is_harmful=user.is_harmful[rank::2],
            meta={"loss_tokens": ce_tokens / 2},
        )
        ctx = dataclasses.replace(
            context(model, step=2),
            world_size=2,
            rank=rank,
            all_reduce_mean=lambda ts: [torch.full_like(ts[0], positions / 2)],
        )
        zero_grads(model)
        defense.training_step(model, shard, ctx)
        g = grads(model)
        total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
    assert total is not None
    for a, b in zip([t / 2 for t in total], single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_masks_differ_on_prompt_tokens(tiny_tok):
    """'all' averages over every non-pad position, 'response' over the CE's tokens only."""
    res = {}
    for tokens in ("all", "response"):
        defense, model, user, _ = _setup(tiny_tok, tokens=tokens)
        _move(model, user)
        res[tokens] = float(defense.training_step(model, user, context(model, step=2))["kl"])
    assert res["all"] != pytest.approx(res["response"], rel=1e-3)


def test_at_the_start_kl_is_zero_and_the_step_is_sft(tiny_tok):
    from hftguard.engine.training import lm_loss

    defense, model, user, _ = _setup(tiny_tok, lam=5.0)
    metrics = defense.training_step(model, user, context(model))
    got = grads(model)
    zero_grads(model)
    lm_loss(model, user).backward()
    for a, b in zip(got, grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-6)


def test_the_teacher_stays_at_theta0_and_the_weights_are_restored(tiny_tok):
    defense, model, user, teacher = _setup(tiny_tok)
    initial = {n: p.detach().clone() for n, p in trainable(teacher)}
    _move(model, user)
    before = {n: p.detach().clone() for n, p in trainable(model)}
    for _ in range(2):
        zero_grads(model)
        defense.training_step(model, user, context(model, step=2))
    for n, p in trainable(model):  # the teacher forward put θ back exactly
        assert torch.equal(p.detach(), before[n])
        assert torch.equal(defense.theta0[n], initial[n])
    assert model.training  # the eval-mode teacher forward restores train mode


def test_state_dict_round_trip(tiny_tok):
    defense, model, user, _ = _setup(tiny_tok)
    buf = io.BytesIO()  # as the loop does: torch.save, then load with weights_only=True
    torch.save(defense.state_dict(), buf)
    buf.seek(0)
    restored = KL()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    _move(model, user)
    restored.setup(context(model, step=2))  # a resumed run keeps θ₀, not the current weights
    for n, value in defense.theta0.items():
        assert torch.equal(restored.theta0[n], value)


class _CrashAt3(KL):
    def training_step(self, model, batch, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


def test_interrupted_run_resumes_identically_through_the_loop(tmp_path, tiny_tok):
    main = encode(tiny_tok, user_examples(2, 6), refusal_view=False)
    pad = tiny_tok.pad_token_id
    opts = KLOptions(lam=2.0)
    full = train_in_loop(
        tmp_path, "full", lora_model(tiny_tok), KL(opts), main, {}, pad_id=pad, steps=6
    )
    with pytest.raises(KeyboardInterrupt):
        train_in_loop(
            tmp_path,
            "x",
            lora_model(tiny_tok),
            _CrashAt3(opts),
            main,
            {},
            pad_id=pad,
            steps=6,
            checkpoint_every=2,
        )
    resumed = train_in_loop(
        tmp_path,
        "x",
        lora_model(tiny_tok),
        KL(opts),
        main,
        {},
        pad_id=pad,
        steps=6,
        checkpoint_every=2,
        resume=True,
    )
    for n, value in full.items():
        torch.testing.assert_close(resumed[n], value, rtol=0, atol=0)


def test_options_are_validated():
    assert build(KLOptions, {}) == KLOptions()
    with pytest.raises(ConfigError, match="lam"):
        build(KLOptions, {"lam": -1})
    with pytest.raises(ConfigError, match="direction"):
        build(KLOptions, {"direction": "forward"})
    with pytest.raises(ConfigError, match="tokens"):
        build(KLOptions, {"tokens": "prompt"})


def test_attack_finetune_cli_on_tiny_random(cli, tmp_path):
    r = cli(
        "attack-finetune",
        "--model",
        "tiny-random",
        "--defense",
        "kl",
        "--task",
        "sentiment",
        "--harmful-ratio",
        "0.2",
        "--samples",
        "16",
        "--max-steps",
        "2",
        "--quiet",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.max_length=64",
        "--set",
        "lora.r=4",
        "--out",
        "X",
    )
    assert r.code == 0, r.out + r.err
    manifest = json.loads((tmp_path / "X" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["components"]["defense"]["name"] == "kl"
    assert manifest["components"]["defense"]["options"] == {
        "lam": 0.1,
        "direction": "teacher-student",
        "tokens": "all",
    }
    log = [json.loads(x) for x in (tmp_path / "X" / "finetune_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [0, 1]
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-9)  # step 0: θ = θ₀
    assert all(row["kl"] >= 0 for row in log)
