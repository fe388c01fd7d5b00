"""The harmful-sharpness computation that Booster and Antibody share.

Both methods take the harmful gradient g_h at theta, move to
theta' = theta - alpha g_h/(||g_h|| + 1e-7) (one normalised simulated attack step; "How it works"
in docs/components/booster.md and antibody.md), take the harmful gradient g_h' there (and, for
Antibody, extra gradients such as the refusal loss at theta'), then restore theta exactly. Keeping
this in one function lets each defense read like its pseudocode and guarantees the two implement
the perturbation identically (Antibody with a constant lambda and no refusal term reduces to
Booster).

The norm is the global L2 norm over all trainable tensors; theta is restored from saved clones, not
by subtracting the step again (the official code's way, not exact in bf16). Gradients are
accumulated in fp32. Losses and norms stay 0-d tensors (no host synchronisation inside the step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hftguard.context import StepContext
from hftguard.engine.steps import Grads, combine, grad_norm, grads_of, perturbed

#: Added to ||g_h|| before dividing, as in the official code of both methods.
NORM_EPS = 1e-7


@dataclass
class Sharpness:
    """What one harmful-sharpness evaluation produced (all gradients w.r.t. trainable params).

    Attributes:
        loss: h(theta), the harmful loss at the current parameters.
        grads: g_h = grad h(theta).
        grad_norm: ||g_h|| (global L2 norm).
        loss_perturbed: h(theta') after the simulated normalised harmful step.
        grads_perturbed: g_h' = grad h(theta').
        extra: For each extra batch asked for, (loss at theta', gradient at theta').
    """

    loss: Any
    grads: Grads
    grad_norm: Any
    loss_perturbed: Any
    grads_perturbed: Grads
    extra: dict[str, tuple[Any, Grads]] = field(default_factory=dict)

    @property
    def loss_change(self) -> Any:
        """h(theta) - h(theta'): how much one simulated attack step lowers the harmful loss.

        In float64: the two losses are close, and their float32 difference would lose digits.
        """
        return self.loss.double() - self.loss_perturbed.double()

    def diff(self) -> Grads:
        """d = g_h - g_h', the first-order gradient of the sharpness term."""
        return combine((1.0, self.grads), (-1.0, self.grads_perturbed))


def fp32_grads(model: Any, batch: Any, ctx: StepContext) -> tuple[Any, Grads]:
    """One forward + backward on ``batch`` at the current parameters: (loss, fp32 gradients).

    The loss is a detached 0-d tensor. Uses ``torch.autograd.grad``: ``.grad`` stays untouched
    until the final gradient is written.
    """
    loss = ctx.loss_fn(model, batch)
    return loss.detach(), [g.float() for g in grads_of(loss, ctx.params)]


def harmful_sharpness(
    model: Any, harmful: Any, ctx: StepContext, alpha: float, extra: Mapping[str, Any] | None = None
) -> Sharpness:
    """g_h at theta; theta' = theta - alpha g_h/(||g_h||+1e-7); g_h' (and ``extra``) at theta'.

    Costs 2 + len(extra) forward/backward passes. Parameters are restored exactly on return.
    """
    h, g_h = fp32_grads(model, harmful, ctx)
    g_h = ctx.all_reduce_mean(g_h)  # data parallel: one theta' for every process (global g_h)
    norm = grad_norm(g_h)
    scale = -alpha / (norm + NORM_EPS)
    extras: dict[str, tuple[float, Grads]] = {}
    with perturbed(ctx.params, g_h, scale):  # theta' = theta - alpha * g_h / ||g_h||
        h_p, g_h_p = fp32_grads(model, harmful, ctx)
        for name, batch in (extra or {}).items():
            extras[name] = fp32_grads(model, batch, ctx)
    return Sharpness(h, g_h, norm, h_p, g_h_p, extras)
