"""RepNoise (docs/components/repnoise.md): the MMD against a direct double sum, the step's gradient
against a hand-written loss on HF's own hidden states, the wiring of the two batches, options, the
CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ft_defense_helpers import (
    alignment_examples,
    batch_of,
    context,
    encode,
    grads,
    lora_model,
    train_in_loop,
    user_examples,
    zero_grads,
)

from hftguard.builtins.defenses.repnoise import RepNoise, RepNoiseConfig, mmd
from hftguard.config import build
from hftguard.errors import ConfigError, HftguardError

# ------------------------------------------------------------------------------------------------
# The MMD


def _direct_mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """The multi-bandwidth Gaussian MMD² written out element by element, in float64."""
    rows = [r.double() for r in [*x, *y]]
    n = len(rows)
    d = [[float(((a - b) ** 2).sum()) for b in rows] for a in rows]
    s = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * n - n)

    def k(i: int, j: int) -> float:
        return sum(math.exp(-d[i][j] / (s * 2.0 ** (q - 2))) for q in range(5))

    nx = len(x)
    xs, ys = range(nx), range(nx, n)
    kxx = sum(k(i, j) for i in xs for j in xs) / nx**2
    kyy = sum(k(i, j) for i in ys for j in ys) / (n - nx) ** 2
    kxy = sum(k(i, j) for i in xs for j in ys) / (nx * (n - nx))
    return kxx + kyy - 2 * kxy


def test_mmd_matches_the_direct_double_sum() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g)
    y = 0.5 * torch.randn(3, 7, generator=g) + 1.0
    assert float(mmd(x, y)) == pytest.approx(_direct_mmd(x, y), rel=1e-5)


def test_mmd_is_zero_for_identical_sets_and_grows_with_a_shift() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g)
    assert abs(float(mmd(x, x.clone()))) < 1e-6
    near, far = float(mmd(x, x + 0.1)), float(mmd(x, x + 3.0))
    assert 0 < near < far


def test_the_bandwidth_is_not_differentiated() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(3, 4)
    (gx,) = torch.autograd.grad(mmd(x, y), x)
    # the same with the bandwidth frozen by hand: sum of Gaussians of the squared distances
    both = torch.cat([x, y])
    dist = ((both[:, None] - both[None]) ** 2).sum(-1)
    s = dist.detach().sum() / (36 - 6)
    kern = sum(torch.exp(-dist / (s * 2.0 ** (q - 2))) for q in range(5))
    ref = kern[:3, :3].mean() + kern[3:, 3:].mean() - 2 * kern[:3, 3:].mean()
    (gref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(gx, gref, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# The step's gradient against an independent computation


def _layers(model):
    return model.base_model.model.model.layers


def _hand_loss(model, align_batch, harm_batch, alpha, beta, noise):
    """CE(A) + beta * mean_l MMD(mask*mlp_l(H), mask*z_l) - alpha*log(1 + lens), with HF's
    ``output_hidden_states`` for the lens (raw states 0..L-1; the last is HF's normed one, so its
    lens term is the final logits' CE) and hooks on ``layers[l].mlp`` placed by this test."""
    ce_a = model(
        input_ids=align_batch.input_ids,
        attention_mask=align_batch.attention_mask,
        labels=align_batch.labels,
    ).loss
    acts = []
    hooks = [
        layer.mlp.register_forward_hook(lambda _m, _i, out: acts.append(out))
        for layer in _layers(model)
    ]
    try:
        out = model(
            input_ids=harm_batch.input_ids,
            attention_mask=harm_batch.attention_mask,
            labels=harm_batch.labels,
            output_hidden_states=True,
        )
    finally:
        for h in hooks:
            h.remove()
    inner = model.base_model.model
    n_layers = len(acts)
    mask = (harm_batch.labels != -100).double()[:, :, None]
    b = mask.shape[0]
    mmds = [
        mmd((a.double() * mask).reshape(b, -1), (z.double() * mask).reshape(b, -1))
        for a, z in zip(acts, noise, strict=True)
    ]
    targets = harm_batch.labels[:, 1:]
    keep = targets != -100

    def ce(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1][keep].double(), targets[keep])

    lens_terms = [out.loss, out.loss]  # final logits; the last state through the lens is the same
    lens_terms += [ce(inner.lm_head(inner.model.norm(h))) for h in out.hidden_states[:n_layers]]
    lens = sum(lens_terms) / (n_layers + 1)
    return ce_a + beta * sum(mmds) / n_layers - alpha * torch.log(1 + lens)


