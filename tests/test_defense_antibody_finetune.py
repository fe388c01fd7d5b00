"""Antibody fine-tuning stage (docs/components/antibody-finetune.md): scores, weights, weighted
loss, logging, cost."""

from __future__ import annotations

import json
import math

import pytest
import torch
from ft_defense_helpers import (
    batch_of,
    context,
    encode,
    example_nll,
    grads,
    lora_model,
    user_examples,
    zero_grads,
)

from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune, AntibodyFinetuneOptions
from hftguard.config import build
from hftguard.errors import ConfigError


def _setup(tiny_tok, n_harmful=2, n_benign=4, seed=0):
    model = lora_model(tiny_tok, seed=seed)
    enc = encode(tiny_tok, user_examples(n_harmful, n_benign))
    return model, enc, batch_of(tiny_tok, enc)


def _hand_nlls(model, enc, reduction="mean"):
    """Per-sample task / refusal NLL from plain one-example forwards (no padding, no batching)."""
    with torch.no_grad():
        task, refusal = [], []
        for e in enc:
            for view, out in ((e, task), (e.refusal, refusal)):
                s, n = example_nll(model, view)
                out.append(float(s) / (n if reduction == "mean" else 1))
    return torch.tensor(task, dtype=torch.float64), torch.tensor(refusal, dtype=torch.float64)


def _hand_weighted_grad(model, enc, w):
    """Autograd of L = Σ_i w_i Σ_t ℓ_it / Σ_i w_i N_i, one example at a time."""
    zero_grads(model)
    num, den = 0.0, 0.0
    for wi, e in zip(w.tolist(), enc, strict=True):
        s, n = example_nll(model, e)
        num = num + wi * s
        den += wi * n
    (num / den).backward()
    out = grads(model)
    zero_grads(model)
    return out


def _read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_grads_close(a, b, **kw):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **kw)


def test_weights_match_hand_computation_and_are_logged(tmp_path, tiny_tok):
    model, enc, batch = _setup(tiny_tok)
    metrics = AntibodyFinetune().training_step(model, batch, context(model, output_dir=tmp_path))
    task, refusal = _hand_nlls(model, enc)
    r = refusal - task  # mean NLL(refusal) − mean NLL(task answer)
    w = torch.softmax(r, dim=0)
    rows = _read_log(tmp_path / "antibody_weights.jsonl")
    assert [row["index"] for row in rows] == list(range(len(enc)))
    assert [row["is_harmful"] for row in rows] == [e.is_harmful for e in enc]
    assert all(row["step"] == 0 for row in rows)
    got = {
        k: torch.tensor([row[k] for row in rows], dtype=torch.float64)
        for k in ("score", "weight", "task_nll", "refusal_nll")
    }
    torch.testing.assert_close(got["task_nll"], task, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["refusal_nll"], refusal, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["score"], r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["weight"], w, rtol=1e-5, atol=1e-6)
    # the logged batch metrics agree with the same weights
    harm = torch.tensor([e.is_harmful for e in enc])
    assert metrics["weight_harmful_avg"] == pytest.approx(float(w[harm].mean()), rel=1e-4)
    assert metrics["weight_benign_avg"] == pytest.approx(float(w[~harm].mean()), rel=1e-4)
    assert metrics["harmful_weight_mass"] == pytest.approx(float(w[harm].sum()), rel=1e-4)
    assert metrics["harmful_weight_mass_ratio"] == pytest.approx(
        float(w[harm].sum()) / (int(harm.sum()) / len(enc)), rel=1e-4
    )
    assert metrics["ess"] == pytest.approx(float(1 / (w**2).sum()), rel=1e-4)
    assert metrics["max_weight"] == pytest.approx(float(w.max()), rel=1e-4)
    assert metrics["score_harmful_avg"] == pytest.approx(float(r[harm].mean()), abs=1e-4)
    assert metrics["score_benign_avg"] == pytest.approx(float(r[~harm].mean()), abs=1e-4)
    # a second step appends
    AntibodyFinetune().training_step(model, batch, context(model, step=1, output_dir=tmp_path))
    assert len(_read_log(tmp_path / "antibody_weights.jsonl")) == 2 * len(enc)


