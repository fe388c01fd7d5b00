"""Lisa (Lazy Safety Alignment): alternate alignment and user fine-tuning steps, each pulled
towards the other state's last weights by a proximal term (docs/components/lisa.md).

Why: plain bi-state optimisation (BSO) lets each state drift far from where the other left the
model ("excess drift"), so alignment and fine-tuning undo each other. Lisa's proximal term
(ρ/2)‖θ − anchor‖² keeps each state close to the other's consensus point.

Mechanics (the official code): one optimizer and one step counter; in the alignment state the
user batch is replaced by a batch of the alignment stream; switch after ``k_align`` / ``k_finetune``
steps and snapshot the trainable parameters at every switch; the proximal term is only applied
after the first ``proximal_warmup`` share of the steps (code-only warm-up, not in the paper).

Budget (``plan``): a run shorter than one full ``k_align + k_finetune`` cycle is not a Lisa run
(with the default 100/900, under 100 steps it never fine-tunes), so it is refused before anything
is written, unless ``scale_schedule`` asks to shrink the cycle to the run (recorded as the
effective options). One-state schedules (``k_align = 0`` or ``k_finetune = 0``, paper Table 8's
0/1000 and 1000/0) have no cycle and run at any length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftguard import opt
from hftguard.components import FinetuneDefense
from hftguard.context import PlanContext, StepContext
from hftguard.errors import ConfigError

if TYPE_CHECKING:
    import torch

ALIGN, FINETUNE = 0, 1


@dataclass
class LisaOptions:
    """Options of Lisa (defaults: the Lisa paper/repo)."""

    k_align: int = opt(100, "Steps per alignment state (K1); 0 = never align (BSO off).")
    k_finetune: int = opt(
        900, "Steps per fine-tuning state (K2); 0 = never fine-tune on user data."
    )
    rho: float = opt(
        1.0, "Proximal strength ρ (Lisa paper: 1; the Booster/Antibody baselines use 0.01)."
    )
    proximal_warmup: float = opt(
        0.1,
        "Share of the total steps before the proximal term is switched on (code only; 0 = "
        "from the first step).",
    )
    scale_schedule: bool = opt(
        False,
        "Shrink k_align/k_finetune, keeping their ratio, to one cycle that fills a run shorter "
        "than k_align + k_finetune steps (recorded in the manifest as components.defense."
        "effective); false = such a run is an error.",
    )

    def __post_init__(self) -> None:
        if self.k_align < 0 or self.k_finetune < 0 or self.k_align + self.k_finetune == 0:
            raise ConfigError(
                f"defense_options.k_align = {self.k_align}, k_finetune = {self.k_finetune}: "
                "both must be >= 0 and at least one > 0.",
                hint="The paper alternates k_align=100 alignment and k_finetune=900 user steps.",
            )
        if not (math.isfinite(self.rho) and self.rho >= 0):
            raise ConfigError(
                f"defense_options.rho = {self.rho} must be >= 0.",
                hint="Use 1 (Lisa paper) or 0.01 (Booster/Antibody baselines).",
            )
        if not 0.0 <= self.proximal_warmup <= 1.0:
            raise ConfigError(
                f"defense_options.proximal_warmup = {self.proximal_warmup} is outside [0, 1].",
                hint="It is a share of the steps, e.g. 0.1.",
            )


class Lisa(FinetuneDefense):
    """Lisa: bi-state alignment/fine-tuning with a proximal pull to the other state's weights."""

    name = "lisa"
    version = "2"  # 2: runs shorter than one cycle are refused; k_finetune = 0; scale_schedule
    Config = LisaOptions
    paper = (
        "Huang et al., Lazy Safety Alignment, NeurIPS 2024 (arXiv 2405.18641); "
        "docs/components/lisa.md"
    )
    streams = ("alignment",)
    passes = 1.0  # 1 F/B + an O(#trainable) proximal term (docs/performance.md)

    config: LisaOptions

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: The schedule as run: the configured K1/K2 unless ``plan`` scaled them to the budget.
        self.k_align, self.k_finetune = self.config.k_align, self.config.k_finetune
        self._scaled: dict[str, Any] = {}
        self.state = ALIGN if self.k_align > 0 else FINETUNE
        self.clock = 0  # steps done in the current state
        #: Weights at the end of the last alignment / fine-tuning state, by param name.
        self.anchor_align: dict[str, torch.Tensor] = {}
        self.anchor_finetune: dict[str, torch.Tensor] = {}
        self._restored = False

    # -- budget ------------------------------------------------------------------------------

    def plan(self, ctx: PlanContext) -> None:
        """Refuse a run shorter than one full K1 + K2 cycle, or scale the cycle to it when
        ``scale_schedule`` is set (see :func:`fit_cycle`)."""
        k1, k2 = self.config.k_align, self.config.k_finetune
        self.k_align, self.k_finetune, self._scaled = k1, k2, {}
        steps, cycle = ctx.total_steps, k1 + k2
        if k1 == 0 or k2 == 0 or steps >= cycle:  # one-state schedules have no cycle to finish
            return
        fitted = fit_cycle(k1, k2, steps)
        if self.config.scale_schedule and fitted is not None:
            self.k_align, self.k_finetune = fitted
            self._scaled = {
                "k_align": fitted[0],
                "k_finetune": fitted[1],
                "scaled_from": {"k_align": k1, "k_finetune": k2},
                "total_steps": steps,
            }
            return
        source = f" ({ctx.steps_source})" if ctx.steps_source else ""
        what = (
            "it would never leave the alignment state and never fine-tune on the user data"
            if steps <= k1
            else f"it would do {k1} alignment steps and only {steps - k1} of {k2} fine-tuning "
            "steps, a different allocation than asked for"
        )
        ratio = "the paper's 1:9 ratio" if k2 == 9 * k1 else "the same k_align:k_finetune ratio"
        if fitted is None:
            hint = f"Train for at least {cycle} steps, or use a one-state schedule (k_align=0)."
        else:
            hint = (
                f"Lower defense_options.k_align/k_finetune keeping {ratio}, e.g. --set "
                f"defense_options.k_align={fitted[0]} --set defense_options.k_finetune="
                f"{fitted[1]}; or let hftguard do that with --set "
                f"defense_options.scale_schedule=true; or train for at least {cycle} steps."
            )
        raise ConfigError(
            f"Lisa needs at least one full alignment + fine-tuning cycle, k_align + k_finetune "
            f"= {k1}+{k2} = {cycle} steps; this run has {steps} "
            f"step{'s' if steps != 1 else ''}{source}: {what}.",
            hint=hint,
        )

    def effective_options(self) -> dict[str, Any]:
        return dict(self._scaled)

    # -- state -------------------------------------------------------------------------------

    def setup(self, ctx: StepContext) -> None:
        import torch

        if not self._restored:  # fresh run: both anchors start as the initial weights
            self.state = ALIGN if self.k_align > 0 else FINETUNE
            self.clock = 0
            with torch.no_grad():
                self.anchor_align = {n: p.detach().clone() for n, p in ctx.params}
                self.anchor_finetune = {n: p.detach().clone() for n, p in ctx.params}
            return
        self._restored = False
        # Restored from a checkpoint (loaded on the CPU): move to the parameters' device/dtype.
        for anchors in (self.anchor_align, self.anchor_finetune):
            for n, p in ctx.params:
                anchors[n] = anchors[n].to(device=p.device, dtype=p.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "clock": self.clock,
            "anchor_align": dict(self.anchor_align),
            "anchor_finetune": dict(self.anchor_finetune),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = int(state["state"])
        self.clock = int(state["clock"])
        self.anchor_align = dict(state["anchor_align"])
        self.anchor_finetune = dict(state["anchor_finetune"])
        self._restored = True

    def _anchor(self) -> dict[str, torch.Tensor]:
        # Alignment state is pulled towards the last fine-tuned weights and vice versa.
        return self.anchor_finetune if self.state == ALIGN else self.anchor_align

    def _maybe_switch(self, ctx: StepContext) -> bool:
        """Switch state when the clock has run out; snapshot the weights that end the state."""
        import torch

        if self.k_align == 0 or self.k_finetune == 0:  # one state only (paper Table 8)
            return False
        limit = self.k_align if self.state == ALIGN else self.k_finetune
        if self.clock < limit:
            return False
        with torch.no_grad():
            snap = {n: p.detach().clone() for n, p in ctx.params}
        if self.state == ALIGN:
            self.anchor_align, self.state = snap, FINETUNE
        else:
            self.anchor_finetune, self.state = snap, ALIGN
        self.clock = 0
        return True

    # -- the step ----------------------------------------------------------------------------

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        import torch

        from hftguard.engine.steps import grad_norm

        switched = self._maybe_switch(ctx)
        if self.state == ALIGN:  # the user batch is replaced by an alignment batch
            batch = ctx.next_batch("alignment")
        loss = ctx.loss_fn(model, batch)
        loss.backward()

        # Proximal term (ρ/2)Σ‖θ_p − a_p‖²: its gradient ρ(θ − a) is added in closed form.
        anchor = self._anchor()
        active = ctx.step >= self.config.proximal_warmup * ctx.total_steps
        with torch.no_grad():
            diffs = [p.detach().float() - anchor[n].float() for n, p in ctx.params]
            drift = grad_norm(diffs).pow(2)  # a 0-d tensor: no host synchronisation
            if active and self.config.rho > 0:
                for (_, p), diff in zip(ctx.params, diffs, strict=True):
                    g = (self.config.rho * diff).to(p.dtype)
                    p.grad = g if p.grad is None else p.grad + g.to(p.grad.dtype)
        self.clock += 1

        metrics: dict[str, Any] = {
            "loss": loss.detach(),
            "proximal": 0.5 * self.config.rho * drift if active else 0.0,
            "state": float(self.state),
            "drift": drift,
        }
        if switched:  # distance between the two consensus points at each switch
            metrics["switch_drift"] = grad_norm(
                [
                    self.anchor_align[n].float() - self.anchor_finetune[n].float()
                    for n, _ in ctx.params
                ]
            ).pow(2)
        return metrics


def fit_cycle(k_align: int, k_finetune: int, steps: int) -> tuple[int, int] | None:
    """The K1/K2 of one cycle that fills ``steps`` steps with about the ratio k_align:k_finetune
    (K1 = round(steps x K1 / (K1 + K2)), at least one step of each state); None if ``steps`` < 2.

    One cycle, not more: it shrinks the configured schedule as little as needed to hold a whole
    cycle (the Lisa paper recommends K1/K2, not a number of cycles; its runs hold as many cycles
    as their length gives). 100/900 over 30 steps gives 3/27.
    """
    if steps < 2:
        return None
    k1 = min(max(1, round(steps * k_align / (k_align + k_finetune))), steps - 1)
    return k1, steps - k1
