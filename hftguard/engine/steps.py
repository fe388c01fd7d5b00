"""Losses and gradient helpers that keep multi-pass defenses short and exact.

A defense's ``training_step`` computes its gradient with these: per-token and per-sequence NLL,
gradient lists over the trainable parameters (always in the same order), their combinations,
inner products and norms, parameters perturbed along a direction and restored exactly, and hooks
on the attention outputs (Vaccine family). This module is the public defense kit: ``__all__`` is
what a defense (built-in or plugin) imports, and docs/plugins/kit.md documents each name (a test
keeps the two equal). Data-parallel arithmetic is not here but on the step's context
(``ctx.norm_over_processes``, ``ctx.token_mean``, ...), so a step never does it itself.
``hftguard.engine.training`` re-exports the helpers for older plugins.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from hftguard.data.inputs import IGNORE_INDEX, Batch
from hftguard.errors import HftguardError

#: A gradient (or direction) over the trainable parameters: one tensor per parameter, in
#: ``ctx.params`` order.
Grads = list[torch.Tensor]
#: The trainable parameters, ``ctx.params``: ``(name, parameter)`` pairs in a fixed order.
Params = list[tuple[str, torch.nn.Parameter]]

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "Grads",
    "Params",
    "add_to_outputs",
    "attention_modules",
    "capture_outputs_grad",
    "combine",
    "cosine",
    "decoder_layers",
    "dot",
    "forward_hooks",
    "global_norm",
    "grad_cosine",
    "grad_dot",
    "grad_norm",
    "grads_of",
    "lm_loss",
    "logits_at",
    "logits_nll",
    "loss_and_grads",
    "parameters_at",
    "perturbed",
    "sequence_mean_nll",
    "set_grads",
    "token_nll",
]

# ---------------------------------------------------------------------------------------------
# Losses


#: Architectures whose causal LM is ``lm_head(model(...).last_hidden_state)`` and nothing more
#: (no logit soft-capping or scaling), so the head may be applied to some positions only.
HEAD_SPLIT_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, LM head) of a causal LM (PEFT-wrapped or not) whose logits are exactly
    ``head(decoder(...).last_hidden_state)``; None for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if getattr(cfg, "model_type", None) not in HEAD_SPLIT_TYPES:
        return None
    if any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    decoder, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if not isinstance(decoder, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        return None
    return decoder, head


def token_nll(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood of the labels (shifted) and the response-token mask.

    Returns ``(nll, mask)`` of shape ``[B, T-1]``; ``nll`` is 0 where ``mask`` is 0.

    Where the architecture allows it (:func:`decoder_and_head`), the LM head runs only at the
    response positions: the same values as the full forward's logits there, without the
    [B, T, vocab] projection of the prompt and padding positions (on SmolLM2, whose head is a
    fifth of a forward pass, that is most of the head's cost for short answers).
    """
    if decoder_and_head(model) is None:
        return logits_nll(model(**batch.model_inputs()).logits, batch.labels)
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = F.cross_entropy(logits_at(model, batch, mask), targets[mask], reduction="none")
    nll = torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device)
    return nll.masked_scatter(mask, picked), mask


