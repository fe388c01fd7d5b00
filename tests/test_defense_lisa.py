"""Lisa (docs/components/lisa.md): bi-state schedule, anchors, proximal gradient, warm-up,
resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
from ft_defense_helpers import (
    MAX_LEN,
    batch_of,
    context,
    encode,
    grads,
    lora_model,
    sgd_step,
    trainable,
    user_examples,
    zero_grads,
)

from hftguard.builtins.defenses.lisa import Lisa, LisaOptions
from hftguard.config import build
from hftguard.errors import ConfigError
from hftguard.records import Example


def _alignment_encoded(tok, n=8):
    exs = [
        Example(f"How do I hurt someone, case {i}?", "I cannot help with that.", "refusal")
        for i in range(n)
    ]
    return encode(tok, exs, refusal_view=False)


class _Stream:
    """A deterministic, resumable stand-in for the loop's alignment stream; records each draw."""

    def __init__(self, tok, position=0):
        self.items = _alignment_encoded(tok)
        self.tok = tok
        self.position = position
        self.draws: list[int] = []

    def __call__(self, name):
        assert name == "alignment"
        i = self.position % (len(self.items) // 2)
        self.position += 1
        self.draws.append(self.position)
        return batch_of(self.tok, self.items[2 * i : 2 * i + 2])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in trainable(model)}


def _run_steps(defense, model, user, stream, steps, start=0, total=12, on_step=None):
    """Drive the defense like the loop does (grad=None, step, SGD); return per-step metrics."""
    out = []
    for step in range(start, start + steps):
        zero_grads(model)
        drawn = len(stream.draws)
        ctx = context(model, step=step, total_steps=total, next_batch=stream)
        if on_step:
            on_step(step, ctx)
        metrics = defense.training_step(model, user, ctx)
        metrics["aligned_batch"] = len(stream.draws) > drawn
        out.append(metrics)
        sgd_step(model)
    return out


def _setup(tiny_tok, **opts):
    model = lora_model(tiny_tok)
    user = batch_of(tiny_tok, encode(tiny_tok, user_examples(1, 3), refusal_view=False))
    defense = Lisa(LisaOptions(**opts))
    stream = _Stream(tiny_tok)
    defense.setup(context(model, total_steps=12, next_batch=stream))
    return defense, model, user, stream


def test_schedule_and_anchors_at_each_switch(tiny_tok):
    defense, model, user, stream = _setup(tiny_tok, k_align=2, k_finetune=3, rho=0.01)
    initial = _snapshot(model)
    starts: dict[int, dict[str, torch.Tensor]] = {}
    anchors: dict[int, tuple[dict, dict]] = {}

    def record(step, _ctx):  # weights entering each step; anchors as the step sees them
        starts[step] = _snapshot(model)

    def after(step, _ctx):
        anchors[step] = (dict(defense.anchor_align), dict(defense.anchor_finetune))

    metrics = []
    for step in range(12):
        metrics += _run_steps(defense, model, user, stream, 1, start=step, on_step=record)
        after(step, None)
    aligned = [s for s, m in enumerate(metrics) if m["aligned_batch"]]
    assert aligned == [0, 1, 5, 6, 10, 11]  # K1=2 alignment, K2=3 fine-tune, alternating
    assert [m["state"] for m in metrics] == [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]
    assert [s for s, m in enumerate(metrics) if "switch_drift" in m] == [2, 5, 7, 10]

    def same(a, b):
        return all(torch.equal(a[n], b[n]) for n in b)

    # both anchors start as the initial weights
    assert same(anchors[0][0], initial) and same(anchors[0][1], initial)
    # end of alignment state (weights entering step 2 / 7) becomes the fine-tune anchor
    assert same(anchors[2][0], starts[2]) and same(anchors[2][1], initial)
    assert same(anchors[7][0], starts[7]) and same(anchors[7][1], starts[5])
    # end of fine-tune state (weights entering step 5 / 10) becomes the alignment anchor
    assert same(anchors[5][1], starts[5]) and same(anchors[5][0], starts[2])
    assert same(anchors[10][1], starts[10]) and same(anchors[10][0], starts[7])
    # drift is measured to the anchor of the current state
    d = sum(float((starts[3][n] - starts[2][n]).pow(2).sum()) for n in initial)
    assert metrics[3]["drift"] == pytest.approx(d, rel=1e-5)


def test_without_alignment_steps_it_only_fine_tunes(tiny_tok):
    defense, model, user, stream = _setup(tiny_tok, k_align=0, k_finetune=3)
    metrics = _run_steps(defense, model, user, stream, 7)
    assert not any(m["aligned_batch"] for m in metrics)
    assert {m["state"] for m in metrics} == {1.0}


