"""Booster (Huang et al., ICLR 2025): penalise how much one simulated harmful step lowers the
harmful loss, so later harmful fine-tuning finds a flat, slow-to-descend landscape.

The update (docs/components/booster.md, "How it works") is g_a + lam * (g_h - g_h'), with g_h the
harmful gradient at theta and g_h' the one at theta' = theta - alpha g_h/||g_h||: three
forward/backward passes per step.
The perturbation lives on the alignment LoRA, so fine-tuning must continue that same adapter
(single LoRA, as the Booster authors state in their repository's issue #2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftguard import opt
from hftguard.components import AlignmentDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError


@dataclass
class BoosterConfig:
    """Booster options (defaults: git-disl/Booster smooth_align.sh; docs/components/booster.md)."""

    lam: float = opt(5.0, "Regularizer intensity lambda (paper 5; the authors' GSM8K runs use 25).")
    alpha: float = opt(0.1, "Step size of the simulated normalised harmful step (theta').")

    def __post_init__(self) -> None:
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}.", hint="The paper uses 0.1.")


class Booster(AlignmentDefense):
    """Booster: alignment + lam * (harmful-loss reduction after a simulated harmful step)."""

    name = "booster"
    version = "1"
    Config = BoosterConfig
    paper = "Huang et al., Booster, ICLR 2025 (arXiv 2409.01586); docs/components/booster.md"
    streams = ("harmful",)
    passes = 3.0  # 3 forward + 3 backward (docs/performance.md)
    finetune_lora = "continue"  # single LoRA required (Booster issue #2)

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        # Imported here so that listing plugins does not import torch (components.py).
        from hftguard.builtins.defenses._sharpness import fp32_grads, harmful_sharpness
        from hftguard.engine.steps import combine, set_grads

        cfg = self.config
        harmful = ctx.next_batch("harmful")
        # g_h at theta, g_h' at theta' on the same H (parameters restored exactly).
        sharp = harmful_sharpness(model, harmful, ctx, cfg.alpha)
        loss, g_a = fp32_grads(model, batch, ctx)  # g_a at theta on the alignment batch
        set_grads(ctx.params, combine((1.0, g_a), (cfg.lam, sharp.diff())))
        return {
            "loss": loss,
            "harmful_loss": sharp.loss,
            "harmful_loss_perturbed": sharp.loss_perturbed,
            "loss_change": sharp.loss_change,
            "harmful_grad_norm": sharp.grad_norm,
        }
