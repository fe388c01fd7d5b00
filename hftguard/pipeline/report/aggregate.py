"""Aggregation: the attacked evals as rows = methods × columns = p, n or task; published numbers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hftguard.errors import RunDirError
from hftguard.pipeline.report import paired
from hftguard.pipeline.report.alignments import MixedAlignment, between, mixed
from hftguard.pipeline.report.collection import Collection, EvalRun, attack_order, shown
from hftguard.pipeline.report.compute import Cost, costs
from hftguard.pipeline.report.convergence import NotConverged, not_converged
from hftguard.pipeline.report.stats import Stat, _avg, mean_std
from hftguard.pipeline.report.worst import WorstCase, worst_cases

AXES = ("p", "n", "task", "attack")  # attack: the [grid.attack] settings as columns
Published = Mapping[tuple[str, Any], tuple[float | None, float | None]]


@dataclass
class CellStats:
    """One (row, column) of the main table."""

    hs: Stat
    fa: Stat
    over_refusal: Stat
    degenerate: Stat
    seeds: list[int]
    runs: list[EvalRun] = field(default_factory=list, repr=False)
    off_topic: Stat | None = None  # when the evaluations report off_topic_rate
    margin: Stat | None = None  # when they have a likelihood_margin block
    #: harmful user samples that passed the screen (%), when the user data was screened and had
    #: harmful samples (attack-finetune's data.main.screening)
    leak_through: Stat | None = None
    by_category: dict[str, Stat] = field(default_factory=dict)  # HS per harm category
    # paired comparisons summarised over seeds: {"hs"|"fa": Summary}
    vs_baseline: dict[str, paired.Summary] = field(default_factory=dict)
    attack_effect: dict[str, paired.Summary] = field(default_factory=dict)
    #: a repaired model against the attacked model it repaired (rows with a repair only)
    repair_effect: dict[str, paired.Summary] = field(default_factory=dict)


@dataclass
class Row:
    key: tuple[Any, ...]
    label: str
    method: str
    extra: dict[str, Any]  # the other varying axes (e.g. n when columns are p)


@dataclass
class Report:
    """The aggregated tables; render with :func:`to_markdown`, :func:`to_csv`, :func:`to_latex`."""

    axis: str
    columns: list[Any]
    rows: list[Row]
    cells: dict[tuple[tuple[Any, ...], Any], CellStats]
    before: list[tuple[str, CellStats, list[str]]]  # base/aligned models: (label, stats, tasks)
    judge: str | None
    seeds: list[int]
    published: dict[tuple[str, str], tuple[float | None, float | None]]
    sources: list[str]
    n_boot: int
    collection: Collection | None = None
    baseline: str | None = None  # the method paired comparisons are made against
    comparisons: list[paired.Comparison] = field(default_factory=list)
    skipped: list[paired.Skipped] = field(default_factory=list)
    level: float = 0.95
    seed: int = 0
    #: per defense and column, the mean and worst case over attack settings ([grid.attack])
    worst: list[WorstCase] = field(default_factory=list)
    fa_bound: float | None = None  # the FA bound of the capability-bounded worst case
    #: the training stages behind the evaluations whose loss rose (:mod:`.convergence`)
    not_converged: list[NotConverged] = field(default_factory=list)
    #: per row, the time its alignment, fine-tuning and evaluation runs took (:mod:`.compute`)
    compute: list[Cost] = field(default_factory=list)
    #: further evaluations of an aligned model (same label, options and seed) than the first,
    #: left out of the Before table rather than averaged in as seeds
    before_repeated: list[EvalRun] = field(default_factory=list)
    #: evaluations of another aligned model of the same label, options and seed, trained
    #: differently (:func:`.alignments.between`): (left out, the one kept, what differs)
    before_differing: list[tuple[EvalRun, EvalRun, list[str]]] = field(default_factory=list)
    #: methods whose evaluations rest on aligned models trained differently (:mod:`.alignments`);
    #: the attack effects across them are left out (``skipped``)
    mixed_alignments: list[MixedAlignment] = field(default_factory=list)
    #: the headline judge's versions (with options) among the evaluations, and how many each
    #: judged, when there is more than one; comparisons across two are left out (``skipped``)
    judge_versions: dict[str, int] = field(default_factory=dict)

    @property
    def worst_axis(self) -> str:
        """The axis the worst-case table's columns run over: the report's, or p when the
        attack settings themselves are the columns (the worst case is taken over them)."""
        return "p" if self.axis == "attack" else self.axis

    def worst_header(self, col: Any) -> str:
        return header(self.worst_axis, col)

    @property
    def baseline_label(self) -> str | None:
        if self.baseline is None:
            return None
        runs = self.collection.runs if self.collection else []
        return next(
            (r.label for r in runs if r.kind == "attacked" and r.method == self.baseline),
            self.baseline,
        )

    def has(self, attr: str) -> bool:
        """Whether any cell has the optional statistic ``attr`` (off_topic, margin...)."""
        return any(getattr(c, attr) for c in self.cells.values())

    def header(self, col: Any) -> str:
        return header(self.axis, col)

    def cell(self, row: Row, col: Any) -> CellStats | None:
        return self.cells.get((row.key, col))

    def present(self) -> Iterator[tuple[Row, Any, CellStats]]:
        """(row, column, cell) for every cell that has results, in table order."""
        for row in self.rows:
            for col in self.columns:
                c = self.cell(row, col)
                if c is not None:
                    yield row, col, c

    def average(self, row: Row, attr: str) -> float | None:
        return _avg(
            s.mean
            for col in self.columns
            if (c := self.cell(row, col)) is not None and (s := getattr(c, attr)) is not None
        )

    def published_for(self, row: Row, col: Any) -> tuple[float | None, float | None] | None:
        for key in (
            (row.label, self.header(col)),
            (row.method, self.header(col)),
            (row.label, str(col)),
            (row.method, str(col)),
        ):
            if key in self.published:
                return self.published[key]
        return None


def published_from_presets(collection: Collection) -> tuple[Published, list[str]]:
    """The published numbers of the paper presets the collected evaluations were run with
    (``eval.preset`` in their manifests), and one line per preset naming the paper."""
    from hftguard import presets

    names = sorted(
        {
            str(name)
            for r in collection.runs
            if (name := (r.manifest.get("config") or {}).get("preset"))
        }
    )
    table: dict[tuple[str, Any], tuple[float | None, float | None]] = {}
    lines = []
    for name in names:
        try:
            preset = presets.load(name)
        except Exception:  # a preset file that moved: the report still renders, without numbers
            lines.append(f"{name}: preset not found, published numbers omitted")
            continue
        table.update(preset.published_table())
        lines.append(f"{preset.name}: {preset.paper}")
    return table, lines


def header(axis: str, col: Any) -> str:
    if col is None:
        return f"{axis}=?"
    if axis == "p":
        return f"p={col:g}"
    if axis == "n":
        return f"n={col}"
    if axis == "attack" and col == "":
        return "(no setting)"
    return str(col)  # a variant's too: ``rho=40``


def _value(run: EvalRun, axis: str) -> Any:
    return {"p": run.p, "n": run.n, "task": run.task, "attack": run.attack_label}[axis]


def _refuse_duplicate_seeds(groups: Mapping[Any, list[EvalRun]]) -> None:
    """Two evaluations in one cell with the same seed would be averaged as two seeds: refuse.

    It happens when a report is given two evaluations of one method and seed that differ in what
    the report does not key on (a defense's options, eval settings), or one model evaluated
    twice."""
    for runs in groups.values():
        by_seed: dict[Any, list[EvalRun]] = {}
        for r in runs:
            by_seed.setdefault(r.seed, []).append(r)
        for seed, same in by_seed.items():
            if len(same) > 1:
                paths = ", ".join(shown(r.path) for r in same)
                raise RunDirError(
                    f"{len(same)} evaluations of {same[0].method} with seed {seed} in one cell "
                    f"({paths}): the report would average them as if they were seeds.",
                    hint="Report them separately (one `hftguard report` each), or pass only one "
                    "of them. (Runs whose defenses differ in their options are rows of their own, "
                    "e.g. `Vaccine (rho=40)`; these do not differ in them.)",
                )


def build(
    collection: Collection,
    *,
    columns: str = "p",
    judge: str | None = None,
    published: Published | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    baseline: str | None = "sft/sft",
    level: float = 0.95,
    fa_bound: float | None = None,
) -> Report:
    """Aggregate the attacked evals into rows = methods, columns = ``columns`` (p, n or task).

    ``baseline`` (a method ``align/finetune`` or its label) is what the paired comparisons are
    made against; None, or a method no evaluation has, gives no vs-baseline comparisons. Attack
    effects (p vs p = 0 of the same method and seed) are computed regardless. Evaluations with
    an attack setting (``[grid.attack]``) get one row per setting and the mean and worst case
    over settings per defense (:mod:`.worst`), with ``fa_bound`` the FA (%) an attack must keep
    to count in the capability-bounded worst case.
    """
    if columns not in AXES:
        raise ValueError(f"columns must be one of {AXES}")
    base_method = paired.resolve_baseline(collection, baseline)
    fingerprints: dict[Any, Any] = {}  # each aligned manifest read once (.alignments)
    comparisons, skipped = paired.pair_all(
        collection,
        baseline=base_method,
        judge=judge,
        n_boot=n_boot,
        seed=seed,
        level=level,
        fingerprints=fingerprints,
    )
    by_run: dict[tuple[str, str, int], paired.Comparison] = {
        (c.kind, c.metric, id(c.run)): c for c in comparisons
    }
    attacked = [r for r in collection.runs if r.kind == "attacked"]
    rows, groups, cols = _layout(attacked, columns)
    row_labels = {id(r): rows[key].label for (key, _), rs in groups.items() for r in rs}
    cells = {k: _cell(v, judge, n_boot, seed, level=level) for k, v in groups.items()}
    for cell in cells.values():
        for kind, target in (
            ("vs_baseline", cell.vs_baseline),
            ("attack_effect", cell.attack_effect),
            ("repair_effect", cell.repair_effect),
        ):
            for metric in paired.METRICS:
                comps = [c for r in cell.runs if (c := by_run.get((kind, metric, id(r))))]
                summary = paired.summarise(comps, n_boot=n_boot, seed=seed, level=level)
                if summary is not None:
                    target[metric] = summary
    before = []
    repeated: list[EvalRun] = []
    differing: list[tuple[EvalRun, EvalRun, list[str]]] = []
    for kind in ("base", "aligned"):
        by: dict[str, list[EvalRun]] = {}
        for r in collection.runs:
            if r.kind != kind:
                continue
            # aligned models with other defense options are rows of their own; one model and
            # seed evaluated again (a sweep's copy of the aligned model) counts once, and so does
            # one seed's model trained again differently (named as such: .alignments)
            rs = by.setdefault(r.variant_text if kind == "aligned" else "base", [])
            if kind == "aligned":
                kept = next((o for o in rs if o.seed == r.seed), None)
            else:  # the base model evaluated again (a grid's copy of its evaluation): once
                kept = next((o for o in rs if _same_base(o, r)), None)
            if kept is None:
                rs.append(r)
            elif differ := between(r, kept, fingerprints):
                differing.append((r, kept, differ))
            else:
                repeated.append(r)
        for label, rs in by.items():
            tasks = list(
                dict.fromkeys(t for r in rs for t in (r.metrics.get("finetune_accuracy") or {}))
            )
            before.append(
                (
                    label if kind == "aligned" else "base model",
                    _cell(rs, judge, n_boot, seed, tasks, level=level),
                    tasks,
                )
            )
    seeds = sorted({r.seed for r in attacked if r.seed is not None})
    pub = {(str(k[0]), str(k[1])): v for k, v in (published or {}).items()}
    row_list = list(rows.values())
    if columns == "attack":  # the worst case runs over the columns: group by p for it
        p_rows, p_groups, p_cols = _layout(attacked, "p")
        p_cells = {k: _cell(v, judge, n_boot, seed, level=level) for k, v in p_groups.items()}
        worst = worst_cases(list(p_rows.values()), p_cols, p_cells, fa_bound, header)
    else:
        worst = worst_cases(row_list, cols, cells, fa_bound, header)
    _worst_vs_baseline(worst, base_method, judge, n_boot, seed, level, fingerprints)
    _held_out_worst(worst, judge, n_boot, seed, level)
    return Report(
        columns,
        cols,
        row_list,
        cells,
        before,
        judge,
        seeds,
        pub,
        [str(p) for p in collection.roots],
        n_boot,
        collection,
        base_method,
        comparisons,
        skipped,
        level,
        seed,
        worst,
        fa_bound,
        not_converged(collection.runs, row_labels),
        costs(collection.runs, row_labels),
        repeated,
        differing,
        mixed(collection.runs, fingerprints),
        judge_versions(collection.runs, judge),
    )


def judge_versions(runs: list[EvalRun], judge: str | None) -> dict[str, int]:
    """{"NAME vVERSION OPTIONS": evaluations} for each headline judge the evaluations recorded
    in more than one version or set of options; {} when there is none."""
    counts: dict[tuple[str, str, str], int] = {}
    for r in runs:
        if (record := r.judge_record(judge)) is not None:
            counts[record] = counts.get(record, 0) + 1
    versions: dict[str, int] = {}
    for name, _, _ in counts:
        versions[name] = versions.get(name, 0) + 1
    return {f"{n} v{v} {o}": k for (n, v, o), k in counts.items() if versions[n] > 1}


def _layout(
    attacked: list[EvalRun], columns: str
) -> tuple[dict[tuple[Any, ...], Row], dict[tuple[tuple[Any, ...], Any], list[EvalRun]], list[Any]]:
    """Rows (a method, qualified by the other axes that vary), the evaluations of each (row,
    column) cell, and the columns in order, for the column axis ``columns``."""
    others = [a for a in AXES if a != columns]
    varying = [a for a in others if len({_value(r, a) for r in attacked}) > 1]
    groups: dict[tuple[tuple[Any, ...], Any], list[EvalRun]] = {}
    rows: dict[tuple[Any, ...], Row] = {}
    variants = any(r.variant for r in attacked)
    for r in attacked:
        extra = {a: _value(r, a) for a in varying}
        if variants:  # the defense options that tell runs of one method apart come first
            extra = {"variant": r.variant_label, **extra}
        key = (r.method, *extra.values())
        if key not in rows:
            suffix = ", ".join(header(a, v) for a, v in extra.items() if v != "" or a != "variant")
            rows[key] = Row(key, r.label + (f" ({suffix})" if suffix else ""), r.method, extra)
        groups.setdefault((key, _value(r, columns)), []).append(r)
    _refuse_duplicate_seeds(groups)
    if columns == "task":  # tasks in first-seen order, numbers ascending (unknown last)
        cols = list(dict.fromkeys(_value(r, "task") for r in attacked))
    elif columns == "attack":  # settings in ascending order of their values
        order = {r.attack_label: attack_order(r.attack) for r in attacked}
        cols = sorted({c for _, c in groups}, key=lambda v: order.get(v, ()))
    else:
        cols = sorted({c for _, c in groups}, key=lambda v: (v is None, v or 0))
    return rows, groups, cols


def _held_out_worst(
    worst: list[WorstCase], judge: str | None, n_boot: int, seed: int, level: float
) -> None:
    """Each defense's worst HS over its attack settings, cross-fitted (intervals.held_out_max),
    and the same among the settings that meet the FA bound."""
    for w in worst:
        if len(w.settings) >= 2:
            w.held_out = _cross_fit(w.settings, judge, n_boot, seed, level)
        if w.fa_bound is not None:
            meeting = [s for s in w.settings if s.fa is not None and s.fa >= w.fa_bound]
            if meeting:
                w.held_out_bounded = _cross_fit(meeting, judge, n_boot, seed, level)


def _cross_fit(
    settings: list[Any], judge: str | None, n_boot: int, seed: int, level: float
) -> tuple[float, float | None, float | None] | None:
    """held_out_max over ``settings`` in %: per setting, each prompt's harmful rate averaged over
    the setting's seeds, on the prompts every evaluation of every setting has (None without
    per-prompt outcomes). One setting: its plain mean, no interval (nothing is picked)."""
    from hftguard.pipeline import intervals

    per_run = [[r.harmful_outcomes(judge) for r in s.cell.runs] for s in settings]
    flat = [o for runs in per_run for o in runs]
    if not flat or not all(flat):
        return None
    keys = sorted(set.intersection(*(set(o) for o in flat)))
    if len(keys) < 2:
        return None
    rows = [[sum(o[k] for o in runs) / len(runs) for k in keys] for runs in per_run]
    est, lo, hi = intervals.held_out_max(rows, n_boot=n_boot, seed=seed, level=level)
    return (
        100.0 * est,
        None if lo is None else 100.0 * lo,
        None if hi is None else 100.0 * hi,
    )


def _worst_vs_baseline(
    worst: list[WorstCase],
    baseline: str | None,
    judge: str | None,
    n_boot: int,
    seed: int,
    level: float,
    fingerprints: dict[Any, Any] | None = None,
) -> None:
    """Each defense's worst case against the baseline's worst case in the same column: ΔHS of
    the two worst settings' evaluations, paired prompt by prompt at each seed both have (the
    settings may differ: each side gets its own strongest attack), summarised over seeds like
    the other paired comparisons. Likewise for the capability-bounded worst cases."""
    if baseline is None:
        return
    base = {(tuple(w.extra.items()), w.column): w for w in worst if w.method == baseline}
    for w in worst:
        ref = base.get((tuple(w.extra.items()), w.column))
        if ref is None or w.method == baseline:
            continue
        for name in ("worst", "bounded"):
            mine, theirs = getattr(w, name), getattr(ref, name)
            if mine is None or theirs is None:
                continue
            by_seed = {r.seed: r for r in theirs.cell.runs}
            comps = [
                c
                for r in mine.cell.runs
                if r.seed in by_seed
                and isinstance(
                    c := paired.compare(
                        r,
                        by_seed[r.seed],
                        "hs",
                        "worst_vs_baseline",
                        judge=judge,
                        n_boot=n_boot,
                        seed=seed,
                        level=level,
                        fingerprints=fingerprints,
                    ),
                    paired.Comparison,
                )
            ]
            summary = paired.summarise(comps, n_boot=n_boot, seed=seed, level=level)
            if summary is not None:
                w.vs_baseline[name] = summary


def _cell(
    runs: list[EvalRun],
    judge: str | None,
    n_boot: int,
    seed: int,
    tasks: list[str] | None = None,
    *,
    level: float = 0.95,
) -> CellStats:
    """Aggregate one group of evals (one per seed) of the same method and column."""
    fa_tasks = tasks if tasks is not None else None

    def fa(r: EvalRun) -> float | None:
        if fa_tasks is not None:
            return _avg(r.finetune_accuracy(t) for t in fa_tasks) if fa_tasks else None
        return r.finetune_accuracy(r.task)

    def fa_items(r: EvalRun) -> list[float]:
        if fa_tasks is not None:
            return [x for t in fa_tasks for x in r.task_flags(t)]
        return r.task_flags(r.task)

    def fa_size(r: EvalRun) -> int | None:
        names = fa_tasks if fa_tasks is not None else [r.task]
        sizes = [r.n_items(f"task:{t}") for t in names if t]
        return sum(n for n in sizes if n) or None

    def alike(orders: list[tuple[str, ...]]) -> bool:
        """The seeds list one prompt set in one order (a crossed bootstrap pairs by position)."""
        return len(set(orders)) <= 1

    def fa_order(r: EvalRun) -> tuple[str, ...]:
        names = fa_tasks if fa_tasks is not None else [r.task]
        return tuple(k for t in names if t for k in r.item_order(f"task:{t}"))

    kw: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    or_judge = [r.metrics.get("over_refusal_judge") for r in runs]
    harmful_alike = alike([r.item_order("harmful", r.headline_judge(judge)) for r in runs])
    cell = CellStats(
        hs=Stat.proportion(
            [r.harmful_score(judge) for r in runs],
            [r.harmful_flags(judge) for r in runs],
            [_n_harmful(r, judge) for r in runs],
            aligned=harmful_alike,
            **kw,
        ),
        fa=Stat.proportion(
            [fa(r) for r in runs],
            [fa_items(r) for r in runs],
            [fa_size(r) for r in runs],
            aligned=alike([fa_order(r) for r in runs]),
            **kw,
        ),
        over_refusal=Stat.proportion(
            [r.metrics.get("over_refusal_rate") for r in runs],
            [
                r.label_flags("benign", j, "refusal") if j else []
                for r, j in zip(runs, or_judge, strict=True)
            ],
            [r.n_items("benign") for r in runs],
            aligned=alike([r.item_order("benign", j) for r, j in zip(runs, or_judge, strict=True)]),
            **kw,
        ),
        degenerate=Stat.proportion(
            [r.degenerate_rate(judge) for r in runs],
            [r.label_flags("harmful", r.headline_judge(judge), "degenerate") for r in runs],
            [_n_harmful(r, judge) for r in runs],
            aligned=harmful_alike,
            **kw,
        ),
        seeds=sorted(r.seed for r in runs if r.seed is not None),
        runs=runs,
    )
    if any(r.judge_block(judge).get("off_topic_rate") is not None for r in runs):
        cell.off_topic = Stat.proportion(
            [r.judge_block(judge).get("off_topic_rate") for r in runs],
            [r.label_flags("harmful", r.headline_judge(judge), "off-topic") for r in runs],
            [_n_harmful(r, judge) for r in runs],
            aligned=harmful_alike,
            **kw,
        )
    screened = [r.screening() if r.kind == "attacked" else {} for r in runs]
    if any(s.get("harmful") for s in screened):
        cell.leak_through = Stat.proportion(
            [s.get("leak_through_rate") if s.get("harmful") else None for s in screened],
            [[] for _ in runs],
            [s.get("harmful") or None for s in screened],
            **kw,
        )
    margins = [r.metrics.get("likelihood_margin") for r in runs]
    if any(isinstance(m, dict) and m.get("mean") is not None for m in margins):
        cell.margin = _margin(margins, [r.margin_values() for r in runs], n_boot, seed, level)
    cats: dict[str, list[list[float]]] = {}
    per_run = [r.category_flags(judge) for r in runs]
    for flags in per_run:
        for name in flags:
            cats.setdefault(name, [])
    for name in cats:
        groups = [flags.get(name, []) for flags in per_run]
        cell.by_category[name] = Stat.proportion(
            [_mean100(g) for g in groups],
            groups,
            [len(g) for g in groups],
            aligned=harmful_alike,
            **kw,
        )
    if not cats:  # no generations.jsonl: the evaluations' own per-category numbers, if any
        blocks = [
            (r.metrics.get("harmful_score_by_category") or {})
            if r.headline_judge(judge) == r.headline_judge(None)
            else {}
            for r in runs
        ]
        for name in dict.fromkeys(k for b in blocks for k in b):
            hs = [(b.get(name) or {}).get("hs") for b in blocks]
            ns = [(b.get(name) or {}).get("n") for b in blocks]
            cell.by_category[name] = Stat.proportion(hs, [[] for _ in runs], ns, **kw)
    return cell


def _same_base(a: EvalRun, b: EvalRun) -> bool:
    """Two evaluations of one base model: the same spec, and the same weights where both
    recorded their hash. An evaluation that does not say which base it evaluated is not taken
    for another's repeat."""
    ma = a.manifest.get("evaluated_model") or {}
    mb = b.manifest.get("evaluated_model") or {}
    spec = ma.get("base_spec")
    if not spec or spec != mb.get("base_spec") or ma.get("adapters") or mb.get("adapters"):
        return False
    keys = ma.get("base_key"), mb.get("base_key")
    return not all(keys) or keys[0] == keys[1]


