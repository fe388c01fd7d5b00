"""T-Vaccine, "Targeted Vaccine" (Liu et al., arXiv 2410.09760): Vaccine's perturbation-aware
alignment, applied only to a few decoder layers drawn at random with a bias towards the layers
where a harmful example pulls hardest, and training only those layers
(docs/components/t-vaccine.md).

Three clocks (defaults from the official script ``script/alignment/T-Vaccine.sh``):

- Every ``probability_every`` (K) steps, from step 0: one harmful example (the first row of a
  ``harmful`` stream batch: harmful prompt -> harmful answer) is run forward and backward and, for
  every decoder layer l, the norm ||dL_harm / d e_l||_2 of the gradient of its loss with respect
  to the layer's attention output e_l is recorded. The layer probabilities are
  p_l = norm_l / sum_k norm_k. No parameter is updated by this pass.
- Every ``resample_every`` (J) steps, from step 0: ``layers`` (S) distinct layers are drawn without
  replacement, each draw proportional to p among the layers not drawn yet (numpy's
  ``choice(replace=False, p=p)``, as the official code does). Until the next draw, only the
  trainable parameters of those layers are trained: the others are frozen for the step
  (``requires_grad`` off during both passes, so no graph is built for them, and ``.grad`` left
  None, so AdamW does not touch them at all: no momentum step, no weight decay).
- Every step: Vaccine's two passes (docs/components/vaccine.md) restricted to the selected layers.
  Pass 1 takes G_l = dL/d e_l of the alignment loss for the selected layers only; the
  perturbation is eps_l = rho * G_l / (||G_sel|| + 1e-7), ||G_sel|| one norm over the selected
  layers and the whole batch tensors jointly. Pass 2 adds the constant eps_l to the selected
  attention outputs; its gradient with respect to the trained parameters is the update.

Which parameters "belong" to a layer follows ``scope``: ``attention`` (default, the official code)
toggles the parameters inside the selected layers' self-attention modules, so adapters elsewhere
(MLP LoRA, anything outside the decoder layers) train at every step; ``layer`` toggles everything
inside the selected decoder layers. With the default LoRA targets (q/k/v) the two are the same.

Randomness and resume: the draw at step t uses its own CPU generator seeded with (``seed``, t), so
it is the same on every process and independent of dropout and data order; the norms and the
current selection are checkpointed (``state_dict``), so a resumed run continues bit-exactly. In a
data-parallel run the statistic is the global batch's first harmful row (process 0 computes it and
the per-layer norms are shared with one all-reduce), and ||G_sel|| is the global batch's norm, so
the step equals the one-process step.

Deviations from the official code (docs/components/t-vaccine.md): a layer whose statistic is 0 is
drawn only after every layer with a positive one (numpy would raise); a layer without trainable
parameters is never drawn; the activation gradients of pass 1 are taken with ``torch.autograd.grad``
on the attention outputs (no discarded parameter gradients), and the official activation
checkpointing of the unselected layers (a memory saving that does not change the numbers) is not
reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hftguard import opt
from hftguard.components import AlignmentDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError, HftguardError, did_you_mean

#: Added to the norm of the selected layers' gradients before dividing, as Vaccine does.
NORM_EPS = 1e-7
#: What a layer's trainable parameters are: those of its attention module or of the whole layer.
SCOPES = ("attention", "layer")
#: The draw at step t uses a generator seeded with seed * SEED_STRIDE + t.
SEED_STRIDE = 1_000_003


@dataclass
class TVaccineConfig:
    """T-Vaccine options (defaults: the official script ``script/alignment/T-Vaccine.sh``)."""

    rho: float = opt(
        3.0, "Perturbation radius: the L2 norm of eps over the selected layers jointly (paper 3)."
    )
    layers: int = opt(
        8,
        "S, layers drawn and trained at a time (official `lisa_activated_layers` 8); a model "
        "with fewer layers has all of them selected, with a warning.",
    )
    resample_every: int = opt(
        20, "J, steps between two draws of the layers (official `lisa_interval_steps` 20)."
    )
    probability_every: int = opt(
        200,
        "K, steps between two recomputations of the layer probabilities from one harmful "
        "example (official `probability_steps` 200).",
    )
    scope: str = opt(
        "attention",
        "Parameters a selected layer trains: attention = those inside its self-attention module "
        "(official code; adapters elsewhere train every step); layer = all of the decoder "
        "layer's.",
    )
    seed: int = opt(
        0, "Seed of the layer draws (the draw at step t is seeded with (seed, t)); hftguard's."
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.rho, (int, float)) and math.isfinite(self.rho) and self.rho >= 0):
            raise ConfigError(
                f"defense_options.rho = {self.rho} must be a finite number >= 0.",
                hint="The T-Vaccine paper uses rho = 3 (0 gives SFT on the selected layers).",
            )
        if self.layers < 1:
            raise ConfigError(
                f"defense_options.layers = {self.layers}: at least one layer must be selected.",
                hint="The official script selects S = 8 layers.",
            )
        for name, value, official in (
            ("resample_every", self.resample_every, 20),
            ("probability_every", self.probability_every, 200),
        ):
            if value < 1:
                raise ConfigError(
                    f"defense_options.{name} = {value} must be >= 1 (a number of steps).",
                    hint=f"The official script uses {official}.",
                )
        if self.scope not in SCOPES:
            raise ConfigError(
                f"defense_options.scope: {self.scope!r} is not one of "
                f"{', '.join(map(repr, SCOPES))}." + did_you_mean(str(self.scope), SCOPES),
                hint="attention (the official code) or layer (the whole decoder layer).",
            )
        if self.seed < 0:
            raise ConfigError(f"defense_options.seed = {self.seed} must be >= 0.")


def layer_probabilities(norms: Sequence[float], eligible: Sequence[bool]) -> list[float]:
    """p_l = norm_l / sum of the eligible layers' norms (0 for an ineligible layer); uniform over
    the eligible layers when all their norms are 0."""
    total = sum(n for n, ok in zip(norms, eligible, strict=True) if ok)
    count = sum(bool(ok) for ok in eligible)
    if total > 0:
        return [n / total if ok else 0.0 for n, ok in zip(norms, eligible, strict=True)]
    return [1.0 / count if ok else 0.0 for ok in eligible]


def sample_layers(
    probs: Sequence[float], k: int, generator: Any, eligible: Sequence[bool] | None = None
) -> list[int]:
    """``k`` distinct layer indices (sorted), drawn one at a time without replacement, each draw
    proportional to ``probs`` among the layers not drawn yet.

    Implemented as an exponential race: layer l gets the key E_l / p_l with E_l ~ Exp(1), and the
    k smallest keys win, which has the distribution of the sequential draws above. Eligible layers
    with p_l = 0 come after all positive ones, in a uniformly random order (the official
    ``np.random.choice`` raises instead); ineligible layers are never drawn. At most the number of
    eligible layers is returned.
    """
    import torch

    n = len(probs)
    ok = [True] * n if eligible is None else list(eligible)
    clocks = (-torch.log1p(-torch.rand(n, generator=generator, dtype=torch.float64))).tolist()
    positive = sorted((clocks[i] / probs[i], i) for i in range(n) if ok[i] and probs[i] > 0)
    zero = sorted((clocks[i], i) for i in range(n) if ok[i] and not probs[i] > 0)
    return sorted(i for _, i in (positive + zero)[:k])


def entropy(probs: Sequence[float]) -> float:
    """Shannon entropy of ``probs`` in nats (log L for the uniform distribution over L layers)."""
    return -sum(p * math.log(p) for p in probs if p > 0)


@contextmanager
def _kept_outputs(modules: Sequence[Any], outs: list[Any]) -> Iterator[None]:
    """Keep each module's (first) output of the next forward in ``outs``, as a tensor autograd can
    differentiate with respect to: an output that does not require grad (nothing below it is
    trainable) is replaced by a detached leaf that does, which changes no value and no other
    gradient (there was no graph below it)."""
    from hftguard.engine.steps import _first, _replace_first, forward_hooks

    outs[:] = [None] * len(modules)

    def make(i: int) -> Any:
        def hook(_m: Any, _inp: Any, output: Any) -> Any:
            out = _first(output)
            if out.requires_grad:
                outs[i] = out
                return None
            leaf = out.detach().requires_grad_(True)
            outs[i] = leaf
            return _replace_first(output, leaf)

        return hook

    with forward_hooks(modules, [make(i) for i in range(len(modules))]):
        yield


def _first_row(batch: Any) -> Any:
    """Row 0 of a batch as a batch of one, normalised by its own response tokens (no
    ``loss_tokens``). Right padding: the pad positions after it change no activation gradient of
    its real tokens, so the row is not trimmed (that would need a host synchronisation)."""
    from hftguard.engine.steps import Batch

    return Batch(
        batch.input_ids[:1],
        batch.attention_mask[:1],
        batch.labels[:1],
        batch.is_harmful[:1],
        None,
        {},
    )


class TVaccine(AlignmentDefense):
    """T-Vaccine: Vaccine on a few sampled safety-critical layers, training only those."""

    name = "t-vaccine"
    version = "1"
    Config = TVaccineConfig
    paper = (
        "Liu et al., Targeted Vaccine (T-Vaccine), arXiv 2410.09760; docs/components/t-vaccine.md"
    )
    streams = ("harmful",)
    # Vaccine's 2 F+B per step (docs/performance.md), the backward of pass 1 stopping at the
    # lowest selected layer; the layer statistic adds 1 F+B of one harmful example every K steps
    # (amortised 1/(K * batch_size) of a step, not counted here).
    passes = 2.0
    finetune_lora = "merge"  # double LoRA, as Vaccine (docs/concepts.md)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        #: ||dL_harm/d e_l|| per decoder layer from the last statistic pass (None before step 0).
        self.norms: list[float] | None = None
        #: The layers trained now (sorted indices), None before step 0.
        self.selected: list[int] | None = None
        self._warned: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        return {
            "norms": None if self.norms is None else list(self.norms),
            "selected": None if self.selected is None else list(self.selected),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        norms, selected = state.get("norms"), state.get("selected")
        self.norms = None if norms is None else [float(x) for x in norms]
        self.selected = None if selected is None else [int(x) for x in selected]

    # -----------------------------------------------------------------------------------------

    def _warn_once(self, ctx: StepContext, key: str, message: str) -> None:
        if key not in self._warned and ctx.reporter is not None:
            ctx.reporter.warn(message)
        self._warned.add(key)

    def owners(self, model: Any, params: Sequence[tuple[str, Any]]) -> list[int]:
        """For each trainable parameter, the decoder layer whose selection trains it, or -1 for a
        parameter outside every layer's ``scope`` (trained at every step)."""
        from hftguard.engine.steps import attention_modules, decoder_layers

        blocks = attention_modules(model) if self.config.scope == "attention" else None
        blocks = blocks if blocks is not None else decoder_layers(model)
        where = {id(p): layer for layer, block in enumerate(blocks) for p in block.parameters()}
        return [where.get(id(p), -1) for _, p in params]

    def layer_statistic(self, model: Any, modules: Sequence[Any], ctx: StepContext) -> list[float]:
        """||dL/d e_l||_2 for every layer on the first row of a harmful batch (one F+B, with every
        trainable parameter live), the same on every process; one host synchronisation."""
        import torch

        harmful = ctx.next_batch("harmful")  # every process advances its stream alike
        device = ctx.params[0][1].device
        norms = torch.zeros(len(modules), dtype=torch.float64, device=device)
        if ctx.rank == 0:  # the global batch's row 0 lives on process 0 (rows rank::world)
            outs: list[Any] = []
            with _kept_outputs(modules, outs):
                loss = ctx.loss_fn(model, _first_row(harmful))
            live = [i for i, o in enumerate(outs) if o is not None]
            grads = torch.autograd.grad(loss, [outs[i] for i in live], allow_unused=True)
            for i, g in zip(live, grads, strict=True):
                if g is not None:
                    norms[i] = torch.linalg.vector_norm(g.to(torch.float64))
        norms = ctx.sum_over_processes([norms])[0]  # process 0's norms (the others hold zeros)
        values = [float(x) for x in norms.tolist()]
        if not all(math.isfinite(x) for x in values):
            raise HftguardError(
                f"T-Vaccine's layer statistic is not finite at step {ctx.step}: {values}.",
                hint="Lower train.lr, or use precision=fp32.",
            )
        return values

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        # Imported here so that listing plugins does not import torch (components.py).
        import torch

        from hftguard.engine.steps import (
            add_to_outputs,
            attention_modules,
            grad_norm,
            grads_of,
            joint_norm,
            set_grads,
        )

        cfg = self.config
        modules = attention_modules(model)
        owner = self.owners(model, ctx.params)
        eligible = [False] * len(modules)
        for layer in owner:
            if layer >= 0:
                eligible[layer] = True
        if not any(eligible):
            raise HftguardError(
                "T-Vaccine found no trainable parameter inside the decoder layers "
                f"(scope={cfg.scope}).",
                hint="Put the LoRA adapters on attention projections (lora.target_modules), or "
                "set defense_options.scope=layer.",
            )
        n_eligible = sum(eligible)
        if cfg.layers >= n_eligible:
            self._warn_once(
                ctx,
                "all",
                f"t-vaccine: layers={cfg.layers} but only {n_eligible} decoder layers hold "
                "trainable parameters; all of them are selected at every step (Vaccine on "
                "those layers).",
            )

        # Layer probabilities from one harmful example, every K steps (from step 0).
        if self.norms is None or ctx.step % cfg.probability_every == 0:
            self.norms = self.layer_statistic(model, modules, ctx)
        probs = layer_probabilities(self.norms, eligible)
        # Draw S layers without replacement, every J steps (from step 0).
        if self.selected is None or ctx.step % cfg.resample_every == 0:
            generator = torch.Generator().manual_seed(cfg.seed * SEED_STRIDE + ctx.step)
            self.selected = sample_layers(probs, cfg.layers, generator, eligible)
            positive = sum(n > 0 for n, ok in zip(self.norms, eligible, strict=True) if ok)
            if positive < len(self.selected):
                self._warn_once(
                    ctx,
                    "zero",
                    f"t-vaccine: at step {ctx.step} fewer than {len(self.selected)} layers have "
                    "a non-zero harmful-gradient statistic; the rest are drawn uniformly among "
                    "the layers with a zero statistic.",
                )
        chosen = set(self.selected)
        trained = [o < 0 or o in chosen for o in owner]
        active = [p for p, keep in zip(ctx.params, trained, strict=True) if keep]
        frozen = [p for (_, p), keep in zip(ctx.params, trained, strict=True) if not keep]
        targets = [modules[layer] for layer in self.selected]

        try:
            for p in frozen:  # no graph, no gradient for the unselected layers
                p.requires_grad_(False)
            # Pass 1: G_l = dL/d e_l for the selected layers only.
            outs: list[Any] = []
            with _kept_outputs(targets, outs):
                clean = ctx.loss_fn(model, batch)
            live = [i for i, o in enumerate(outs) if o is not None]
            found = torch.autograd.grad(clean, [outs[i] for i in live], allow_unused=True)
            store: list[Any] = [None] * len(targets)
            for i, g in zip(live, found, strict=True):
                store[i] = None if g is None else g.detach()
            captured = [g for g in store if g is not None]
            # One norm over the selected layers and the whole B x T x d tensors jointly.
            g_norm = grad_norm(captured) if captured else clean.new_zeros((), dtype=torch.float64)
            g_norm = ctx.norm_over_processes(
                g_norm
            )  # data parallel: over every process's activations
            scale = cfg.rho / (g_norm + NORM_EPS)
            eps = [None if g is None else (g.float() * scale).detach() for g in store]
            eps_norm = grad_norm([e for e in eps if e is not None]) if captured else g_norm
            # The perturbation against the selected attention outputs' joint norm (log only).
            squares = [None if o is None else o.detach().double().pow(2).sum() for o in outs]
            act_norm = ctx.norm_over_processes(joint_norm(squares, like=clean))
            # Pass 2: the selected attention outputs + constant eps_l; this gradient is the update.
            with add_to_outputs(targets, eps):
                loss = ctx.loss_fn(model, batch)
                grads = grads_of(loss, active)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        for p in frozen:
            p.grad = None  # AdamW skips a parameter without a gradient (no decay, no momentum)
        set_grads(active, grads)

        n_all = sum(p.numel() for _, p in ctx.params)
        n_trained = sum(p.numel() for _, p in active)
        return {
            "loss": loss.detach(),
            "loss_clean": clean.detach(),
            "eps_norm": eps_norm,
            "activation_grad_norm": g_norm,
            "activation_norm": act_norm,
            "eps_ratio": eps_norm / (act_norm + NORM_EPS),
            "selected_layers": float(len(self.selected)),
            "selected_mean_layer": sum(self.selected) / len(self.selected),
            "layer_prob_entropy": entropy(probs),
            "trained_share": n_trained / n_all,
        }
