"""Safety-data mixing (SafeInstr / VLGuard style): keep showing the model safety demonstrations
(harmful prompt → refusal) while it fine-tunes on the user data (docs/components/mixing.md and
mixing-joint.md).

Two implementations exist in the official code, and hftguard has one defense for each, because
they differ in cost (``passes``) and in what the run trains on:

- ``mixing`` (the Vaccine repo's ``vlguard``): append the first ``m`` examples of the stage's
  ``alignment_data`` to the user data, then plain SFT. The user data itself — n, p and which
  examples — stays what was asked for; the run trains on n + m examples, which the manifest records
  under ``data.main.appended`` (and, with ``epochs``, the run has ⌈(n + m) / batch⌉ steps per
  epoch).
- ``mixing-joint`` (the Booster repo's ``VlguardTrainer``): every step adds the loss of a small
  alignment batch, ℓ(user batch) + λ·ℓ(alignment batch), λ = 0.1, 4 alignment examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftguard import opt
from hftguard.components import FinetuneDefense
from hftguard.context import PlanContext, StepContext
from hftguard.errors import ConfigError, DataError

if TYPE_CHECKING:
    from hftguard.engine.steps import Batch
    from hftguard.records import Example


@dataclass
class MixingOptions:
    """Options of data mixing (default: the Vaccine repo's ``vlguard``)."""

    m: int = opt(
        100,
        "Alignment examples appended to the user data: the first m of alignment_data (the Vaccine "
        "repo's --guide_data_num default 100; the Lisa paper used 1000 with n = 5000).",
    )

    def __post_init__(self) -> None:
        if self.m < 1:
            raise ConfigError(
                f"defense_options.m = {self.m} must be >= 1.",
                hint="m = 0 would be plain SFT: use --defense sft for that.",
            )


class Mixing(FinetuneDefense):
    """Safety-data mixing: append m alignment (refusal) examples to the user data; plain SFT."""

    name = "mixing"
    version = "1"
    Config = MixingOptions
    paper = (
        "SafeInstr (Bianchi et al., 2023) / VLGuard (Zong et al., 2024); the Vaccine repo's "
        "vlguard data mixing (docs/components/mixing.md)"
    )
    streams = ("alignment",)  # the pipeline loads alignment_data, where the m examples come from
    passes = 1.0  # plain SFT steps; the extra cost is the m extra examples per epoch

    config: MixingOptions

    def appended_user_data(self, streams: Mapping[str, Sequence[Example]]) -> list[Example]:
        data = list(streams.get("alignment", ()))
        m = self.config.m
        if len(data) < m:
            raise DataError(
                f"The mixing defense appends the first m = {m} alignment examples to the user "
                f"data, but alignment_data has only {len(data)}.",
                hint=f"Lower defense_options.m (at most {len(data)}), or point alignment_data at "
                "a larger set.",
            )
        return data[:m]  # the *first* m safety samples, not a random draw (as the repo)

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        loss = ctx.loss_fn(model, batch)
        loss.backward()
        return {"loss": loss.detach()}


@dataclass
class MixingJointOptions:
    """Options of joint-loss mixing (defaults: the Booster repo's ``VlguardTrainer``)."""

    lam: float = opt(
        0.1,
        "Weight λ of the alignment batch's loss (the Booster repo's "
        "script/finetune/united/vlguard_lamb.sh default lamb=0.1).",
    )
    guide_batch_size: int = opt(
        4,
        "Alignment examples per step: the first this many of each alignment-stream batch (the "
        "VlguardTrainer's fixed batch size 4); 0 = the whole stream batch (train.batch_size).",
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(
                f"defense_options.lam = {self.lam} must be >= 0.",
                hint="The Booster repo uses lam = 0.1.",
            )
        if self.guide_batch_size < 0:
            raise ConfigError(
                f"defense_options.guide_batch_size = {self.guide_batch_size} must be >= 0.",
                hint="Use 4 (the Booster repo) or 0 for the whole stream batch.",
            )


class MixingJoint(FinetuneDefense):
    """Joint-loss safety mixing: each step ℓ(user batch) + λ·ℓ(small alignment batch)."""

    name = "mixing-joint"
    version = "1"
    Config = MixingJointOptions
    paper = (
        "SafeInstr / VLGuard-style mixing as the Booster repo's VlguardTrainer "
        "(git-disl/Booster trainer.py) (docs/components/mixing-joint.md)"
    )
    streams = ("alignment",)
    # 2 forwards + 1 backward (docs/performance.md), but the alignment forward/backward covers only
    # guide_batch_size = 4 examples: with train.batch_size B a step does the work of (B + 4) / B
    # SFT steps, 1.5 at `hftguard bench`'s default B = 8 (1.4 at the Booster repo's B = 10).
    passes = 1.5

    config: MixingJointOptions

    def plan(self, ctx: PlanContext) -> None:
        k = self.config.guide_batch_size
        if k > ctx.batch_size:
            raise ConfigError(
                f"mixing-joint takes guide_batch_size = {k} alignment examples per step from the "
                f"alignment stream, whose batches have train.batch_size = {ctx.batch_size} "
                "examples.",
                hint=f"Use defense_options.guide_batch_size <= {ctx.batch_size} (0 = the whole "
                f"stream batch), or --batch-size >= {k}.",
            )

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        from hftguard.engine.steps import token_nll

        user = ctx.loss_fn(model, batch)
        guide = self._guide_rows(ctx.next_batch("alignment"), ctx)
        if len(guide):
            nll, mask = token_nll(model, guide)
            total, count = nll.sum(), mask.sum().to(nll.dtype)
        else:  # a process holding none of the guide rows (data-parallel, K < processes)
            total = count = user.detach().new_zeros(())
        # Mean over the response tokens of the (global) alignment batch, like lm_loss: in a
        # data-parallel run each process holds some of its rows.
        align = ctx.token_mean(total, count)
        (user + self.config.lam * align).backward()
        return {"loss": user.detach(), "alignment_loss": align.detach()}

    def _guide_rows(self, stream_batch: Batch, ctx: StepContext) -> Batch:
        """The first ``guide_batch_size`` rows of the global stream batch that this process holds.

        Process k holds global rows k, k + W, k + 2W, ... (``EpochSampler``), so its local row j
        is global row j·W + k, which is among the first K when j < ⌈(K − k) / W⌉.
        """
        k = self.config.guide_batch_size
        if k == 0:
            return stream_batch
        world, rank = ctx.world_size, ctx.rank
        rows = max(0, -(-(k - rank) // world)) if world > 1 else k
        return _head(stream_batch, rows)


def _head(batch: Batch, rows: int) -> Batch:
    """The first ``rows`` rows of a batch (all of it when it has fewer)."""
    from hftguard.engine.steps import Batch

    if rows >= len(batch):
        return batch
    return Batch(
        batch.input_ids[:rows],
        batch.attention_mask[:rows],
        batch.labels[:rows],
        batch.is_harmful[:rows],
        _head(batch.refusal, rows) if batch.refusal is not None else None,
    )
