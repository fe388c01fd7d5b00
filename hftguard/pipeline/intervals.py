"""Intervals and tests for comparing defenses: Wilson, exact McNemar, paired/two-level bootstrap.

Why these: an evaluation is a few hundred prompts, so every Harmful Score is an estimate with a
sampling error, and two defenses evaluated on the *same* prompts should be compared prompt by
prompt, not by eye.

- :func:`wilson` — a confidence interval for one proportion (k of n). Unlike the percentile
  bootstrap it has a sensible width at 0 of n or n of n (the bootstrap collapses to [0, 0] there)
  and keeps near-nominal coverage for small n.
- :func:`newcombe_paired` — an interval for the difference of two paired proportions (two
  models' 0/1 outcomes on the same prompts) that agrees with the McNemar test and does not
  collapse when the two models answer alike.
- :func:`design_effect`, :func:`wilson_effective` — how many independent outcomes several seeds on
  the same prompts are worth, and a Wilson interval on that many, for pooling seeds honestly.
- :func:`mcnemar_exact` — the exact (binomial) McNemar test for two paired 0/1 outcomes: only the
  discordant prompts (harmful under one model, not the other) carry information, and under "no
  difference" each discordant prompt is equally likely to go either way.
- :func:`paired_bootstrap_diff` — the difference of two means over the same items with a
  percentile bootstrap interval that resamples *item indices*, so both methods see the same
  resampled prompts (the pairing removes the prompts' shared difficulty from the noise).
- :func:`two_level_bootstrap` — an interval for a mean over seeds × items: resample seeds and
  items, so the interval covers both the training randomness and the prompt sample.
- :func:`mean_sd` — mean and sample standard deviation (n − 1).

Torch-free; numpy and scipy are imported inside the functions, so importing this module (as
``hftguard eval`` and ``hftguard report`` do) costs nothing at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: Elements of the (replicates × items) index matrix drawn at once; larger draws are chunked.
_CHUNK = 2_000_000


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials, in percent; None when n = 0.

    scipy's ``binomtest(k, n).proportion_ci(method="wilson")`` (no continuity correction).
    """
    if n <= 0:
        return None
    k, n = int(k), int(n)
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} is not in [0, n={n}]")
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return (100.0 * max(0.0, float(ci.low)), 100.0 * min(1.0, float(ci.high)))


def wilson_from_rate(rate: float | None, n: int | None, level: float = 0.95) -> Any:
    """Wilson interval of a rate in percent measured on n items (k = rate × n / 100, rounded), as a
    list ``[lo, hi]`` for JSON; None when either is missing or n = 0."""
    if rate is None or not n:
        return None
    ci = wilson(round(float(rate) * int(n) / 100.0), int(n), level)
    return None if ci is None else list(ci)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c (1.0 when b + c = 0).

    Under the null each of the b + c discordant pairs falls either way with probability 1/2, so
    the p-value is scipy's two-sided ``binomtest(b, b + c, 0.5)``, i.e.
    ``min(1, 2 · P[Bin(b + c, 1/2) ≤ min(b, c)])``.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("mcnemar_exact: counts must be >= 0")
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(b, b + c, 0.5).pvalue))


