"""Antibody, fine-tuning stage: weight each user sample by how much the model prefers its answer
over a refusal (docs/components/antibody-finetune.md).

Why: the provider cannot tell harmful user samples from benign ones, but a safety-aligned
model can — it finds a refusal likelier than a harmful answer, and a benign answer likelier than a
refusal. So the step scores every sample with the current parameters, turns the scores into a
softmax over the batch and trains on the weighted token-mean loss; harmful samples get little
weight. ``is_harmful`` travels with the batch for logging only.

Per step: one forward + backward of the task view (the training forward), and one no-grad
forward of the refusal view. The task view's score needs the per-sample NLL of its answer under
the current parameters, which is exactly what the training forward computes (same parameters,
same inputs, no dropout), so it is read from that forward, detached, instead of from a separate
no-grad pass; the official code scores both views in extra passes (docs/performance.md). Under
LoRA the step costs F+B + F ≈ 1.5 SFT steps instead of 2. When the model has active dropout the
training forward is noisy, so the task view is scored in its own no-grad eval-mode forward as before
(``score_pass = "separate"`` forces that path; it gives the same weights and gradient).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftguard import opt
from hftguard.components import FinetuneDefense
from hftguard.context import PlanContext, StepContext
from hftguard.errors import ConfigError, HftguardError

if TYPE_CHECKING:
    import torch

    from hftguard.engine.steps import Batch

SCORE_REDUCTIONS = ("mean", "sum")
SCORE_PASSES = ("auto", "reuse", "separate")
WEIGHTS_FILE = "antibody_weights.jsonl"


@dataclass
class AntibodyFinetuneOptions:
    """Options of the Antibody fine-tuning stage (defaults: the official WeightedSFTTrainer)."""

    tau: float = opt(1.0, "Softmax temperature τ of the sample weights w = softmax(r/τ).")
    score_reduction: str = opt(
        "mean",
        "How a score r compares log-likelihoods: 'mean' = per-token mean NLL difference (the "
        "official code), 'sum' = summed log-likelihoods (paper Eq. 7).",
    )
    score_pass: str = opt(
        "auto",
        "Where the task answer's score comes from: 'reuse' = the training forward (detached; "
        "1.5 SFT steps), 'separate' = its own no-grad forward (2 SFT steps, as the official "
        "code), 'auto' = reuse unless the model has active dropout.",
    )
    log_samples: bool = opt(
        True, "Append per-sample scores and weights to antibody_weights.jsonl (Fig. 2 data)."
    )

    def __post_init__(self) -> None:
        if self.score_reduction not in SCORE_REDUCTIONS:
            raise ConfigError(
                f"defense_options.score_reduction = {self.score_reduction!r} is not one of "
                f"{', '.join(map(repr, SCORE_REDUCTIONS))}.",
                hint="Use 'mean' (official code, the default) or 'sum' (paper Eq. 7).",
            )
        if self.score_pass not in SCORE_PASSES:
            raise ConfigError(
                f"defense_options.score_pass = {self.score_pass!r} is not one of "
                f"{', '.join(map(repr, SCORE_PASSES))}.",
                hint="Use 'auto' (the default), 'reuse' or 'separate'.",
            )
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ConfigError(
                f"defense_options.tau = {self.tau} must be a positive number.",
                hint="τ = 1 is the paper's value; smaller τ sharpens the weights.",
            )


class AntibodyFinetune(FinetuneDefense):
    """Antibody stage 2: softmax(likelihood-ratio) sample weights against harmful user data."""

    name = "antibody"
    version = "1"
    Config = AntibodyFinetuneOptions
    paper = (
        "Nguyen et al., Antibody, ICLR 2026, arXiv 2603.00498; docs/components/antibody-finetune.md"
    )
    refusal_view = True
    # ≈1.7× for the official code if backward = 2 forwards (docs/performance.md); under LoRA the
    # frozen base weights need no weight gradients, so backward ≈ 1 forward and the official scheme
    # (2F scoring + F + B) / (F + B) costs ≈ 2.0 (measured 1.99× by `hftguard bench`). Reusing the
    # training forward for the task score leaves one F: (F + B + F) / (F + B) ≈ 1.5.
    passes = 1.5

    config: AntibodyFinetuneOptions

    def plan(self, ctx: PlanContext) -> None:
        # The weights are a softmax over the (global) batch: over one sample it is 1, and the
        # weighted loss is the plain one, so the run would be SFT at twice the cost.
        if ctx.batch_size < 2:
            raise ConfigError(
                f"Antibody's fine-tuning stage with train.batch_size = {ctx.batch_size}: its "
                "sample weights are a softmax over the batch, which gives a single sample the "
                "weight 1, so the run would silently be plain SFT.",
                hint="Use train.batch_size >= 2 (--batch-size 16 as in Antibody's code), or "
                "--defense sft if plain fine-tuning is what you want.",
            )
        # Length grouping puts samples of similar length together, and harmful and benign samples
        # differ in length: the softmax would mostly compare harmful samples with each other.
        if ctx.group_by_length:
            raise ConfigError(
                "Antibody's fine-tuning stage with train.group_by_length = true: its sample "
                "weights are a softmax over the batch, and grouping by length puts harmful and "
                "benign samples (which differ in length) into different batches, so the defense "
                "would mostly compare harmful samples with each other.",
                hint="Turn train.group_by_length off for this defense (--set "
                "train.group_by_length=false; off is the default).",
            )

    def setup(self, ctx: StepContext) -> None:
        # Mirror the loop's own log handling: a fresh run starts an empty file; a resumed one
        # keeps only the lines of steps the checkpoint covers (a torn last line, from a crash
        # while it was written, is dropped). Process 0 alone writes it (the rows of the whole
        # global batch).
        path = self._log_path(ctx)
        if path is None or ctx.rank != 0 or not path.exists():
            return
        if ctx.step == 0:
            path.unlink()
            return
        from hftguard.engine.checkpoints import trim_log

        step = ctx.step
        warn = ctx.reporter.warn if ctx.reporter is not None else None
        trim_log(path, lambda row: row.get("step", 0) < step, warn)

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        import torch

        from hftguard.engine.steps import token_nll

        if batch.refusal is None:
            raise HftguardError(
                "The Antibody fine-tuning stage needs the refusal view of each "
                "user sample, and the batch has none.",
                hint="Encode the data with refusal_view=True (the pipeline "
                "does so for this defense).",
            )
        # Scores with the current parameters, no gradient through the weights.
        if self._reuse_training_forward(model):
            nll, mask = token_nll(model, batch)  # the training forward (weighted below)
            per_sample_sum = nll.sum(dim=1)
            n_tokens = mask.sum(dim=1).to(per_sample_sum.dtype)
            task_nll = self._reduce(per_sample_sum.detach(), n_tokens).float()
            refusal_nll = self._score_nll(model, batch.refusal)
        else:
            task_nll, refusal_nll = self._score_nlls(model, batch)
            nll, mask = token_nll(model, batch)
            per_sample_sum = nll.sum(dim=1)
            n_tokens = mask.sum(dim=1).to(per_sample_sum.dtype)

        # The softmax runs over the *global* batch: with several processes every one gathers the
        # few numbers per sample it needs (one all-gather) and computes the same weights.
        rows = torch.stack(
            [task_nll, refusal_nll, n_tokens, batch.is_harmful.to(task_nll)], dim=1
        ).detach()
        rows = ctx.all_gather_rows(rows)
        task_all, refusal_all, tokens_all, harmful_all = rows.unbind(dim=1)
        r = refusal_all - task_all  # = log π(y|x) − log π(y_r|x) (per token for 'mean')
        w_all = torch.softmax(r / self.config.tau, dim=0)
        w = ctx.own_rows(w_all)

        # Weighted token-mean loss L = Σ_i w_i Σ_t ℓ_it / Σ_i w_i N_i, one F/B. Each process
        # backpropagates its rows' part of the numerator as a term of the global sum.
        loss = ctx.sum_term(
            (w * per_sample_sum).sum() / (w_all * tokens_all).sum().clamp_min(1e-12)
        )
        loss.backward()
        unweighted = ctx.sum_term(per_sample_sum.detach().sum()) / tokens_all.sum().clamp_min(1)

        # One read of the per-sample numbers on the host, for the group counts (a group with no
        # sample has no key) and the per-sample log; the metrics themselves stay 0-d tensors.
        log = self.config.log_samples and ctx.rank == 0 and self._log_path(ctx) is not None
        columns = [harmful_all, r, w_all, task_all, refusal_all] if log else [harmful_all]
        host = torch.stack(columns).tolist()
        metrics = self._metrics(w_all, r, harmful_all, int(sum(host[0])))
        metrics["loss"] = loss.detach()
        metrics["loss_unweighted"] = unweighted
        if log:
            self._log_samples(ctx, *host)
        return metrics

    # -- scoring ---------------------------------------------------------------------------

    def _reuse_training_forward(self, model: Any) -> bool:
        """Whether the training forward's per-sample NLL is the score (no dropout is active)."""
        mode = self.config.score_pass
        if mode != "auto":
            return mode == "reuse"
        return not (model.training and _has_active_dropout(model))

    def _reduce(self, total: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
        if self.config.score_reduction == "mean":  # the official default: length-normalised
            return total / n_tokens.clamp_min(1)
        return total

    def _score_nll(self, model: Any, view: Batch) -> torch.Tensor:
        """Per-sample NLL (mean or sum over response tokens) of one view, no gradient, eval mode."""
        import torch

        from hftguard.engine.steps import token_nll

        was_training = model.training
        model.eval()  # score without dropout noise (a no-op for dropout-0 LoRA)
        try:
            with torch.no_grad():
                nll, mask = token_nll(model, view)
        finally:
            model.train(was_training)
        return self._reduce(nll.sum(dim=1), mask.sum(dim=1)).float()

    def _score_nlls(self, model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample task and refusal NLLs (mean or sum over response tokens), one forward."""
        import torch

        from hftguard.engine.steps import Batch, token_nll

        assert batch.refusal is not None
        b = len(batch)
        task, refusal = batch, batch.refusal
        width = max(task.input_ids.shape[1], refusal.input_ids.shape[1])
        stacked = Batch(
            torch.cat([_pad(task.input_ids, width, 0), _pad(refusal.input_ids, width, 0)]),
            torch.cat(
                [_pad(task.attention_mask, width, 0), _pad(refusal.attention_mask, width, 0)]
            ),
            torch.cat([_pad(task.labels, width, -100), _pad(refusal.labels, width, -100)]),
            torch.cat([task.is_harmful, refusal.is_harmful]),
        )
        was_training = model.training
        model.eval()  # score without dropout noise (a no-op for dropout-0 LoRA)
        try:
            with torch.no_grad():
                nll, mask = token_nll(model, stacked)
        finally:
            model.train(was_training)
        total = self._reduce(nll.sum(dim=1), mask.sum(dim=1))
        return total[:b].float(), total[b:].float()

    # -- logging (docs/components/antibody-finetune.md, "Logged metrics") ----------------

    @staticmethod
    def _metrics(
        w: torch.Tensor, r: torch.Tensor, is_harmful: torch.Tensor, n_harm: int
    ) -> dict[str, Any]:
        """Batch statistics of the weights as 0-d tensors (masks multiply: no host sync)."""
        b = len(w)
        harm = is_harmful.to(device=w.device, dtype=w.dtype)
        out: dict[str, Any] = {
            "harmful_weight_mass": (w * harm).sum() if n_harm else 0.0,
            "ess": 1.0 / (w.double() ** 2).sum(),
            "max_weight": w.max(),
        }
        if n_harm:  # keys of an empty group are omitted (no NaN in the log)
            out["weight_harmful_avg"] = (w * harm).sum() / n_harm
            out["score_harmful_avg"] = (r * harm).sum() / n_harm
            out["harmful_weight_mass_ratio"] = out["harmful_weight_mass"] / (n_harm / b)
        if n_harm < b:
            benign = 1.0 - harm
            out["weight_benign_avg"] = (w * benign).sum() / (b - n_harm)
            out["score_benign_avg"] = (r * benign).sum() / (b - n_harm)
        return out

    def _log_path(self, ctx: StepContext) -> Path | None:
        if not self.config.log_samples or ctx.output_dir is None:
            return None
        return Path(ctx.output_dir) / WEIGHTS_FILE

    def _log_samples(
        self,
        ctx: StepContext,
        is_harmful: list[float],
        r: list[float],
        w: list[float],
        task_nll: list[float],
        refusal_nll: list[float],
    ) -> None:
        path = self._log_path(ctx)
        if path is None:
            return
        cols = zip(is_harmful, r, w, task_nll, refusal_nll, strict=True)
        with path.open("a") as fh:
            for i, (h, ri, wi, tn, rn) in enumerate(cols):
                fh.write(
                    json.dumps(
                        {
                            "step": ctx.step,
                            "index": i,
                            "is_harmful": bool(h),
                            "score": ri,
                            "weight": wi,
                            "task_nll": tn,
                            "refusal_nll": rn,
                        }
                    )
                    + "\n"
                )
            fh.flush()


def _has_active_dropout(model: Any) -> bool:
    """A dropout module with p > 0, or a model config with non-zero attention dropout."""
    import torch

    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return bool(getattr(config, "attention_dropout", 0.0) or 0.0)


def _pad(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """Right-pad a [B, T] tensor to ``width`` columns (padded positions are masked out)."""
    import torch.nn.functional as F

    return F.pad(t, (0, width - t.shape[1]), value=value) if t.shape[1] < width else t
