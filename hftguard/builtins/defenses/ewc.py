"""EWC (elastic weight consolidation): fine-tune on the user data with a Fisher-weighted pull back
to the weights fine-tuning started from (docs/components/ewc.md; the Vaccine/Booster repos'
``FITrainer``).

Why: the parameters the alignment loss is most sensitive to (large diagonal Fisher information on
alignment data) are the ones whose change would undo the alignment, so those are anchored the
hardest; the others stay free for the user's task.

Mechanics (the repos' code): before the first fine-tuning step, with the parameters at θ₀ (the
start of fine-tuning), accumulate over ``fisher_batches`` alignment batches

    F = Σ_batches (∇_θ ℓ_align(θ₀; batch))²        (elementwise; a sum, not a mean)

then every step minimises

    L(θ) = g(θ) + λ Σ F ⊙ (θ − θ₀)²

over the trainable parameters; the penalty's gradient 2λ F ⊙ (θ − θ₀) is added in closed form.
The repos use it as a single-LoRA continuation (θ₀ = the alignment adapter, ``--lora-mode
continue``); see docs/components/ewc.md for what it means under ``merge``.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftguard import opt
from hftguard.components import FinetuneDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class EWCOptions:
    """Options of EWC (defaults: the Vaccine/Booster repos' FITrainer)."""

    lam: float = opt(
        0.001,
        "Penalty weight λ (the Vaccine and Booster repos' train.py --lamb default 0.001; the "
        "Vaccine repo's script/EWC_finetune/*.sh pass 1e9).",
    )
    fisher_batches: int = opt(
        400,
        "Alignment batches (of train.batch_size) the Fisher is summed over before step 0 (the "
        "Vaccine repo: its whole 2000-example alignment set in eval batches of 5 = 400). F is a "
        "sum, as in the repo, so the penalty grows with this number.",
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(
                f"defense_options.lam = {self.lam} must be >= 0.",
                hint="The repos' default is lam = 0.001.",
            )
        if self.fisher_batches < 1:
            raise ConfigError(
                f"defense_options.fisher_batches = {self.fisher_batches} must be >= 1.",
                hint="The Vaccine repo sums over its 2000 alignment examples: 400 batches of 5.",
            )


class EWC(FinetuneDefense):
    """EWC: CE + λ·Σ F⊙(θ − θ₀)², F the diagonal Fisher of the alignment loss at θ₀."""

    name = "ewc"
    version = "1"
    Config = EWCOptions
    paper = (
        "EWC (Kirkpatrick et al., PNAS 2017) as the FITrainer baseline of the Vaccine/Booster "
        "repos (git-disl/Vaccine trainer.py) (docs/components/ewc.md)"
    )
    streams = ("alignment",)
    # 1 F/B per step plus an O(#trainable) penalty; the Fisher costs fisher_batches F/B once,
    # inside step 0 (not counted here; `hftguard bench`'s warm-up step absorbs it).
    passes = 1.0

    config: EWCOptions

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: Trainable parameters at the start of fine-tuning, and the diagonal Fisher there.
        self.theta0: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}
        self._restored = False

    def setup(self, ctx: StepContext) -> None:
        import torch

        if not self._restored:  # fresh run: θ₀ is the model as fine-tuning starts
            with torch.no_grad():
                self.theta0 = {n: p.detach().clone() for n, p in ctx.params}
            self.fisher = {}  # computed in the first step, under the loop's autocast
            return
        self._restored = False  # restored from a checkpoint (loaded on the CPU)
        for n, p in ctx.params:
            self.theta0[n] = self.theta0[n].to(device=p.device, dtype=p.dtype)
            self.fisher[n] = self.fisher[n].to(device=p.device)

    def state_dict(self) -> dict[str, Any]:
        return {"theta0": dict(self.theta0), "fisher": dict(self.fisher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta0 = dict(state["theta0"])
        self.fisher = dict(state["fisher"])
        self._restored = True

    def compute_fisher(self, model: Any, ctx: StepContext) -> None:
        """F = Σ over ``fisher_batches`` alignment batches of the squared gradient of the
        alignment loss at the current parameters (θ₀), in fp32; ``.grad`` is left untouched."""
        import torch

        from hftguard.engine.steps import grads_of

        n = self.config.fisher_batches
        if ctx.reporter is not None and ctx.rank == 0:
            ctx.reporter.info(f"ewc: diagonal Fisher over {n} alignment batches (before step 0)")
        fisher = [torch.zeros_like(p, dtype=torch.float32) for _, p in ctx.params]
        reporter = ctx.reporter if ctx.rank == 0 else None
        with (
            reporter.task("ewc: Fisher", total=n) if reporter is not None else nullcontext() as bar
        ):
            for _ in range(n):
                # a stop asked for now need not wait for the rest of the batches: nothing is
                # kept yet, and a resumed run computes the Fisher again from the same batches
                ctx.stop_point("the Fisher's computation")
                loss = ctx.loss_fn(model, ctx.next_batch("alignment"))
                g = grads_of(loss, ctx.params)
                # Square the global batch's gradient (the average over processes), not each
                # shard's.
                g = [t.float() for t in ctx.all_reduce_mean(g)]
                torch._foreach_addcmul_(fisher, g, g)
                if bar is not None:
                    bar.advance(1)
        self.fisher = {n: f for (n, _), f in zip(ctx.params, fisher, strict=True)}

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        import torch

        first = not self.fisher
        if first:  # before the first update, at θ₀
            self.compute_fisher(model, ctx)
        loss = ctx.loss_fn(model, batch)
        loss.backward()

        lam = self.config.lam
        with torch.no_grad():
            diffs = [p.detach().float() - self.theta0[n].float() for n, p in ctx.params]
            weighted = [self.fisher[n] * d for (n, _), d in zip(ctx.params, diffs, strict=True)]
            penalty = (
                lam
                * torch.stack([(w * d).sum() for w, d in zip(weighted, diffs, strict=True)]).sum()
            )
            if lam > 0:  # d/dθ λ Σ F (θ − θ₀)² = 2λ F (θ − θ₀)
                for (_, p), w in zip(ctx.params, weighted, strict=True):
                    g = (2.0 * lam * w).to(p.dtype)
                    p.grad = g if p.grad is None else p.grad + g.to(p.grad.dtype)
        metrics: dict[str, Any] = {"loss": loss.detach(), "penalty": penalty}
        if first:  # the Fisher's size, once: its sum and the share of exact zeros
            values = torch.cat([f.reshape(-1) for f in self.fisher.values()])
            metrics["fisher_sum"] = values.sum()
            metrics["fisher_zero_share"] = (values == 0).float().mean()
        return metrics
