"""SafeLoRA: project the fine-tuning LoRA update onto the alignment subspace (repair stage).

Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large
Language Models", NeurIPS 2024; official code IBM/SafeLoRA. Per target module i of the
fine-tuning adapter (docs/components/safelora.md has the full specification):

    V_i  = W_aligned,i − W_unaligned,i            (what alignment changed in that weight)
    C_i  = V_i V_iᵀ / ‖V_i‖_F                      ([d_out, d_out]; the official normalisation)
    ΔW_i = s · B_i A_i                              (the fine-tuning LoRA update, s = α / r)
    cos_i = cos(vec(C_i ΔW_i), vec(ΔW_i))          (s cancels)
    B_i ← C_i B_i   for the selected layers         (so ΔW_i ← C_i ΔW_i)

Layers are selected as the official code does: ``select = "number"`` projects the ``num_layers``
layers with the smallest cosine (every layer whose cosine is at most the ``num_layers``-th
smallest, so ties may add layers), ``select = "threshold"`` every layer with cos_i ≤
``threshold``. Here "aligned" is the attacked model's starting point (base + the alignment
adapters) and "unaligned" the base model, so V_i is the alignment stage's own update.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftguard.components import RepairDefense
from hftguard.errors import ConfigError, HftguardError
from hftguard.options import opt

if TYPE_CHECKING:
    import torch

    from hftguard.context import RepairContext

SELECT = ("number", "threshold")
PROJECTORS = ("official", "orthogonal")


@dataclass
class SafeLoRAConfig:
    select: str = opt(
        "number",
        "How layers are chosen: 'number' (the num_layers layers whose update is least aligned "
        "with the safety subspace; the official default) or 'threshold' (every layer whose "
        "cosine is <= threshold).",
    )
    num_layers: int = opt(10, "Layers to project with select = 'number' (official default 10).")
    threshold: float = opt(
        0.5, "Cosine threshold with select = 'threshold' (official default 0.5)."
    )
    projector: str = opt(
        "official",
        "'official': C = V Vᵀ / ‖V‖_F (the paper's and the official code's; it rescales the "
        "update by V's singular values). 'orthogonal': U Uᵀ, U an orthonormal basis of V's "
        "column space (keeps the update's components along the alignment directions, unscaled; "
        "ours, not in the paper).",
    )

    def __post_init__(self) -> None:
        if self.projector not in PROJECTORS:
            raise ConfigError(
                f"defense_options.projector = {self.projector!r} is not one of "
                f"{', '.join(PROJECTORS)}.",
                hint="Use projector = 'official' (the paper's C) or 'orthogonal'.",
            )
        if self.select not in SELECT:
            raise ConfigError(
                f"defense_options.select = {self.select!r} is not one of {', '.join(SELECT)}.",
                hint="Use select = 'number' (with num_layers) or 'threshold' (with threshold).",
            )
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int):
            raise ConfigError(
                f"defense_options.num_layers = {self.num_layers!r} is not an integer."
            )
        if self.num_layers < 0:
            raise ConfigError(
                f"defense_options.num_layers = {self.num_layers} must be >= 0.",
                hint="0 projects no layer (the attacked model unchanged).",
            )
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise ConfigError(f"defense_options.threshold = {self.threshold!r} is not a number.")
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(
                f"defense_options.threshold = {self.threshold} is not a cosine (between -1 and 1).",
                hint="Use a value in [-1, 1], e.g. 0.5 (the official default).",
            )


def projection(v: torch.Tensor) -> torch.Tensor:
    """C = V Vᵀ / ‖V‖_F in float64 (``[d_out, d_out]``); None-safe callers check ‖V‖ > 0."""
    v64 = v.detach().to(dtype=_f64())
    return (v64 @ v64.T) / torch_norm(v64)


def layer_cosine(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(vec(C B A), vec(B A)) in float64: how much of the update survives the projection."""
    import torch

    ba = b.detach().to(_f64()) @ a.detach().to(_f64())
    cba = c.to(_f64()) @ ba
    num = float((cba * ba).sum())
    den = float(torch.linalg.vector_norm(cba)) * float(torch.linalg.vector_norm(ba))
    return num / den if den > 0 else 0.0