def _batches(tok):
    align = batch_of(tok, encode(tok, alignment_examples(3), refusal_view=False))
    harm = batch_of(tok, encode(tok, user_examples(3, 0), refusal_view=False))
    return align, harm


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.001), (0.3, 5.0), (0.0, 2.0), (2.0, 0.0)])
def test_gradient_matches_the_hand_written_loss(tiny_tok, alpha, beta):
    model = lora_model(tiny_tok)
    align, harm = _batches(tiny_tok)
    defense = RepNoise(RepNoiseConfig(alpha=alpha, beta=beta))
    torch.manual_seed(123)
    zero_grads(model)
    metrics = defense.training_step(model, align, context(model, next_batch=lambda _: harm))
    got = grads(model)
    # the noise the step drew: one randn per layer, in layer order, of the MLP output's shape
    torch.manual_seed(123)
    shape = (*harm.input_ids.shape, model.config.hidden_size)
    noise = [torch.randn(shape) for _ in _layers(model)]
    zero_grads(model)
    loss = _hand_loss(model, align, harm, alpha, beta, noise)
    loss.backward()
    want = grads(model)
    zero_grads(model)
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-5)
    total = sum(float(w.norm()) for w in want)
    assert total > 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.to(g.dtype), rtol=1e-4, atol=1e-6)


def test_the_ascent_term_raises_the_harmful_loss(tiny_tok):
    """Wiring and sign: with only the ascent term (no CE weight would remove A, so compare against
    SFT on A), a step of RepNoise leaves the harmful batch's loss higher than a step of SFT."""
    from hftguard.engine.training import lm_loss

    align, harm = _batches(tiny_tok)

    def after_step(step_fn):
        model = lora_model(tiny_tok)
        zero_grads(model)
        step_fn(model)
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.grad is not None:
                    p.sub_(0.5 * p.grad)
        with torch.no_grad():
            return float(lm_loss(model, harm))

    torch.manual_seed(0)
    sft = after_step(lambda m: lm_loss(m, align).backward())
    rep = after_step(
        lambda m: RepNoise(RepNoiseConfig(alpha=5.0, beta=0.0)).training_step(
            m, align, context(m, next_batch=lambda _: harm)
        )
    )
    assert rep > sft


def test_metrics_are_logged(tiny_tok):
    model = lora_model(tiny_tok)
    align, harm = _batches(tiny_tok)
    m = RepNoise().training_step(model, align, context(model, next_batch=lambda _: harm))
    assert set(m) == {"loss", "harmless_loss", "mmd", "harmful_lens_loss", "harmful_loss"}
    assert all(torch.is_tensor(v) and v.ndim == 0 and torch.isfinite(v) for v in m.values())


def test_data_parallel_is_refused_with_a_clear_error(tiny_tok):
    model = lora_model(tiny_tok)
    align, harm = _batches(tiny_tok)
    ctx = context(model, next_batch=lambda _: harm)
    ctx.world_size = 2
    with pytest.raises(HftguardError, match="data-parallel"):
        RepNoise().training_step(model, align, ctx)


def test_interrupted_run_resumes_identically_through_the_loop(tmp_path, tiny_tok):
    """The noise comes from the global RNG, which checkpoints restore: bit-exact resume."""
    main = encode(tiny_tok, alignment_examples(8), refusal_view=False)
    streams = {"harmful": encode(tiny_tok, user_examples(6, 0), refusal_view=False)}
    pad = tiny_tok.pad_token_id
    opts = RepNoiseConfig(alpha=0.5, beta=1.0)
    full = train_in_loop(
        tmp_path, "full", lora_model(tiny_tok), RepNoise(opts), main, streams, pad_id=pad, steps=4
    )

    class CrashAt3(RepNoise):
        def training_step(self, model, batch, ctx):
            if ctx.step == 3:
                raise KeyboardInterrupt
            return super().training_step(model, batch, ctx)

    with pytest.raises(KeyboardInterrupt):
        train_in_loop(
            tmp_path,
            "x",
            lora_model(tiny_tok),
            CrashAt3(opts),
            main,
            streams,
            pad_id=pad,
            steps=4,
            checkpoint_every=2,
        )
    resumed = train_in_loop(
        tmp_path,
        "x",
        lora_model(tiny_tok),
        RepNoise(opts),
        main,
        streams,
        pad_id=pad,
        steps=4,
        checkpoint_every=2,
        resume=True,
    )
    for n, value in full.items():
        torch.testing.assert_close(resumed[n], value, rtol=0, atol=0)


def test_options_are_validated():
    assert build(RepNoiseConfig, {}) == RepNoiseConfig()
    with pytest.raises(ConfigError, match="alpha"):
        build(RepNoiseConfig, {"alpha": -1})
    with pytest.raises(ConfigError, match="beta"):
        build(RepNoiseConfig, {"beta": -0.5})


def test_align_cli_on_tiny_random(cli, tmp_path):
    r = cli(
        "align",
        "--model",
        "tiny-random",
        "--defense",
        "repnoise",
        "--max-steps",
        "2",
        "--quiet",
        "--set",
        "train.batch_size=2",
        "--set",
        "train.max_length=64",
        "--set",
        "lora.r=4",
        "--set",
        "samples=8",
        "--set",
        "retain=",
        "--out",
        "A",
    )
    assert r.code == 0, r.out + r.err
    manifest = json.loads((tmp_path / "A" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["components"]["defense"]["name"] == "repnoise"
    assert manifest["components"]["defense"]["options"] == {"alpha": 1.0, "beta": 0.001}
    log = [json.loads(x) for x in (tmp_path / "A" / "align_log.jsonl").read_text().splitlines()]
    assert {"mmd", "harmful_lens_loss", "harmless_loss"} <= set(log[-1])
