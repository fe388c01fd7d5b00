"""KL regularisation to the aligned model: fine-tune on the user data while a KL term keeps the
model's next-token distributions close to those of the model the fine-tuning started from
(docs/components/kl.md; the Vaccine repo's ``KLTrainer``).

Why: harmful fine-tuning works by moving the aligned model's output distribution; penalising the
divergence from the aligned model on every batch resists that drift (and, equally, the benign
task's).

Mechanics: at the start of fine-tuning the trainable parameters are snapshotted (θ₀, as Lisa
snapshots its anchors). Each step runs the batch once at θ₀ without gradient (the teacher: the
trainable parameters are set to θ₀ and restored exactly, ``gradients.parameters_at``) and once
at θ with gradient (the student, which also gives the cross-entropy), then backpropagates

    L(θ) = CE(θ; batch) + λ · mean_t KL_t

where KL_t is the KL divergence between the teacher's and the student's next-token distributions
at position t, over the vocabulary, averaged over the positions selected by ``tokens``.

The teacher is the snapshot, not "the model with its adapter disabled": under ``lora_mode =
merge`` the two are the same (a fresh adapter starts at B = 0), but under ``continue`` (single
LoRA) disabling the adapter would drop the alignment adapter itself. The snapshot is right in both.

Differences from the repo's code, on purpose (docs/components/kl.md): the repo applies
``KLDivLoss(reduction="batchmean")(log_softmax(student_logits, dim=1), softmax(teacher_logits,
dim=1))``: a softmax over dim 1, the *sequence* axis of [B, T, V] logits, instead of the
vocabulary, summed over every position including padding and divided by the batch size. Here the
softmax runs over the vocabulary, padding is excluded, and the sum is divided by the number of
positions (a per-token KL on the CE's per-token scale). The direction is the repo's:
``KLDivLoss(input=log q, target=p)`` is KL(p ‖ q) = KL(teacher ‖ student).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftguard import opt
from hftguard.components import FinetuneDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError

if TYPE_CHECKING:
    import torch

DIRECTIONS = ("teacher-student", "student-teacher")
TOKENS = ("all", "response")


@dataclass
class KLOptions:
    """Options of the KL defense (defaults: the Vaccine repo's KL baseline)."""

    lam: float = opt(
        0.1,
        "Weight λ of the KL term (the Vaccine repo's script/KL_finetune/*.sh default, lamb=0.1; "
        "its KL is on a different scale, see docs/components/kl.md).",
    )
    direction: str = opt(
        "teacher-student",
        "'teacher-student' = KL(p_aligned ‖ p_θ), what the repo's KLDivLoss(log_softmax(student), "
        "softmax(teacher)) computes; 'student-teacher' = KL(p_θ ‖ p_aligned).",
    )
    tokens: str = opt(
        "all",
        "Positions the KL is averaged over: 'all' = every position that predicts a non-pad token "
        "(prompt and response; the repo uses every position, padding included), 'response' = "
        "the response tokens the cross-entropy trains on.",
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(
                f"defense_options.lam = {self.lam} must be >= 0.",
                hint="The Vaccine repo's KL scripts use lam = 0.1; 0 is plain SFT.",
            )
        if self.direction not in DIRECTIONS:
            raise ConfigError(
                f"defense_options.direction = {self.direction!r} is not one of "
                f"{', '.join(map(repr, DIRECTIONS))}.",
                hint="Use 'teacher-student' (the repo's KL(aligned ‖ θ), the default).",
            )
        if self.tokens not in TOKENS:
            raise ConfigError(
                f"defense_options.tokens = {self.tokens!r} is not one of "
                f"{', '.join(map(repr, TOKENS))}.",
                hint="Use 'all' (the default) or 'response'.",
            )


class KL(FinetuneDefense):
    """KL to the aligned model: CE + λ·KL between the start-of-fine-tuning model and θ."""

    name = "kl"
    version = "1"
    Config = KLOptions
    paper = (
        "KL baseline of the Vaccine repo (git-disl/Vaccine trainer.py KLTrainer; Huang et al., "
        "NeurIPS 2024, arXiv 2402.01109) (docs/components/kl.md)"
    )
    # One forward + backward of the student and one no-grad teacher forward. Under LoRA the
    # frozen base weights need no weight gradients, so a backward costs about one forward and
    # (F + B + F) / (F + B) ≈ 1.5 (the convention of Antibody's fine-tuning stage).
    passes = 1.5

    config: KLOptions

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: The trainable parameters at the start of fine-tuning (the teacher), by param name.
        self.theta0: dict[str, torch.Tensor] = {}
        self._restored = False

    def setup(self, ctx: StepContext) -> None:
        import torch

        if not self._restored:  # fresh run: the teacher is the model as fine-tuning starts
            with torch.no_grad():
                self.theta0 = {n: p.detach().clone() for n, p in ctx.params}
            return
        self._restored = False  # restored from a checkpoint (loaded on the CPU)
        for n, p in ctx.params:
            self.theta0[n] = self.theta0[n].to(device=p.device, dtype=p.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"theta0": dict(self.theta0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta0 = dict(state["theta0"])
        self._restored = True

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        import torch.nn.functional as F

        from hftguard.engine.steps import IGNORE_INDEX, logits_at

        targets = batch.labels[:, 1:]
        mask = targets != IGNORE_INDEX  # the response tokens the cross-entropy trains on
        # 'all': every position whose target (the next token) is not padding
        response = self.config.tokens == "response"
        positions = mask if response else batch.attention_mask[:, 1:].bool()
        # the logits anyone needs, [N, V] at these positions only (collate pads after the
        # labels, so for 'all' they are the positions themselves)
        rows = mask if response else positions | mask
        teacher = self._teacher_logits(model, batch, ctx, rows)
        logits = logits_at(model, batch, rows)
        answers = logits if response else logits[mask[rows]]
        nll = F.cross_entropy(answers, targets[mask], reduction="sum")
        denom = batch.meta.get("loss_tokens")  # set by the sampler in a data-parallel run
        ce = nll / (mask.sum().clamp_min(1) if denom is None else denom)

        per_token = _kl_rows(teacher, logits, self.config.direction)
        if not response:  # a labelled padding position (none from collate) is not averaged
            per_token = per_token * positions[rows]
        count = positions.sum().to(per_token.dtype)
        kl = ctx.token_mean(per_token.sum(), count)  # over the global batch's positions
        (ce + self.config.lam * kl).backward()
        return {"loss": ce.detach(), "kl": kl.detach(), "kl_term": self.config.lam * kl.detach()}

    def _teacher_logits(
        self, model: Any, batch: Any, ctx: StepContext, rows: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[N, V]`` (fp32) of the model at θ₀ at the ``rows`` positions of ``[B, T-1]``:
        a no-grad forward in eval mode (a fixed reference; a no-op for dropout-0 LoRA), the
        parameters restored exactly after."""
        import torch

        from hftguard.engine.steps import logits_at, parameters_at

        values = [self.theta0[n] for n, _ in ctx.params]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), parameters_at(ctx.params, values):
                return logits_at(model, batch, rows)
        finally:
            model.train(was_training)


def _kl_rows(teacher: torch.Tensor, student: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-row KL divergence ``[N]`` between the next-token distributions of two ``[N, V]``
    logit tensors: KL(p_T ‖ p_θ) for ``teacher-student``, KL(p_θ ‖ p_T) otherwise.

    KL(p_T ‖ p_θ) = Σ_v p_T (t − x) + (lse(x) − lse(t)) · Σ_v p_T, with t, x the logits and lse the
    log-sum-exp (log p = logit − lse): no [N, V] log-softmax of the student is built, and its
    gradient, p_θ · Σ p_T − p_T, comes from the log-sum-exp and the product alone. At θ = θ₀,
    t − x and lse(x) − lse(t) are exactly 0, so the KL is 0, not rounding.
    """
    import torch
    import torch.nn.functional as F

    lse_t = torch.logsumexp(teacher, dim=-1)
    log_p_t = teacher - lse_t[:, None]
    if direction != "teacher-student":  # Σ_v p_θ (log p_θ − log p_T)
        log_p_s = torch.log_softmax(student, dim=-1)
        return F.kl_div(log_p_t, log_p_s, log_target=True, reduction="none").sum(-1)
    p_t = log_p_t.exp()
    return (p_t * (teacher - student)).sum(-1) + (
        torch.logsumexp(student, dim=-1) - lse_t
    ) * p_t.sum(-1)
