"""An example hftguard plugin: the ``ldifs`` fine-tuning defense.

LDIFS (Mukhoti et al., 2023, "Fine-tuning can cripple your foundation model; preserving features
may be the solution", arXiv 2308.13320) fine-tunes with the task loss plus a penalty on how far
the model's internal features move from those of the model fine-tuning started from. Here the
start is the aligned model, so the penalty resists the drift of its representations that harmful
fine-tuning causes (and, equally, some of the benign task's). The README of this plugin states
the exact loss; in short, per step:

    L(θ) = CE(θ; batch) + λ · mean_{l in layers} mean_{p in positions} ‖h_l(θ; p) − h_l(θ₀; p)‖² / d

with h_l the hidden state after decoder layer l (Hugging Face's ``output_hidden_states`` without
the embedding output), p the batch's non-padding positions and d the hidden size.

Mechanics: ``setup`` snapshots the trainable parameters (θ₀); every step runs the batch once at
θ₀ without gradient (the reference, in eval mode, the parameters set and restored exactly by the
kit's ``parameters_at``) and once at θ with gradient, which gives both the features and the
cross-entropy, and backpropagates L. The snapshot, not "the model with the adapter disabled", is
the reference: it is right whether fine-tuning trains a fresh adapter or continues the alignment
adapter.

This module uses only the public API (``hftguard`` and the defense kit ``hftguard.engine.steps``,
imported inside the methods so that listing plugins does not import torch), so it doubles as a
template for a defense plugin: copy the directory ``plugins/hftguard-example-defense/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hftguard
from hftguard import ConfigError, FinetuneDefense, HftguardError, StepContext, opt

if TYPE_CHECKING:
    import torch

__all__ = [
    "LDIFS",
    "LDIFSConfig",
    "hftguard_register_finetune_defenses",
    "layer_indices",
    "squared_distance_sum",
]


@dataclass
class LDIFSConfig:
    """Options of the ``ldifs`` defense."""

    lam: float = opt(
        0.1,
        "Weight λ of the feature distance (this plugin's default; the paper tunes it per task). "
        "0 is plain SFT that still logs the distance.",
    )
    every: int = opt(
        1,
        "Use every k-th decoder layer, counted back from the last one (layers L, L-k, L-2k, ...); "
        "1 = all layers.",
    )

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)):
            raise ConfigError(
                f"defense_options.lam = {self.lam!r} is not a number.",
                hint="Use a number >= 0, e.g. lam = 0.1 (the default).",
            )
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(
                f"defense_options.lam = {self.lam} must be a finite number >= 0.",
                hint="Use lam = 0.1 (the default); 0 is plain SFT.",
            )
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(
                f"defense_options.every = {self.every!r} must be an integer >= 1.",
                hint="Use every = 1 (every decoder layer, the default).",
            )


def layer_indices(n_hidden_states: int, every: int) -> list[int]:
    """Indices into a model's ``hidden_states`` tuple (embedding output first, then one entry per
    decoder layer) of the layers the distance uses: the last layer, then every ``every``-th one
    before it. The embedding output (index 0) is never used."""
    return list(range(n_hidden_states - 1, 0, -every))


def squared_distance_sum(
    features: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total, count)`` of the feature distance over this process's positions.

    ``features`` and ``reference`` are per-layer hidden states ``[B, T, d]`` and ``mask`` the
    ``[B, T]`` non-padding mask. ``total`` is the sum over the masked positions of the per-layer
    squared L2 distance divided by ``d``, averaged over the layers; ``count`` the number of
    masked positions (0-d). ``total / count`` is the distance of one process; a step passes both
    to ``ctx.token_mean`` for the mean over the global batch.
    """
    keep = mask.bool()
    total = None
    for h, r in zip(features, reference, strict=True):
        diff = h.float() - r.float()
        per_position = diff.pow(2).sum(dim=-1)[keep] / diff.shape[-1]  # ‖Δ‖² / d
        term = per_position.sum()
        total = term if total is None else total + term
    if total is None:
        raise HftguardError("ldifs: no layer was selected for the feature distance.")
    return total / len(features), keep.sum().to(total.dtype)