def project_b(v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C B = V (Vᵀ B) / ‖V‖_F in float64, without forming C (``[d_out, r]``)."""
    v64 = v.detach().to(dtype=_f64())
    return (v64 @ (v64.T @ b.detach().to(_f64()))) / torch_norm(v64)


def column_basis(v: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis U of V's column space (float64, ``[d_out, rank]``): the left singular
    vectors whose singular values exceed the numerical-rank tolerance σ_max · max(d_out, d_in) ·
    ε, NumPy's ``matrix_rank`` rule with ε of float32, the precision V is computed in (a
    difference of fp32 weights: on the embedded model its rounding floor sits near 1e-7 σ_max,
    a rank-32 alignment update's smallest direction near 2e-3 σ_max)."""
    import torch

    u, sigma, _ = torch.linalg.svd(v.detach().to(_f64()), full_matrices=False)
    if not sigma.numel():
        return u
    tol = float(sigma.max()) * max(v.shape) * torch.finfo(torch.float32).eps
    return u[:, sigma > tol]


def project_b_orthogonal(v: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """U Uᵀ B in float64, U from :func:`column_basis` (``[d_out, r]``)."""
    u = column_basis(v)
    return u @ (u.T @ b.detach().to(_f64()))


def _cosine_and_ratio(cb: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """cos(vec(C B A), vec(B A)) and ‖C B A‖_F / ‖B A‖_F, from C B (float64)."""
    import torch

    a64 = a.detach().to(_f64())
    proj, upd = cb @ a64, b.detach().to(_f64()) @ a64
    n_proj, n_upd = float(torch.linalg.vector_norm(proj)), float(torch.linalg.vector_norm(upd))
    if n_proj == 0.0 or n_upd == 0.0:
        return 0.0, 0.0 if n_upd else 1.0
    return float((proj * upd).sum()) / (n_proj * n_upd), n_proj / n_upd


def selected(cosines: dict[str, float], cfg: SafeLoRAConfig) -> list[str]:
    """The modules to project, in the given order (the official selection rule)."""
    if cfg.select == "threshold":
        limit = cfg.threshold
    else:
        if cfg.num_layers == 0 or not cosines:
            return []
        ranked = sorted(cosines.values())
        limit = ranked[min(cfg.num_layers, len(ranked)) - 1]
    return [name for name, cos in cosines.items() if cos <= limit]


class SafeLoRA(RepairDefense):
    """SafeLoRA: project dissimilar layers' fine-tuning update onto the alignment subspace.

    Post-fine-tuning, no data, no training (docs/components/safelora.md)."""

    name = "safelora"
    version = "1"
    Config = SafeLoRAConfig
    paper = (
        "Hsu et al., Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning "
        "Large Language Models, NeurIPS 2024 (IBM/SafeLoRA)"
    )
    config: SafeLoRAConfig

    def apply(self, ctx: RepairContext) -> dict[str, Any]:
        from hftguard.engine import repair as kit

        lora = kit.read_lora(ctx.adapter)
        diffs = kit.weight_differences(ctx.base, ctx.underneath, list(lora.modules))
        cosines: dict[str, float] = {}
        projected_b: dict[str, Any] = {}
        ratio: dict[str, float] = {}  # ‖C ΔW‖_F / ‖ΔW‖_F: what a projection keeps of the update
        no_alignment: list[str] = []
        for name, (a, b) in lora.modules.items():
            v = diffs.pop(name)
            if float(torch_norm(v.to(_f64()))) == 0.0:
                no_alignment.append(name)  # alignment did not touch it: C is undefined
                continue
            if self.config.projector == "orthogonal":
                projected_b[name] = project_b_orthogonal(v, b)
            else:
                projected_b[name] = project_b(v, b)  # C B without forming the d_out x d_out C
            cosines[name], ratio[name] = _cosine_and_ratio(projected_b[name], a, b)
        if not cosines:
            raise HftguardError(
                "safelora: the alignment changed none of the weights the fine-tuning adapter "
                f"trains ({', '.join(sorted(lora.modules)[:4])}, ...), so there is no alignment "
                "subspace to project onto.",
                hint="Repair a model fine-tuned from an aligned model whose alignment adapter "
                "targets the same modules (e.g. both on q_proj,k_proj,v_proj).",
            )
        chosen = selected(cosines, self.config)
        new_b = {name: projected_b[name].to(lora.modules[name][1].dtype) for name in chosen}
        out = kit.write_lora(ctx.adapter, ctx.output_dir / "adapter", new_b)
        values = sorted(cosines.values())
        if ctx.reporter is not None:
            ctx.reporter.info(
                f"safelora: projected {len(chosen)} of {len(cosines)} layers "
                f"(cosine min {values[0]:.3f}, median {values[len(values) // 2]:.3f})"
                + (
                    f"; {len(no_alignment)} untouched by alignment kept as they are"
                    if no_alignment
                    else ""
                )
            )
        ctx.write_json(
            "safelora.json",
            {
                "cosine": cosines,
                "norm_ratio": ratio,
                "projected": chosen,
                "no_alignment_update": no_alignment,
                "options": {
                    "select": self.config.select,
                    "num_layers": self.config.num_layers,
                    "threshold": self.config.threshold,
                    "projector": self.config.projector,
                },
            },
        )
        return {
            "adapter": str(out),
            "metrics": {
                "norm_ratio_projected_median": (
                    statistics.median_high([ratio[n] for n in chosen]) if chosen else None
                ),
                "layers": len(lora.modules),
                "projected": len(chosen),
                "no_alignment_update": len(no_alignment),
                "cosine_min": values[0],
                "cosine_median": values[len(values) // 2],
            },
        }


def _f64() -> Any:
    import torch

    return torch.float64


def torch_norm(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.linalg.matrix_norm(x) if x.dim() == 2 else torch.linalg.vector_norm(x)