def logits_at(model: Any, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
    """The logits ``[N, V]`` (fp32) predicting the next token at the ``rows`` positions (a
    boolean ``[B, T-1]`` mask) of a batch. Where the architecture allows it
    (:func:`decoder_and_head`) the LM head runs at those positions only: the same values as the
    full forward's logits there, without projecting the others."""
    split = decoder_and_head(model)
    if split is None:
        logits: torch.Tensor = model(**batch.model_inputs()).logits[:, :-1][rows]
        return logits.float()
    decoder, head = split
    hidden = decoder(**batch.model_inputs()).last_hidden_state
    logits = head(hidden[:, :-1][rows])
    return logits.float()


def logits_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_nll` from a forward's logits ``[B, T, V]`` and the labels ``[B, T]``: for a
    defense that needs the logits of the training forward besides its loss (e.g. a KL term)."""
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.clamp_min(0).reshape(-1),
        reduction="none",
    ).view_as(targets)
    return nll * mask, mask


def lm_loss(model: Any, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over all response tokens of the batch (the HF causal-LM loss).

    In a data-parallel run the sampler sets ``batch.meta["loss_tokens"]`` to the global batch's
    response-token count divided by the number of processes: averaging the processes' gradients
    then gives the global-batch gradient exactly, however the tokens are spread over shards.
    """
    nll, mask = token_nll(model, batch)
    denom = batch.meta.get("loss_tokens")
    loss: torch.Tensor = nll.sum() / (mask.sum().clamp_min(1) if denom is None else denom)
    return loss


def sequence_mean_nll(model: Any, batch: Batch) -> torch.Tensor:
    """Per-example mean NLL over its response tokens, shape ``[B]``."""
    nll, mask = token_nll(model, batch)
    return nll.sum(dim=1) / mask.sum(dim=1).clamp_min(1)


# ---------------------------------------------------------------------------------------------
# Gradient helpers (all on the trainable parameters, in a fixed order)


def grads_of(loss: torch.Tensor, params: Params) -> Grads:
    """d loss / d params without touching ``.grad`` (zeros for parameters the loss ignores)."""
    tensors = [p for _, p in params]
    gs = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [
        torch.zeros_like(p) if g is None else g.detach() for p, g in zip(tensors, gs, strict=True)
    ]


def loss_and_grads(
    model: Any, batch: Batch, params: Params, loss_fn: Any = lm_loss
) -> tuple[torch.Tensor, Grads]:
    """One forward + backward: (loss, detached 0-d tensor; gradient list)."""
    loss = loss_fn(model, batch)
    return loss.detach(), grads_of(loss, params)


def set_grads(params: Params, grads: Grads) -> None:
    """Write a gradient list into ``.grad`` (what the optimizer will use).

    The tensors become ``.grad`` as they are (cast to the parameter's dtype, not copied), and the
    loop clips ``.grad`` in place after the step: pass tensors the defense does not keep using
    after the step, such as what :func:`combine` and :func:`grads_of` return.
    """
    for (_, p), g in zip(params, grads, strict=True):
        p.grad = g.to(p.dtype)


def combine(*terms: tuple[float | torch.Tensor, Grads]) -> Grads:
    """sum_k coef_k * grads_k, tensor by tensor; a coefficient may be a 0-d tensor (no sync)."""
    out = [torch.zeros_like(g) for g in terms[0][1]]
    for coef, gs in terms:
        if isinstance(coef, torch.Tensor):
            torch._foreach_add_(out, torch._foreach_mul(list(gs), coef.to(out[0].dtype)))
        else:
            torch._foreach_add_(out, list(gs), alpha=coef)
    return out


# Inner products and norms over all tensors jointly (global, as every method's official code takes
# them), as 0-d float64 tensors on the gradients' device: computing them costs no host
# synchronisation, so a defense can use them in its update and return them as metrics (the loop
# converts its metrics once per step).


def grad_dot(a: Grads, b: Grads) -> torch.Tensor:
    """<a, b> over all tensors jointly (float64)."""
    return torch.stack([(x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)]).sum()


def grad_norm(a: Grads) -> torch.Tensor:
    """The global L2 norm: one multi-tensor norm, then the norm of the per-tensor norms."""
    norm: torch.Tensor = torch.linalg.vector_norm(
        torch.stack(torch._foreach_norm(list(a), 2, dtype=torch.float64))
    )
    return norm


def grad_cosine(a: Grads, b: Grads, eps: float = 1e-8) -> torch.Tensor:
    return grad_dot(a, b) / (grad_norm(a) * grad_norm(b) + eps)


def dot(a: Grads, b: Grads) -> float:
    """:func:`grad_dot` as a Python float (one host synchronisation)."""
    return float(grad_dot(a, b))


def global_norm(a: Grads) -> float:
    """:func:`grad_norm` as a Python float (one host synchronisation)."""
    return float(grad_norm(a))


def cosine(a: Grads, b: Grads, eps: float = 1e-8) -> float:
    """:func:`grad_cosine` as a Python float (one host synchronisation)."""
    return float(grad_cosine(a, b, eps))


@contextmanager
def perturbed(params: Params, direction: Grads, scale: float | torch.Tensor) -> Iterator[None]:
    """Temporarily set ``theta <- theta + scale * direction``; restore exactly from saved copies.

    ``scale`` may be a 0-d tensor (no host synchronisation). Restoring by copying back a clone
    (not by subtracting) is exact in any dtype (docs/components/booster.md, "How it works").

    Under ``torch.autocast`` the low-precision copy of every trainable parameter is cached the
    first time an op casts it, until the outermost autocast region exits; the loop runs a whole
    step in one region, so a forward at theta' would still see the cached copy of theta (the
    sharpness term of Booster/Antibody was exactly 0 under bf16). The cache is therefore cleared
    after each in-place move and after the restore.
    """
    saved = [p.detach().clone() for _, p in params]
    try:
        with torch.no_grad():
            for (_, p), d in zip(params, direction, strict=True):
                if isinstance(scale, torch.Tensor):
                    p.add_(d.to(p.dtype) * scale.to(p.dtype))
                else:
                    p.add_(d.to(p.dtype), alpha=scale)
        _forget_autocast_casts()
        yield
    finally:
        with torch.no_grad():
            for (_, p), s in zip(params, saved, strict=True):
                p.copy_(s)
        _forget_autocast_casts()


@contextmanager
def parameters_at(params: Params, values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Temporarily set the trainable parameters to ``values`` (e.g. a snapshot of the weights at
    the start of training, for a forward of the frozen reference model); restore them exactly.

    Like :func:`perturbed` it copies the parameters back from saved clones and clears autocast's
    cached low-precision copies after each move, so a forward inside sees ``values`` and one after
    it the restored weights.
    """
    saved = [p.detach().clone() for _, p in params]
    try:
        with torch.no_grad():
            for (_, p), v in zip(params, values, strict=True):
                p.copy_(v)
        _forget_autocast_casts()
        yield
    finally:
        with torch.no_grad():
            for (_, p), s in zip(params, saved, strict=True):
                p.copy_(s)
        _forget_autocast_casts()


def _forget_autocast_casts() -> None:
    """Drop autocast's cached low-precision parameter copies (a no-op outside autocast)."""
    if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
        torch.clear_autocast_cache()


# ---------------------------------------------------------------------------------------------
# Attention-output hooks (Vaccine family)


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The decoder blocks of a causal LM, found generically (the longest ModuleList of blocks)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best: list[torch.nn.Module] = []
    for _, module in model.named_modules():
        is_blocks = isinstance(module, torch.nn.ModuleList) and (n is None or len(module) == n)
        if is_blocks and len(module) > len(best):
            best = list(module)
    if not best:
        raise HftguardError(
            "Cannot find the decoder layers of this model.",
            hint="This defense supports decoder-only transformer LMs.",
        )
    return best


def attention_modules(model: Any) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer (first child whose class says Attention)."""
    found = []
    for layer in decoder_layers(model):
        attn = next(
            (
                m
                for m in layer.children()
                if "attention" in type(m).__name__.lower() or "attn" in type(m).__name__.lower()
            ),
            None,
        )
        if attn is None:
            raise HftguardError(
                f"No attention module found in {type(layer).__name__}.",
                hint="This defense needs decoder layers with a self-attention block.",
            )
        found.append(attn)
    return found


def _first(output: Any) -> torch.Tensor:
    first: torch.Tensor = output[0] if isinstance(output, (tuple, list)) else output
    return first


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


@contextmanager
def forward_hooks(modules: Sequence[torch.nn.Module], hooks: Sequence[Any]) -> Iterator[None]:
    """Register ``hooks[i]`` as a forward hook of ``modules[i]`` for the duration of the block."""
    handles = [m.register_forward_hook(h) for m, h in zip(modules, hooks, strict=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_outputs_grad(
    modules: Sequence[torch.nn.Module],
    store: list[torch.Tensor | None],
    out_sq: list[torch.Tensor | None] | None = None,
) -> Iterator[None]:
    """Record d loss / d (module output) for each module into ``store`` during backward; with
    ``out_sq``, also each output's squared L2 norm (float64, detached) during forward."""
    store[:] = [None] * len(modules)
    if out_sq is not None:
        out_sq[:] = [None] * len(modules)

    def make(i: int) -> Any:
        def hook(_m: Any, _inp: Any, output: Any) -> None:
            out = _first(output)
            if out_sq is not None:
                out_sq[i] = out.detach().double().pow(2).sum()
            if out.requires_grad:

                def save(g: torch.Tensor) -> None:
                    store[i] = g.detach()

                # torch leaves Tensor.register_hook unannotated
                out.register_hook(save)  # type: ignore[no-untyped-call]

        return hook

    with forward_hooks(modules, [make(i) for i in range(len(modules))]):
        yield


def joint_norm(squares: Sequence[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """sqrt of the sum of the given squared norms (None entries skipped): one L2 norm over
    several tensors jointly; 0 (on ``like``'s device, float64) when there are none."""
    parts = [q for q in squares if q is not None]
    if not parts:
        return like.new_zeros((), dtype=torch.float64)
    return torch.stack([q.to(torch.float64) for q in parts]).sum().sqrt()


@contextmanager
def add_to_outputs(
    modules: Sequence[torch.nn.Module], deltas: Sequence[torch.Tensor | None]
) -> Iterator[None]:
    """Add a constant ``delta`` to each module's (first) output during forward."""

    def make(delta: torch.Tensor | None) -> Any:
        def hook(_m: Any, _inp: Any, output: Any) -> Any:
            if delta is None:
                return output
            out = _first(output)
            return _replace_first(output, out + delta.to(out.dtype))

        return hook

    with forward_hooks(modules, [make(d) for d in deltas]):
        yield
