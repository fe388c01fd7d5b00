from __future__ import annotations

import pytest
import torch

from hftguard import training
from hftguard.builtins.defenses.sft import SFTAlign
from hftguard.config import LoraOptions, TrainOptions
from hftguard.data import collate, encode_all
from hftguard.records import Example
from hftguard.runs import open_run_dir


def _peft(tiny_lm, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lo = LoraOptions(r=4, alpha=8.0)
    return get_peft_model(
        tiny_lm, LoraConfig(r=lo.r, lora_alpha=lo.alpha, target_modules=lo.target_modules)
    )


def _data(tok, n=12):
    exs = [Example(f"question {i}", f"answer number {i}", "refusal") for i in range(n)]
    return encode_all(exs, tok, "chat", 64)


def test_grads_of_matches_backward(tiny_lm, tiny_tok):
    model = _peft(tiny_lm)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    batch = collate(_data(tiny_tok, 4), tiny_tok.pad_token_id)
    # make LoRA B non-zero so both A and B get gradients
    with torch.no_grad():
        for _, p in params:
            p.add_(0.01 * torch.randn_like(p))
    _, gs = training.loss_and_grads(model, batch, params)
    training.lm_loss(model, batch).backward()
    for (_, p), g in zip(params, gs, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_perturbed_restores_exactly(tiny_lm):
    model = _peft(tiny_lm)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    before = [p.detach().clone() for _, p in params]
    direction = [torch.randn_like(p) for _, p in params]
    with training.perturbed(params, direction, 0.37):
        torch.testing.assert_close(params[0][1], before[0] + 0.37 * direction[0])
    for (_, p), b in zip(params, before, strict=True):
        assert torch.equal(p, b)


def test_norm_dot_cosine():
    a = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    b = [torch.tensor([1.0, 1.0]), torch.tensor([[0.0]])]
    assert training.global_norm(a) == pytest.approx(5.0)
    assert training.dot(a, b) == pytest.approx(3.0)
    assert training.cosine(a, b) == pytest.approx(3.0 / (5.0 * 2**0.5))


def test_lr_schedules_follow_hf_semantics():
    const = training.lr_lambda("constant", warmup=5, total=10)
    assert [const(s) for s in range(3)] == [1.0, 1.0, 1.0]  # constant ignores warm-up
    cos = training.lr_lambda("cosine", warmup=2, total=10)
    assert cos(0) == pytest.approx(0.5) and cos(2) == pytest.approx(1.0) and cos(10) < 1e-6


def _run(tmp_path, tiny_tok, name, defense, resume=False, steps=6):
    from hftguard.console import Reporter
    from hftguard.testing import tiny_model

    model = _peft(tiny_model(tiny_tok, seed=0))
    run = open_run_dir(tmp_path / name, "align", resume=resume)
    if not resume:
        run.update_manifest(stage="align", status="running")
    opts = TrainOptions(lr=1e-2, max_steps=steps, batch_size=4, checkpoint_every=2)
    training.train(
        model,
        defense,
        _data(tiny_tok),
        {},
        opts,
        run,
        Reporter(quiet=True),
        seed=3,
        pad_id=tiny_tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class _Crash(SFTAlign):
    calls = 0

    def training_step(self, model, batch, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


def test_resume_after_interrupt_gives_identical_weights(tmp_path, tiny_tok):
    full = _run(tmp_path, tiny_tok, "full", SFTAlign())
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tiny_tok, "crash", _Crash())
    assert (tmp_path / "crash" / "checkpoints" / "step-0000002" / "state.json").exists()
    resumed = _run(tmp_path, tiny_tok, "crash", SFTAlign(), resume=True)
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)
    log = (tmp_path / "crash" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 6  # steps 0,1 from the first attempt + 2..5 after the resume


def test_training_changes_lora_only(tmp_path, tiny_lm, tiny_tok):
    from hftguard.console import Reporter

    model = _peft(tiny_lm)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    run = open_run_dir(tmp_path / "r", "align")
    training.train(
        model,
        SFTAlign(),
        _data(tiny_tok),
        {},
        TrainOptions(max_steps=3, batch_size=4),
        run,
        Reporter(quiet=True),
        seed=0,
        pad_id=tiny_tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, lora[n]) or "lora_A" in n  # B moves from zero at step 1
        else:
            assert torch.equal(p, frozen[n])
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_attention_modules_found_generically(tiny_lm):
    mods = training.attention_modules(tiny_lm)
    assert len(mods) == tiny_lm.config.num_hidden_layers
    assert all("Attention" in type(m).__name__ for m in mods)
