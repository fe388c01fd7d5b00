"""Antidote: one-shot pruning of the fine-tuning update's most harm-relevant weights (repair).

Huang et al., "Antidote: Post-fine-tuning Safety Alignment for Large Language Models against
Harmful Fine-tuning" (arXiv 2408.09600); official code git-disl/Antidote. With a LoRA
fine-tuning adapter the official code prunes the adapter's own factors, so the repaired model is
again base + alignment + a (sparser) fine-tuning adapter. docs/components/antidote.md has the
full specification; in short, for every factor W (each ``lora_A`` [r, d_in] and ``lora_B``
[d_out, r]) of the fine-tuning adapter:

    E_j   = Σ over the real tokens of the harmful calibration set of x_j²   (x: W's input)
    S_ij  = |W_ij| · sqrt(E_j)                                             (the Wanda score)
    per row i: zero the k = c − ⌊c·(1 − ρ)⌋ entries with the largest S_ij   (c = W's columns)

ρ is ``mask_ratio`` (the official ``--dense_ratio``, 0.1). The activations come from the
attacked model itself (alignment merged, fine-tuning adapter attached, eval mode) on harmful
prompt + answer pairs the provider holds: the ``harmful`` data of the repair config, train split.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftguard.components import RepairDefense
from hftguard.errors import ConfigError, HftguardError
from hftguard.options import opt

if TYPE_CHECKING:
    import torch

    from hftguard.context import RepairContext

SCORES = ("wanda", "magnitude", "random")


@dataclass
class AntidoteConfig:
    mask_ratio: float = opt(
        0.1,
        "Share of each row of every LoRA factor that is pruned (official --dense_ratio, "
        "default 0.1).",
    )
    score: str = opt(
        "wanda",
        "Importance score: 'wanda' (|W|·‖x‖ on the harmful set; Antidote), 'magnitude' (|W|; "
        "the official code's choice without calibration data) or 'random' (a control: the same "
        "number of entries per row, drawn with the repair seed).",
    )
    batch_size: int = opt(8, "Calibration examples per forward pass.")
    max_length: int = opt(256, "Tokens per calibration example (prompt + answer).")

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ConfigError(
                f"defense_options.score = {self.score!r} is not one of {', '.join(SCORES)}.",
                hint="Use score = 'wanda' (Antidote), 'magnitude' or 'random'.",
            )
        ratio = self.mask_ratio
        number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
        if not number or not math.isfinite(ratio):
            raise ConfigError(f"defense_options.mask_ratio = {ratio!r} is not a number.")
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"defense_options.mask_ratio = {ratio} is not a share (between 0 and 1).",
                hint="Use e.g. 0.1 (the official default): a tenth of each row is pruned.",
            )
        for key in ("batch_size", "max_length"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"defense_options.{key} = {value!r} must be an integer >= 1.")


def pruned_per_row(columns: int, ratio: float) -> int:
    """Entries pruned in each row of a factor with ``columns`` columns: c − ⌊c·(1 − ρ)⌋.

    The floor gets a 1e-9 allowance for float rounding: the official code truncates the float
    product, so e.g. ρ = 0.9 on 10 columns keeps ⌊9.999…⌋ = 0 there and prunes the whole row;
    here it keeps 1. At the default ρ = 0.1 the two agree for every column count."""
    return columns - math.floor(columns * (1.0 - ratio) + 1e-9)


def prune_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of the entries to prune: in each row, the ``pruned_per_row`` largest scores
    (ties: among equal scores the later columns, as a stable ascending sort leaves them last)."""
    import torch

    keep = scores.shape[1] - pruned_per_row(scores.shape[1], ratio)
    order = torch.sort(scores, dim=1, stable=True).indices
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, order[:, keep:], True)