def _hand_loss_grads(model, batch, anchor, rho):
    """Autograd of CE + (ρ/2) Σ_p ‖θ_p − anchor_p‖²."""
    from hftguard.engine.training import lm_loss

    zero_grads(model)
    prox = sum(((p - anchor[n]) ** 2).sum() for n, p in trainable(model))
    (lm_loss(model, batch) + 0.5 * rho * prox).backward()
    out = grads(model)
    zero_grads(model)
    return out


@pytest.mark.parametrize("state_steps", [1, 3])  # step 1: alignment state; step 3: fine-tune
def test_proximal_gradient_matches_autograd(tiny_tok, state_steps):
    rho = 0.7
    defense, model, user, stream = _setup(
        tiny_tok, k_align=2, k_finetune=3, rho=rho, proximal_warmup=0.0
    )
    _run_steps(defense, model, user, stream, state_steps)  # move θ away from the anchors
    anchor = dict(defense._anchor())  # no switch happens at this step
    zero_grads(model)
    before = stream.position
    metrics = defense.training_step(
        model, user, context(model, step=state_steps, total_steps=12, next_batch=stream)
    )
    got = grads(model)
    batch = user
    if stream.position > before:  # alignment state: the same alignment batch again
        stream.position = before
        batch = stream("alignment")
    expected = _hand_loss_grads(model, batch, anchor, rho)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    drift = sum(float((p.detach() - anchor[n]).pow(2).sum()) for n, p in trainable(model))
    assert drift > 0
    assert metrics["drift"] == pytest.approx(drift, rel=1e-5)
    assert metrics["proximal"] == pytest.approx(0.5 * rho * drift, rel=1e-5)


def test_no_proximal_term_before_warmup(tiny_tok):
    from hftguard.engine.training import lm_loss

    defense, model, user, stream = _setup(
        tiny_tok, k_align=0, k_finetune=100, rho=5.0, proximal_warmup=0.5
    )
    _run_steps(defense, model, user, stream, 2, total=10)  # θ ≠ anchor from now on
    for step, expect_prox in ((4, False), (5, True)):  # warm-up ends at 0.5 × 10 steps
        zero_grads(model)
        metrics = defense.training_step(model, user, context(model, step=step, total_steps=10))
        got = grads(model)
        zero_grads(model)
        lm_loss(model, user).backward()
        plain = grads(model)
        differs = any(not torch.allclose(a, b) for a, b in zip(got, plain, strict=True))
        assert differs is expect_prox
        assert (float(metrics["proximal"]) > 0) is expect_prox  # metrics may be 0-d tensors
        assert metrics["drift"] > 0


def test_state_dict_round_trip_resumes_identically(tiny_tok):
    opts = {"k_align": 2, "k_finetune": 3, "rho": 0.5, "proximal_warmup": 0.0}
    ref, model_a, user, stream_a = _setup(tiny_tok, **opts)
    full = _run_steps(ref, model_a, user, stream_a, 9)

    first, model_b, _, stream_b = _setup(tiny_tok, **opts)
    _run_steps(first, model_b, user, stream_b, 4)
    buf = io.BytesIO()  # as the loop does: torch.save, then load with weights_only=True
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    weights = _snapshot(model_b)

    model_c = lora_model(tiny_tok)  # a fresh process: the loop restores the trainable weights
    with torch.no_grad():
        for n, p in trainable(model_c):
            p.copy_(weights[n])
    resumed = Lisa(LisaOptions(**opts))
    resumed.load_state_dict(state)
    stream_c = _Stream(tiny_tok, position=stream_b.position)
    resumed.setup(context(model_c, step=4, total_steps=12, next_batch=stream_c))
    rest = _run_steps(resumed, model_c, user, stream_c, 5, start=4)

    for a, b in zip(full[4:], rest, strict=True):
        assert a == b
    final_a, final_c = _snapshot(model_a), _snapshot(model_c)
    for n, value in final_a.items():
        torch.testing.assert_close(final_c[n], value, rtol=0, atol=0)


def test_options_are_validated():
    with pytest.raises(ConfigError, match="k_finetune"):
        build(LisaOptions, {"k_align": 0, "k_finetune": 0})  # no state to run
    with pytest.raises(ConfigError, match="k_finetune"):
        build(LisaOptions, {"k_finetune": -1})
    assert build(LisaOptions, {"k_finetune": 0}).k_finetune == 0  # Table 8: 1000/0
    with pytest.raises(ConfigError, match="rho"):
        build(LisaOptions, {"rho": -1})
    with pytest.raises(ConfigError, match="proximal_warmup"):
        build(LisaOptions, {"proximal_warmup": 1.5})
    assert build(LisaOptions, {"rho": "0.01"}).rho == 0.01


