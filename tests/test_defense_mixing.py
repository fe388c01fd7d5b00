"""Safety-data mixing (docs/components/mixing.md): ``mixing`` appends the first m alignment
examples to the user data (the run records it, the user's n/p stay), ``mixing-joint`` adds
λ·ℓ(4 alignment examples) to every step (its gradient against the Hugging Face loss, data-parallel
rows)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from ft_defense_helpers import (
    alignment_examples,
    batch_of,
    context,
    encode,
    grads,
    lora_model,
    user_examples,
    zero_grads,
)

from hftguard.builtins.defenses.mixing import (
    Mixing,
    MixingJoint,
    MixingJointOptions,
    MixingOptions,
)
from hftguard.config import build
from hftguard.context import PlanContext
from hftguard.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------------------
# mixing: data mixing


def test_appends_the_first_m_alignment_examples_in_order():
    data = alignment_examples(8)
    assert Mixing(MixingOptions(m=3)).appended_user_data({"alignment": data}) == data[:3]
    assert Mixing(MixingOptions(m=8)).appended_user_data({"alignment": data}) == data
    with pytest.raises(DataError, match="only 8"):
        Mixing(MixingOptions(m=9)).appended_user_data({"alignment": data})


def test_other_defenses_append_nothing(registry):
    for info in registry.components("finetune-defense"):
        if info.name != "mixing":
            defense = registry.instantiate("finetune-defense", info.name)
            assert defense.appended_user_data({"alignment": alignment_examples(4)}) == []


def test_mixing_steps_are_sft_steps(tiny_tok):
    from hftguard.engine.training import lm_loss

    model = lora_model(tiny_tok)
    user = batch_of(tiny_tok, encode(tiny_tok, user_examples(2, 3), refusal_view=False))
    metrics = Mixing().training_step(model, user, context(model))
    got = grads(model)
    zero_grads(model)
    lm_loss(model, user).backward()
    for a, b in zip(got, grads(model), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert set(metrics) == {"loss"}


def _ft(cli, out, defense, *extra):
    return cli(
        "attack-finetune",
        "--model",
        "tiny-random",
        "--defense",
        defense,
        "--task",
        "sentiment",
        "--harmful-ratio",
        "0.2",
        "--samples",
        "16",
        "--quiet",
        "--set",
        "train.max_length=64",
        "--set",
        "lora.r=4",
        "--out",
        out,
        *extra,
    )


def test_the_run_records_the_growth_and_keeps_the_user_bookkeeping(cli, tmp_path):
    # one epoch at batch 4: SFT trains 16 user examples in 4 steps; mixing 16 + 5 in 6 steps
    common = ("--epochs", "1", "--batch-size", "4")
    r = _ft(cli, "sft", "sft", *common)
    assert r.code == 0, r.out + r.err
    r = _ft(cli, "mix", "mixing", *common, "--set", "defense_options.m=5")
    assert r.code == 0, r.out + r.err
    sft = json.loads((tmp_path / "sft" / "manifest.json").read_text())
    mix = json.loads((tmp_path / "mix" / "manifest.json").read_text())
    assert mix["composition"] == sft["composition"]  # n, p, which examples: as asked
    assert mix["composition"]["n"] == 16 and mix["composition"]["n_harmful"] == 3
    main = mix["data"]["main"]
    assert main["count"] == 16 and main["trained_count"] == 21
    assert main["user_sha256"] == sft["data"]["main"]["sha256"]  # the same user data
    assert main["sha256"] != main["user_sha256"]  # what was trained on also holds the refusals
    appended = main["appended"]
    assert appended["by"] == "mixing" and appended["count"] == 5
    assert appended["spec"] == "safety-refusals" and len(appended["sha256"]) == 64
    assert "appended" not in sft["data"]["main"]
    assert (sft["training"]["steps"], mix["training"]["steps"]) == (4, 6)
    assert mix["components"]["defense"]["options"] == {"m": 5}


def test_attack_finetune_cli_on_tiny_random(cli, tmp_path):
    r = _ft(cli, "X", "mixing", "--max-steps", "2", "--batch-size", "4")
    assert r.code == 0, r.out + r.err
    manifest = json.loads((tmp_path / "X" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["data"]["main"]["appended"]["count"] == 100  # the default m
    assert manifest["training"]["steps"] == 2


def test_too_few_alignment_examples_is_a_data_error(cli, tmp_path):
    from cli_helpers import assert_error

    r = _ft(cli, "X", "mixing", "--max-steps", "1", "--set", "defense_options.m=100000")
    assert_error(r, 2, "m = 100000", "defense_options.m")


def test_mixing_options_are_validated():
    assert build(MixingOptions, {}).m == 100
    with pytest.raises(ConfigError, match="m = 0"):
        build(MixingOptions, {"m": 0})


# ------------------------------------------------------------------------------------------------
# mixing-joint: joint loss


def _hf_loss(model, b):
    return model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss


def _head(b, k):
    return dataclasses.replace(
        b,
        input_ids=b.input_ids[:k],
        attention_mask=b.attention_mask[:k],
        labels=b.labels[:k],
        is_harmful=b.is_harmful[:k],
    )


def _joint_setup(tiny_tok):
    model = lora_model(tiny_tok)
    user = batch_of(tiny_tok, encode(tiny_tok, user_examples(2, 4), refusal_view=False))
    # alignment answers of different lengths, so the 4-row head has its own token count
    exs = alignment_examples(6)
    exs = [dataclasses.replace(e, response=e.response + " No." * i) for i, e in enumerate(exs)]
    guide = batch_of(tiny_tok, encode(tiny_tok, exs, refusal_view=False))
    return model, user, guide


def _hand_joint_grads(model, user, guide, lam):
    zero_grads(model)
    (_hf_loss(model, user) + lam * _hf_loss(model, guide)).backward()
    g = grads(model)
    zero_grads(model)
    return g


@pytest.mark.parametrize(("k", "rows"), [(4, 4), (0, 6), (2, 2)])
def test_joint_gradient_is_user_loss_plus_lambda_alignment_loss(tiny_tok, k, rows):
    lam = 0.7
    model, user, guide = _joint_setup(tiny_tok)
    defense = MixingJoint(MixingJointOptions(lam=lam, guide_batch_size=k))
    drawn = []

    def stream(name):
        drawn.append(name)
        return guide

    metrics = defense.training_step(model, user, context(model, next_batch=stream))
    got = grads(model)
    assert drawn == ["alignment"]  # one alignment batch per step
    expected = _hand_joint_grads(model, user, _head(guide, rows), lam)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert float(metrics["loss"]) == pytest.approx(float(_hf_loss(model, user)), rel=1e-5)
        align = float(_hf_loss(model, _head(guide, rows)))
    assert float(metrics["alignment_loss"]) == pytest.approx(align, rel=1e-5)
    # a test that would catch a missing λ, a sign flip or the wrong rows
    for wrong in (
        _hand_joint_grads(model, user, _head(guide, rows), 1.0),
        _hand_joint_grads(model, user, _head(guide, rows), -lam),
        _hand_joint_grads(model, user, _head(guide, 6 if rows != 6 else 4), lam),
    ):
        assert any(
            not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(got, wrong, strict=True)
        )


def test_data_parallel_rows_and_normalisation_give_the_global_step(tiny_tok):
    """Two simulated processes (rows rank::2 of both batches, the sampler's loss_tokens, the
    all-reduce of the token count) average to the one-process gradient."""
    model, user, guide = _joint_setup(tiny_tok)
    defense = MixingJoint(MixingJointOptions(lam=0.7, guide_batch_size=3))
    defense.training_step(model, user, context(model, next_batch=lambda _: guide))
    single = grads(model)

    def shard(b, rank):  # as EpochSampler shards a global batch
        return dataclasses.replace(
            b,
            input_ids=b.input_ids[rank::2],
            attention_mask=b.attention_mask[rank::2],
            labels=b.labels[rank::2],
            is_harmful=b.is_harmful[rank::2],
            meta={"loss_tokens": float((b.labels[:, 1:] != -100).sum()) / 2},
        )

    head_tokens = float((guide.labels[:3, 1:] != -100).sum())
    total = None
    for rank in range(2):
        zero_grads(model)
        ctx = dataclasses.replace(
            context(model, next_batch=lambda _, r=rank: shard(guide, r)),
            world_size=2,
            rank=rank,
            all_reduce_mean=lambda ts: [torch.full_like(ts[0], head_tokens / 2)],
        )
        defense.training_step(model, shard(user, rank), ctx)
        g = grads(model)
        total = g if total is None else [a + b for a, b in zip(total, g, strict=True)]
    assert total is not None
    for a, b in zip([t / 2 for t in total], single, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_plan_refuses_a_guide_batch_larger_than_the_stream_batch():
    MixingJoint().plan(PlanContext(total_steps=10, batch_size=4))
    MixingJoint(MixingJointOptions(guide_batch_size=0)).plan(PlanContext(10, batch_size=1))
    with pytest.raises(ConfigError, match="guide_batch_size = 4") as err:
        MixingJoint().plan(PlanContext(total_steps=10, batch_size=2))
    assert "<= 2" in (err.value.hint or "")


def test_mixing_joint_options_are_validated():
    assert build(MixingJointOptions, {}) == MixingJointOptions(lam=0.1, guide_batch_size=4)
    with pytest.raises(ConfigError, match="lam"):
        build(MixingJointOptions, {"lam": -0.1})
    with pytest.raises(ConfigError, match="guide_batch_size"):
        build(MixingJointOptions, {"guide_batch_size": -1})


def test_mixing_joint_cli_on_tiny_random(cli, tmp_path):
    r = _ft(cli, "X", "mixing-joint", "--max-steps", "2", "--batch-size", "4")
    assert r.code == 0, r.out + r.err
    log = [json.loads(x) for x in (tmp_path / "X" / "finetune_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [0, 1]
    assert all(row["alignment_loss"] > 0 for row in log)
    manifest = json.loads((tmp_path / "X" / "manifest.json").read_text())
    assert "appended" not in manifest["data"]["main"]
