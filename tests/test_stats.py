"""``hftguard.pipeline.intervals`` against independent computations: the Wilson formula by hand,
McNemar's exact test from binomial coefficients, and bootstrap intervals that behave as sampling
theory says."""

from __future__ import annotations

import math
import random
import statistics
from statistics import NormalDist

import pytest

from hftguard.pipeline import intervals as stats


def wilson_by_hand(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval from its closed form, in percent."""
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact McNemar: twice the smaller binomial tail of Bin(b + c, 1/2), capped at 1."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m
    return min(1.0, 2 * tail)


# ------------------------------------------------------------------------------------------------
# Wilson


@pytest.mark.parametrize(
    ("k", "n"), [(0, 4), (4, 4), (1, 4), (2, 4), (0, 20), (3, 20), (30, 100), (97, 100), (1, 1)]
)
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_wilson_matches_the_formula(k: int, n: int, level: float) -> None:
    lo, hi = stats.wilson(k, n, level)
    lo_h, hi_h = wilson_by_hand(k, n, level)
    assert lo == pytest.approx(lo_h, abs=1e-9) and hi == pytest.approx(hi_h, abs=1e-9)
    assert 0.0 <= lo <= 100 * k / n <= hi <= 100.0


def test_wilson_worked_values() -> None:
    # 0 of 4: centre = z²/2 / (4 + z²) = half-width, so [0, 2·1.9208/7.8415] = [0, 48.99 %]
    assert stats.wilson(0, 4) == (0.0, pytest.approx(48.989, abs=1e-3))
    # 30 of 100: [21.89, 39.58] % (textbook value)
    lo, hi = stats.wilson(30, 100)
    assert (round(lo, 2), round(hi, 2)) == (21.89, 39.58)


def test_wilson_degenerate_counts_still_have_width() -> None:
    # the percentile bootstrap gives [0, 0] at 0 of 4; the Wilson interval does not
    lo, hi = stats.wilson(0, 4)
    assert lo == 0.0 and hi > 40.0
    lo, hi = stats.wilson(4, 4)
    assert hi == 100.0 and lo < 60.0
    assert stats.wilson(0, 0) is None
    assert stats.wilson(0, 400)[1] < stats.wilson(0, 40)[1] < stats.wilson(0, 4)[1]
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


def test_wilson_from_rate() -> None:
    assert stats.wilson_from_rate(25.0, 4) == list(stats.wilson(1, 4))
    assert stats.wilson_from_rate(100 / 3, 6) == list(stats.wilson(2, 6))  # rounding, not floor
    assert stats.wilson_from_rate(None, 4) is None and stats.wilson_from_rate(10.0, 0) is None


# ------------------------------------------------------------------------------------------------
# McNemar


@pytest.mark.parametrize(
    ("b", "c"), [(0, 5), (5, 0), (1, 9), (9, 1), (3, 3), (4, 6), (10, 2), (0, 1), (12, 30)]
)
def test_mcnemar_matches_binomial_coefficients(b: int, c: int) -> None:
    assert stats.mcnemar_exact(b, c) == pytest.approx(mcnemar_by_hand(b, c), rel=1e-9)


def test_mcnemar_worked_values() -> None:
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # all five discordant one way
    assert stats.mcnemar_exact(3, 3) == 1.0
    assert stats.mcnemar_exact(0, 0) == 1.0  # no discordant prompt: no evidence
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert stats.mcnemar_exact(2, 7) == stats.mcnemar_exact(7, 2)  # symmetric


# ------------------------------------------------------------------------------------------------
# Newcombe's interval for paired proportions


def newcombe_by_hand(both: int, b: int, c: int, n: int) -> tuple[float, float]:
    """Newcombe (1998) method 10, from the closed-form Wilson limits above, in points."""
    d = n - both - b - c
    p1, p2 = (both + b) / n, (both + c) / n
    (l1, u1), (l2, u2) = (
        tuple(x / 100 for x in wilson_by_hand(k, n)) for k in (both + b, both + c)
    )
    den = (both + b) * (c + d) * (both + c) * (b + d)
    phi = (both * d - b * c) / math.sqrt(den) if den else 0.0
    lo = p1 - p2 - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    hi = p1 - p2 + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    return 100 * lo, 100 * hi


@pytest.mark.parametrize(
    ("both", "b", "c", "n"),
    [
        (150, 0, 4, 200),
        (167, 0, 0, 200),
        (80, 10, 81, 200),
        (0, 0, 0, 20),
        (20, 0, 0, 20),
        (3, 9, 2, 20),
        (0, 7, 0, 10),
        (12, 9, 2, 44),
    ],
)
def test_newcombe_matches_the_formula(both: int, b: int, c: int, n: int) -> None:
    lo, hi = stats.newcombe_paired(both, b, c, n)
    lo_h, hi_h = newcombe_by_hand(both, b, c, n)
    assert (lo, hi) == (pytest.approx(lo_h, abs=1e-9), pytest.approx(hi_h, abs=1e-9))
    assert lo <= 100 * (b - c) / n <= hi
    # the difference the other way round is the mirror image
    lo_r, hi_r = stats.newcombe_paired(both, c, b, n)
    assert (lo_r, hi_r) == (pytest.approx(-hi), pytest.approx(-lo))


def test_newcombe_keeps_width_where_the_bootstrap_collapses() -> None:
    """Two models that answer 200 prompts alike: the bootstrap of the differences is [0, 0];
    the score interval keeps the prompts' sampling error. Few discordant prompts, all one way
    (b = 0, c = 4, McNemar p = 0.125): the bootstrap excludes 0, the score interval does not."""
    same = [1.0] * 167 + [0.0] * 33
    assert stats.paired_bootstrap_diff(same, same, n_boot=500)[1:] == (0.0, 0.0)
    lo, hi = stats.newcombe_paired(167, 0, 0, 200)
    assert lo < -1.0 and hi > 1.0
    x = [1.0] * 150 + [0.0] * 50
    y = [1.0] * 154 + [0.0] * 46
    assert stats.paired_bootstrap_diff(x, y, n_boot=2000)[2] < 0  # too short: excludes 0
    assert stats.mcnemar_exact(0, 4) == pytest.approx(0.125)
    lo, hi = stats.newcombe_paired(150, 0, 4, 200)
    assert lo < -2.0 < 0.0 < hi


def test_newcombe_covers_at_about_the_nominal_level() -> None:
    """Simulated paired 0/1 outcomes on 200 prompts that rarely disagree (2 % each way):
    the 95 % interval covers the true difference (0) in at least 93 % of 1500 draws."""
    rng = random.Random(0)
    hits = 0
    for _ in range(1500):
        both = b = c = 0
        for _ in range(200):
            u = rng.random()
            if u < 0.75:
                both += 1
            elif u < 0.77:
                b += 1
            elif u < 0.79:
                c += 1
        lo, hi = stats.newcombe_paired(both, b, c, 200)
        hits += lo <= 0.0 <= hi
    assert hits / 1500 >= 0.93


def test_discordant_counts() -> None:
    x = [1, 1, 0, 0, 1, 0]
    y = [1, 0, 1, 0, 0, 0]
    assert stats.discordant(x, y) == (2, 1)
    with pytest.raises(ValueError):
        stats.discordant([1], [1, 0])


# ------------------------------------------------------------------------------------------------
# Paired bootstrap


def correlated_pairs(m: int, seed: int) -> tuple[list[float], list[float]]:
    """Prompts of varying difficulty u; method x is harmful when u < 0.35, y when u < 0.25."""
    rng = random.Random(seed)
    us = [rng.random() for _ in range(m)]
    return [float(u < 0.35) for u in us], [float(u < 0.25) for u in us]


def test_paired_bootstrap_point_estimate_and_determinism() -> None:
    x, y = correlated_pairs(200, 0)
    diff, lo, hi = stats.paired_bootstrap_diff(x, y, n_boot=500, seed=3)
    assert diff == pytest.approx(statistics.mean(x) - statistics.mean(y))
    assert lo <= diff <= hi
    assert stats.paired_bootstrap_diff(x, y, n_boot=500, seed=3) == (diff, lo, hi)
    assert stats.paired_bootstrap_diff(x, y, n_boot=500, seed=4) != (diff, lo, hi)
    assert stats.paired_bootstrap_diff(x, y, n_boot=0) == (diff, None, None)
    d2, lo2, hi2 = stats.paired_bootstrap_diff(y, x, n_boot=500, seed=3)  # antisymmetric
    assert (d2, lo2, hi2) == (pytest.approx(-diff), pytest.approx(-hi), pytest.approx(-lo))


def test_paired_bootstrap_contains_the_truth_and_shrinks_with_n() -> None:
    widths = []
    for m in (100, 400, 1600):
        x, y = correlated_pairs(m, m)
        _, lo, hi = stats.paired_bootstrap_diff(x, y, n_boot=2000, seed=1)
        assert lo < 0.10 < hi  # the true difference is P(0.25 <= u < 0.35) = 0.10
        # the normal approximation of a paired mean: ± 1.96 · sd(d) / √m
        d = [a - b for a, b in zip(x, y, strict=True)]
        half = 1.96 * statistics.pstdev(d) / math.sqrt(m)
        assert hi - lo == pytest.approx(2 * half, rel=0.2)
        widths.append(hi - lo)
    assert widths[0] > 1.6 * widths[1] > 1.6 * 1.6 * widths[2]  # ~ 1/√m: halves per ×4


def test_paired_bootstrap_uses_the_pairing() -> None:
    # Identical outcomes on every prompt: every replicate's difference is 0 — an unpaired
    # bootstrap (resampling x and y independently) would give an interval of about ±14 points.
    x = [1.0] * 30 + [0.0] * 70
    assert stats.paired_bootstrap_diff(x, x, n_boot=300, seed=0) == (0.0, 0.0, 0.0)
    # One prompt differs: the interval is [0, a few %], far narrower than unpaired noise
    y = list(x)
    y[0] = 0.0
    diff, lo, hi = stats.paired_bootstrap_diff(x, y, n_boot=1000, seed=0)
    assert diff == pytest.approx(0.01) and lo == 0.0 and hi <= 0.04
    with pytest.raises(ValueError):
        stats.paired_bootstrap_diff([1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        stats.paired_bootstrap_diff([], [])


# ------------------------------------------------------------------------------------------------
# mean ± sd and the two-level bootstrap


def test_mean_sd() -> None:
    vals = [4.0, 6.0, 11.0]
    assert stats.mean_sd(vals) == (7.0, pytest.approx(statistics.stdev(vals)))
    assert stats.mean_sd([5.0, None]) == (5.0, None)
    assert stats.mean_sd([]) == (None, None)


def test_two_level_bootstrap_one_seed_is_the_prompt_bootstrap() -> None:
    flags = [1.0] * 120 + [0.0] * 280  # 30 % of 400
    mean, lo, hi = stats.two_level_bootstrap([flags], n_boot=2000, seed=2)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert mean == pytest.approx(0.3)
    assert lo == pytest.approx(0.3 - half, abs=0.01) and hi == pytest.approx(0.3 + half, abs=0.01)
    assert stats.two_level_bootstrap([flags], n_boot=0) == (pytest.approx(0.3), None, None)


def test_two_level_bootstrap_adds_the_seed_spread() -> None:
    rng = random.Random(5)
    # three seeds whose rates differ (30 %, 45 %, 60 %) on the same 200 prompts
    groups = [[float(rng.random() < r) for _ in range(200)] for r in (0.3, 0.45, 0.6)]
    mean, lo, hi = stats.two_level_bootstrap(groups, n_boot=2000, seed=0)
    assert mean == pytest.approx(statistics.mean(statistics.mean(g) for g in groups))
    # the prompts-only bootstrap of the seed-mean (the earlier report's interval) is far narrower
    pooled = [statistics.mean(col) for col in zip(*groups, strict=True)]
    _, plo, phi = stats.two_level_bootstrap([pooled], n_boot=2000, seed=0)
    assert hi - lo > 2 * (phi - plo)
    # identical seeds: resampling seeds adds nothing
    same = [groups[0]] * 3
    _, slo, shi = stats.two_level_bootstrap(same, n_boot=2000, seed=0)
    _, olo, ohi = stats.two_level_bootstrap([groups[0]], n_boot=2000, seed=0)
    assert shi - slo == pytest.approx(ohi - olo, rel=0.15)


def test_two_level_bootstrap_nested_for_different_prompts() -> None:
    groups = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    mean, lo, hi = stats.two_level_bootstrap(groups, n_boot=400, seed=0)
    assert mean == pytest.approx((0.5 + 1 / 3) / 2) and 0.0 <= lo < mean < hi <= 1.0
    with pytest.raises(ValueError):
        stats.two_level_bootstrap(groups, crossed=True)
    with pytest.raises(ValueError):
        stats.two_level_bootstrap([[]])
    # crossed=False on equal lengths: still a valid (nested) interval
    _, nlo, nhi = stats.two_level_bootstrap([[1.0, 0.0], [0.0, 1.0]], n_boot=400, crossed=False)
    assert nlo < 0.5 < nhi


def test_importing_stats_does_not_import_scipy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hftguard.pipeline.intervals; "
        "print('scipy' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# held_out_max: the worst of several settings without selection bias (#19)


def test_held_out_max_by_hand() -> None:
    # X is harmful on the even items, Y on the odd ones: each looks worst on its own half, and is
    # harmless on the other; the plain max says 0.5, the cross-fit says 0
    x, y = [1.0, 0.0] * 10, [0.0, 1.0] * 10
    assert max(sum(x), sum(y)) / 20 == 0.5
    assert stats.held_out_max([x, y], n_boot=0) == (0.0, None, None)
    # a setting worse on every item is picked on both halves: its plain mean
    worse, better = [1.0] * 16 + [0.5] * 2 + [0.0] * 2, [1.0] * 4 + [0.0] * 16
    est, lo, hi = stats.held_out_max([better, worse], n_boot=500)
    assert est == pytest.approx(17 / 20) and lo is not None and hi is not None
    assert lo <= est <= hi
    # one setting: its mean; unequal halves are weighted by their sizes
    assert stats.held_out_max([[1.0, 0.0, 1.0]], n_boot=0)[0] == pytest.approx(2 / 3)
    a, b = [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]  # halves {0, 2} and {1}
    assert stats.held_out_max([a, b], n_boot=0)[0] == pytest.approx((0.0 * 1 + 1.0 * 2) / 3)


def test_held_out_max_removes_the_selection_bias() -> None:
    """Eight settings with the same true rate 0.3: the plain max of their means is biased up;
    the cross-fitted estimate is not (a version that picks and measures on the same half, or
    takes the max of both halves, fails this)."""
    rng = random.Random(0)
    plain, held = [], []
    for _ in range(200):
        rows = [[float(rng.random() < 0.3) for _ in range(100)] for _ in range(8)]
        plain.append(max(sum(r) / 100 for r in rows))
        held.append(stats.held_out_max(rows, n_boot=0)[0])
    assert statistics.mean(plain) > 0.36
    assert abs(statistics.mean(held) - 0.3) < 0.01


# ------------------------------------------------------------------------------------------------
# A cell's own rate over seeds (report.stats.Stat.proportion)


def test_several_seeds_at_zero_or_hundred_keep_the_prompts_wilson_width() -> None:
    """Three seeds, each 0 of the same 20 prompts harmful: the seeds x prompts bootstrap alone is
    [0, 0] ("a defense proven perfect"); the interval holds the Wilson interval of the 20 prompts
    (the seeds agree on every prompt, so pooling them is not 60 independent outcomes); nested
    (the seeds' prompts not known to be the same ones), of the 60 pooled outcomes."""
    from hftguard.pipeline.report.stats import Stat

    zero = Stat.proportion([0.0] * 3, [[0.0] * 20] * 3, n_boot=300)
    assert zero.ci_method == "bootstrap+wilson"
    assert zero.ci == (0.0, pytest.approx(wilson_by_hand(0, 20)[1]))
    full = Stat.proportion([100.0] * 3, [[100.0] * 10] * 3, n_boot=300)
    assert full.ci == (pytest.approx(wilson_by_hand(10, 10)[0]), 100.0)
    nested = Stat.proportion([0.0] * 3, [[0.0] * 20] * 3, n_boot=300, aligned=False)
    assert nested.ci == (0.0, pytest.approx(wilson_by_hand(0, 60)[1]))
    # seeds that differ: the bootstrap is wider than the pooled Wilson and stands alone
    spread = Stat.proportion(
        [10.0, 50.0, 90.0],
        [[100.0] * k + [0.0] * (20 - k) for k in (2, 10, 18)],
        n_boot=300,
    )
    assert spread.ci_method == "bootstrap" and spread.ci[1] - spread.ci[0] > 30


def test_seeds_whose_prompts_differ_in_order_are_not_paired_by_position() -> None:
    """Two seeds that list one prompt set in two orders: a crossed bootstrap would pair prompt i
    of one with another prompt of the other (too narrow an interval); ``aligned=False`` resamples
    each seed's own prompts (nested), as two_level_bootstrap does for unequal sets."""
    from hftguard.pipeline.report.stats import Stat

    a = [100.0] * 10 + [0.0] * 10
    b = list(reversed(a))
    crossed = Stat.proportion([50.0, 50.0], [a, b], n_boot=400)
    nested = Stat.proportion([50.0, 50.0], [a, b], n_boot=400, aligned=False)
    want = stats.two_level_bootstrap([a, b], 400, 0, crossed=False)
    assert nested.ci == (pytest.approx(want[1]), pytest.approx(want[2]))
    assert crossed.ci != nested.ci


def test_a_difference_over_seeds_keeps_the_pooled_newcombe_width() -> None:
    """Two seeds whose defense and baseline answer every prompt alike (FA 100 against 100): the
    seeds x prompts bootstrap of the differences is [0, 0]; the summary holds Newcombe's
    interval of the pooled 2 x 2 table. A real spread across seeds keeps the bootstrap."""
    from types import SimpleNamespace

    from hftguard.pipeline.report.paired import Comparison, summarise

    def comp(seed: int, both: int, b: int, c: int, n: int) -> Comparison:
        deltas = [100.0] * b + [-100.0] * c + [0.0] * (n - b - c)
        run = SimpleNamespace(seed=seed)
        diff = 100.0 * (b - c) / n
        return Comparison(
            "vs_baseline", "fa", run, run, diff, None, 1.0, b, c, n, None,
            tuple(map(str, range(n))), deltas, both,
        )  # fmt: skip

    alike = summarise([comp(1, 100, 0, 0, 100), comp(2, 100, 0, 0, 100)], n_boot=300)
    assert alike is not None and alike.ci_method == "bootstrap+newcombe"
    # the two seeds agree on every prompt: the 100 prompts count once (design effect 2)
    lo, hi = newcombe_by_hand(100, 0, 0, 100)
    assert alike.ci == (pytest.approx(lo), pytest.approx(hi)) and lo < -3.0
    apart = summarise([comp(1, 40, 40, 0, 100), comp(2, 40, 0, 40, 100)], n_boot=300)
    assert apart is not None and apart.ci_method == "bootstrap"


# ------------------------------------------------------------------------------------------------
# Seeds on the same prompts are not independent outcomes (design effect)


def icc_by_hand(table: list[list[float]]) -> float:
    """One-way ANOVA intra-class correlation with the items (columns) as groups, written out."""
    k, m = len(table), len(table[0])
    cols = [[table[s][i] for s in range(k)] for i in range(m)]
    grand = sum(map(sum, table)) / (k * m)
    col_means = [sum(c) / k for c in cols]
    ss_between = sum(k * (cm - grand) ** 2 for cm in col_means)
    ss_within = sum((x - cm) ** 2 for c, cm in zip(cols, col_means, strict=True) for x in c)
    msb, msw = ss_between / (m - 1), ss_within / (m * (k - 1))
    return (msb - msw) / (msb + (k - 1) * msw)


def test_design_effect_against_the_anova_by_hand() -> None:
    rng = random.Random(3)
    # three seeds whose outcomes share a per-prompt component: an ICC strictly inside (0, 1)
    base = [rng.random() < 0.4 for _ in range(50)]
    table = [
        [100.0 * (b if rng.random() < 0.7 else rng.random() < 0.4) for b in base] for _ in range(3)
    ]
    icc = icc_by_hand(table)
    assert 0.05 < icc < 0.95
    assert stats.design_effect(table) == pytest.approx(1 + 2 * icc)
    # the same prompts answered alike in every seed: the prompts count once
    assert stats.design_effect([[0.0, 100.0, 0.0, 100.0]] * 3) == pytest.approx(3.0)
    assert stats.design_effect([[0.0] * 10] * 4) == pytest.approx(4.0)  # no variation at all
    # seeds that disagree more than chance: clipped at 1 (never fewer outcomes than items x seeds)
    assert stats.design_effect([[0.0, 100.0] * 5, [100.0, 0.0] * 5]) == pytest.approx(1.0)
    assert stats.design_effect([[0.0, 100.0, 0.0]]) == 1.0  # one seed
    # independent seeds on many prompts: close to 1
    wide = [[100.0 * (rng.random() < 0.5) for _ in range(4000)] for _ in range(3)]
    assert stats.design_effect(wide) == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize(("k", "n"), [(0, 20), (7, 20), (20, 20), (83, 200), (1, 3)])
def test_wilson_effective_is_wilson_at_an_integer_count(k: int, n: int) -> None:
    lo, hi = stats.wilson_effective(k / n, float(n))
    want = wilson_by_hand(k, n)
    assert (lo, hi) == (pytest.approx(want[0]), pytest.approx(want[1]))
    wlo, whi = stats.wilson(k, n)
    assert (lo, hi) == (pytest.approx(wlo, abs=1e-9), pytest.approx(whi, abs=1e-9))
    # fewer effective trials: wider on both sides where there is room
    half = stats.wilson_effective(k / n, n / 2.0)
    assert half[0] <= lo + 1e-12 and half[1] >= hi - 1e-12 and half[1] - half[0] > hi - lo


def test_newcombe_with_the_seeds_counted_as_one_prompt_sample() -> None:
    """n_eff = n is Newcombe's interval of the table; n_eff = the prompts of one seed on a table
    pooled from two identical seeds is that one seed's interval."""
    for both, b, c, n in [(150, 0, 4, 200), (80, 10, 81, 200), (3, 9, 2, 20)]:
        lo, hi = stats.newcombe_paired(both, b, c, n, n_eff=float(n))
        want = newcombe_by_hand(both, b, c, n)
        assert (lo, hi) == (pytest.approx(want[0]), pytest.approx(want[1]))
    pooled = stats.newcombe_paired(192, 0, 8, 200, n_eff=100.0)
    one = newcombe_by_hand(96, 0, 4, 100)
    assert pooled == (pytest.approx(one[0]), pytest.approx(one[1]))


def test_the_same_few_discordant_prompts_in_every_seed_are_not_more_evidence() -> None:
    """The bug: two seeds in which a defense gets the same 4 of 100 task prompts wrong that SFT
    gets right (RepNoise's FA, docs/results/calibrated-field-cpu) pooled into 8 of 200
    independent outcomes, an interval below zero ([-7.7, -1.3]; the report's, with the bootstrap:
    [-8.0, -1.0]) where one seed's is [-9.8, +0.4] and the exact McNemar p of each seed is 0.125.
    The prompts are one sample; the seeds repeat it. The summary's interval is now one seed's."""
    from types import SimpleNamespace

    from hftguard.pipeline.report.paired import Comparison, summarise

    def comp(seed: int, wrong: list[int]) -> Comparison:
        deltas = [-100.0 if i in wrong else 0.0 for i in range(100)]
        run = SimpleNamespace(seed=seed)
        return Comparison(
            "vs_baseline", "fa", run, run, -100.0 * len(wrong) / 100, None, 0.125, 0, len(wrong),
            100, None, tuple(map(str, range(100))), deltas, 100 - len(wrong),
        )  # fmt: skip

    same = summarise([comp(42, [3, 17, 58, 90]), comp(43, [3, 17, 58, 90])], n_boot=500)
    assert same is not None and same.ci is not None
    one = newcombe_by_hand(96, 0, 4, 100)
    assert same.ci[0] == pytest.approx(one[0]) and same.ci[1] == pytest.approx(one[1])
    assert same.ci[1] > 0  # 0 is inside, as each seed's McNemar test says
    # different prompts in the two seeds: 8 independent discordant outcomes, the pooled table
    apart = summarise([comp(42, [3, 17, 58, 90]), comp(43, [5, 21, 60, 91])], n_boot=500)
    assert apart is not None and apart.ci is not None
    assert apart.ci[1] - apart.ci[0] < same.ci[1] - same.ci[0]
