"""The statistics of a report: mean ± std over seeds and an interval per cell.

A cell's interval is a Wilson interval when it holds one evaluation (one seed) and a two-level
bootstrap over seeds × prompts when it holds several (:mod:`hftguard.pipeline.intervals`).
``bootstrap_ci`` (the prompts-only bootstrap of earlier reports) is kept for the Python API.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for fewer than two values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default, R type 7)."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_ci(
    groups: Sequence[Sequence[float]], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval over items of the mean over groups of each group's mean.

    ``groups`` holds one list per seed of per-item values (0/1 flags × 100 for a rate). When every
    group has the same length the items are taken to be the same prompts and one set of resampled
    indices is used for all groups (a paired bootstrap); otherwise each group is resampled on its
    own. One ``random.Random(seed)`` draws ``choices(range(m), k=m)`` once per replicate (paired)
    or once per group in order (unpaired). Returns None when there is nothing to resample.
    """
    groups = [list(map(float, g)) for g in groups if len(g)]
    if not groups or n_boot < 1:
        return None
    rng = random.Random(seed)
    paired = len({len(g) for g in groups}) == 1
    reps: list[float] = []
    for _ in range(n_boot):
        if paired:
            m = len(groups[0])
            idx = rng.choices(range(m), k=m)
            means = [sum(g[i] for i in idx) / m for g in groups]
        else:
            means = []
            for g in groups:
                idx = rng.choices(range(len(g)), k=len(g))
                means.append(sum(g[i] for i in idx) / len(g))
        reps.append(sum(means) / len(means))
    reps.sort()
    alpha = (1.0 - level) / 2
    return quantile(reps, alpha), quantile(reps, 1.0 - alpha)


@dataclass
class Stat:
    """A metric aggregated over seeds, with its bootstrap interval over prompts."""

    mean: float | None
    std: float | None = None
    n_seeds: int = 0
    ci: tuple[float, float] | None = None
    n_items: int = 0
    ci_method: str | None = None  # "wilson" | "bootstrap" | "metrics.json" | None

    @classmethod
    def of(
        cls,
        per_seed: Sequence[float | None],
        items: Sequence[Sequence[float]] = (),
        *,
        n_boot: int = 1000,
        seed: int = 0,
    ) -> Stat:
        vals = [v for v in per_seed if v is not None]
        mean, std = mean_std(vals)
        ci = bootstrap_ci(items, n_boot=n_boot, seed=seed) if items else None
        n_items = max((len(i) for i in items), default=0)
        return cls(mean, std, len(vals), ci, n_items, "bootstrap" if ci else None)

    @classmethod
    def proportion(
        cls,
        per_seed: Sequence[float | None],
        flags: Sequence[Sequence[float]],
        sizes: Sequence[int | None] = (),
        *,
        n_boot: int = 1000,
        seed: int = 0,
        level: float = 0.95,
        aligned: bool = True,
    ) -> Stat:
        """A rate in % over seeds: mean ± std of ``per_seed`` (the evaluations' own numbers) with

        - one evaluation: the Wilson interval of k of n;
        - several: the two-level percentile bootstrap over seeds × prompts (``n_boot`` = 0: none),
          widened to hold the Wilson interval of the seeds' pooled prompts (the bootstrap alone
          is a point when every seed is at 0% or 100%); crossed, that interval counts the pooled
          outcomes as ``intervals.design_effect`` says they are worth (seeds that agree prompt by
          prompt: one prompt sample).

        k and n come from an evaluation's per-prompt 0/100 ``flags`` when they reproduce its rate,
        else from its rate and ``sizes`` (n): an evaluation without generations.jsonl, or a metric
        whose per-prompt form the records do not carry. The bootstrap is crossed (one draw of
        prompt indices for every seed) when every seed has per-prompt flags of the same length
        and ``aligned`` (the caller found the same prompts in the same order; the seeds share
        their prompts: ``eval.seed`` is fixed), nested otherwise.
        """
        from hftguard.pipeline import intervals as stats

        vals = [v for v in per_seed if v is not None]
        mean, std = mean_std(vals)
        out = cls(mean, std, len(vals))
        groups: list[list[float] | None] = []
        real = True
        for i, value in enumerate(per_seed):
            g = [100.0 * bool(x) for x in (flags[i] if i < len(flags) else ())]
            n = sizes[i] if i < len(sizes) else None
            if g and (value is None or abs(sum(g) / len(g) - value) < 1e-6):
                groups.append(g)
            elif value is not None and n:
                k = round(float(value) * int(n) / 100.0)
                groups.append([100.0] * k + [0.0] * (int(n) - k))
                real = False
            else:
                groups.append(None)
        out.n_items = max((len(g) for g in groups if g), default=0)
        if len(groups) == 1 and groups[0]:
            g = groups[0]
            ci = stats.wilson(sum(1 for x in g if x), len(g), level)
            if ci is not None:
                out.ci, out.ci_method = (float(ci[0]), float(ci[1])), "wilson"
        elif len(groups) > 1 and n_boot > 0 and all(groups):
            full = [g for g in groups if g]
            crossed = real and aligned and len({len(g) for g in full}) == 1
            _, lo, hi = stats.two_level_bootstrap(full, n_boot, seed, level, crossed=crossed)
            if lo is not None and hi is not None:
                out.ci, out.ci_method = (lo, hi), "bootstrap"
                # the seeds' pooled prompts' own sampling error: the bootstrap collapses to a
                # point when every seed is at 0% or 100% (HS 0 of 200 three times: [0, 0])
                hits, n_items = sum(1 for g in full for x in g if x), sum(len(g) for g in full)
                if crossed:  # the seeds share their prompts: k × m outcomes are not independent
                    pooled = stats.wilson_effective(
                        hits / n_items, n_items / stats.design_effect(full), level
                    )
                else:
                    pooled = stats.wilson(hits, n_items, level)
                wider = stats.hull(out.ci, pooled)
                if wider != out.ci:
                    out.ci, out.ci_method = wider, "bootstrap+wilson"
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON form: mean, sd, n_seeds, ci [lo, hi] | None, ci_method, n_items."""
        return {
            "mean": self.mean,
            "sd": self.std,
            "n_seeds": self.n_seeds,
            "ci": list(self.ci) if self.ci else None,
            "ci_method": self.ci_method,
            "n_items": self.n_items,
        }

    def text(self, digits: int = 1, with_std: bool = True) -> str:
        if self.mean is None:
            return "–"
        out = f"{self.mean:.{digits}f}"
        if with_std and self.std is not None:
            out += f" ± {self.std:.{digits}f}"
        return out

    def ci_text(self, digits: int = 1) -> str:
        return "–" if self.ci is None else f"[{self.ci[0]:.{digits}f}, {self.ci[1]:.{digits}f}]"


def _avg(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
