"""``hftguard report``: the papers' tables from run directories — methods × p (or n, or tasks).

Why: a grid is only useful once it reads like the comparison in a paper: one row per method, one
column per harmful ratio, each cell "HS / FA" with an average column, the over-refusal and
degenerate rates beside them (a defense that refuses everything or babbles also gets HS 0), the
spread over seeds, and an interval that says whether a difference is larger than the noise of a
100-prompt evaluation. This package collects finished eval run directories (a grid's OUT, a single
pipeline's OUT, or eval directories given one by one), works out what each one evaluated from the
run manifests' provenance, and aggregates:

- mean ± sample standard deviation (n - 1) over seeds, per cell;
- a 95% interval per cell: the Wilson interval of k of n prompts when the cell holds one
  evaluation, a two-level percentile bootstrap over seeds × prompts when it holds several;
- paired comparisons (:mod:`.paired`) from the per-prompt outcomes: each method against the
  baseline (SFT by default) and each p > 0 against p = 0 of the same method (the attack effect),
  at the same seed, with a paired bootstrap interval and an exact McNemar p-value;
- HS per harm category, and the off-topic rate and likelihood margin when evaluations report them;
- averages over the columns of the per-cell means (the papers' "Avg");
- with attack settings (``[grid.attack]``), per defense the mean and the worst case over them,
  and the capability-bounded worst case (:mod:`.worst`); with screened user data, the share of
  harmful samples that leaked through the screen.

Renderers write markdown, CSV (long format, one row per cell, with the intervals), LaTeX
(booktabs) and report.json (everything, machine-readably). ``published`` — {(method, column):
(hs, fa)} — puts a paper's numbers beside ours. Nothing here imports torch or matplotlib (plots
live in :mod:`hftguard.pipeline.report.plots`); the statistics are in
:mod:`hftguard.pipeline.intervals`.
"""

from hftguard.pipeline.report.aggregate import (
    AXES,
    CellStats,
    Published,
    Report,
    Row,
    build,
    header,
    published_from_presets,
)
from hftguard.pipeline.report.collection import Collection, EvalRun, collect, item_keys
from hftguard.pipeline.report.paired import Comparison, Skipped, Summary, compare, pair_all
from hftguard.pipeline.report.render import (
    CSV_FIELDS,
    FORMATS,
    JSON_SCHEMA_VERSION,
    before_table,
    category_table,
    comparison_table,
    compute_table,
    describe,
    detail_rows,
    intervals_table,
    main_table,
    pairs_table,
    rates_table,
    report_dict,
    tex_escape,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    worst_table,
    write,
)
from hftguard.pipeline.report.stats import (
    Stat,
    bootstrap_ci,
    mean_std,
    quantile,
)
from hftguard.pipeline.report.worst import Setting, WorstCase, worst_cases

__all__ = [
    "AXES",
    "CSV_FIELDS",
    "FORMATS",
    "JSON_SCHEMA_VERSION",
    "CellStats",
    "Collection",
    "Comparison",
    "EvalRun",
    "Published",
    "Report",
    "Row",
    "Setting",
    "Skipped",
    "Stat",
    "Summary",
    "WorstCase",
    "before_table",
    "bootstrap_ci",
    "build",
    "category_table",
    "collect",
    "compare",
    "comparison_table",
    "compute_table",
    "describe",
    "detail_rows",
    "header",
    "intervals_table",
    "item_keys",
    "main_table",
    "mean_std",
    "pair_all",
    "pairs_table",
    "published_from_presets",
    "quantile",
    "rates_table",
    "report_dict",
    "tex_escape",
    "to_csv",
    "to_json",
    "to_latex",
    "to_markdown",
    "worst_cases",
    "worst_table",
    "write",
]