def wanda_scores(weight: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """S = |W| · sqrt(E), E the per-input-column sum of squared activations (float64)."""
    import torch

    return weight.detach().to(torch.float64).abs() * energy.to(torch.float64).sqrt()[None, :]


def input_energy(
    model: Any,
    batches: list[Any],
    factors: dict[str, torch.nn.Module],
    advance: Any = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Σ x_j² over the real tokens (attention mask) of ``batches`` for the input of each module
    of ``factors``, and the mean NLL of the batches' answers (one forward pass each)."""
    import torch

    from hftguard.engine.steps import forward_hooks, token_nll

    energy = {
        name: torch.zeros(m.weight.shape[1], dtype=torch.float64) for name, m in factors.items()
    }
    real: list[torch.Tensor] = []  # the current batch's attention mask, for the hooks

    def hook(name: str) -> Any:
        def record(_module: Any, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0].detach().to(torch.float64)
            weights = real[0].to(torch.float64)[..., None]
            energy[name] += (x.square() * weights).sum(dim=(0, 1)).cpu()

        return record

    nll_sum, tokens = 0.0, 0
    names = list(factors)
    with torch.no_grad(), forward_hooks([factors[n] for n in names], [hook(n) for n in names]):
        for batch in batches:
            real[:] = [batch.attention_mask]
            nll, mask = token_nll(model, batch)
            nll_sum += float(nll.sum())
            tokens += int(mask.sum())
            if advance is not None:
                advance()
    return energy, nll_sum / max(tokens, 1)


def answer_nll(model: Any, batches: list[Any], advance: Any = None) -> float:
    """Mean NLL of the batches' answer tokens."""
    import torch

    from hftguard.engine.steps import token_nll

    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            nll, mask = token_nll(model, batch)
            total += float(nll.sum())
            tokens += int(mask.sum())
            if advance is not None:
                advance()
    return total / max(tokens, 1)


def lora_factors(model: Any, modules: list[str]) -> dict[str, torch.nn.Module]:
    """The ``lora_A``/``lora_B`` linear layers of the active adapter of a PEFT model, keyed
    ``<module>.lora_A`` / ``<module>.lora_B`` (module names as in the adapter file)."""
    out: dict[str, Any] = {}
    for name in modules:
        layer = model.base_model.model.get_submodule(name)
        adapter = layer.active_adapters[0]
        out[f"{name}.lora_A"] = layer.lora_A[adapter]
        out[f"{name}.lora_B"] = layer.lora_B[adapter]
    return out


class Antidote(RepairDefense):
    """Antidote: prune the fine-tuning adapter's weights that matter most on harmful data.

    Post-fine-tuning, one calibration pass, no training (docs/components/antidote.md)."""

    name = "antidote"
    version = "1"
    Config = AntidoteConfig
    streams = ("harmful",)
    #: Forward passes over each calibration batch (``hftguard bench``'s repair rows): the scores,
    #: then the harmful loss after pruning.
    calibration_passes = 2
    needs_alignment = False  # prunes the fine-tuning adapter alone
    paper = (
        "Huang et al., Antidote: Post-fine-tuning Safety Alignment for Large Language Models "
        "against Harmful Fine-tuning, arXiv 2408.09600 (git-disl/Antidote)"
    )
    config: AntidoteConfig

    def apply(self, ctx: RepairContext) -> dict[str, Any]:
        import torch

        from hftguard.engine import repair as kit

        cfg = self.config
        lora = kit.read_lora(ctx.adapter)
        model, _tok = ctx.load_model()
        factors = lora_factors(model, list(lora.modules))
        batches = ctx.batches("harmful", cfg.batch_size, cfg.max_length)
        with _task(ctx, "antidote: calibration pass", len(batches)) as advance:
            energy, loss_before = input_energy(model, batches, factors, advance)
        generator = torch.Generator().manual_seed(ctx.seed)
        masks: dict[str, torch.Tensor] = {}
        for key, module in factors.items():
            weight = module.weight.detach().cpu()
            if cfg.score == "wanda":
                scores = wanda_scores(weight, energy[key])
            elif cfg.score == "magnitude":
                scores = weight.to(torch.float64).abs()
            else:
                scores = torch.rand(weight.shape, generator=generator, dtype=torch.float64)
            masks[key] = prune_mask(scores, cfg.mask_ratio)
        new_a, new_b, kept = {}, {}, {}
        for name, (a, b) in lora.modules.items():
            new_a[name] = a.masked_fill(masks[f"{name}.lora_A"].to(a.device), 0)
            new_b[name] = b.masked_fill(masks[f"{name}.lora_B"].to(b.device), 0)
            kept[name] = _norm_ratio(a, b, new_a[name], new_b[name])
        with torch.no_grad():  # the pruned adapter, in the loaded model: its harmful loss
            for key, module in factors.items():
                module.weight.masked_fill_(masks[key].to(module.weight.device), 0)
        with _task(ctx, "antidote: harmful loss after pruning", len(batches)) as advance:
            loss_after = answer_nll(model, batches, advance)
        if any(not torch.isfinite(t).all() for t in (*new_a.values(), *new_b.values())):
            raise HftguardError("antidote: the pruned adapter has non-finite weights.")
        out = kit.write_lora(ctx.adapter, ctx.output_dir / "adapter", new_b, new_a=new_a)
        pruned = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        median_kept = statistics.median_high(kept.values())
        if ctx.reporter is not None:
            ctx.reporter.info(
                f"antidote: pruned {pruned} of {total} LoRA weights ({cfg.score}, ratio "
                f"{cfg.mask_ratio:g}); harmful-answer NLL {loss_before:.3f} -> {loss_after:.3f}; "
                f"median update norm kept {median_kept:.2f}"
            )
        ctx.write_json(
            "antidote.json",
            {
                "norm_ratio": kept,
                "pruned": {k: int(m.sum()) for k, m in masks.items()},
                "harmful_nll_before": loss_before,
                "harmful_nll_after": loss_after,
                "calibration_examples": len(ctx.streams.get("harmful", [])),
                "options": {"mask_ratio": cfg.mask_ratio, "score": cfg.score},
            },
        )
        return {
            "adapter": str(out),
            "metrics": {
                "pruned": pruned,
                "lora_weights": total,
                "harmful_nll_before": loss_before,
                "harmful_nll_after": loss_after,
                "norm_ratio_median": median_kept,
                "layers": len(lora.modules),
            },
        }


@contextlib.contextmanager
def _task(ctx: RepairContext, description: str, total: int) -> Iterator[Any]:
    """A progress bar on the context's reporter; yields its ``advance`` (None when quiet)."""
    if ctx.reporter is None:
        yield None
        return
    with ctx.reporter.task(description, total=total) as handle:
        yield handle.advance


def _norm_ratio(
    a: torch.Tensor, b: torch.Tensor, new_a: torch.Tensor, new_b: torch.Tensor
) -> float:
    """‖B' A'‖_F / ‖B A‖_F: how much of the module's update the pruning keeps."""
    import torch

    before = torch.linalg.matrix_norm(b.to(torch.float64) @ a.to(torch.float64))
    after = torch.linalg.matrix_norm(new_b.to(torch.float64) @ new_a.to(torch.float64))
    return float(after / before) if float(before) > 0 else 1.0
