from __future__ import annotations

import pytest
import torch

from hftguard.builtins.defenses.sft import SFTAlign
from hftguard.config import LoraOptions, TrainOptions
from hftguard.data.inputs import collate, encode_all
from hftguard.engine import training
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
    from training_helpers import train_tiny

    return train_tiny(
        tmp_path,
        tiny_tok,
        name,
        defense,
        _data(tiny_tok),
        resume=resume,
        target_modules=LoraOptions().target_modules,
        max_steps=steps,
    )[0]


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


class _TensorMetrics(SFTAlign):
    """Returns its metrics as 0-d tensors, a plain number and a non-finite gradient on demand."""

    def __init__(self, shape=(), blow_up_at=None):
        super().__init__()
        self.shape, self.blow_up_at = shape, blow_up_at

    def training_step(self, model, batch, ctx):
        loss = super().training_step(model, batch, ctx)["loss"]
        if ctx.step == self.blow_up_at:
            for _, p in ctx.params:
                p.grad.fill_(float("nan"))
        return {"loss": loss, "twice": (2 * loss).expand(self.shape), "count": 3}


def test_tensor_metrics_are_logged_as_numbers(tmp_path, tiny_tok):
    import json

    _run(tmp_path, tiny_tok, "t", _TensorMetrics(), steps=2)
    rows = [json.loads(x) for x in (tmp_path / "t" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert all(isinstance(r[k], float) for k in ("loss", "twice", "grad_norm"))
        assert r["twice"] == pytest.approx(2 * r["loss"], rel=1e-6) and r["count"] == 3


def test_a_metric_that_is_not_a_number_is_a_clear_error(tmp_path, tiny_tok):
    from hftguard.errors import HftguardError

    with pytest.raises(HftguardError, match="'twice' is a tensor of shape"):
        _run(tmp_path, tiny_tok, "t", _TensorMetrics(shape=(1, 1, 2)), steps=1)


def test_a_non_finite_gradient_stops_the_run_at_its_step(tmp_path, tiny_tok):
    from hftguard.errors import HftguardError

    with pytest.raises(HftguardError, match=r"diverged at step 1.*gradient norm is nan"):
        _run(tmp_path, tiny_tok, "t", _TensorMetrics(blow_up_at=1), steps=4)
    assert len((tmp_path / "t" / "train_log.jsonl").read_text().splitlines()) == 1


# ---- host synchronisation: a step reads nothing back from the device ----------------------------

_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


def _hftguard_reads(defense, streams, tmp_path, tiny_tok, steps=3):
    """Tensor -> Python conversions made by hftguard code inside ``training_step``, per step.

    On a GPU each one waits for the device. Conversions inside transformers (its attention-mask
    checks) are not counted: they happen with or without a defense.
    """
    import sys
    from pathlib import Path

    from torch.overrides import TorchFunctionMode

    from hftguard.console import Reporter
    from hftguard.testing import tiny_model

    package = str(Path(training.__file__).parent)
    torch_dir = str(Path(torch.__file__).parent)

    class Reads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.where: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in _READS:
                frame = sys._getframe(1)
                while frame is not None and frame.f_code.co_filename.startswith(torch_dir):
                    frame = frame.f_back
                where = frame.f_code.co_filename if frame is not None else ""
                # the sampler's seeded permutation is a CPU tensor by construction
                if where.startswith(package) and frame.f_code.co_name != "global_indices":
                    self.where.append(f"{func.__name__} at {where}:{frame.f_lineno}")
            return func(*args, **(kwargs or {}))

    per_step = []
    step = defense.training_step

    def counted(model, batch, ctx):
        with Reads() as reads:
            out = step(model, batch, ctx)
        per_step.append(reads.where)
        return out

    defense.training_step = counted
    model = _peft(tiny_model(tiny_tok, seed=0))
    view = defense.refusal_view
    harmful = [Example(f"how to steal {i}", f"sure, plan {i}", "harmful") for i in range(8)]
    data = {
        "harmful": encode_all(harmful, tiny_tok, "chat", 64, refusal_view=view),
        "alignment": _data(tiny_tok),
    }
    main = encode_all(
        [Example(f"question {i}", f"answer number {i}", "refusal") for i in range(12)],
        tiny_tok,
        "chat",
        64,
        refusal_view=view,
    )
    training.train(
        model,
        defense,
        main,
        {k: data[k] for k in streams},
        TrainOptions(lr=1e-2, max_steps=steps, batch_size=4, checkpoint_every=0),
        open_run_dir(tmp_path / "run", "align"),
        Reporter(quiet=True),
        seed=3,
        pad_id=tiny_tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return per_step


def _builtin_defenses():
    from hftguard.builtins.defenses.antibody_align import AntibodyAlign, AntibodyAlignConfig
    from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune
    from hftguard.builtins.defenses.booster import Booster
    from hftguard.builtins.defenses.lisa import Lisa, LisaOptions
    from hftguard.builtins.defenses.sft import SFTFinetune
    from hftguard.builtins.defenses.vaccine import Vaccine

    return {
        "sft": (SFTAlign, 0),
        "sft-finetune": (SFTFinetune, 0),
        "vaccine": (Vaccine, 0),
        "booster": (Booster, 0),
        "antibody": (AntibodyAlign, 0),
        "antibody-kkt": (lambda: AntibodyAlign(AntibodyAlignConfig(lambda_mode="kkt")), 0),
        "lisa": (lambda: Lisa(LisaOptions(k_align=1, k_finetune=1, proximal_warmup=0.0)), 0),
        # one read per step: the per-sample weights log and the harmful/benign group counts
        "antibody-finetune": (AntibodyFinetune, 1),
    }


@pytest.mark.parametrize("name", list(_builtin_defenses()))
def test_builtin_steps_read_nothing_back_from_the_device(name, tmp_path, tiny_tok):
    make, allowed = _builtin_defenses()[name]
    defense = make()
    per_step = _hftguard_reads(defense, defense.streams, tmp_path, tiny_tok)
    assert len(per_step) == 3
    for reads in per_step:
        assert len(reads) <= allowed, reads


# ---- clipping of the assembled gradient (docs/configuration.md, train.max_grad_norm) -----------


def _recording_adamw(monkeypatch):
    """Patch the loop's AdamW so that every step records the gradient it is about to apply."""
    seen: list[list[torch.Tensor]] = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return seen


def _clipped_by_hand(grads, max_norm):
    """torch/HF clipping written out: g * min(1, c / (||g||_global + 1e-6))."""
    total = sum(float((g.double() ** 2).sum()) for g in grads) ** 0.5
    coef = min(1.0, max_norm / (total + 1e-6)) if max_norm > 0 else 1.0
    return [g * coef for g in grads], total


class _ScaledGrad(SFTAlign):
    """Writes a fixed unit-norm direction times a per-step scale, so the pre-clip norm is known."""

    def __init__(self, scales):
        super().__init__()
        self.scales = scales
        self.written: list[list[torch.Tensor]] = []

    def training_step(self, model, batch, ctx):
        gen = torch.Generator().manual_seed(100 + ctx.step)
        raw = [torch.randn(p.shape, generator=gen) for _, p in ctx.params]
        unit = sum(float((g**2).sum()) for g in raw) ** 0.5
        grads = [g * (self.scales[ctx.step] / unit) for g in raw]
        training.set_grads(ctx.params, [g.clone() for g in grads])
        self.written.append(grads)
        return {"loss": torch.tensor(0.0)}


def _train_recorded(tmp_path, tok, model, defense, streams, max_grad_norm, steps, name="clip"):
    import json

    from hftguard.console import Reporter

    run = open_run_dir(tmp_path / name, "align")
    run.update_manifest(stage="align", status="running")
    main = encode_all(
        [Example(f"question {i}", f"answer number {i}", "refusal") for i in range(12)],
        tok,
        "chat",
        64,
    )
    opts = TrainOptions(
        lr=1e-2,
        max_steps=steps,
        batch_size=4,
        weight_decay=0.1,
        max_grad_norm=max_grad_norm,
        checkpoint_every=0,
    )
    training.train(
        model,
        defense,
        main,
        streams,
        opts,
        run,
        Reporter(quiet=True),
        seed=3,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return opts, [json.loads(x) for x in (run.path / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_the_applied_update_is_the_clipped_gradient(
    monkeypatch, tmp_path, tiny_lm, tiny_tok, max_grad_norm
):
    """With max_grad_norm = 1 a large gradient is scaled to norm 1 before AdamW (a small one is
    left alone); with 0 nothing is clipped. Checked on the gradient the optimizer sees and on the
    weights: replaying plain AdamW on the hand-clipped gradients gives the loop's weights (Adam's
    update depends on the *relative* scale of successive gradients, so it sees the clipping)."""
    real_adamw = torch.optim.AdamW
    seen = _recording_adamw(monkeypatch)
    model = _peft(tiny_lm)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    start = [p.detach().clone() for _, p in params]
    scales = [100.0, 0.3, 20.0]
    defense = _ScaledGrad(scales)
    opts, rows = _train_recorded(tmp_path, tiny_tok, model, defense, {}, max_grad_norm, 3)

    replay = [s.clone().requires_grad_(True) for s in start]
    ref = real_adamw(replay, lr=opts.lr, weight_decay=opts.weight_decay)
    for step, (written, applied) in enumerate(zip(defense.written, seen, strict=True)):
        expected, total = _clipped_by_hand(written, max_grad_norm)
        assert total == pytest.approx(scales[step], rel=1e-6)
        assert rows[step]["grad_norm"] == pytest.approx(total, rel=1e-5)  # logged before clipping
        for a, e in zip(applied, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)
        if max_grad_norm > 0 and total > max_grad_norm:
            assert sum(float((a.double() ** 2).sum()) for a in applied) ** 0.5 == pytest.approx(
                max_grad_norm, rel=1e-5
            )
        for p, e in zip(replay, expected, strict=True):
            p.grad = e.clone()
        ref.step()
    for (_, p), q in zip(params, replay, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)


def test_a_multi_pass_gradient_is_clipped_once_as_a_whole(monkeypatch, tmp_path, tiny_tok):
    """Booster's three passes assemble g_a + lam (g_h - g_h'); the loop clips that sum, with one
    global norm over all tensors, after the step, and never the passes themselves: the assembled
    gradient equals an independent plain-autograd computation, and the optimizer sees it scaled
    by one coefficient to norm 1."""
    import dataclasses

    from defense_helpers import encoded, lora_model, moved_copy, norm, ref_grads

    from hftguard.builtins.defenses.booster import Booster, BoosterConfig

    seen = _recording_adamw(monkeypatch)
    lam, alpha = 25.0, 0.1
    assembled, expected_raw = [], []

    class Recorded(Booster):
        def training_step(self, model, batch, ctx):
            h = ctx.next_batch("harmful")
            g_h = ref_grads(model, h)  # independent: explicit theta', HF loss, plain autograd
            g_hp = ref_grads(moved_copy(model, g_h, -alpha / (norm(g_h) + 1e-7)), h)
            g_a = ref_grads(model, batch)
            expected_raw.append([a + lam * (x - y) for a, x, y in zip(g_a, g_h, g_hp, strict=True)])
            out = super().training_step(
                model, batch, dataclasses.replace(ctx, next_batch=lambda _: h)
            )
            assembled.append([p.grad.detach().clone() for _, p in ctx.params])
            return out

    model = lora_model(tiny_tok)
    streams = {"harmful": encoded(tiny_tok, "harmful", 0, 6, refusal_view=False)}
    _, rows = _train_recorded(
        tmp_path, tiny_tok, model, Recorded(BoosterConfig(lam=lam, alpha=alpha)), streams, 1.0, 2
    )
    assert len(seen) == len(assembled) == 2
    for row, raw, whole, applied in zip(rows, expected_raw, assembled, seen, strict=True):
        for a, e in zip(whole, raw, strict=True):  # the passes are not clipped
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)
        expected, total = _clipped_by_hand(whole, 1.0)
        assert total > 1.2  # large enough that clipping matters
        assert row["grad_norm"] == pytest.approx(total, rel=1e-5)
        for a, e in zip(applied, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)


def test_token_nll_applies_the_head_at_response_positions_only_and_matches_the_full_forward(
    tiny_tok,
):
    """The head-at-answers path (Llama family) gives the full forward's per-token NLL and the same
    gradient; a model type outside the list takes the full forward."""
    from ft_defense_helpers import batch_of, encode, lora_model, user_examples

    from hftguard.engine import steps as gradients

    model = lora_model(tiny_tok)
    batch = batch_of(tiny_tok, encode(tiny_tok, user_examples(2, 3), refusal_view=False))
    assert gradients.decoder_and_head(model) is not None  # a PEFT-wrapped Llama
    head_calls: list[int] = []
    _, head = gradients.decoder_and_head(model)
    handle = head.register_forward_hook(lambda _m, args, _o: head_calls.append(args[0].shape[0]))
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    try:
        nll, mask = gradients.token_nll(model, batch)
    finally:
        handle.remove()
    assert head_calls == [int(mask.sum())]  # one projection, of the response positions alone
    full, full_mask = gradients.logits_nll(model(**batch.model_inputs()).logits, batch.labels)
    assert torch.equal(mask, full_mask)
    torch.testing.assert_close(nll, full, rtol=1e-5, atol=1e-6)
    assert float(nll.abs().sum()) > 0 and bool((nll[~mask] == 0).all())
    g_fast = torch.autograd.grad(nll.sum(), params)
    g_full = torch.autograd.grad(full.sum(), params)
    for a, b in zip(g_fast, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    model.get_base_model().config.model_type = "gemma2"  # soft-capped logits: not split
    assert gradients.decoder_and_head(model) is None
    nll2, _ = gradients.token_nll(model, batch)
    torch.testing.assert_close(nll2, full, rtol=1e-5, atol=1e-6)
