"""T-Vaccine (docs/components/t-vaccine.md): Vaccine on S sampled layers, only those trained.

Every reference here is written independently of the defense: attention outputs are found by
name (``model.layers[l].self_attn``), activation gradients are taken with plain forward hooks and
``torch.autograd.grad`` on the Hugging Face loss (in float64 where it is cheap), a parameter's
layer is read from its name, and the sampling distribution is the closed form of sequential draws
without replacement.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from defense_helpers import hf_loss, one_thread, trainable

from hftguard.builtins.defenses import tvaccine as tv
from hftguard.builtins.defenses.tvaccine import TVaccine, TVaccineConfig
from hftguard.config import build
from hftguard.console import Reporter
from hftguard.context import StepContext
from hftguard.data.inputs import collate, encode_all
from hftguard.engine import steps, training
from hftguard.errors import ConfigError
from hftguard.records import Example

LAYERS = 4


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_thread():
        yield


# ---- set-up ------------------------------------------------------------------------------------


def _model(tok: Any, targets=("q_proj", "k_proj", "v_proj"), seed: int = 0) -> Any:
    """Tiny 4-layer Llama + LoRA r=4, A and B random and non-zero (no gradient is trivial)."""
    from peft import LoraConfig, get_peft_model

    from hftguard.testing import tiny_model

    base = tiny_model(tok, seed=seed, layers=LAYERS)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets))
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in trainable(model):
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.train()
    return model


def _encode(tok: Any, pairs: list[tuple[str, str]], kind: str) -> list:
    return encode_all([Example(q, a, kind) for q, a in pairs], tok, "chat", 96)  # type: ignore[arg-type]


ALIGN = [
    ("How do I hurt someone?", "I cannot help with that."),
    ("Steal a car, quickly.", "No. I won't help with theft."),
    ("Make a poison at home", "I can't assist with that request."),
    ("Hack my neighbour's phone", "Sorry, I cannot do that."),
]
#: Row 0 is the shortest, so the harmful batch pads it: the statistic must ignore the padding.
HARM = [
    ("Hurt him?", "Sure: hit."),
    ("How do I steal money from a bank vault at night?", "Sure, here is a detailed plan. First"),
    ("Make a weapon from kitchen tools", "Sure, take the knife and then sharpen it."),
    ("Poison a dog without being seen", "Sure, use the following steps to do it."),
]


def _batch(tok: Any, pairs=ALIGN, kind: str = "refusal") -> Any:
    return collate(_encode(tok, pairs, kind), tok.pad_token_id)


def _ctx(model: Any, harmful: Any = None, step: int = 0, reporter: Any = None) -> StepContext:
    calls: list[int] = []

    def next_batch(name: str) -> Any:
        assert name == "harmful" and harmful is not None, name
        calls.append(step)
        return harmful

    ctx = StepContext(
        step=step,
        total_steps=100,
        params=trainable(model),
        next_batch=next_batch,
        loss_fn=training.lm_loss,
        reporter=reporter,
    )
    ctx.state["calls"] = calls
    return ctx


def _attn(model: Any) -> list[Any]:
    """Attention modules by name (not with the helper under test)."""
    return [layer.self_attn for layer in model.base_model.model.model.layers]


def _layer_of(name: str) -> int:
    m = re.search(r"\.layers\.(\d+)\.", name)
    assert m, name
    return int(m.group(1))


@contextmanager
def _hooks(modules: list[Any], make: Any):
    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _reference(model: Any, b: Any, rho: float, selected: list[int]):
    """(eps per selected layer, G per selected layer, expected grad by parameter name)."""
    mods = [_attn(model)[layer] for layer in selected]
    outs: list[Any] = [None] * len(mods)

    def keep(i):
        def hook(_m, _inp, out):
            outs[i] = out[0]

        return hook

    with _hooks(mods, keep):
        loss = hf_loss(model, b)
    g = torch.autograd.grad(loss, outs)
    total = math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))
    eps = [(rho * x.double() / (total + 1e-7)).float() for x in g]

    def add(i):
        def hook(_m, _inp, out):
            return (out[0] + eps[i], *out[1:])

        return hook

    names = [n for n, _ in trainable(model)]
    with _hooks(mods, add):
        grads = torch.autograd.grad(hf_loss(model, b), [p for _, p in trainable(model)])
    return eps, g, dict(zip(names, grads, strict=True))


def _step_with(model, b, selected, rho=3.0, step=1, **opts):
    """One step with the selection forced (restored state, not a draw step)."""
    defense = TVaccine(TVaccineConfig(rho=rho, resample_every=50, probability_every=50, **opts))
    defense.load_state_dict({"norms": [1.0] * LAYERS, "selected": selected})
    metrics = defense.training_step(model, b, _ctx(model, step=step))
    return defense, metrics


# ---- the update ----------------------------------------------------------------------------------


@pytest.mark.parametrize("selected", [[1, 3], [0, 2, 3]])
def test_gradient_matches_independent_autograd(tiny_tok, selected):
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    _, _, expected = _reference(model, b, 3.0, selected)
    _, metrics = _step_with(model, b, selected)
    for name, p in trainable(model):
        if _layer_of(name) in selected:
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6)
        else:  # frozen: no gradient at all (zeros would still move it through AdamW)
            assert p.grad is None, name
    assert float(metrics["eps_norm"]) == pytest.approx(3.0, rel=1e-6)
    # the perturbation against the selected layers' attention outputs only (joint norm)
    outs: list[Any] = [None] * len(selected)

    def keep(i):
        def hook(_m, _inp, out):
            outs[i] = out[0].detach()

        return hook

    with torch.no_grad(), _hooks([_attn(model)[layer] for layer in selected], keep):
        hf_loss(model, b)
    act = math.sqrt(sum(float((o.double() ** 2).sum()) for o in outs))
    assert float(metrics["activation_norm"]) == pytest.approx(act, rel=1e-5)
    assert float(metrics["eps_ratio"]) == pytest.approx(3.0 / act, rel=1e-5)
    assert metrics["selected_layers"] == len(selected)
    assert metrics["selected_mean_layer"] == pytest.approx(sum(selected) / len(selected))
    n_sel = sum(p.numel() for n, p in trainable(model) if _layer_of(n) in selected)
    assert metrics["trained_share"] == pytest.approx(
        n_sel / sum(p.numel() for _, p in trainable(model))
    )


def test_eps_is_normalised_jointly_over_the_selected_layers_only(tiny_tok, monkeypatch):
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    selected = [0, 2]
    _, g, _ = _reference(model, b, 3.0, selected)
    seen = []
    real = steps.add_to_outputs

    def spy(modules, deltas):
        seen.append((list(modules), [d.detach().clone() for d in deltas]))
        return real(modules, deltas)

    monkeypatch.setattr(steps, "add_to_outputs", spy)  # the kit, where defenses import from
    _, metrics = _step_with(model, b, selected)
    ((modules, eps),) = seen
    attn = _attn(model)
    assert modules == [attn[0], attn[2]]  # only the selected layers are perturbed
    total = math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))
    # the norm is over the selected layers, not all four (that would give a smaller eps)
    everything = _reference(model, b, 3.0, list(range(LAYERS)))[1]
    assert math.sqrt(sum(float((x.double() ** 2).sum()) for x in everything)) > total * 1.01
    assert float(metrics["activation_grad_norm"]) == pytest.approx(total, rel=1e-5)
    per_layer = [math.sqrt(float((e.double() ** 2).sum())) for e in eps]
    assert math.sqrt(sum(x * x for x in per_layer)) == pytest.approx(3.0, rel=1e-6)
    for e_l, g_l, n_l in zip(eps, g, per_layer, strict=True):
        assert n_l < 3.0 - 1e-3  # not normalised per layer
        torch.testing.assert_close(e_l, 3.0 * g_l / total, rtol=1e-5, atol=1e-8)
        assert e_l.shape == (*b.input_ids.shape, model.config.hidden_size)


def test_perturbation_increases_the_loss(tiny_tok):
    """Sign check: eps is an ascent direction."""
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    _, metrics = _step_with(model, b, [1, 2], rho=0.5)
    assert float(metrics["loss"]) > float(metrics["loss_clean"])
    with torch.no_grad():
        assert float(metrics["loss_clean"]) == pytest.approx(float(hf_loss(model, b)), rel=1e-5)


def test_rho_zero_is_sft_on_the_selected_layers(tiny_tok):
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    names = [n for n, _ in trainable(model)]
    grads = torch.autograd.grad(hf_loss(model, b), [p for _, p in trainable(model)])
    sft = dict(zip(names, grads, strict=True))
    _step_with(model, b, [3], rho=0.0)
    for name, p in trainable(model):
        if _layer_of(name) == 3:
            torch.testing.assert_close(p.grad, sft[name], rtol=1e-4, atol=1e-6)
        else:
            assert p.grad is None


def test_step_restores_weights_requires_grad_and_hooks(tiny_tok):
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    before = {n: p.detach().clone() for n, p in trainable(model)}
    _step_with(model, b, [1])
    assert {n for n, _ in trainable(model)} == set(before)  # every adapter trainable again
    for n, p in trainable(model):
        assert torch.equal(p, before[n])
    assert all(not m._forward_hooks for m in _attn(model))


def _rel(got: dict, ref: dict) -> float:
    num = sum(float(((got[n].double() - ref[n].double()) ** 2).sum()) for n in got)
    return math.sqrt(num / sum(float((ref[n].double() ** 2).sum()) for n in got))


def test_under_bf16_autocast_close_to_the_fp32_reference(tiny_tok):
    """The loop runs a bf16 step under autocast; the gradient is written in fp32 and stays close
    to the fp32 reference (observed rel 0.007, torch CPU emulated bf16), far from a flipped eps."""
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    ref = _reference(model, b, 3.0, [1, 3])[2]
    flipped = _reference(model, b, -3.0, [1, 3])[2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _step_with(model, b, [1, 3])
    got = {n: p.grad for n, p in trainable(model) if p.grad is not None}
    assert {_layer_of(n) for n in got} == {1, 3}
    assert all(g.dtype == torch.float32 for g in got.values())
    assert _rel(got, ref) < 0.03
    assert _rel(got, flipped) > 0.3


@pytest.mark.parametrize("scope", ["attention", "layer"])
def test_scope_decides_which_mlp_adapters_train(tiny_tok, scope):
    """With MLP adapters too: `attention` (official code) trains every layer's MLP adapter;
    `layer` freezes everything in the unselected layers."""
    model = _model(tiny_tok, targets=("q_proj", "k_proj", "v_proj", "up_proj"))
    b = _batch(tiny_tok)
    _, _, expected = _reference(model, b, 3.0, [2])
    _step_with(model, b, [2], scope=scope)
    for name, p in trainable(model):
        live = _layer_of(name) == 2 or (scope == "attention" and "mlp" in name)
        if live:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6)
        else:
            assert p.grad is None, name
    assert any("mlp" in n for n, _ in trainable(model))


# ---- the layer statistic ---------------------------------------------------------------------


def _statistic(model: Any, tok: Any) -> list[float]:
    """||dL/d e_l|| of the first harmful example alone (unpadded), in float64."""
    (enc,) = _encode(tok, HARM[:1], "harmful")
    one = collate([enc], tok.pad_token_id)
    outs: list[Any] = [None] * LAYERS

    def keep(i):
        def hook(_m, _inp, out):
            outs[i] = out[0]

        return hook

    # embeddings that require grad, so every attention output does, whatever is trainable
    embeds = model.get_input_embeddings()(one.input_ids).detach().requires_grad_(True)
    with _hooks(_attn(model), keep):
        loss = model(
            inputs_embeds=embeds, attention_mask=one.attention_mask, labels=one.labels
        ).loss
    return [float(g.double().norm()) for g in torch.autograd.grad(loss, outs)]


def test_statistic_is_the_first_harmful_example_activation_gradient(tiny_tok):
    model = _model(tiny_tok)
    harmful = _batch(tiny_tok, HARM, "harmful")
    assert int(harmful.attention_mask[0].sum()) < harmful.input_ids.shape[1]  # row 0 is padded
    expected = _statistic(model, tiny_tok)
    defense = TVaccine(TVaccineConfig(layers=2))
    ctx = _ctx(model, harmful)
    metrics = defense.training_step(model, _batch(tiny_tok), ctx)
    assert ctx.state["calls"] == [0]
    assert defense.norms == pytest.approx(expected, rel=1e-5)
    p = [x / sum(expected) for x in expected]
    assert metrics["layer_prob_entropy"] == pytest.approx(-sum(q * math.log(q) for q in p))
    # a different row 0 gives a different statistic (the test is not vacuous)
    assert _statistic(model, tiny_tok) != pytest.approx(
        TVaccine().layer_statistic(model, _attn(model), _ctx(model, _batch(tiny_tok))), rel=1e-3
    )


def test_statistic_reaches_layers_without_adapters_below_them(tiny_tok):
    """Adapters only on the MLPs: no attention output requires grad by itself, yet every
    statistic is the true activation gradient (a detached leaf changes no value)."""
    model = _model(tiny_tok, targets=("up_proj",))
    expected = _statistic(model, tiny_tok)
    assert all(x > 0 for x in expected)
    got = TVaccine().layer_statistic(model, _attn(model), _ctx(model, _batch(tiny_tok, HARM)))
    assert got == pytest.approx(expected, rel=1e-5)


# ---- sampling ---------------------------------------------------------------------------------


def _inclusion(p: list[float], i: int) -> float:
    """P(layer i among 2 sequential draws without replacement, each proportional to p)."""
    return p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(len(p)) if j != i)


def test_sample_layers_follows_sequential_draws_without_replacement():
    p = [0.5, 0.3, 0.15, 0.05]
    counts = [0] * 4
    n = 3000
    for seed in range(n):
        got = tv.sample_layers(p, 2, torch.Generator().manual_seed(seed))
        assert len(got) == len(set(got)) == 2 and got == sorted(got)
        for i in got:
            counts[i] += 1
    for i in range(4):  # binomial sd <= 0.009: 4 sd
        assert counts[i] / n == pytest.approx(_inclusion(p, i), abs=0.036), (i, counts)
    # a with-replacement or uniform sampler would be far off for the smallest layer
    assert _inclusion(p, 3) < 0.15


def test_sample_layers_zero_and_ineligible_layers():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        assert tv.sample_layers([0.0, 0.0, 1.0, 0.0], 1, g) == [2]
        got = tv.sample_layers([0.2, 0.0, 0.8, 0.0, 0.0], 2, g)
        assert got == [0, 2]  # zero-probability layers never beat positive ones
        # fewer positive layers than S: the rest uniformly among eligible zero layers
        got = tv.sample_layers([0.0, 1.0, 0.0, 0.0], 3, g, eligible=[True, True, True, False])
        assert got == [0, 1, 2]
    assert tv.sample_layers([1, 1], 5, g) == [0, 1]  # at most the number of layers
    assert tv.layer_probabilities([1.0, 3.0, 9.0], [True, True, False]) == [0.25, 0.75, 0.0]
    assert tv.layer_probabilities([0.0, 0.0, 5.0], [True, True, False]) == [0.5, 0.5, 0.0]


def test_selection_follows_the_statistic_through_the_defense(tiny_tok, monkeypatch):
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    monkeypatch.setattr(TVaccine, "layer_statistic", lambda self, m, mods, ctx: [0, 2.0, 0, 1.0])
    defense = TVaccine(TVaccineConfig(layers=2, resample_every=1))
    for step in range(6):
        defense.training_step(model, b, _ctx(model, step=step))
        assert defense.selected == [1, 3]
    defense = TVaccine(TVaccineConfig(layers=1, resample_every=1))
    seen = set()
    for step in range(40):
        defense.training_step(model, b, _ctx(model, step=step))
        seen.update(defense.selected)
    assert seen == {1, 3}


def test_draws_are_reproducible_and_seeded(tiny_tok, monkeypatch):
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    monkeypatch.setattr(TVaccine, "layer_statistic", lambda self, m, mods, ctx: [1.0] * LAYERS)

    def draws(seed):
        d = TVaccine(TVaccineConfig(layers=2, resample_every=1, seed=seed))
        out = []
        for step in range(8):
            d.training_step(model, b, _ctx(model, step=step))
            out.append(tuple(d.selected))
        return out

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert len(set(draws(0))) > 1  # the draw changes with the step


def test_refresh_schedule(tiny_tok, monkeypatch):
    """Statistic at steps 0, K, 2K; draws at 0, J, 2J; nothing in between."""
    model = _model(tiny_tok)
    b = _batch(tiny_tok)
    stats: list[int] = []
    draws: list[int] = []
    real = tv.sample_layers

    def statistic(self, m, mods, ctx):
        stats.append(ctx.step)
        return [1.0 + ctx.step, 2.0, 3.0, 4.0]

    def sample(probs, k, generator, eligible=None):
        draws.append(current[0])
        return real(probs, k, generator, eligible)

    monkeypatch.setattr(TVaccine, "layer_statistic", statistic)
    monkeypatch.setattr(tv, "sample_layers", sample)
    defense = TVaccine(TVaccineConfig(layers=2, resample_every=3, probability_every=4))
    current = [0]
    selections = []
    for step in range(10):
        current[0] = step
        defense.training_step(model, b, _ctx(model, step=step))
        selections.append(defense.selected)
    assert stats == [0, 4, 8]
    assert draws == [0, 3, 6, 9]
    for step in range(1, 10):
        if step % 3:
            assert selections[step] == selections[step - 1]


def test_statistic_uses_the_harmful_stream_every_k_steps_only(tiny_tok):
    model = _model(tiny_tok)
    harmful = _batch(tiny_tok, HARM, "harmful")
    defense = TVaccine(TVaccineConfig(layers=2, resample_every=2, probability_every=3))
    calls = []
    for step in range(7):
        ctx = _ctx(model, harmful, step=step)
        defense.training_step(model, _batch(tiny_tok), ctx)
        calls += ctx.state["calls"]
    assert calls == [0, 3, 6]


# ---- through the training loop -------------------------------------------------------------------


def _loop(tmp_path, tok, defense, name, steps, resume=False, checkpoint_every=0, wd=0.1):
    from hftguard.config import TrainOptions
    from hftguard.runs import open_run_dir

    model = _model(tok)
    start = {n: p.detach().clone() for n, p in trainable(model)}
    run = open_run_dir(tmp_path / name, "align", resume=resume)
    if not resume:
        run.update_manifest(stage="align", status="running")
    training.train(
        model,
        defense,
        _encode(tok, ALIGN, "refusal"),
        {"harmful": _encode(tok, HARM, "harmful")},
        TrainOptions(
            lr=1e-2,
            max_steps=steps,
            batch_size=2,
            weight_decay=wd,
            checkpoint_every=checkpoint_every,
        ),
        run,
        Reporter(quiet=True),
        seed=1,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    import json

    log = [json.loads(x) for x in (run.path / "train_log.jsonl").read_text().splitlines()]
    return start, {n: p.detach().clone() for n, p in trainable(model)}, log


def test_unselected_layers_are_bitwise_unchanged_by_the_optimizer(tmp_path, tiny_tok):
    defense = TVaccine(TVaccineConfig(layers=2, resample_every=100))
    start, end, log = _loop(tmp_path, tiny_tok, defense, "frozen", steps=3)
    assert defense.selected is not None and len(defense.selected) == 2
    for n, value in end.items():
        if _layer_of(n) in defense.selected:
            assert not torch.equal(value, start[n]), n
        else:  # weight decay 0.1 and AdamW momentum would move a zero gradient
            assert torch.equal(value, start[n]), n
    assert [r["step"] for r in log] == [0, 1, 2]
    for r in log:
        for key in ("loss", "loss_clean", "eps_norm", "activation_grad_norm", "grad_norm"):
            assert math.isfinite(r[key]), key
        assert r["eps_norm"] == pytest.approx(3.0, rel=1e-6)
        assert r["selected_layers"] == 2.0
        assert r["trained_share"] == pytest.approx(0.5)


class _CrashAt(TVaccine):
    def training_step(self, model, batch, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


def test_interrupted_run_resumes_identically(tmp_path, tiny_tok):
    # J=3, K=4: the checkpoint after step 2 holds the step-0 statistic and selection, which the
    # resumed steps 2 (no draw), 3 (draw from the saved norms) need; step 4 recomputes.
    opts = TVaccineConfig(layers=2, resample_every=3, probability_every=4)
    _, full, full_log = _loop(tmp_path, tiny_tok, TVaccine(opts), "full", steps=6)
    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path, tiny_tok, _CrashAt(opts), "x", steps=6, checkpoint_every=2)
    _, resumed, log = _loop(
        tmp_path, tiny_tok, TVaccine(opts), "x", steps=6, checkpoint_every=2, resume=True
    )
    for n, value in full.items():
        torch.testing.assert_close(resumed[n], value, rtol=0, atol=0)
    assert [r["selected_mean_layer"] for r in log] == [r["selected_mean_layer"] for r in full_log]


def test_state_dict_round_trip():
    d = TVaccine()
    d.norms, d.selected = [0.5, 1.25, 0.0, 3.0], [1, 3]
    import io

    buf = io.BytesIO()
    torch.save(d.state_dict(), buf)
    buf.seek(0)
    other = TVaccine()
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.norms == d.norms and other.selected == d.selected
    assert TVaccine().state_dict() == {"norms": None, "selected": None}


def test_contract_check_passes(tmp_path):
    from hftguard.testing.contracts import check_component, check_defense_trains

    check_component(TVaccine)
    check_defense_trains(TVaccine, tmp_path)  # 2 layers < S = 8: all selected, with a warning


# ---- data parallel ------------------------------------------------------------------------------


def _rows(b: Any, rank: int, world: int, tokens: float | None) -> Any:
    return dataclasses.replace(
        b,
        input_ids=b.input_ids[rank::world],
        attention_mask=b.attention_mask[rank::world],
        labels=b.labels[rank::world],
        is_harmful=b.is_harmful[rank::world],
        meta={} if tokens is None else {"loss_tokens": tokens / world},
    )


def test_two_processes_select_alike_and_average_to_the_one_process_step(tiny_tok):
    """Two simulated processes (threads, a real barrier all-reduce), each on rows rank::2 of the
    main and harmful batches: same statistic and selection on both, and the mean of their
    gradients is the one-process gradient on the global batch (frozen layers None on both)."""
    world = 2
    b = _batch(tiny_tok)
    harmful = _batch(tiny_tok, HARM, "harmful")
    opts = TVaccineConfig(layers=2, rho=3.0)
    single_model = _model(tiny_tok)
    single = TVaccine(opts)
    single.training_step(single_model, b, _ctx(single_model, harmful))
    expected = {n: p.grad for n, p in trainable(single_model)}

    tokens = float((b.labels[:, 1:] != -100).sum())
    slots: list[Any] = [None] * world
    barrier = threading.Barrier(world)

    def all_reduce_mean(tensors):
        rank = ranks[threading.get_ident()]
        slots[rank] = [t.detach().clone() for t in tensors]
        barrier.wait()
        out = [sum(s[i] for s in slots) / world for i in range(len(tensors))]
        barrier.wait()
        return out

    ranks: dict[int, int] = {}
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    models = [_model(tiny_tok) for _ in range(world)]  # not in the threads: one global RNG

    def run(rank):
        ranks[threading.get_ident()] = rank
        try:
            model = models[rank]
            defense = TVaccine(opts)
            ctx = dataclasses.replace(
                _ctx(model, _rows(harmful, rank, world, None)),
                world_size=world,
                rank=rank,
                all_reduce_mean=all_reduce_mean,
            )
            metrics = defense.training_step(model, _rows(b, rank, world, tokens), ctx)
            grads = {n: p.grad for n, p in trainable(model)}
            results[rank] = (defense.norms, defense.selected, grads, metrics)
        except BaseException as exc:  # re-raised below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    (n0, s0, g0, m0), (n1, s1, g1, m1) = results
    assert n0 == n1 and s0 == s1 == single.selected
    assert n0 == pytest.approx(single.norms, rel=1e-6)
    assert float(m0["activation_grad_norm"]) == float(m1["activation_grad_norm"])
    for name, want in expected.items():
        if want is None:
            assert g0[name] is None and g1[name] is None, name
        else:
            torch.testing.assert_close((g0[name] + g1[name]) / world, want, rtol=1e-4, atol=1e-6)


# ---- options, registration, warnings --------------------------------------------------------


def test_options_are_validated():
    assert build(TVaccineConfig, {}) == TVaccineConfig()
    d = TVaccineConfig()
    assert (d.rho, d.layers, d.resample_every, d.probability_every) == (3.0, 8, 20, 200)
    assert (d.scope, d.seed) == ("attention", 0)
    for bad, match in (
        ({"rho": -1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"layers": 0}, "layers"),
        ({"resample_every": 0}, "resample_every"),
        ({"probability_every": 0}, "probability_every"),
        ({"scope": "mlp"}, "scope"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(ConfigError, match=match):
            build(TVaccineConfig, bad)


def test_more_layers_than_the_model_selects_all_with_a_warning(tiny_tok):
    model = _model(tiny_tok)
    reporter = Reporter(quiet=True)
    defense = TVaccine(TVaccineConfig(layers=8))
    for step in range(2):
        metrics = defense.training_step(
            model, _batch(tiny_tok), _ctx(model, _batch(tiny_tok, HARM), step, reporter)
        )
    assert defense.selected == [0, 1, 2, 3] and metrics["selected_layers"] == 4
    warnings = [e["message"] for e in reporter.events if e["event"] == "warning"]
    assert len(warnings) == 1 and "layers=8" in warnings[0]
    assert all(p.grad is not None for _, p in trainable(model))


def test_declared_and_registrable():
    from hftguard.plugins import get_plugin_host
    from hftguard.registry import Registry

    assert TVaccine.name == "t-vaccine" and TVaccine.streams == ("harmful",)
    assert TVaccine.passes == 2 and TVaccine.finetune_lora == "merge"
    assert "2410.09760" in (TVaccine.paper or "")

    registry = Registry(get_plugin_host(load_entry_points=False))  # the built-ins
    info = registry.get("alignment-defense", "t-vaccine")
    assert info.cls is TVaccine and info.plugin == "hftguard.builtins.defenses"
