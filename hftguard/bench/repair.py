"""Section 5: every repair defense (``hftguard repair``) on the bench model, against an SFT step.

A repair is not a training step: it runs once, after the attack. What matters to a provider is
what one repair costs next to the fine-tuning it follows. The section builds, on disk, the
smallest thing a repair works on: the bench model's weights, an "alignment" adapter and a
"fine-tuning" adapter on top of it (both the default LoRA shape, random non-zero B so that the
updates are not zero), and times each repair defense's ``apply`` on it, with the bench's harmful
batches as calibration data (the same batch shape as the defense rows). Loading the model inside
``apply`` is timed separately; the compute time is then compared with the median SFT step of
the defenses section (same machine, same run), and with the defense's forward passes: a
calibration forward counts as a third of an SFT step (forward + backward ≈ 3 forwards).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from hftguard.bench.options import BenchOptions
from hftguard.console import Reporter

KIND = "repair-defense"


def select_repairs(registry: Any, specs: list[str]) -> list[str]:
    """The repair defenses to time: every one when ``specs`` is empty, else those named
    ``repair:NAME`` (a bare name selects training-stage defenses, as before)."""
    names = sorted(i.name for i in registry.components(KIND))
    items = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    if not items:
        return names
    wanted = [i.partition(":")[2] for i in items if i.startswith("repair:")]
    for name in wanted:
        registry.get(KIND, name)  # an unknown name: the registry's error, with the known ones
    return sorted(set(wanted))


def bench_repairs(
    opts: BenchOptions,
    registry: Any,
    names: list[str],
    batches: list[Any],
    sft_step_s: float | None,
    reporter: Reporter,
) -> list[dict[str, Any]]:
    """Seconds per repair of each defense in ``names`` (median over ``opts.rounds``)."""
    import statistics

    from hftguard.engine import models

    recipe_base = models.resolve(opts.model).recipe.base
    rows = []
    with tempfile.TemporaryDirectory(prefix="hftguard-bench-repair-") as tmp:
        root = Path(tmp)
        align = _random_adapter(recipe_base, [], root / "align", opts.seed)
        tuned = _random_adapter(recipe_base, [align], root / "finetune", opts.seed + 1)
        for name in names:
            defense = registry.instantiate(KIND, name)
            totals, loads, computes = [], [], []
            for r in range(max(1, opts.rounds)):
                reporter.info(f"bench: repair/{name} (round {r + 1}/{max(1, opts.rounds)})")
                total, load = _time_apply(
                    defense, opts, recipe_base, align, tuned, batches, root / f"{name}-{r}"
                )
                totals.append(total)
                loads.append(load)
                computes.append(total - load)
            total_s = statistics.median(totals)
            load_s = statistics.median(loads)
            # forward passes per calibration batch, as the defense declares them (Antidote: 2)
            passes = int(getattr(defense, "calibration_passes", 0)) * len(batches)
            compute = statistics.median(computes)
            theory = passes / 3.0 if passes else None
            measured = compute / sft_step_s if sft_step_s else None
            rows.append(
                {
                    "stage": "repair",
                    "defense": name,
                    "median_s": total_s,
                    "model_load_s": load_s,
                    "compute_s": compute,
                    "calibration_examples": sum(len(b) for b in batches) if passes else 0,
                    "forward_passes": passes,
                    "sft_steps_measured": measured,
                    "sft_steps_theoretical": theory,
                    "measured_over_theoretical": (
                        measured / theory if measured is not None and theory else None
                    ),
                }
            )
    return rows


def _time_apply(
    defense: Any,
    opts: BenchOptions,
    base: str,
    align: Path,
    tuned: Path,
    batches: list[Any],
    out: Path,
) -> tuple[float, float]:
    """(wall seconds of ``apply``, of which loading the model)."""
    from hftguard.config import RepairConfig
    from hftguard.context import RepairContext
    from hftguard.engine import models
    from hftguard.pipeline.repair import _attacked_model

    out.mkdir(parents=True)
    recipe = models.ModelRecipe(base, base, [str(align), str(tuned)])
    cfg = RepairConfig(model=str(tuned), defense=defense.name, device=opts.device)
    loading = [0.0]

    def load_model() -> tuple[Any, Any]:
        t = time.perf_counter()
        got = _attacked_model(cfg, recipe)
        loading[0] += time.perf_counter() - t
        return got

    ctx = RepairContext(
        adapter=tuned,
        underneath=[str(align)],
        base=base,
        output_dir=out,
        reporter=Reporter(quiet=True),
        seed=opts.seed,
        streams={"harmful": [None] * sum(len(b) for b in batches)},
        load_model=load_model,
        batches=lambda name, size, length: batches,
    )
    t0 = time.perf_counter()
    defense.apply(ctx)
    return time.perf_counter() - t0, loading[0]


def _random_adapter(base: str, underneath: list[Path], path: Path, seed: int) -> Path:
    """A LoRA adapter of the default shape on ``base`` + ``underneath`` merged, with random
    non-zero B (an untrained adapter's B is zero: its update would be nothing to repair)."""
    import torch

    from hftguard.config import LoraOptions
    from hftguard.engine import models

    model = models._merge_adapters(
        models.load_base(base, torch.float32), [str(p) for p in underneath]
    )
    model = models.attach_lora(model, LoraOptions(), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    models.save_adapter(model, path)
    return path