def test_two_steps_through_the_training_loop(tmp_path, tiny_tok):
    import json

    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.runs import open_run_dir

    model = lora_model(tiny_tok)
    run = open_run_dir(tmp_path / "ft", "finetune")
    opts = TrainOptions(lr=1e-3, max_steps=2, batch_size=4, max_length=MAX_LEN)
    result = training.train(
        model,
        Lisa(LisaOptions(k_align=1, k_finetune=1, rho=0.01, proximal_warmup=0.0)),
        encode(tiny_tok, user_examples(2, 6), refusal_view=False),
        {"alignment": _alignment_encoded(tiny_tok)},
        opts,
        run,
        Reporter(quiet=True),
        seed=0,
        pad_id=tiny_tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    assert result.steps == 2 and math.isfinite(result.final_loss)
    log = [json.loads(line) for line in (run.path / "train_log.jsonl").read_text().splitlines()]
    assert [row["state"] for row in log] == [0, 1]
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["proximal"]) for row in log)


class _CrashAt3(Lisa):
    def training_step(self, model, batch, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return super().training_step(model, batch, ctx)


def test_interrupted_run_resumes_identically_through_the_loop(tmp_path, tiny_tok):
    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.runs import open_run_dir

    opts = LisaOptions(k_align=1, k_finetune=2, rho=0.5, proximal_warmup=0.0)
    main = encode(tiny_tok, user_examples(2, 6), refusal_view=False)
    align = {"alignment": _alignment_encoded(tiny_tok)}

    def run(name, defense, resume=False):
        model = lora_model(tiny_tok)
        run_dir = open_run_dir(tmp_path / name, "finetune", resume=resume)
        if not resume:
            run_dir.update_manifest(stage="finetune", status="running")
        train_opts = TrainOptions(
            lr=1e-2, max_steps=6, batch_size=4, max_length=MAX_LEN, checkpoint_every=2
        )
        training.train(
            model,
            defense,
            main,
            align,
            train_opts,
            run_dir,
            Reporter(quiet=True),
            seed=1,
            pad_id=tiny_tok.pad_token_id,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        return _snapshot(model)

    full = run("full", Lisa(opts))
    with pytest.raises(KeyboardInterrupt):
        run("crash", _CrashAt3(opts))
    resumed = run("crash", Lisa(opts), resume=True)  # restores state, clock, anchors at step 2
    for n, value in full.items():
        torch.testing.assert_close(resumed[n], value, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# A schedule that cannot run as intended is refused before anything is written (issue #11)


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """``cli("attack-finetune", ...)`` runs ``hftguard`` in-process in ``tmp_path``; returns
    (exit code, stdout, stderr)."""
    from hftguard.cli import main
    from hftguard.registry import default_registry

    monkeypatch.setenv("HFTGUARD_LOAD_PLUGINS", "")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("HFTGUARD_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    default_registry.cache_clear()
    capsys.readouterr()

    def run(*args):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    default_registry.cache_clear()


LISA_FT = ("attack-finetune", "--model", "tiny-random", "--defense", "lisa", "--quiet")


def test_run_shorter_than_one_cycle_is_refused_before_the_run_dir(cli, tmp_path):
    code, out, err = cli(*LISA_FT, "--max-steps", "30", "-n", "20", "--out", "o")
    assert code == 2, out + err
    assert "Traceback" not in out + err
    for needle in ("Error:", "Hint:", "100", "900", "1000", "30 steps", "max_steps=30"):
        assert needle in err, f"{needle!r} not in {err}"
    # the hint proposes a schedule with the paper's 1:9 ratio that fits 30 steps
    assert "k_align=3" in err and "k_finetune=27" in err and "scale_schedule" in err
    assert not (tmp_path / "o").exists()


def test_epoch_based_run_names_where_its_steps_come_from(cli, tmp_path):
    # 20 samples / batch 8 = 3 steps in one epoch: the step count is known without any data
    code, _, err = cli(*LISA_FT, "-n", "20", "--batch-size", "8", "--out", "o")
    assert code == 2
    assert "3 steps" in err and "samples=20" in err and "batch_size=8" in err
    assert not (tmp_path / "o").exists()


def test_validate_and_dry_run_catch_the_short_schedule(cli, tmp_path):
    (tmp_path / "ft.toml").write_text(
        'model = "tiny-random"\ndefense = "lisa"\nsamples = 20\n[train]\nmax_steps = 30\n'
    )
    code, _, err = cli("validate", "ft.toml", "--kind", "finetune")
    assert code == 2 and "1000" in err and "Hint:" in err
    (tmp_path / "pipe.toml").write_text(
        '[align]\nmodel = "tiny-random"\nretain = ""\n[align.train]\nmax_steps = 1\n'
        '[finetune]\ndefense = "lisa"\nsamples = 20\n[finetune.train]\nmax_steps = 30\n'
    )
    code, _, err = cli("validate", "pipe.toml")
    assert code == 2 and "1000" in err
    code, _, err = cli("run", "pipe.toml", "--out", "x", "--dry-run")
    assert code == 2 and "1000" in err
    assert not (tmp_path / "x").exists()
    # exactly one full cycle is enough (configs/grid-papers-small.toml: 3 + 27 over 30 steps)
    fixed = ("--set", "finetune.defense_options.k_align=3")
    fixed += ("--set", "finetune.defense_options.k_finetune=27")
    code, out, err = cli("run", "pipe.toml", "--out", "x", "--dry-run", *fixed)
    assert code == 0, out + err


def _plan(defense, steps, batch_size=8):
    from hftguard.context import PlanContext

    defense.plan(PlanContext(total_steps=steps, batch_size=batch_size, steps_source="test"))
    return defense


def test_one_state_schedules_run_at_any_length():
    # paper Table 8 allocations 1000/0 and 0/1000: no cycle to complete
    assert _plan(Lisa(LisaOptions(k_align=0, k_finetune=1000)), 5).effective_options() == {}
    assert _plan(Lisa(LisaOptions(k_align=1000, k_finetune=0)), 5).effective_options() == {}
    _plan(Lisa(LisaOptions(k_align=3, k_finetune=27)), 30)  # exactly one cycle
    with pytest.raises(ConfigError, match="29 steps"):
        _plan(Lisa(LisaOptions(k_align=3, k_finetune=27)), 29)


def test_alignment_only_schedule_never_fine_tunes(tiny_tok):
    defense, model, user, stream = _setup(tiny_tok, k_align=1000, k_finetune=0)
    metrics = _run_steps(defense, model, user, stream, 5)
    assert all(m["aligned_batch"] for m in metrics)
    assert {m["state"] for m in metrics} == {0.0}
    assert not any("switch_drift" in m for m in metrics)


@pytest.mark.parametrize(
    ("steps", "k1", "k2", "expected"),
    [
        (30, 100, 900, (3, 27)),  # the paper's 1:9, as configs/grid-papers-small.toml sets it
        (4, 100, 900, (1, 3)),  # at least one alignment step ...
        (3, 9, 1, (2, 1)),  # ... and one fine-tuning step
        (15, 100, 900, (2, 13)),
        (5, 3, 7, (2, 3)),
    ],
)
def test_scale_schedule_fits_one_cycle_keeping_the_ratio(steps, k1, k2, expected):
    opts = LisaOptions(k_align=k1, k_finetune=k2, scale_schedule=True)
    defense = _plan(Lisa(opts), steps)
    assert (defense.k_align, defense.k_finetune) == expected
    assert defense.effective_options() == {
        "k_align": expected[0],
        "k_finetune": expected[1],
        "scaled_from": {"k_align": k1, "k_finetune": k2},
        "total_steps": steps,
    }
    assert (opts.k_align, opts.k_finetune) == (k1, k2)  # the configured options stay as given


def test_scale_schedule_leaves_a_run_that_holds_a_cycle_alone():
    defense = _plan(Lisa(LisaOptions(scale_schedule=True)), 1000)
    assert (defense.k_align, defense.k_finetune) == (100, 900)
    assert defense.effective_options() == {}
    with pytest.raises(ConfigError, match="1 step"):  # no cycle fits a 1-step run
        _plan(Lisa(LisaOptions(scale_schedule=True)), 1)


def test_scaled_schedule_runs_and_is_recorded_in_the_manifest(cli, tmp_path):
    import json

    code, out, err = cli(
        *LISA_FT,
        "--max-steps",
        "4",
        "-n",
        "10",
        "--batch-size",
        "2",
        "--set",
        "defense_options.scale_schedule=true",
        "--set",
        "lora.r=4",
        "--set",
        "train.max_length=64",
        "--out",
        "o",
    )
    assert code == 0, out + err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    defense = manifest["components"]["defense"]
    assert defense["options"]["k_align"] == 100 and defense["options"]["scale_schedule"] is True
    assert defense["effective"] == {
        "k_align": 1,
        "k_finetune": 3,
        "scaled_from": {"k_align": 100, "k_finetune": 900},
        "total_steps": 4,
    }
    log = [json.loads(x) for x in (tmp_path / "o" / "finetune_log.jsonl").read_text().splitlines()]
    assert [row["state"] for row in log] == [0, 1, 1, 1]
