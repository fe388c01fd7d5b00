"""RepNoise (Rosati et al., NeurIPS 2024): align while pushing the model's representations of
harmful text towards noise, so that later harmful fine-tuning has little harmful information left
to recover (docs/components/repnoise.md).

One step minimises, in a single backward pass,

    L = CE(A) + beta * (1/L) sum_l MMD(a_l(H), z_l) - alpha * log(lens(H) + 1)

- A: the alignment batch (harmful prompts, refusal answers): the harmless cross-entropy.
- H: a batch of the harmful stream (harmful prompts, harmful answers). Only its answer tokens
  count: the mask ``m`` is its label mask, given explicitly (the official code derives it from the
  tokens where paired harmful and harmless sequences differ, which only works for paired batches).
- a_l(H): the output of decoder layer l's MLP block on H, masked to the answer tokens and
  flattened to one vector per sample; z_l: standard Gaussian noise of the same shape, masked the
  same way. MMD: a Gaussian-kernel maximum mean discrepancy with 5 bandwidths (:func:`mmd`).
- lens(H): the harmful answers' cross-entropy read through the "logit lens" at every depth: the
  final norm and the LM head applied to the embedding output and to each layer's output, plus the
  model's own final logits, summed and divided by L + 1 (the official code's normalisation). The
  ``- alpha * log(. + 1)`` term is gradient *ascent* on it, damped by the log.

Cost: two forwards (A; H with hooks) and one backward through both, plus L extra LM-head
projections for the lens at H's answer positions, each recomputed in the backward (activation
checkpointing keeps one [answer tokens, vocab] tensor alive at a time). On a small model with a
large vocabulary (SmolLM2: 49k tokens, width 576, where one LM head is ~20% of a forward) the
lens dominates the step; ``passes`` counts the two forward/backward passes only
(docs/components/repnoise.md, "Cost per step").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hftguard import opt
from hftguard.components import AlignmentDefense
from hftguard.context import StepContext
from hftguard.errors import ConfigError, HftguardError

#: Kernels of the MMD: bandwidths base * KERNEL_MUL ** k for k = -2..2 (the official MMD_loss:
#: kernel_mul 2, kernel_num 5, base = mean off-diagonal squared distance, not differentiated).
KERNEL_NUM = 5
KERNEL_MUL = 2.0


@dataclass
class RepNoiseConfig:
    """RepNoise options (defaults: the official repository; docs/components/repnoise.md)."""

    alpha: float = opt(
        1.0,
        "Weight of the gradient-ascent term -alpha*log(harmful lens CE + 1) (official repo 1; "
        "the Booster/Antibody baselines use 0.1).",
    )
    beta: float = opt(0.001, "Weight of the MMD between harmful activations and Gaussian noise.")

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(
                f"alpha and beta must be >= 0, got alpha={self.alpha}, beta={self.beta}.",
                hint="The official repository uses alpha=1, beta=0.001.",
            )


class RepNoise(AlignmentDefense):
    """RepNoise: harmless CE + noise-matching of harmful activations - log harmful CE (ascent)."""

    name = "repnoise"
    version = "1"
    Config = RepNoiseConfig
    paper = "Rosati et al., RepNoise, NeurIPS 2024 (arXiv 2405.14577); docs/components/repnoise.md"
    streams = ("harmful",)
    passes = 2.0  # two forwards, one backward through both, plus the lens heads (docstring)
    passes_note = (
        "its logit lens (an LM-head projection per layer) is not counted: about 7 SFT steps a "
        "step on SmolLM2-135M, not 2 (docs/components/repnoise.md)"
    )
    finetune_lora = "merge"  # the Booster repo's RepNoise baseline fine-tunes a new adapter

    def training_step(self, model: Any, batch: Any, ctx: StepContext) -> dict[str, Any]:
        from hftguard.engine.steps import grads_of, set_grads

        if ctx.world_size > 1:
            raise HftguardError(
                "RepNoise does not support data-parallel training yet: its MMD compares the "
                "samples of a batch with each other, so a shard's MMD is not the global batch's.",
                hint="Run the alignment in one process.",
            )
        cfg = self.config
        harmless = ctx.loss_fn(model, batch)
        harmful = ctx.next_batch("harmful")
        terms = repnoise_terms(model, harmful)
        loss = harmless + cfg.beta * terms["mmd"] - cfg.alpha * terms["ascent"].log1p()
        set_grads(ctx.params, grads_of(loss, ctx.params))
        return {
            "loss": loss.detach(),
            "harmless_loss": harmless.detach(),
            "mmd": terms["mmd"].detach(),
            "harmful_lens_loss": terms["ascent"].detach(),
            "harmful_loss": terms["final"].detach(),
        }


# ---------------------------------------------------------------------------------------------
# The pieces, public so that tests and analyses can check them one by one


def mmd(x: Any, y: Any) -> Any:
    """Gaussian-kernel MMD² between two sets of vectors ``x`` [n, D] and ``y`` [m, D].

    The kernel is a sum of ``KERNEL_NUM`` Gaussians exp(-||u - v||² / s_k) with bandwidths
    s_k = s * KERNEL_MUL^(k - KERNEL_NUM // 2), s the mean squared distance between distinct rows
    of the stacked [x; y] (a constant for the gradient). The estimate is the (biased) V-statistic
    mean k(x, x') + mean k(y, y') - 2 mean k(x, y).
    """
    import torch

    both = torch.cat([x, y]).float()
    sq = both.pow(2).sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * both @ both.T).clamp_min(0.0)
    n = both.shape[0]
    base = dist.detach().sum() / max(n * n - n, 1)
    base = base.clamp_min(torch.finfo(dist.dtype).tiny)
    kernel = sum(
        torch.exp(-dist / (base * KERNEL_MUL ** (k - KERNEL_NUM // 2))) for k in range(KERNEL_NUM)
    )
    nx = x.shape[0]
    return kernel[:nx, :nx].mean() + kernel[nx:, nx:].mean() - 2.0 * kernel[:nx, nx:].mean()


def repnoise_terms(model: Any, harmful: Any, noise: list[Any] | None = None) -> dict[str, Any]:
    """One forward of the harmful batch: the mean MMD over layers of masked MLP outputs against
    masked Gaussian noise (``mmd``), the lens cross-entropy of the answers (``ascent``: final logits
    plus every depth's lens, over L + 1) and the final cross-entropy alone (``final``).

    ``noise``: one [B, T, d] tensor per layer (tests pass their own); drawn from the global RNG
    otherwise, so a resumed run draws what an uninterrupted one would.
    """
    import torch
    import torch.utils.checkpoint

    from hftguard.engine.steps import _first, decoder_layers, logits_nll

    layers = decoder_layers(model)
    mlps = [_mlp_of(layer) for layer in layers]
    norm, head = _final_norm(model), model.get_output_embeddings()
    if head is None:
        raise HftguardError(
            "RepNoise needs the model's LM head (get_output_embeddings() returned None).",
            hint="RepNoise supports causal LMs with an output embedding.",
        )
    acts: list[Any] = [None] * len(layers)
    hidden: list[Any] = [None] * (len(layers) + 1)

    def keep(store: list[Any], i: int) -> Any:
        def hook(_m: Any, _inp: Any, out: Any) -> None:
            store[i] = _first(out)

        return hook

    def keep_input(_m: Any, args: Any, kwargs: Any) -> None:
        hidden[0] = args[0] if args else kwargs["hidden_states"]

    handles = [m.register_forward_hook(keep(acts, i)) for i, m in enumerate(mlps)]
    handles += [layer.register_forward_hook(keep(hidden, i + 1)) for i, layer in enumerate(layers)]
    handles.append(layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    try:
        logits = model(**harmful.model_inputs()).logits
    finally:
        for h in handles:
            h.remove()
    mask = (harmful.labels != -100).to(logits.dtype)  # the answer tokens of H
    m3 = mask[:, :, None]
    b = mask.shape[0]
    mmds = []
    for i, a in enumerate(acts):
        z = torch.randn(a.shape, dtype=a.dtype, device=a.device) if noise is None else noise[i]
        mmds.append(mmd((a * m3).reshape(b, -1), (z.to(a.dtype) * m3).reshape(b, -1)))
    nll, tok = logits_nll(logits, harmful.labels)
    final = nll.sum() / tok.sum().clamp_min(1)
    lens = [final, final]  # the model's logits, and the last layer read through the lens
    for h in hidden[:-1]:  # the embedding output and every layer but the last
        lens.append(
            torch.utils.checkpoint.checkpoint(
                _lens_ce, h, norm, head, harmful.labels, use_reentrant=False
            )
        )
    return {
        "mmd": torch.stack(mmds).mean(),
        "ascent": torch.stack(lens).sum() / (len(layers) + 1),
        "final": final,
    }


def _lens_ce(h: Any, norm: Any, head: Any, labels: Any) -> Any:
    """Token-mean CE of the answers read from hidden state ``h`` through the final norm and the
    LM head, computed at the answer positions only (the norm acts on each position alone, so
    this equals the full-sequence computation, at a fraction of the [B, T, vocab] cost)."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = targets != -100
    logits = head(norm(h[:, :-1][keep])).float()
    return F.cross_entropy(logits, targets[keep], reduction="sum") / keep.sum().clamp_min(1)


def _mlp_of(layer: Any) -> Any:
    """The MLP (feed-forward) block of a decoder layer."""
    for name, child in layer.named_children():
        if name in ("mlp", "feed_forward", "ffn") or "mlp" in type(child).__name__.lower():
            return child
    raise HftguardError(
        f"No MLP block found in {type(layer).__name__}.",
        hint="RepNoise hooks the output of each decoder layer's MLP ('mlp' child).",
    )


_NORM_NAMES = ("norm", "final_layernorm", "ln_f")


def _final_norm(model: Any) -> Any:
    """The norm applied to the last hidden state before the LM head: that of ``get_decoder()``,
    or else of the module holding the decoder layers (transformers 4.56's ``get_decoder`` returns
    None for Llama)."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    candidates = [decoder] if decoder is not None else []
    candidates += [
        m
        for _, m in model.named_modules()
        if isinstance(getattr(m, "layers", None), torch.nn.ModuleList)
    ]
    for module in candidates:
        for name in _NORM_NAMES:
            norm = getattr(module, name, None)
            if norm is not None:
                return norm
    raise HftguardError(
        "Cannot find the final norm of this model (for RepNoise's logit lens).",
        hint="RepNoise supports decoder-only LMs whose decoder has a 'norm' module (Llama family).",
    )