def wilson_effective(rate: float, n_eff: float, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval, in percent, of a proportion ``rate`` (a fraction in [0, 1]) measured
    on an *effective* number of independent trials ``n_eff``, which need not be an integer; None
    when n_eff <= 0. At an integer n_eff and rate k/n_eff it is :func:`wilson`'s interval (the same
    closed form, written out so that it takes a real n):

        centre = (p + z²/2n) / (1 + z²/n),  half = z √(p(1 − p)/n + z²/4n²) / (1 + z²/n)
    """
    _check_level(level)
    if n_eff <= 0:
        return None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"wilson_effective: rate {rate} is not in [0, 1]")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2.0))
    z2n = z * z / n_eff
    centre = (rate + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(rate * (1.0 - rate) / n_eff + z2n / (4.0 * n_eff)) / (1.0 + z2n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def design_effect(table: Sequence[Sequence[float]]) -> float:
    """Kish's design effect 1 + (k − 1)·ICC of a seeds × items table of per-item values (k seeds
    that share their m items), for the variance of the table's mean.

    Several seeds evaluated on the *same* prompts are not k·m independent outcomes: a prompt that
    one seed's model answers harmfully, the others' tend to as well, and the prompts themselves
    are one sample of m. The intra-class correlation of the items (one-way ANOVA with items as the
    groups, ICC = (MSB − MSW) / (MSB + (k − 1)·MSW), clipped to [0, 1]) measures how alike the
    seeds are prompt by prompt; k·m / design effect is the effective number of independent
    outcomes. Seeds that agree on every prompt give k (the prompts count once), independent seeds
    1. A table without any variation (every value equal) gives k: the seeds agree everywhere, and
    nothing shows they are independent. One seed or one item: 1.
    """
    import numpy as np

    t = np.asarray(table, dtype=float)
    if t.ndim != 2:
        raise ValueError(f"design_effect: need a seeds × items table, got shape {t.shape}")
    k, m = t.shape
    if k < 2 or m < 2:
        return 1.0
    item_means = t.mean(axis=0)
    msb = k * float(((item_means - t.mean()) ** 2).sum()) / (m - 1)
    msw = float(((t - item_means) ** 2).sum()) / (m * (k - 1))
    denom = msb + (k - 1) * msw
    icc = 1.0 if denom <= 0.0 else min(1.0, max(0.0, (msb - msw) / denom))
    return 1.0 + (k - 1) * icc


def newcombe_paired(
    both: int, b: int, c: int, n: int, level: float = 0.95, *, n_eff: float | None = None
) -> tuple[float, float] | None:
    """Interval for the difference of two paired proportions, in percentage points; None when
    n = 0. Newcombe's hybrid score interval (Newcombe 1998, Statistics in Medicine 17:2635,
    method 10, without continuity correction).

    ``both``: items where both outcomes are 1; ``b``: only the first; ``c``: only the second; of
    ``n`` items. The difference is (b − c)/n. Each proportion gets its Wilson interval, and the
    two are combined with the correlation φ of the 2 × 2 table (0 where a margin is empty):

        L = θ − √((p₁ − l₁)² − 2φ(p₁ − l₁)(u₂ − p₂) + (u₂ − p₂)²)
        U = θ + √((u₁ − p₁)² − 2φ(u₁ − p₁)(p₂ − l₂) + (p₂ − l₂)²)

    Why not the percentile bootstrap of the per-item differences: with few discordant items it
    covers far less than the nominal level (b = 0, c = 4 of 200 gives [−4.0, −0.5], excluding 0,
    while the exact McNemar p is 0.125), and with none it collapses to [0, 0]. This interval
    agrees with the test there and keeps a width from the items' own sampling error.

    ``n_eff``: the table pools items that are not independent (several seeds on the same prompts):
    the two proportions and φ stay the table's, and their Wilson intervals count ``n_eff``
    trials instead of n (:func:`design_effect`).
    """
    if n <= 0:
        return None
    both, b, c, n = int(both), int(b), int(c), int(n)
    neither = n - both - b - c
    if min(both, b, c, neither) < 0:
        raise ValueError(f"newcombe_paired: counts {both}, {b}, {c} do not fit in n = {n}")
    if n_eff is None:
        w1, w2 = wilson(both + b, n, level), wilson(both + c, n, level)
    else:
        w1 = wilson_effective((both + b) / n, n_eff, level)
        w2 = wilson_effective((both + c) / n, n_eff, level)
    if w1 is None or w2 is None:
        return None
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = w1[0] / 100.0, w1[1] / 100.0
    l2, u2 = w2[0] / 100.0, w2[1] / 100.0
    margins = (both + b) * (c + neither) * (both + c) * (b + neither)
    phi = (both * neither - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    theta = p1 - p2
    lo_sq = (p1 - l1) ** 2 - 2.0 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    hi_sq = (u1 - p1) ** 2 - 2.0 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    lo = max(-1.0, theta - math.sqrt(max(lo_sq, 0.0)))
    hi = min(1.0, theta + math.sqrt(max(hi_sq, 0.0)))
    return 100.0 * lo, 100.0 * hi


def paired_counts(x: Sequence[float], y: Sequence[float]) -> tuple[int, int, int, int]:
    """(both, b, c, n) of two paired 0/1 outcome lists (any true value counts as 1)."""
    b, c = discordant(x, y)
    both = sum(1 for a, o in zip(x, y, strict=True) if a and o)
    return both, b, c, len(x)


def hull(
    a: tuple[float, float] | None, b: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The smallest interval holding both (either one when the other is None)."""
    if a is None or b is None:
        return a if b is None else b
    return min(a[0], b[0]), max(a[1], b[1])