def test_gradient_is_that_of_the_weighted_token_mean_loss(tiny_tok):
    model, enc, batch = _setup(tiny_tok)
    metrics = AntibodyFinetune().training_step(model, batch, context(model))
    got = grads(model)
    task, refusal = _hand_nlls(model, enc)
    expected = _hand_weighted_grad(model, enc, torch.softmax(refusal - task, dim=0))
    _assert_grads_close(got, expected, rtol=1e-4, atol=1e-6)
    assert math.isfinite(metrics["loss"]) and metrics["loss"] != metrics["loss_unweighted"]


def test_uniform_scores_give_the_plain_token_mean_loss(tiny_tok):
    model, _, batch = _setup(tiny_tok)
    # Refusal view = task view ⇒ r = 0 for every sample ⇒ w = 1/B (then L_w equals the HF loss).
    batch.refusal = batch_of(tiny_tok, encode(tiny_tok, user_examples(2, 4), refusal_view=False))
    metrics = AntibodyFinetune().training_step(model, batch, context(model))
    got = grads(model)
    zero_grads(model)
    plain = context(model).loss_fn(model, batch)
    plain.backward()
    _assert_grads_close(got, grads(model), rtol=1e-5, atol=1e-7)
    assert metrics["max_weight"] == pytest.approx(1 / len(batch))
    assert metrics["ess"] == pytest.approx(len(batch))
    assert metrics["loss"] == pytest.approx(float(metrics["loss_unweighted"]), rel=1e-6)


@pytest.mark.parametrize("tau", [0.25, 4.0])
def test_temperature_scales_the_scores(tmp_path, tiny_tok, tau):
    model, enc, batch = _setup(tiny_tok)
    AntibodyFinetune(AntibodyFinetuneOptions(tau=tau)).training_step(
        model, batch, context(model, output_dir=tmp_path)
    )
    got = grads(model)
    rows = _read_log(tmp_path / "antibody_weights.jsonl")
    r = torch.tensor([row["score"] for row in rows], dtype=torch.float64)
    w = torch.tensor([row["weight"] for row in rows], dtype=torch.float64)
    torch.testing.assert_close(w, torch.softmax(r / tau, dim=0), rtol=1e-5, atol=1e-7)
    task, refusal = _hand_nlls(model, enc)
    torch.testing.assert_close(r, refusal - task, rtol=1e-5, atol=1e-5)  # τ leaves scores alone
    expected = _hand_weighted_grad(model, enc, torch.softmax((refusal - task) / tau, dim=0))
    _assert_grads_close(got, expected, rtol=1e-4, atol=1e-6)


def test_sum_reduction_uses_summed_log_likelihoods(tmp_path, tiny_tok):
    model, enc, batch = _setup(tiny_tok)
    opts = build(AntibodyFinetuneOptions, {"score_reduction": "sum"})
    AntibodyFinetune(opts).training_step(model, batch, context(model, output_dir=tmp_path))
    got_grads = grads(model)
    rows = _read_log(tmp_path / "antibody_weights.jsonl")
    task, refusal = _hand_nlls(model, enc, reduction="sum")
    got = torch.tensor([row["score"] for row in rows], dtype=torch.float64)
    torch.testing.assert_close(got, refusal - task, rtol=1e-5, atol=1e-4)  # paper Eq. 7
    mean_task, mean_refusal = _hand_nlls(model, enc)
    assert not torch.allclose(got, mean_refusal - mean_task, atol=1e-2)
    expected = _hand_weighted_grad(model, enc, torch.softmax(refusal - task, dim=0))
    _assert_grads_close(got_grads, expected, rtol=1e-4, atol=1e-6)


def test_harmful_flags_are_never_used_for_the_gradient(tiny_tok):
    model, _, batch = _setup(tiny_tok)
    AntibodyFinetune().training_step(model, batch, context(model))
    before = grads(model)
    zero_grads(model)
    batch.is_harmful = ~batch.is_harmful
    batch.refusal.is_harmful = ~batch.refusal.is_harmful
    AntibodyFinetune().training_step(model, batch, context(model))
    for a, b in zip(before, grads(model), strict=True):
        assert torch.equal(a, b)  # flipping the flags changes nothing


