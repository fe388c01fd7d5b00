"""Antibody, alignment stage (Nguyen et al., ICLR 2026): align while keeping the harmful loss flat
around theta, with an adaptive weight lambda_t on the sharpness term and a refusal term evaluated
after a simulated harmful step.

Update (docs/components/antibody.md): g_a + lambda_bar_t * (g_h - g_h') + lambda_refusal * g_r',
where g_h and g_h' are harmful gradients at theta and at theta' = theta - alpha g_h/||g_h||, and
g_r' is the gradient at theta' of the refusal loss on the same harmful prompts. We reuse g_h for the
perturbation instead of the official deep copy + recomputation, so a step costs 4 forward/backward
passes, not 5 (docs/performance.md). lambda_t follows ``lambda_mode``: ``cosine`` (released code,
default), ``kkt`` (Theorem 4.1 with a_t = eta ||d||^2, capped) or ``constant``; then an optional EMA
whose value is checkpointed so a resumed run continues it. Fine-tuning continues the same adapter
(single LoRA, docs/concepts.md). Antibody's fine-tuning stage is a separate component.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hftguard import opt
from hftguard.components import AlignmentDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError, HftguardError, did_you_mean

LAMBDA_MODES = ("cosine", "kkt", "constant")


@dataclass
class AntibodyAlignConfig:
    """Antibody alignment options (defaults: the official antibody_alignment_finetune.sh)."""

    alpha: float = opt(0.1, "Radius of the simulated harmful step theta' (the paper's rho).")
    eta: float = opt(5.0, "Barrier coefficient eta inside lambda_t.")
    lambda_mode: str = opt(
        "cosine",
        "How lambda_t is computed: cosine = max(0, eta - cos(g_a, d)) "
        "(released code); kkt = max(0, eta - <g_a,d>/||d||^2) capped "
        "at lambda_max (Theorem 4.1); constant = eta (Booster).",
    )
    ema: float = opt(0.99, "EMA momentum m of lambda_t (0 = no EMA, use the raw value).")
    lambda_refusal: float = opt(0.05, "Weight of the refusal loss at theta' (0 skips that pass).")
    lambda_max: float = opt(50.0, "Upper bound on lambda_t in kkt mode (||d||^2 can be tiny).")

    def __post_init__(self) -> None:
        if self.lambda_mode not in LAMBDA_MODES:
            raise ConfigError(
                f"lambda_mode: {self.lambda_mode!r} is not one of "
                f"{', '.join(map(repr, LAMBDA_MODES))}."
                + did_you_mean(str(self.lambda_mode), LAMBDA_MODES),
                hint="Set defense_options.lambda_mode to cosine (released code), kkt (paper "
                "Theorem 4.1) or constant.",
            )
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}.", hint="The code uses 0.99.")
        if self.alpha < 0 or self.lambda_refusal < 0:
            raise ConfigError(
                "alpha and lambda_refusal must be >= 0.",
                hint="Defaults: alpha=0.1, lambda_refusal=0.05.",
            )
        if self.lambda_max <= 0:
            raise ConfigError(f"lambda_max must be > 0, got {self.lambda_max}.")


def raw_lambda(
    mode: str, eta: float, g_a: Sequence[Any], d: Sequence[Any], lambda_max: float = 50.0
) -> Any:
    """lambda_t before the EMA (the modes and their sources: docs/components/antibody.md).

    ``g_a`` and ``d`` are gradient lists (global inner products and norms). ``cosine`` and
    ``kkt`` give a 0-d float64 tensor (computed on the device, no host synchronisation),
    ``constant`` the float ``eta``.
    """
    import torch

    from hftguard.engine.steps import grad_cosine, grad_dot

    if mode == "cosine":  # released code: max(0, eta - cos(g_a, d)), cos with +1e-8
        return torch.clamp(eta - grad_cosine(list(g_a), list(d)), min=0.0)
    if mode == "kkt":  # Theorem 4.1 with a_t = eta ||d||^2; ratio 0 when d = 0; capped
        d_sq = grad_dot(list(d), list(d))
        positive = d_sq > 0
        ratio = torch.where(
            positive, grad_dot(list(g_a), list(d)) / torch.where(positive, d_sq, 1.0), 0.0
        )
        return torch.clamp(eta - ratio, min=0.0, max=lambda_max)
    if mode == "constant":
        return float(eta)
    raise ValueError(f"unknown lambda_mode {mode!r}")


def ema_lambda(previous: Any, raw: Any, momentum: float) -> Any:
    """EMA of lambda: bar_1 = raw_1, bar_t = m bar_{t-1} + (1 - m) raw_t; m = 0 gives raw."""
    if momentum <= 0 or previous is None:
        return raw
    return momentum * previous + (1.0 - momentum) * raw


class AntibodyAlign(AlignmentDefense):
    """Antibody (alignment stage): flat harmful loss, adaptive lambda, perturbed refusal loss."""

    name = "antibody"
    version = "1"
    Config = AntibodyAlignConfig
    paper = "Nguyen et al., Antibody, ICLR 2026 (arXiv 2603.00498); docs/components/antibody.md"
    streams = ("harmful",)
    refusal_view = True
    passes = 4.0  # 4 F+B (the official code does 5; docs/performance.md)
    finetune_lora = "continue"  # single LoRA (docs/concepts.md)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: EMA state, None before the first step; a 0-d tensor while training (cosine/kkt).
        self.lambda_bar: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {"lambda_bar": None if self.lambda_bar is None else float(self.lambda_bar)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        value = state.get("lambda_bar")
        self.lambda_bar = None if value is None else float(value)

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        # Imported here so that listing plugins does not import torch (components.py).
        from hftguard.builtins.defenses._sharpness import fp32_grads, harmful_sharpness
        from hftguard.engine.steps import combine, grad_cosine, grad_norm, set_grads

        cfg = self.config
        harmful = ctx.next_batch("harmful")  # H, with H.refusal = same prompts, refusal answers
        use_refusal = cfg.lambda_refusal != 0.0
        if use_refusal and harmful.refusal is None:
            raise HftguardError(
                "Antibody needs the refusal view of the harmful batch.",
                hint="Build the harmful stream with refusal_view=True.",
            )
        # g_h at theta; at theta' = theta - alpha g_h/||g_h||: g_h' on H, g_r' on H.refusal.
        extra = {"refusal": harmful.refusal} if use_refusal else {}
        sharp = harmful_sharpness(model, harmful, ctx, cfg.alpha, extra)
        loss, g_a = fp32_grads(model, batch, ctx)  # g_a at theta on the alignment batch A
        d = sharp.diff()
        if ctx.world_size > 1:  # data parallel: lambda_t from the global g_a and d (one all-reduce)
            n = len(g_a)
            both = ctx.all_reduce_mean([*g_a, *d])
            g_a, d = both[:n], both[n:]
        lam_raw = raw_lambda(cfg.lambda_mode, cfg.eta, g_a, d, cfg.lambda_max)
        self.lambda_bar = ema_lambda(self.lambda_bar, lam_raw, cfg.ema)
        terms = [(1.0, g_a), (self.lambda_bar, d)]
        if use_refusal:
            terms.append((cfg.lambda_refusal, sharp.extra["refusal"][1]))
        final = combine(*terms)  # g_a + lambda_bar d + lambda_refusal g_r'
        set_grads(ctx.params, final)
        g_h, g_hp = sharp.grads, sharp.grads_perturbed
        metrics = {
            "loss": loss,
            "harmful_loss": sharp.loss,
            "harmful_loss_perturbed": sharp.loss_perturbed,
            "loss_change": sharp.loss_change,
            # 0-d tensors like the losses: the loop reads every metric with one synchronisation
            "norm_safe": grad_norm(g_a),
            "norm_harmful": sharp.grad_norm,
            "norm_harmful_perturbed": grad_norm(g_hp),
            "norm_diff": grad_norm(d),
            "norm_final": grad_norm(final),
            "cos_safe_harmful": grad_cosine(g_a, g_h),
            "cos_safe_perturbed": grad_cosine(g_a, g_hp),
            "cos_safe_diff": grad_cosine(g_a, d),
            "cos_harmful_perturbed": grad_cosine(g_h, g_hp),
            "cos_final_safe": grad_cosine(final, g_a),
            "cos_final_diff": grad_cosine(final, d),
            "lambda_raw": lam_raw,
            "lambda": self.lambda_bar,
        }
        if use_refusal:
            metrics["refusal_loss_perturbed"] = sharp.extra["refusal"][0]
        return metrics
