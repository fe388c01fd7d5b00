"""Paired comparisons: two evaluations of the same prompts, compared prompt by prompt.

Two kinds, both from the per-prompt outcomes in each eval directory's generations.jsonl:

- **vs baseline** — a method against the baseline method (SFT, ``sft/sft``, by default) at the
  same p, n, task, seed and attack setting: ΔHS and ΔFA;
- **attack effect** — a method at p > 0 against the same method at p = 0 (same n, task, seed and
  attack setting): what the harmful share of the user data did beyond benign fine-tuning.

Each pair gives the difference in percentage points (run − reference), a paired bootstrap
interval (the same resampled prompts for both) and an exact McNemar p-value from the discordant
prompts. Evaluations whose prompt sets differ (test-set sha256, or the prompt ids) are not paired:
the pair is recorded as skipped, with the reason. Across seeds a table cell gets the mean ± sd of
the per-seed differences and a two-level (seeds × prompts) bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hftguard.pipeline import intervals as stats
from hftguard.pipeline.report import alignments
from hftguard.pipeline.report.collection import Collection, EvalRun, shown

#: vs_baseline: a method against the baseline method; attack_effect: p > 0 against p = 0 of the
#: same method; repair_effect: a repaired model against the attacked model it repaired.
KINDS = ("vs_baseline", "attack_effect", "repair_effect")
#: hs and fa: 0/1 per prompt (McNemar applies); margin: the likelihood margin, real per prompt
#: (paired bootstrap only), compared where both evaluations have per-prompt margins.
METRICS = ("hs", "fa", "margin")


@dataclass
class Comparison:
    """One paired comparison of two evaluations (``run`` − ``ref``) on one metric."""

    kind: str  # one of KINDS
    metric: str  # "hs" | "fa" | "margin"
    run: EvalRun
    ref: EvalRun
    diff: float  # percentage points (margin: nats per token)
    ci: tuple[float, float] | None
    p_value: float | None  # exact McNemar, two-sided (None for the margin)
    b: int | None  # prompts where run is 1 and ref is 0 (harmful / correct)
    c: int | None  # prompts where ref is 1 and run is 0
    n_items: int
    judge: str | None = None
    keys: tuple[str, ...] = field(default=(), repr=False)
    deltas: list[float] = field(default_factory=list, repr=False)  # per prompt, run − ref (×100)
    both: int | None = None  # prompts where both are 1 (hs, fa): with b, c and n the 2 × 2 table

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "method": self.run.method,
            "label": self.run.label,
            **({"variant": self.run.variant_label} if self.run.variant else {}),
            "reference_method": self.ref.method,
            "reference_label": self.ref.label,
            **({"reference_variant": self.ref.variant_label} if self.ref.variant else {}),
            "p": self.run.p,
            "reference_p": self.ref.p,
            "n": self.run.n,
            "task": self.run.task,
            "seed": self.run.seed,
            "judge": self.judge,
            "diff": self.diff,
            "ci": list(self.ci) if self.ci else None,
            "p_value": self.p_value,
            "b": self.b,
            "c": self.c,
            "n_items": self.n_items,
            "eval_dir": shown(self.run.path),
            "reference_eval_dir": shown(self.ref.path),
            **({"attack": self.run.attack} if self.run.attack else {}),
        }


@dataclass
class Skipped:
    """A pair that was not compared, and why."""

    kind: str
    metric: str
    run: EvalRun
    ref: EvalRun
    reason: str

    def text(self) -> str:
        what = (
            f"{self.run.variant_text} p={self.run.p} n={self.run.n} {self.run.task} "
            f"s{self.run.seed}"
        )
        what += f" {self.run.attack_label}" if self.run.attack else ""
        ref = f"p={self.ref.p}" if self.kind == "attack_effect" else reference_text(self)
        return f"{self.kind} {self.metric.upper()} {what} vs {ref}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "method": self.run.method,
            "reference_method": self.ref.method,
            "p": self.run.p,
            "reference_p": self.ref.p,
            "n": self.run.n,
            "task": self.run.task,
            "seed": self.run.seed,
            "reason": self.reason,
            "eval_dir": shown(self.run.path),
            "reference_eval_dir": shown(self.ref.path),
        }


@dataclass
class Summary:
    """The paired comparisons of one table cell (one per seed), summarised over seeds."""

    mean: float | None
    sd: float | None
    n_seeds: int
    ci: tuple[float, float] | None
    #: one seed: "newcombe" (hs, fa) | "paired bootstrap" (margin); several: "bootstrap" (seeds
    #: × prompts), or "bootstrap+newcombe" where the pooled score interval widened it
    ci_method: str | None
    p_values: list[float | None]
    seeds: list[int | None]
    comparisons: list[Comparison] = field(default_factory=list, repr=False)

    @property
    def p_value(self) -> float | None:
        """The McNemar p-value when the cell has one seed (None with several, or a margin)."""
        return self.p_values[0] if len(self.p_values) == 1 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "sd": self.sd,
            "n_seeds": self.n_seeds,
            "ci": list(self.ci) if self.ci else None,
            "ci_method": self.ci_method,
            "p_values": self.p_values,
            "seeds": self.seeds,
        }

    def text(self, digits: int = 1, p: bool = True) -> str:
        if self.mean is None:
            return "–"
        out = f"{self.mean:+.{digits}f}"
        if self.sd is not None:
            out += f" ± {self.sd:.{digits}f}"
        if self.ci is not None:
            out += f" [{self.ci[0]:+.{digits}f}, {self.ci[1]:+.{digits}f}]"
        if p and self.p_value is not None:
            out += f" (p={format_p(self.p_value)})"
        return out


def reference_text(c: Comparison | Skipped) -> str:
    """What ``c.run`` was compared with, in words: the baseline's label, ``p=0`` or ``attacked``."""
    if c.kind == "vs_baseline":
        return c.ref.label
    if c.kind == "repair_effect":
        return "attacked"
    return f"p={c.ref.p:g}" if isinstance(c.ref.p, (int, float)) else f"p={c.ref.p}"


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _outcomes(run: EvalRun, metric: str, judge: str | None) -> dict[str, Any]:
    if metric == "hs":
        return run.harmful_outcomes(judge)
    if metric == "margin":
        return run.margin_values()
    return run.task_outcomes(run.task)