class LDIFS(FinetuneDefense):
    """LDIFS: CE + λ·(L2 distance of the hidden features from the start-of-fine-tuning model)."""

    name = "ldifs"
    version = "1"
    Config = LDIFSConfig
    paper = (
        "Mukhoti et al., Fine-tuning can cripple your foundation model; preserving features may "
        "be the solution, TMLR 2024 (arXiv 2308.13320); plugins/hftguard-example-defense/README.md"
    )
    # One forward + backward at θ and one no-grad forward at θ₀. Under LoRA a backward costs about
    # one forward (the frozen base weights need no weight gradients), so (F + B + F) / (F + B)
    # ≈ 1.5 SFT steps (the convention of docs/performance.md).
    passes = 1.5

    config: LDIFSConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: The trainable parameters at the start of fine-tuning, in ``ctx.params`` order.
        self.theta0: list[torch.Tensor] = []
        #: Their names, to check a restored snapshot against the model it is applied to.
        self.theta0_names: list[str] = []
        self._restored = False

    # -- the run's lifetime ---------------------------------------------------------------------

    def setup(self, ctx: StepContext) -> None:
        names = [n for n, _ in ctx.params]
        if not self._restored:  # a fresh run: the reference is the model as fine-tuning starts
            self.theta0 = [p.detach().clone() for _, p in ctx.params]
            self.theta0_names = names
            return
        self._restored = False  # resumed: the snapshot was loaded from a checkpoint, on the CPU
        if self.theta0_names != names:
            raise HftguardError(
                "ldifs: the checkpoint's snapshot of the starting weights does not match the "
                "model's trainable parameters.",
                hint="Resume with the same model and LoRA settings, or start the run again.",
            )
        self.theta0 = [
            t.to(device=p.device, dtype=p.dtype)
            for t, (_, p) in zip(self.theta0, ctx.params, strict=True)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.theta0_names), "theta0": list(self.theta0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta0_names = list(state["names"])
        self.theta0 = list(state["theta0"])
        self._restored = True

    # -- one step -------------------------------------------------------------------------------

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        from hftguard.engine.steps import logits_nll

        if len(self.theta0) != len(ctx.params):
            raise HftguardError(
                "ldifs: training_step ran before setup (no snapshot of the starting weights).",
                hint="Call defense.setup(ctx) once before the first step.",
            )
        reference = self._reference_features(model, batch, ctx)
        out = model(**batch.model_inputs(), output_hidden_states=True)
        # The cross-entropy from the same forward, normalised exactly as ctx.loss_fn (lm_loss)
        # does: by the response tokens, or by the sampler's global count in a data-parallel run.
        nll, targets = logits_nll(out.logits, batch.labels)
        denom = batch.meta.get("loss_tokens")
        ce = nll.sum() / (targets.sum().clamp_min(1) if denom is None else denom)
        chosen = layer_indices(len(out.hidden_states), self.config.every)
        features = [out.hidden_states[i] for i in chosen]
        total, count = squared_distance_sum(features, reference, batch.attention_mask)
        distance = ctx.token_mean(total, count)  # a mean over the global batch's positions
        (ce + self.config.lam * distance).backward()
        distance = distance.detach()
        return {
            "loss": ce.detach(),
            "ldifs": distance,
            "ldifs_term": self.config.lam * distance,
        }

    def _reference_features(self, model: Any, batch: Any, ctx: StepContext) -> list[torch.Tensor]:
        """The chosen layers' hidden states of the model at θ₀ on ``batch``: a no-grad forward in
        eval mode, the trainable parameters set to θ₀ and restored bit-exactly afterwards."""
        import torch

        from hftguard.engine.steps import parameters_at

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), parameters_at(ctx.params, self.theta0):
                hidden = model(**batch.model_inputs(), output_hidden_states=True).hidden_states
                if hidden is None:
                    raise HftguardError(
                        "ldifs: the model returned no hidden states.",
                        hint="ldifs needs a model that supports output_hidden_states=True.",
                    )
                return [hidden[i].detach() for i in layer_indices(len(hidden), self.config.every)]
        finally:
            model.train(was_training)


@hftguard.hookimpl
def hftguard_register_finetune_defenses() -> list[type[FinetuneDefense]]:
    """Register the ``ldifs`` fine-tuning defense with hftguard."""
    return [LDIFS]