def _forward_calls(model, batch, options=None):
    """(grad enabled, batch rows, first input row) of every model forward during one step."""
    from hftguard.engine.steps import decoder_and_head

    calls: list[tuple[bool, int, list[int]]] = []
    # the module every forward runs through: the decoder when the loss applies the head itself
    runs = (decoder_and_head(model) or (model,))[0]
    handle = runs.register_forward_hook(
        lambda _m, args, kwargs, _out: calls.append(
            (
                torch.is_grad_enabled(),
                kwargs["input_ids"].shape[0],
                kwargs["input_ids"][0].tolist(),
            )
        ),
        with_kwargs=True,
    )
    try:
        AntibodyFinetune(options).training_step(model, batch, context(model))
    finally:
        handle.remove()
    return calls


def test_scoring_reuses_the_training_forward_then_one_no_grad_refusal_forward(tiny_tok):
    model, _, batch = _setup(tiny_tok)
    calls = _forward_calls(model, batch)
    # the training forward on the task view, then the refusal view without gradient: F+B + F
    assert [(g, n) for g, n, _ in calls] == [(True, len(batch)), (False, len(batch))]
    assert calls[0][2] == batch.input_ids[0].tolist()
    assert calls[1][2] == batch.refusal.input_ids[0].tolist()
    assert AntibodyFinetune.passes == 1.5


def test_separate_scoring_is_one_no_grad_2b_forward_then_one_grad_forward(tiny_tok):
    model, _, batch = _setup(tiny_tok)
    calls = _forward_calls(model, batch, AntibodyFinetuneOptions(score_pass="separate"))
    assert [(g, n) for g, n, _ in calls] == [(False, 2 * len(batch)), (True, len(batch))]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reused_scores_give_the_weights_and_gradient_of_separate_scoring(
    tmp_path, tiny_tok, reduction
):
    """The reuse is an optimisation only: same weights, same gradient as the official scheme."""
    results = {}
    for mode in ("reuse", "separate"):
        model, _, batch = _setup(tiny_tok, n_harmful=3, n_benign=5)
        out = tmp_path / mode
        out.mkdir()
        options = AntibodyFinetuneOptions(score_pass=mode, score_reduction=reduction)
        metrics = AntibodyFinetune(options).training_step(
            model, batch, context(model, output_dir=out)
        )
        results[mode] = (grads(model), _read_log(out / "antibody_weights.jsonl"), metrics)
    (g_reuse, rows_reuse, m_reuse), (g_sep, rows_sep, m_sep) = results["reuse"], results["separate"]
    _assert_grads_close(g_reuse, g_sep, rtol=1e-5, atol=1e-7)
    for key in ("weight", "score", "task_nll", "refusal_nll"):
        a = torch.tensor([r[key] for r in rows_reuse], dtype=torch.float64)
        b = torch.tensor([r[key] for r in rows_sep], dtype=torch.float64)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float(m_reuse["loss"]) == pytest.approx(float(m_sep["loss"]), rel=1e-5)


def test_active_dropout_falls_back_to_a_separate_no_grad_scoring_pass(tiny_tok):
    """With dropout the training forward is noisy, so auto scores in its own eval-mode pass."""
    model, _, batch = _setup(tiny_tok)
    model.add_module("_probe_dropout", torch.nn.Dropout(0.1))  # any active dropout counts
    calls = _forward_calls(model, batch)
    assert [(g, n) for g, n, _ in calls] == [(False, 2 * len(batch)), (True, len(batch))]
    model.eval()  # ... but not when the model is not training
    calls = _forward_calls(model, batch)
    assert [(g, n) for g, n, _ in calls] == [(True, len(batch)), (False, len(batch))]


def test_metrics_omit_an_empty_group_and_stay_finite(tiny_tok):
    model = lora_model(tiny_tok)
    batch = batch_of(tiny_tok, encode(tiny_tok, user_examples(0, 4)))
    metrics = AntibodyFinetune(AntibodyFinetuneOptions(log_samples=False)).training_step(
        model, batch, context(model)
    )
    assert "weight_harmful_avg" not in metrics and "score_harmful_avg" not in metrics
    assert "harmful_weight_mass_ratio" not in metrics
    assert metrics["harmful_weight_mass"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values())