def compare(
    run: EvalRun,
    ref: EvalRun,
    metric: str,
    kind: str,
    *,
    judge: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    fingerprints: dict[Any, Any] | None = None,
) -> Comparison | Skipped:
    """``run`` − ``ref`` on HS (``metric="hs"``, harmful prompts, by ``judge`` or each
    evaluation's first judge) or FA (``"fa"``, ``run``'s task), prompt by prompt. Not across
    different base weights (:func:`.alignments.other_bases`; ``fingerprints`` caches the
    manifests read), nor across stages run in different dtypes (:func:`.alignments.run_apart`),
    nor, for HS, across versions of the judge (:func:`judged_apart`)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")

    def skip(reason: str) -> Skipped:
        return Skipped(kind, metric, run, ref, reason)

    if why := alignments.other_bases(run, ref, fingerprints):
        return skip(why)
    if why := alignments.run_apart(run, ref, fingerprints):
        return skip(why)
    j = None
    if metric == "hs":
        j, j_ref = run.headline_judge(judge), ref.headline_judge(judge)
        if j != j_ref:
            return skip(f"different headline judges ({j} vs {j_ref}); pass --judge")
        if why := judged_apart(run, ref, judge):
            return skip(why)
        test_set = "harmful"
    elif metric == "margin":
        test_set = "harmful"
    else:
        if run.task is None or ref.task != run.task:
            return skip(f"different tasks ({run.task} vs {ref.task})")
        test_set = f"task:{run.task}"
    sha, sha_ref = run.test_set_sha(test_set), ref.test_set_sha(test_set)
    if sha and sha_ref and sha != sha_ref:
        return skip(
            f"the {test_set} prompt sets differ (test_sets sha256 {sha[:12]} vs {sha_ref[:12]})"
        )
    x, y = _outcomes(run, metric, judge), _outcomes(ref, metric, judge)
    if not x or not y:
        return skip("no per-prompt outcomes (generations.jsonl missing or without verdicts)")
    if x.keys() != y.keys():
        common = len(x.keys() & y.keys())
        return skip(
            f"the {test_set} prompt sets differ ({common} of {len(x)} / {len(y)} prompts in common)"
        )
    keys = tuple(x)
    scale = 1.0 if metric == "margin" else 100.0
    xs = [scale * x[k] for k in keys]
    ys = [scale * y[k] for k in keys]
    b = c = p_value = both = None
    if metric == "margin":
        diff, lo, hi = stats.paired_bootstrap_diff(xs, ys, n_boot=n_boot, seed=seed, level=level)
    else:  # 0/1 per prompt: the score interval that agrees with the exact McNemar test
        both, b, c, n = stats.paired_counts(xs, ys)
        diff = 100.0 * (b - c) / n
        lo, hi = stats.newcombe_paired(both, b, c, n, level) or (None, None)
        p_value = stats.mcnemar_exact(b, c)
    return Comparison(
        kind,
        metric,
        run,
        ref,
        diff,
        None if lo is None or hi is None else (lo, hi),
        p_value,
        b,
        c,
        len(keys),
        j,
        keys,
        [a - o for a, o in zip(xs, ys, strict=True)],
        both,
    )


def resolve_baseline(collection: Collection, baseline: str | None) -> str | None:
    """The method (``align/finetune``) named by ``baseline`` — a method or a label — among the
    attacked evaluations; None when none matches."""
    if not baseline:
        return None
    attacked = [r for r in collection.runs if r.kind == "attacked"]
    for r in attacked:
        if r.method == baseline:
            return r.method
    for r in attacked:
        if r.label == baseline:
            return r.method
    return None


def judged_apart(r: EvalRun, ref: EvalRun, judge: str | None) -> str | None:
    """Why ``r`` and ``ref`` cannot be compared because their headline judge differs in version
    or options (a grid continued on a newer hftguard: its earlier evaluations keep the verdicts
    they were made with), in words; None when they agree, or either did not record it."""
    a, b = r.judge_record(judge), ref.judge_record(judge)
    if a is None or b is None or a == b or a[0] != b[0]:
        return None
    return (
        f"judged by different versions of {a[0]} (v{a[1]} {a[2]}, v{b[1]} {b[2]}): re-judge "
        "the older evaluations in place (hftguard rejudge RUN_DIR) to compare them"
    )


def _coords(r: EvalRun) -> tuple[Any, ...]:
    return (r.method, r.p, r.n, r.task, r.seed, r.attack_key, r.variant_key)


def pair_all(
    collection: Collection,
    *,
    baseline: str | None,
    judge: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    fingerprints: dict[Any, Any] | None = None,
) -> tuple[list[Comparison], list[Skipped]]:
    """Every vs-baseline comparison (``baseline`` is a method, see :func:`resolve_baseline`),
    every attack effect and every repair effect (a repaired model against the attacked model it
    repaired: same attacked method, cell and seed) among the attacked evaluations, HS and FA
    each."""
    attacked = [r for r in collection.runs if r.kind == "attacked"]
    index: dict[tuple[Any, ...], EvalRun] = {}
    for r in attacked:
        index.setdefault(_coords(r), r)  # the same coordinates twice: the first one found
    out: list[Comparison] = []
    skipped: list[Skipped] = []
    # aligned dir -> how it was trained (.alignments), shared with the caller's other checks
    fingerprints = {} if fingerprints is None else fingerprints
    kw = {"judge": judge, "n_boot": n_boot, "seed": seed, "level": level}
    for r in index.values():
        pairs = []
        cell = (r.n, r.task, r.seed, r.attack_key)
        if baseline and r.method != baseline:  # the baseline without a variant, else the same
            # (a repaired model: the variant of the attacked model it repaired)
            ref = (
                index.get((baseline, r.p, *cell, ()))
                or index.get((baseline, r.p, *cell, r.variant_key))
                or index.get((baseline, r.p, *cell, r.attacked_variant_key))
            )
            if ref is not None:
                pairs.append(("vs_baseline", ref))
        if r.p and (ref := index.get((r.method, 0.0, *cell, r.variant_key))) is not None:
            if differ := alignments.between(r, ref, fingerprints):  # p = 0 on another alignment
                reason = (
                    f"built on different aligned models ({shown(r.aligned_dir)} and "
                    f"{shown(ref.aligned_dir)} differ in {', '.join(differ)})"
                )
                skipped += [
                    Skipped("attack_effect", m, r, ref, reason)
                    for m in METRICS
                    if m != "margin" or (r.margin_values() and ref.margin_values())
                ]
            else:
                pairs.append(("attack_effect", ref))
        if r.repair:
            ref = index.get((r.attacked_method, r.p, *cell, r.attacked_variant_key))
            if ref is not None:
                pairs.append(("repair_effect", ref))
        for kind, ref in pairs:
            for metric in METRICS:
                if metric == "margin" and not (r.margin_values() and ref.margin_values()):
                    continue  # evaluations without per-prompt margins: nothing to say
                res = compare(r, ref, metric, kind, fingerprints=fingerprints, **kw)
                (out if isinstance(res, Comparison) else skipped).append(res)
    rank = {m: i for i, m in reversed(list(enumerate(r.method for r in attacked)))}

    def order(c: Comparison | Skipped) -> tuple[Any, ...]:
        r = c.run
        return (
            KINDS.index(c.kind),
            rank[r.method],
            _num(r.n),
            str(r.task),
            _num(r.p),
            _num(r.seed),
            METRICS.index(c.metric),
        )

    return sorted(out, key=order), sorted(skipped, key=order)


def _num(v: Any) -> tuple[bool, float]:
    return (v is None, float(v) if isinstance(v, (int, float)) else 0.0)


def summarise(
    comparisons: Sequence[Comparison], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Summary | None:
    """Mean ± sd over seeds of the per-seed differences, with an interval:

    - one seed: that comparison's (Newcombe's score interval for HS and FA, the paired bootstrap
      for the margin);
    - several: a two-level bootstrap over seeds × prompts of the per-prompt differences
      (crossed when every seed has the same prompts), widened for HS and FA to hold Newcombe's
      interval of the seeds' pooled 2 × 2 table. The bootstrap carries the seeds' spread but
      collapses to a point when the seeds' models answer alike (FA 100 against 100) and covers
      too little with few discordant prompts; the pooled interval carries the prompts' own
      sampling error there. Crossed, the pooled table counts its k × m outcomes as k × m /
      design effect independent ones (``intervals.design_effect`` of the per-prompt differences):
      seeds whose differences fall on the same prompts are one prompt sample, not k."""
    comps = list(comparisons)
    if not comps:
        return None
    mean, sd = stats.mean_sd([c.diff for c in comps])
    ci: tuple[float, float] | None = None
    method = None
    if len(comps) == 1:
        ci = comps[0].ci
        method = None if ci is None else "paired bootstrap" if comps[0].both is None else "newcombe"
    elif n_boot > 0:
        crossed = len({c.keys for c in comps}) == 1
        _, lo, hi = stats.two_level_bootstrap(
            [c.deltas for c in comps], n_boot, seed, level, crossed=crossed
        )
        if lo is not None and hi is not None:
            ci, method = (lo, hi), "bootstrap"
            if all(c.both is not None and c.b is not None and c.c is not None for c in comps):
                n_items = sum(c.n_items for c in comps)
                # crossed: the seeds share their prompts, so the pooled table's items are not
                # independent; count them as many as the seeds' agreement leaves (design effect)
                n_eff = (
                    n_items / stats.design_effect([c.deltas for c in comps]) if crossed else None
                )
                pooled = stats.newcombe_paired(
                    sum(c.both or 0 for c in comps),
                    sum(c.b or 0 for c in comps),
                    sum(c.c or 0 for c in comps),
                    n_items,
                    level,
                    n_eff=n_eff,
                )
                wider = stats.hull(ci, pooled)
                if wider != ci:
                    ci, method = wider, "bootstrap+newcombe"
    return Summary(
        mean,
        sd,
        len(comps),
        ci,
        method,
        [c.p_value for c in comps],
        [c.run.seed for c in comps],
        comps,
    )
