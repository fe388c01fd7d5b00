"""The fine-tuning analysis probes (docs/configuration.md): alignment / harmful loss, harmful
embedding drift and per-sample gradient norms, against direct computations on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from hftguard.config import LoraOptions
from hftguard.data.inputs import collate, encode_all
from hftguard.engine import probes as analysis
from hftguard.engine.models import attach_lora
from hftguard.engine.training import attention_modules, grads_of, lm_loss
from hftguard.records import Example


def _items(tok, n, kind="refusal", prefix="how do I"):
    exs = [
        Example(f"{prefix} do thing {i} " + "word " * (i % 4), f"answer {i} " * (1 + i % 3), kind)
        for i in range(n)
    ]
    return encode_all(exs, tok, "alpaca", 64)


@pytest.fixture
def lora_lm(tiny_lm):
    model = attach_lora(tiny_lm, LoraOptions(r=4, alpha=8.0), seed=0)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def test_mean_loss_is_the_token_mean_over_the_whole_probe(tiny_tok, tiny_lm):
    items = _items(tiny_tok, 5)
    pad = tiny_tok.pad_token_id
    whole = float(lm_loss(tiny_lm, collate(items, pad)))
    # token-weighted, so the batching of the probe does not change it
    for bs in (1, 2, 5):
        assert analysis.mean_loss(tiny_lm, items, pad, "cpu", batch_size=bs) == pytest.approx(
            whole, rel=1e-5
        )
    assert analysis.mean_loss(tiny_lm, [], pad, "cpu") is None


def test_drift_arithmetic():
    start = [[torch.ones(2, 3), torch.zeros(1, 3)], [torch.zeros(4, 3), torch.zeros(4, 3)]]
    now = [[torch.ones(2, 3) * 2, torch.ones(1, 3)], [torch.zeros(4, 3), torch.zeros(4, 3)]]
    # sample 0: layer 0 ||1 (2x3)|| = sqrt(6), layer 1 ||1 (1x3)|| = sqrt(3); sample 1: 0
    expected = (6**0.5 + 3**0.5) / 2
    assert analysis.drift(start, now) == pytest.approx(expected)
    assert analysis.drift(start, start) == 0.0
    assert analysis.drift([], []) is None


def test_embeddings_are_per_layer_real_tokens_and_padding_free(tiny_tok, tiny_lm):
    items = _items(tiny_tok, 3)
    pad = tiny_tok.pad_token_id
    together = analysis.embeddings(tiny_lm, items, pad, "cpu", batch_size=3)
    alone = [analysis.embeddings(tiny_lm, [it], pad, "cpu")[0] for it in items]
    n_layers = len(attention_modules(tiny_lm))
    for it, a, b in zip(items, together, alone, strict=True):
        assert len(a) == n_layers
        assert a[0].shape[0] == len(it.input_ids)  # real tokens only
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_sample_grad_norms_match_autograd_and_leave_grads_alone(tiny_tok, lora_lm):
    items = _items(tiny_tok, 3, "harmful")
    pad = tiny_tok.pad_token_id
    params = [(n, p) for n, p in lora_lm.named_parameters() if p.requires_grad]
    norms = analysis.sample_grad_norms(lora_lm, items, params, pad, "cpu")
    for item, got in zip(items, norms, strict=True):
        g = grads_of(lm_loss(lora_lm, collate([item], pad)), params)
        want = float(torch.sqrt(sum(x.double().pow(2).sum() for x in g)))
        assert got == pytest.approx(want, rel=1e-5)
    assert all(p.grad is None for _, p in params)


def test_probe_schedule_rows_and_drift(tiny_tok, lora_lm, tmp_path):
    pad = tiny_tok.pad_token_id
    params = [(n, p) for n, p in lora_lm.named_parameters() if p.requires_grad]
    user = _items(tiny_tok, 2, "harmful") + _items(tiny_tok, 3, "benign", "please")
    probe = analysis.FinetuneProbe(
        lora_lm,
        alignment=_items(tiny_tok, 4),
        harmful=_items(tiny_tok, 2, "harmful", "tell me"),
        user=user,
        params=params,
        every=2,
        total=5,
        pad_id=pad,
        device="cpu",
        out_dir=tmp_path,
    )
    assert [s for s in range(6) if probe.due(s)] == [0, 2, 4, 5]
    for done in range(6):
        if done:
            with torch.no_grad():  # a "training step": move the adapter
                for _, p in params:
                    p.add_(0.01 * torch.randn_like(p))
        probe(done)
    rows = [json.loads(x) for x in (tmp_path / "analysis.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert rows[0]["hed"] == 0.0 and all(r["hed"] > 0 for r in rows[1:])
    assert all(r["alignment_loss"] > 0 and r["harmful_loss"] > 0 for r in rows)
    norms = [json.loads(x) for x in (tmp_path / "grad_norms.jsonl").read_text().splitlines()]
    assert [r["step"] for r in norms] == [0] * 5 + [5] * 5
    assert [r["harmful"] for r in norms[:5]] == [True, True, False, False, False]
    assert lora_lm.training  # the probe restores the training mode it found
    # a run resumed from its checkpoint at step 4: rows after 4 go, the row at 4 is kept (not
    # recomputed), and drift is still measured from the step-0 embeddings saved on disk
    resumed = analysis.FinetuneProbe(
        lora_lm,
        alignment=probe.alignment,
        harmful=probe.harmful,
        user=user,
        params=params,
        every=2,
        total=5,
        pad_id=pad,
        device="cpu",
        out_dir=tmp_path,
    )
    resumed(4)
    steps = [json.loads(x)["step"] for x in (tmp_path / "analysis.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4]
    resumed(5)
    again = [json.loads(x) for x in (tmp_path / "analysis.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again] == [0, 2, 4, 5]
    assert again[-1]["hed"] == pytest.approx(rows[-1]["hed"], rel=1e-5)  # same weights, same base
    norms = [json.loads(x) for x in (tmp_path / "grad_norms.jsonl").read_text().splitlines()]
    assert [r["step"] for r in norms] == [0] * 5 + [5] * 5
