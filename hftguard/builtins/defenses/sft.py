"""Plain supervised fine-tuning: the baseline of both stages (docs/components/sft.md)."""

from __future__ import annotations

from typing import Any

from hftguard.components import AlignmentDefense, FinetuneDefense
from hftguard.context import StepContext


def _sft_step(model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
    loss = ctx.loss_fn(model, batch)
    loss.backward()
    return {"loss": loss.detach()}  # a 0-d tensor: the loop reads every metric at once


class SFTAlign(AlignmentDefense):
    """Plain safety SFT on the alignment data (no defense): 1 forward + 1 backward per step."""

    name = "sft"
    version = "1"
    passes = 1.0
    finetune_lora = "merge"
    paper = "Baseline in Vaccine/Lisa/Booster/Antibody (docs/components/sft.md)"

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        return _sft_step(model, batch, ctx)


class SFTFinetune(FinetuneDefense):
    """Plain SFT on the user's (possibly poisoned) data: no fine-tuning-stage defense."""

    name = "sft"
    version = "1"
    passes = 1.0
    paper = SFTAlign.paper

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        return _sft_step(model, batch, ctx)