def test_options_are_validated():
    with pytest.raises(ConfigError, match="score_pass"):
        build(AntibodyFinetuneOptions, {"score_pass": "twice"})
    with pytest.raises(ConfigError, match="score_reduction") as info:
        build(AntibodyFinetuneOptions, {"score_reduction": "median"})
    assert info.value.hint
    with pytest.raises(ConfigError, match="tau"):
        build(AntibodyFinetuneOptions, {"tau": 0})


def test_refusal_aligned_model_gives_harmful_samples_less_weight(tiny_tok):
    """The paper's claim: after safety alignment harmful samples weigh less."""
    from hftguard.builtins.datasets.safety_refusals import SafetyRefusals
    from hftguard.builtins.datasets.sentiment import Sentiment
    from hftguard.context import DataContext
    from hftguard.engine.training import lm_loss
    from hftguard.testing import tiny_model

    # A briefly "aligned" model: refusals for harmful prompts, and (as an instruction model
    # would) answers for benign task prompts; disjoint from the user data scored below.
    refusals = list(SafetyRefusals().load("train", DataContext()))[:64]
    task = list(Sentiment().load("train", DataContext()))[-64:]
    data = encode(
        tiny_tok, [x for pair in zip(refusals, task, strict=True) for x in pair], refusal_view=False
    )
    model = tiny_model(tiny_tok, seed=0)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(30):
        start = (step * 16) % len(data)
        loss = lm_loss(model, batch_of(tiny_tok, data[start : start + 16]))
        optim.zero_grad()
        loss.backward()
        optim.step()

    user = batch_of(tiny_tok, encode(tiny_tok, user_examples(8, 8)))  # held-out harmful prompts
    metrics = AntibodyFinetune(AntibodyFinetuneOptions(log_samples=False)).training_step(
        model, user, context(model)
    )
    assert metrics["score_harmful_avg"] < 0 < metrics["score_benign_avg"]
    assert metrics["weight_harmful_avg"] < metrics["weight_benign_avg"]
    assert metrics["harmful_weight_mass_ratio"] < 0.5


def test_two_steps_through_the_training_loop(tmp_path, tiny_tok):
    from ft_defense_helpers import MAX_LEN

    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.runs import open_run_dir

    model = lora_model(tiny_tok)
    run = open_run_dir(tmp_path / "ft", "finetune")
    opts = TrainOptions(lr=1e-3, max_steps=2, batch_size=4, max_length=MAX_LEN)
    result = training.train(
        model,
        AntibodyFinetune(),
        encode(tiny_tok, user_examples(3, 5)),
        {},
        opts,
        run,
        Reporter(quiet=True),
        seed=0,
        pad_id=tiny_tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert result.steps == 2 and math.isfinite(result.final_loss)
    log = _read_log(run.path / "train_log.jsonl")
    assert [row["step"] for row in log] == [0, 1]
    assert all(math.isfinite(row["loss_unweighted"]) for row in log)
    rows = _read_log(run.path / "antibody_weights.jsonl")
    assert [row["step"] for row in rows] == [0] * 4 + [1] * 4


class _CrashAt3(AntibodyFinetune):
    def training_step(self, model, batch, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


def test_resume_keeps_one_weight_line_per_sample_and_step(tmp_path, tiny_tok):
    from collections import Counter

    from ft_defense_helpers import MAX_LEN

    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.runs import open_run_dir

    main = encode(tiny_tok, user_examples(3, 5))

    def run(defense, resume=False):
        run_dir = open_run_dir(tmp_path / "ft", "finetune", resume=resume)
        if not resume:
            run_dir.update_manifest(stage="finetune", status="running")
        opts = TrainOptions(
            lr=1e-3, max_steps=5, batch_size=4, max_length=MAX_LEN, checkpoint_every=2
        )
        training.train(
            lora_model(tiny_tok),
            defense,
            main,
            {},
            opts,
            run_dir,
            Reporter(quiet=True),
            seed=0,
            pad_id=tiny_tok.pad_token_id,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )

    with pytest.raises(KeyboardInterrupt):
        run(_CrashAt3())  # steps 0-2 logged, checkpoint after step 1
    run(AntibodyFinetune(), resume=True)  # redoes step 2: its old lines must go
    rows = _read_log(tmp_path / "ft" / "antibody_weights.jsonl")
    assert Counter(row["step"] for row in rows) == dict.fromkeys(range(5), 4)
