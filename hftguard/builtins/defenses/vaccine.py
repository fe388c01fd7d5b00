"""Vaccine (Huang, Hu, Liu; NeurIPS 2024): align under a worst-case perturbation of every decoder
layer's attention output, so the aligned model tolerates the embedding drift fine-tuning causes.

Pass 1 records G_l = dL/d(attention output of layer l) for every layer; the perturbation is
eps_l = rho * G_l / (||G||_global + 1e-7), the norm taken over all layers and the whole batch tensor
jointly (docs/components/vaccine.md, "How it works"). Pass 2 adds the constant eps_l to each
attention output and its parameter gradient is the update. Pass 1's parameter gradients are
discarded. Vaccine needs no harmful data; its adapter is merged before fine-tuning (double LoRA,
docs/concepts.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftguard import opt
from hftguard.components import AlignmentDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError

#: Added to the global norm before dividing, as in the official code.
NORM_EPS = 1e-7


@dataclass
class VaccineConfig:
    """Vaccine options (defaults: git-disl/Vaccine; docs/components/vaccine.md)."""

    rho: float = opt(
        2.0,
        "Perturbation radius: global L2 norm of eps over all layers (Vaccine "
        "repo 2; the Booster/Antibody baselines use 5).",
    )

    def __post_init__(self) -> None:
        if self.rho < 0:
            raise ConfigError(f"rho must be >= 0, got {self.rho}.", hint="The Vaccine repo uses 2.")


class Vaccine(AlignmentDefense):
    """Vaccine: perturbation-aware alignment on attention outputs (2 forward+backward per step)."""

    name = "vaccine"
    version = "1"
    Config = VaccineConfig
    paper = "Huang, Hu, Liu, Vaccine, NeurIPS 2024 (arXiv 2402.01109); docs/components/vaccine.md"
    passes = 2.0  # 2 forward + 2 backward (docs/performance.md)
    finetune_lora = "merge"  # double LoRA (docs/concepts.md)

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        # Imported here so that listing plugins does not import torch (components.py).
        import torch

        from hftguard.engine.steps import (
            add_to_outputs,
            attention_modules,
            capture_outputs_grad,
            grad_norm,
            grads_of,
            joint_norm,
            set_grads,
        )

        modules = attention_modules(model)
        # Pass 1: record G_l = dL/d(attn_out_l) (tensor hooks); parameter grads discarded.
        store: list[Any] = []
        out_sq: list[Any] = []
        with capture_outputs_grad(modules, store, out_sq):
            clean = ctx.loss_fn(model, batch)
            grads_of(clean, ctx.params)
        # One global norm over all layers and the whole B x T x d tensors (not per layer);
        # a 0-d float64 tensor, so nothing waits for the device.
        captured = [g for g in store if g is not None]
        g_norm = grad_norm(captured) if captured else clean.new_zeros((), dtype=torch.float64)
        g_norm = ctx.norm_over_processes(g_norm)  # data parallel: over every process's activations
        scale = self.config.rho / (g_norm + NORM_EPS)
        eps = [None if g is None else (g.float() * scale).detach() for g in store]
        eps_norm = grad_norm([e for e in eps if e is not None]) if captured else g_norm
        # The perturbation against what it perturbs: the attention outputs' joint norm (a log
        # value only; docs/components/vaccine.md, "Choosing rho").
        act_norm = ctx.norm_over_processes(joint_norm(out_sq, like=clean))
        # Pass 2: attention outputs + constant eps_l; this gradient is the update.
        with add_to_outputs(modules, eps):
            loss = ctx.loss_fn(model, batch)
            set_grads(ctx.params, grads_of(loss, ctx.params))
        return {
            "loss": loss.detach(),
            "loss_clean": clean.detach(),
            "eps_norm": eps_norm,
            "activation_grad_norm": g_norm,
            "activation_norm": act_norm,
            "eps_ratio": eps_norm / (act_norm + NORM_EPS),
        }
