"""Agreement between judges: Cohen's kappa on the harmful/not-harmful decision, and the samples
they disagree on (docs/judges.md). Other harmful-fine-tuning toolkits do not report judge agreement.

Pure Python so reports and tests need no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

from hftguard.records import Verdict


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' binary decisions on the same items.

    kappa = (p_o - p_e) / (1 - p_e) with p_o the observed agreement and p_e the agreement expected
    by chance from each rater's marginal rate. ``None`` when it is undefined: no items, or both
    raters gave one and the same answer to every item (p_e = 1).
    """
    if len(a) != len(b):
        raise ValueError(f"raters judged {len(a)} and {len(b)} items")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    pa, pb = sum(a) / n, sum(b) / n
    p_e = pa * pb + (1 - pa) * (1 - pb)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def pairwise(per_judge: dict[str, list[Verdict]]) -> list[dict[str, Any]]:
    """Kappa, raw agreement (%) and disagreement count for every pair of judges, in config order."""
    rows = []
    for x, y in combinations(per_judge, 2):
        a = [v.harmful for v in per_judge[x]]
        b = [v.harmful for v in per_judge[y]]
        n = len(a)
        same = sum(p == q for p, q in zip(a, b, strict=True))
        kappa = cohen_kappa(a, b)
        rows.append(
            {
                "judges": [x, y],
                "kappa": None if kappa is None else round(kappa, 4),
                "agreement": None if n == 0 else round(100.0 * same / n, 2),
                "disagreements": n - same,
                "n": n,
            }
        )
    return rows


def disagreements(per_judge: dict[str, list[Verdict]]) -> list[int]:
    """Indices of the items on which the judges do not all give the same harmful decision."""
    if not per_judge:
        return []
    columns = list(per_judge.values())
    return [i for i in range(len(columns[0])) if len({col[i].harmful for col in columns}) > 1]