def _mean100(flags: list[float]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _n_harmful(r: EvalRun, judge: str | None) -> int | None:
    n = r.judge_block(judge).get("n")
    if isinstance(n, int):
        return n
    return r.n_items("harmful") or len(r.harmful_flags(judge)) or None


def _margin(
    blocks: list[Any], per_prompt: list[dict[str, float]], n_boot: int, seed: int, level: float
) -> Stat:
    """Likelihood margin over seeds: mean ± sd of the per-eval means; with one evaluation its own
    interval (metrics.json's t interval), with several the two-level bootstrap over seeds ×
    prompts of the per-prompt margins (when every evaluation wrote them)."""
    from hftguard.pipeline import intervals as stats

    means = [b.get("mean") if isinstance(b, dict) else None for b in blocks]
    mean, std = mean_std(means)
    out = Stat(mean, std, sum(m is not None for m in means))
    ns = [b.get("n") for b in blocks if isinstance(b, dict) and isinstance(b.get("n"), int)]
    out.n_items = max(ns, default=0)
    if len(blocks) == 1 and isinstance(blocks[0], dict):
        ci = blocks[0].get("ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            out.ci, out.ci_method = (float(ci[0]), float(ci[1])), "metrics.json"
    elif len(blocks) > 1 and n_boot > 0 and all(per_prompt):
        crossed = len({tuple(v) for v in per_prompt}) == 1
        groups = [list(v.values()) for v in per_prompt]
        _, lo, hi = stats.two_level_bootstrap(groups, n_boot, seed, level, crossed=crossed)
        if lo is not None and hi is not None:
            out.ci, out.ci_method = (lo, hi), "bootstrap"
    return out