def discordant(x: Sequence[float], y: Sequence[float]) -> tuple[int, int]:
    """(b, c): items with x true and y false, and items with y true and x false."""
    if len(x) != len(y):
        raise ValueError(f"discordant: {len(x)} vs {len(y)} items are not paired")
    b = sum(1 for a, o in zip(x, y, strict=True) if a and not o)
    c = sum(1 for a, o in zip(x, y, strict=True) if o and not a)
    return b, c


def _quantiles(reps: Any, level: float) -> tuple[float, float]:
    import numpy as np

    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])  # linear interpolation (R type 7)
    return float(lo), float(hi)


def _counts(idx: Any, m: int) -> Any:
    """Per row of a (k × draws) index matrix, how often each of 0..m-1 was drawn: k × m."""
    import numpy as np

    k = idx.shape[0]
    flat = (idx + (np.arange(k) * m)[:, None]).ravel()
    return np.bincount(flat, minlength=k * m).reshape(k, m)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def paired_bootstrap_diff(
    x: Sequence[float],
    y: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float | None, float | None]:
    """mean(x) − mean(y) for paired per-item outcomes, with a percentile bootstrap interval.

    ``x[i]`` and ``y[i]`` are the two methods' outcomes (0/1 or real) on the same item i. Each
    replicate draws m item indices with replacement (``numpy.random.default_rng(seed)``) and takes
    the mean of the per-item differences over them. The interval is (None, None) when there is
    nothing to resample (no items, or ``n_boot`` < 1).
    """
    import numpy as np

    _check_level(level)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"paired_bootstrap_diff: {xs.shape} vs {ys.shape} are not paired")
    m = xs.size
    if m == 0:
        raise ValueError("paired_bootstrap_diff: no items")
    d = xs - ys
    diff = float(d.mean())
    if n_boot < 1:
        return diff, None, None
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    step = max(1, _CHUNK // m)
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        reps[start : start + k] = d[rng.integers(0, m, size=(k, m))].mean(axis=1)
    lo, hi = _quantiles(reps, level)
    return diff, lo, hi


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of the values that are not None; the sd is None
    for fewer than two values, both are None for none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    mean = math.fsum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def two_level_bootstrap(
    groups: Sequence[Sequence[float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    crossed: bool | None = None,
) -> tuple[float, float | None, float | None]:
    """Mean over seeds of the per-seed mean over items, with a seeds × items bootstrap interval.

    ``groups`` holds one sequence of per-item values per seed (for a paired comparison: per-item
    differences). Each replicate resamples the seeds with replacement *and* the items:

    - crossed (the default when every group has the same length, i.e. the seeds share their
      prompts): one draw of item indices is used for every resampled seed — the seed × prompt
      table is resampled by rows and by columns;
    - nested (groups of different lengths): each resampled seed resamples its own items.

    With one seed this is the ordinary bootstrap over items. The point estimate is the plain
    mean of the group means. Returns (mean, None, None) when ``n_boot`` < 1.
    """
    import numpy as np

    _check_level(level)
    arrays = [np.asarray(g, dtype=float) for g in groups]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        raise ValueError("two_level_bootstrap: no items")
    mean = float(np.mean([a.mean() for a in arrays]))
    if n_boot < 1:
        return mean, None, None
    s = len(arrays)
    same = len({a.size for a in arrays}) == 1
    if crossed is None:
        crossed = same
    if crossed and not same:
        raise ValueError("two_level_bootstrap: crossed resampling needs groups of equal length")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    if crossed:
        table = np.stack(arrays)  # seeds × items
        m = table.shape[1]
        step = max(1, _CHUNK // (m + s))
        for start in range(0, n_boot, step):
            k = min(step, n_boot - start)
            seed_w = _counts(rng.integers(0, s, (k, s)), s)
            item_w = _counts(rng.integers(0, m, (k, m)), m)
            # Σ_s Σ_i w_s · w_i · table[s, i] / (S · m): the mean of the resampled sub-table
            reps[start : start + k] = np.einsum("ks,sm,km->k", seed_w, table, item_w) / (s * m)
    else:
        for b in range(n_boot):
            picks = rng.integers(0, s, s)
            reps[b] = np.mean(
                [arrays[j][rng.integers(0, arrays[j].size, arrays[j].size)].mean() for j in picks]
            )
    lo, hi = _quantiles(reps, level)
    return mean, lo, hi


def held_out_max(
    outcomes: Sequence[Sequence[float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float | None, float | None]:
    """The worst (largest) of several settings' means, estimated without selection bias.

    ``outcomes[s][i]`` is setting s's outcome on item i (the same items for every setting, e.g.
    a prompt's harmful rate averaged over seeds). The plain maximum of the settings' means is
    biased upwards: with noise, the setting that looks worst is partly the one that was unlucky.
    Cross-fitting removes that: split the items into two halves (even and odd positions), pick
    the worst setting on one half and measure it on the other, both ways round, and average the
    two measurements (each half weighted by its size). Its expectation is the true mean of the
    settings the selection picks, never above the true worst. The interval is a percentile
    bootstrap that resamples items within each half and repeats the selection in every
    replicate. Ties in the selection go to the earlier setting. One setting: its plain mean.
    """
    import numpy as np

    _check_level(level)
    x = np.asarray(outcomes, dtype=float)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("held_out_max: outcomes must be settings x items, with items")
    m = x.shape[1]
    halves = [np.arange(0, m, 2), np.arange(1, m, 2)]
    if x.shape[0] == 1 or m < 2:
        mean = float(x.mean(axis=1).max())
        return mean, None, None

    def estimate(a: Any, b: Any) -> Any:
        """Per replicate (rows of index matrices a, b into halves 0 and 1): the cross-fit."""
        ma = x[:, a].mean(axis=-1)  # settings x replicates
        mb = x[:, b].mean(axis=-1)
        pick_a, pick_b = ma.argmax(axis=0), mb.argmax(axis=0)
        cols = np.arange(ma.shape[1])
        na, nb = a.shape[-1], b.shape[-1]
        return (mb[pick_a, cols] * nb + ma[pick_b, cols] * na) / (na + nb)

    point = float(estimate(halves[0][None, :], halves[1][None, :])[0])
    if n_boot < 1:
        return point, None, None
    rng = np.random.default_rng(seed)
    a = halves[0][rng.integers(0, halves[0].size, size=(n_boot, halves[0].size))]
    b = halves[1][rng.integers(0, halves[1].size, size=(n_boot, halves[1].size))]
    lo, hi = _quantiles(estimate(a, b), level)
    return point, lo, hi
