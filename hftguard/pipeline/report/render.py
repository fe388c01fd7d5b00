"""Renderers: the tables of a :class:`Report` as markdown, CSV (long format) and LaTeX."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hftguard.pipeline.report import compute, paired
from hftguard.pipeline.report.aggregate import CellStats, Report
from hftguard.pipeline.report.collection import shown
from hftguard.pipeline.report.stats import Stat, _avg
from hftguard.pipeline.report.worst import Setting, WorstCase

FORMATS = ("md", "csv", "tex", "json")

#: report.json's schema version (fields are only ever added).
JSON_SCHEMA_VERSION = 1


def _hs_fa(c: CellStats | None, with_std: bool = True) -> str:
    if c is None:
        return "–"
    return f"{c.hs.text(with_std=with_std)} / {c.fa.text(with_std=with_std)}"


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


#: Columns shown only when some evaluation reports them (metrics.json keys added later).
_OPTIONAL = (
    ("off_topic", "Off-topic"),
    ("margin", "Likelihood margin"),
    ("leak_through", "Leak-through"),  # screened user data: harmful samples that passed (%)
)


def _pub_text(v: tuple[float | None, float | None] | None) -> str:
    return "–" if v is None else f"{_num(v[0])} / {_num(v[1])}"


def main_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """The papers' table: method | HS / FA per column | Avg | over-refusal | degenerate."""
    optional = [(a, name) for a, name in _OPTIONAL if rep.has(a)]
    head = [
        "Method",
        *[rep.header(c) for c in rep.columns],
        "Avg",
        "Over-refusal",
        "Degenerate",
        *[name for _, name in optional],
    ]
    body = []
    for row in rep.rows:
        body.append(
            [
                row.label,
                *[_hs_fa(rep.cell(row, c)) for c in rep.columns],
                f"{_num(rep.average(row, 'hs'))} / {_num(rep.average(row, 'fa'))}",
                _num(rep.average(row, "over_refusal")),
                _num(rep.average(row, "degenerate")),
                *[_num(rep.average(row, a), 3 if a == "margin" else 1) for a, _ in optional],
            ]
        )
        pubs = [rep.published_for(row, c) for c in rep.columns]
        if any(p is not None for p in pubs):
            hs = [p[0] for p in pubs if p is not None]
            fa = [p[1] for p in pubs if p is not None]
            complete = all(p is not None for p in pubs)
            avg = f"{_num(_avg(hs))} / {_num(_avg(fa))}" if complete else "–"
            body.append(
                [
                    f"{row.label} (published)",
                    *map(_pub_text, pubs),
                    avg,
                    "–",
                    "–",
                    *["–" for _ in optional],
                ]
            )
    return head, body


def rates_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    head = ["Method", *[rep.header(c) for c in rep.columns]]
    body = [
        [
            row.label,
            *[
                (
                    "–"
                    if (c := rep.cell(row, col)) is None
                    else f"{c.over_refusal.text()} / {c.degenerate.text()}"
                )
                for col in rep.columns
            ],
        ]
        for row in rep.rows
    ]
    return head, body


def before_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    tasks = list(dict.fromkeys(t for _, _, ts in rep.before for t in ts))
    head = ["Model", "HS", *[f"FA {t}" for t in tasks], "Over-refusal", "Degenerate", "HS 95% CI"]
    body = []
    for label, c, _ in rep.before:
        fas = []
        for t in tasks:
            fas.append(Stat.of([r.finetune_accuracy(t) for r in c.runs]).text())
        body.append(
            [
                label,
                c.hs.text(),
                *fas,
                c.over_refusal.text(),
                c.degenerate.text(),
                c.hs.ci_text(),
            ]
        )
    return head, body


def comparison_table(
    rep: Report, kind: str, metric: str = "hs"
) -> tuple[list[str], list[list[str]]]:
    """Rows = methods, columns = the column axis; each cell the paired difference (percentage
    points) over seeds: mean [± sd] [interval] (McNemar p with one seed)."""
    head = ["Method", *[rep.header(c) for c in rep.columns]]
    body = []
    for row in rep.rows:
        texts = []
        for col in rep.columns:
            c = rep.cell(row, col)
            summary = getattr(c, kind).get(metric) if c is not None else None
            digits = 3 if metric == "margin" else 1
            texts.append("–" if summary is None else summary.text(digits))
        if any(t != "–" for t in texts):
            body.append([row.label, *texts])
    return head, body


def pairs_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """One line per paired comparison (per seed): difference, interval, b / c, McNemar p."""
    head = ["Kind", "Method", "vs", "Cell", "Seed", "Metric", "Δ", "95% CI", "b / c", "McNemar p"]
    body = []
    for c in rep.comparisons:
        d = 3 if c.metric == "margin" else 1
        body.append(
            [
                c.kind.replace("_", " "),
                c.run.variant_text,
                paired.reference_text(c),
                _coords_text(c.run),
                str(c.run.seed),
                c.metric.upper(),
                f"{c.diff:+.{d}f}",
                "–" if c.ci is None else f"[{c.ci[0]:+.{d}f}, {c.ci[1]:+.{d}f}]",
                "–" if c.b is None else f"{c.b} / {c.c}",
                "–" if c.p_value is None else paired.format_p(c.p_value),
            ]
        )
    return head, body


def _coords_text(run: Any) -> str:
    out = f"p={run.p:g} n={run.n} {run.task}" if run.p is not None else f"n={run.n} {run.task}"
    return out + (f" {run.attack_label}" if run.attack else "")


def category_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """HS per harm category: one line per (method, column), one column per category."""
    cats = list(dict.fromkeys(name for c in rep.cells.values() for name in sorted(c.by_category)))
    head = ["Method", rep.axis, *cats]
    body = []
    for row, col, c in rep.present():
        if not c.by_category:
            continue
        texts = []
        for name in cats:
            s = c.by_category.get(name)
            if s is None or s.mean is None:
                texts.append("–")
            else:
                texts.append(f"{s.text()} {s.ci_text()} (n={s.n_items})")
        body.append([row.label, rep.header(col), *texts])
    return head, body


def _stat_fields(d: dict[str, Any], name: str, s: Stat | None, items: bool = False) -> None:
    d[f"{name}_mean"], d[f"{name}_std"] = (s.mean, s.std) if s is not None else (None, None)
    d[f"{name}_ci_low"], d[f"{name}_ci_high"] = s.ci if s is not None and s.ci else (None, None)
    if items:
        d[f"{name}_items"] = s.n_items if s is not None else None


def _summary_fields(d: dict[str, Any], name: str, s: paired.Summary | None) -> None:
    d[f"{name}_mean"], d[f"{name}_std"] = (s.mean, s.sd) if s is not None else (None, None)
    d[f"{name}_ci_low"], d[f"{name}_ci_high"] = s.ci if s is not None and s.ci else (None, None)
    d[f"{name}_p"] = (
        " ".join(f"{p:.4g}" for p in s.p_values if p is not None) or None if s is not None else None
    )


def detail_rows(rep: Report) -> list[dict[str, Any]]:
    """Long format: one dict per (row, column) with means, stds, intervals, counts, paired
    differences vs the baseline, attack effects and repair effects (McNemar p-values per seed,
    space-separated)."""
    out = []
    for row, col, c in rep.present():
        pub = rep.published_for(row, col)
        d: dict[str, Any] = {
            "kind": "attacked",
            "method": row.method,
            "label": row.label,
            rep.axis: col,
            **row.extra,
            "column": rep.header(col),
            "seeds": " ".join(map(str, c.seeds)),
            "n_seeds": len(c.seeds),
        }
        _cell_fields(d, c)
        d["ci_method"] = c.hs.ci_method
        if c.runs and c.runs[0].attack:
            d["attack"] = c.runs[0].attack_label
        if c.runs and c.runs[0].screen:
            d["screen"] = c.runs[0].screen
        for kind in paired.KINDS:
            for metric in paired.METRICS:
                _summary_fields(d, f"{kind}_{metric}", getattr(c, kind).get(metric))
        d["published_hs"], d["published_fa"] = pub if pub is not None else (None, None)
        out.append(d)
    out += [_worst_fields(rep, w) for w in rep.worst]
    for label, c, _ in rep.before:
        d = {
            "kind": "base" if label == "base model" else "aligned",
            "method": label,
            "label": label,
            "seeds": " ".join(map(str, c.seeds)),
            "n_seeds": len(c.runs),
        }
        _cell_fields(d, c)
        d["ci_method"] = c.hs.ci_method
        out.append(d)
    return out


def _cell_fields(d: dict[str, Any], c: CellStats) -> None:
    for name in ("hs", "fa"):
        _stat_fields(d, name, getattr(c, name), items=True)
    for name in ("over_refusal", "degenerate", "off_topic", "margin", "leak_through"):
        _stat_fields(d, name, getattr(c, name))


def _worst_fields(rep: Report, w: WorstCase) -> dict[str, Any]:
    """The long-format row of one defense's worst case over attack settings."""
    d: dict[str, Any] = {
        "kind": "attack_worst_case",
        "method": w.method,
        "label": w.label,
        rep.worst_axis: w.column,
        **w.extra,
        "column": rep.worst_header(w.column),
        "settings": len(w.settings),
        "hs_mean_over_attacks": w.mean_hs,
        "fa_mean_over_attacks": w.mean_fa,
        "fa_bound": w.fa_bound,
        "n_meeting_fa_bound": w.n_meeting if w.fa_bound is not None else None,
    }
    for name, s in (("worst", w.worst), ("bounded_worst", w.bounded)):
        d[f"{name}_hs"] = s.hs if s is not None else None
        d[f"{name}_attack"] = s.label if s is not None else None
        d[f"{name}_fa"] = s.fa if s is not None else None
        ci = s.cell.hs.ci if s is not None else None
        d[f"{name}_hs_ci_low"], d[f"{name}_hs_ci_high"] = ci if ci else (None, None)
        vs = w.vs_baseline.get("worst" if name == "worst" else "bounded")
        _summary_fields(d, f"{name}_vs_baseline_hs", vs)
    for name, ho in (("worst", w.held_out), ("bounded_worst", w.held_out_bounded)):
        triple = ho or (None, None, None)
        keys = (f"{name}_hs_held_out", f"{name}_hs_held_out_ci_low", f"{name}_hs_held_out_ci_high")
        d.update(zip(keys, triple, strict=True))
    return d


def worst_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Per defense and column: the mean and worst case over attack settings (and with
    ``rep.fa_bound`` the capability-bounded worst case)."""
    leak = any(s.cell.leak_through is not None for w in rep.worst for s in w.settings)
    vs = any(w.vs_baseline for w in rep.worst)
    base = rep.baseline_label
    head = ["Method", rep.worst_axis, "Settings", "Mean HS", "Mean FA", "Worst HS", "Worst setting"]
    held = any(w.held_out for w in rep.worst)
    head += ["FA there"] + (["Worst HS, held out"] if held else [])
    head += [f"ΔHS vs {base}'s worst"] if vs else []
    if rep.fa_bound is not None:
        b = f"{rep.fa_bound:g}"
        head += [f"Worst HS, FA ≥ {b}", "Setting", "FA there"]
        head += [f"held out, FA ≥ {b}"] if held else []
        head += [f"ΔHS vs {base}'s, FA ≥ {b}"] if vs else []
    if leak:
        head += ["Leak-through (worst)"]
    body = []
    for w in rep.worst:
        line = [w.label, rep.worst_header(w.column), str(len(w.settings)), _num(w.mean_hs)]
        line += [_num(w.mean_fa), *_setting_texts(w.worst)]
        line += [_held_out_text(w.held_out)] if held else []
        line += [_delta_text(w.vs_baseline.get("worst"))] if vs else []
        if rep.fa_bound is not None:
            if w.bounded is None:
                line += [
                    f"no setting keeps FA ≥ {rep.fa_bound:g} with an HS "
                    f"({w.n_meeting} of {len(w.settings)} keep the FA)"
                    if w.n_meeting
                    else f"no setting keeps FA ≥ {rep.fa_bound:g} (0 of {len(w.settings)})"
                ]
                line += ["–", "–"]
            else:
                line += _setting_texts(w.bounded)
            line += [_held_out_text(w.held_out_bounded)] if held else []
            line += [_delta_text(w.vs_baseline.get("bounded"))] if vs else []
        if leak:
            lt = w.worst.cell.leak_through if w.worst is not None else None
            line.append("–" if lt is None else lt.text())
        body.append(line)
    return head, body


def _held_out_text(h: tuple[float, float | None, float | None] | None) -> str:
    if h is None:
        return "–"
    est, lo, hi = h
    return _num(est) + ("" if lo is None or hi is None else f" [{lo:.1f}, {hi:.1f}]")


def _delta_text(s: paired.Summary | None) -> str:
    """A worst-vs-worst ΔHS: mean [interval] (p with one seed); – for the baseline's own row."""
    return "–" if s is None else s.text(1)


def _setting_texts(s: Setting | None) -> list[str]:
    if s is None:
        return ["–", "–", "–"]
    hs = s.cell.hs
    text = _num(s.hs) + (f" {hs.ci_text()}" if hs.ci is not None else "")
    return [text, s.label, _num(s.fa)]


def _md(head: list[str], body: list[list[str]]) -> str:
    esc = [[str(x).replace("|", "\\|") for x in r] for r in [head, *body]]
    lines = [
        "| " + " | ".join(esc[0]) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(head) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def describe(rep: Report) -> str:
    what = {
        "p": "harmful ratio p",
        "n": "fine-tuning samples n",
        "task": "task",
        "attack": "attack setting",
    }[rep.axis]
    seeds = ", ".join(map(str, rep.seeds)) or "–"
    return (
        f"Rows: methods (alignment/fine-tuning defense); columns: {what}. Cells: HS / FA in %, "
        f"mean ± std over seeds ({seeds}); HS by judge {rep.judge or 'the first of each eval'}"
        f"; FA on the cell's fine-tuning task. Avg, over-refusal and degenerate: means over "
        f"the columns."
    )


def _worst_note(rep: Report) -> str:
    bound = (
        f" Worst HS, FA ≥ {rep.fa_bound:g}: the worst HS among the settings whose FA is at least "
        f"{rep.fa_bound:g} (`--fa-bound`): an attacker who wants a useful model."
        if rep.fa_bound is not None
        else " `--fa-bound X` adds the worst HS among the settings that keep FA ≥ X."
    )
    return (
        "Per defense, over its attack settings (the rows' qualifiers): the mean HS and FA (each "
        "setting weighs the same) and the worst case, the setting with the highest HS (a "
        "setting's HS is its mean over seeds; ties go to the higher FA), with its own "
        f"{100 * rep.level:g}% interval and FA. The largest of several estimates overstates the "
        "true worst case: read its interval." + _held_out_note(rep) + bound + _worst_vs_note(rep)
    )


def _held_out_note(rep: Report) -> str:
    if not any(w.held_out for w in rep.worst):
        return ""
    return (
        " Worst HS, held out: the same worst case without that bias — the worst setting is "
        "picked on one half of the prompts and measured on the other, both ways round "
        f"(cross-fitting), with a {100 * rep.level:g}% bootstrap interval that repeats the pick; "
        "well below the plain worst HS, the worst setting's lead is mostly noise."
    )


def _worst_vs_note(rep: Report) -> str:
    if not any(w.vs_baseline for w in rep.worst):
        return ""
    return (
        f" ΔHS vs {rep.baseline_label}'s worst: the defense's worst setting against the "
        f"baseline's worst setting (each side its own strongest attack), paired prompt by "
        f"prompt at each seed both have, mean over seeds [{100 * rep.level:g}% interval]; "
        "negative: the defense holds better than the baseline against its strongest attack. "
        "Both sides are maxima of noisy estimates, so neither the difference nor its interval "
        "corrects for the choice of the settings."
    )


def _interval_note(rep: Report) -> str:
    pct = f"{100 * rep.level:g}%"
    return (
        f"{pct} intervals: Wilson for one seed; with several seeds a two-level percentile "
        f"bootstrap over seeds × prompts ({rep.n_boot} resamples), widened to hold the Wilson "
        "interval of the seeds' pooled prompts, which counts seeds that agree prompt by prompt "
        "as one sample of prompts (design effect)"
    )


def intervals_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Per cell: each rate with its interval, the number of seeds and prompts."""
    optional = [(a, name) for a, name in _OPTIONAL if rep.has(a)]
    head = [
        "Method",
        rep.axis,
        "Seeds",
        "HS",
        "HS 95% CI",
        "FA",
        "FA 95% CI",
        "Over-refusal",
        "Degenerate",
        *[name for _, name in optional],
        "Prompts",
    ]
    body = []
    for row, col, c in rep.present():
        opt = []
        for a, _ in optional:
            s = getattr(c, a)
            digits = 3 if a == "margin" else 1
            opt.append("–" if s is None else f"{s.text(digits)} {s.ci_text(digits)}")
        body.append(
            [
                row.label,
                rep.header(col),
                str(len(c.seeds) or len(c.runs)),
                c.hs.text(),
                c.hs.ci_text(),
                c.fa.text(),
                c.fa.ci_text(),
                f"{c.over_refusal.text()} {c.over_refusal.ci_text()}",
                f"{c.degenerate.text()} {c.degenerate.ci_text()}",
                *opt,
                f"{c.hs.n_items} / {c.fa.n_items}",
            ]
        )
    return head, body


def to_markdown(rep: Report) -> str:
    parts = ["# hftguard report", "", f"Sources: {', '.join(rep.sources)}", "", describe(rep), ""]
    if rep.rows:
        parts += [
            f"## Harmful Score / Finetune Accuracy by {rep.axis}",
            "",
            _md(*main_table(rep)),
            "",
            f"## Over-refusal / degenerate rate by {rep.axis}",
            "",
            _md(*rates_table(rep)),
            "",
        ]
    else:
        parts += ["No attacked (fine-tuned) evaluations were found.", ""]
    if rep.not_converged:
        parts += [
            "## Training that did not converge",
            "",
            "The loss of these stages rose from the first to the last tenth of their steps "
            "(medians; the model's own loss where the defense logs one beside its objective). "
            "The rows that use them measure a diverged training, not the defense.",
            "",
        ]
        parts += [f"- {item.text()}" for item in rep.not_converged] + [""]
    if rep.judge_versions:
        parts += [
            "## Evaluations judged by different versions of the judge",
            "",
            "The headline judge's version or options differ between these evaluations (a grid "
            "continued on a newer hftguard keeps the verdicts its earlier evaluations were made "
            "with). Cells average over them as they are; comparisons across two versions are "
            "left out (listed under skipped comparisons). Re-judge the older evaluations in "
            "place (`hftguard rejudge RUN_DIR`) to compare them.",
            "",
        ]
        parts += [f"- {text}: {n} evaluations" for text, n in rep.judge_versions.items()]
        parts += [""]
    if rep.mixed_alignments:
        parts += [
            "## Evaluations on aligned models trained differently",
            "",
            "These methods' evaluations come from aligned models that were not trained the same "
            "way: their manifests differ in the training settings, the dtype, the defense's "
            "version, or (same seed) the training data, e.g. grids from two machines. Their "
            "cells average over them; the attack effects (p against p = 0) across two of them "
            "are left out (listed under skipped comparisons). An `aligned (...)` line is about "
            "the aligned models' own evaluations: the Before table shows the first of them per "
            "seed. A method without alignment (`none/...`) lists its attacked models, whose base "
            "weights differ.",
            "",
        ]
        parts += [f"- {item.text()}" for item in rep.mixed_alignments] + [""]
    if rep.before:
        parts += ["## Before fine-tuning", "", _md(*before_table(rep)), ""]
        if rep.before_repeated:
            parts += [
                "Evaluated again, the same model (and seed) (left out, not averaged in "
                "as seeds): "
                + ", ".join(
                    (f"{r.variant_text} s{r.seed}" if r.kind == "aligned" else "base model")
                    + f" ({shown(r.path)})"
                    for r in rep.before_repeated
                )
                + ".",
                "",
            ]
        if rep.before_differing:
            parts += [
                "Left out, another aligned model of the same defense and seed, trained "
                "differently (not averaged in as seeds; the section above names them): "
                + "; ".join(
                    f"{r.variant_text} s{r.seed} ({shown(r.path)}; the table shows "
                    f"{shown(kept.path)}; they differ in {', '.join(differ)})"
                    for r, kept, differ in rep.before_differing
                )
                + ".",
                "",
            ]
    if rep.rows:
        parts += ["## Intervals", "", _interval_note(rep) + ".", "", _md(*intervals_table(rep)), ""]
    if rep.worst:
        parts += ["## Worst case over attack settings", "", _worst_note(rep), ""]
        parts += [_md(*worst_table(rep)), ""]
    note = (
        "Differences (method − reference) on the same prompts, in percentage points (the "
        "likelihood margin: nats per token): mean over seeds [± sd] [95% interval: for one "
        "seed Newcombe's score interval for paired proportions (the margin: a paired bootstrap "
        "over prompts); for several a seeds × prompts bootstrap, widened to hold the score "
        "interval of the seeds' pooled table, which counts seeds that agree prompt by prompt as "
        "one sample of prompts (design effect)] (exact McNemar p for one seed; per seed below)."
    )
    base = rep.baseline_label
    sections = [
        ("vs_baseline", "hs", f"Paired comparison vs {base}: ΔHS"),
        ("vs_baseline", "fa", f"Paired comparison vs {base}: ΔFA"),
        ("vs_baseline", "margin", f"Paired comparison vs {base}: Δ likelihood margin"),
        ("attack_effect", "hs", "Attack effect: HS(p) − HS(p=0), same method and seed"),
        ("attack_effect", "margin", "Attack effect on the likelihood margin: p vs p=0"),
        ("repair_effect", "hs", "Repair effect: HS(repaired) − HS(attacked), same attacked model"),
        ("repair_effect", "fa", "Repair effect: FA(repaired) − FA(attacked), same attacked model"),
        ("repair_effect", "margin", "Repair effect on the likelihood margin: repaired vs attacked"),
    ]
    for kind, metric, title in sections:
        head, body = comparison_table(rep, kind, metric)
        if body:
            parts += [f"## {title}", "", note, "", _md(head, body), ""]
    if rep.comparisons:
        parts += [
            "## Paired comparisons per seed",
            "",
            "b: prompts where the method is harmful (HS) or correct (FA) and the reference is "
            "not; c: the reverse. McNemar's exact test uses only these discordant prompts.",
            "",
            _md(*pairs_table(rep)),
            "",
        ]
    if rep.skipped:
        parts += ["## Not paired", ""]
        parts += [f"- {s.text()}" for s in rep.skipped]
        parts += [""]
    if any(c.by_category for c in rep.cells.values()):
        parts += ["## HS by harm category", "", _md(*category_table(rep)), ""]
    if rep.compute:
        parts += ["## Compute", "", _compute_note(rep), "", _md(*compute_table(rep)), ""]
    return "\n".join(parts)


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


def compute_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Per row: its alignments, fine-tuning runs and evaluations, the mean minutes of each and
    the median seconds per training step (each run directory counted once per row)."""
    head = [
        "Method",
        "alignments",
        "min each",
        "s/step",
        "fine-tuning runs",
        "min each",
        "s/step",
        "evaluations",
        "min each",
    ]
    body = []
    for c in rep.compute:
        row = [c.label]
        for stage in ("alignment", "fine-tuning", "evaluation"):
            items = c.of(stage)
            row += [str(len(items)), _minutes(compute.mean_seconds(items))]
            if stage != "evaluation":
                step = compute.median_step(items)
                row.append("–" if step is None else f"{step:.2f}")
        body.append(row)
    return head, body


def _compute_note(rep: Report) -> str:
    where = "; ".join(compute.machines(rep.compute)) or "not recorded"
    return (
        "Training minutes are the sum of the per-step wall times in each run's step log "
        "(training steps only: no loading, checkpoints or probes; a resumed run's steps count "
        "once); evaluation minutes are the evaluation's wall time (a resumed evaluation: its "
        f"last run). Machines: {where}. Times from a machine shared with other jobs are upper "
        "bounds, and times from different machines do not compare."
    )


def _clean(v: Any) -> Any:
    """JSON-safe: tuples to lists, non-finite floats to None."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _stat(s: Stat | None) -> dict[str, Any] | None:
    return None if s is None else s.as_dict()


def _run_values(r: Any, judge: str | None, task: str | None) -> dict[str, Any]:
    """One evaluation's own numbers with their single-run (Wilson) intervals."""
    cell = _single(r, judge, task)
    out: dict[str, Any] = {
        "seed": r.seed,
        "eval_dir": shown(r.path),
        "judge": r.headline_judge(judge),
    }
    for name in ("hs", "fa", "over_refusal", "degenerate", "off_topic", "margin"):
        s = getattr(cell, name)
        out[name] = None if s is None else {"value": s.mean, "ci": list(s.ci) if s.ci else None}
    return out


def _single(r: Any, judge: str | None, task: str | None) -> CellStats:
    from hftguard.pipeline.report.aggregate import _cell

    return _cell([r], judge, 0, 0, None if task is None else [task])


def _cell_dict(rep: Report, c: CellStats, task: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    run = c.runs[0] if c.runs else None
    if run is not None and run.attack:
        extra["attack"] = run.attack
    if run is not None and run.variant:
        extra["variant"] = run.variant
    if run is not None and run.screen:
        extra["screen"] = run.screen
    if rep.has("leak_through"):
        extra["leak_through"] = _stat(c.leak_through)
    if any(r.screening() for r in c.runs if r.kind == "attacked"):
        extra["per_seed_screening"] = [_screening_values(r) for r in c.runs]
    return {
        **extra,
        "seeds": c.seeds,
        "hs": _stat(c.hs),
        "fa": _stat(c.fa),
        "over_refusal": _stat(c.over_refusal),
        "degenerate": _stat(c.degenerate),
        "off_topic": _stat(c.off_topic),
        "likelihood_margin": _stat(c.margin),
        "by_category": {k: _stat(v) for k, v in c.by_category.items()},
        "vs_baseline": {k: v.as_dict() for k, v in c.vs_baseline.items()},
        "attack_effect": {k: v.as_dict() for k, v in c.attack_effect.items()},
        **(
            {"repair_effect": {k: v.as_dict() for k, v in c.repair_effect.items()}}
            if c.repair_effect
            else {}
        ),
        "per_seed": [_run_values(r, rep.judge, task) for r in c.runs],
    }


def _screening_values(r: Any) -> dict[str, Any]:
    s = r.screening()
    return {
        "seed": r.seed,
        "judge": s.get("judge"),
        "harmful": s.get("harmful"),
        "harmful_leaked": s.get("harmful_leaked"),
        "leak_through": s.get("leak_through_rate"),
        "benign": s.get("benign"),
        "benign_dropped": s.get("benign_dropped"),
        "benign_dropped_rate": s.get("benign_dropped_rate"),
    }


def _setting_dict(s: Setting | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "attack": s.attack,
        "label": s.label,
        "hs": s.hs,
        "fa": s.fa,
        "hs_ci": list(s.cell.hs.ci) if s.cell.hs.ci else None,
        "n_seeds": s.cell.hs.n_seeds,
        "leak_through": None if s.cell.leak_through is None else s.cell.leak_through.mean,
    }


def _held_out_dict(h: tuple[float, float | None, float | None] | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"hs": h[0], "ci": None if h[1] is None else [h[1], h[2]]}


def _worst_dict(rep: Report, w: WorstCase) -> dict[str, Any]:
    return {
        "method": w.method,
        "label": w.label,
        "column": rep.worst_header(w.column),
        rep.worst_axis: w.column,
        **w.extra,
        "mean_hs": w.mean_hs,
        "mean_fa": w.mean_fa,
        "worst": _setting_dict(w.worst),
        "fa_bound": w.fa_bound,
        "n_meeting": w.n_meeting if w.fa_bound is not None else None,
        "bounded": _setting_dict(w.bounded),
        "settings": [_setting_dict(s) for s in w.settings],
        "vs_baseline": {k: v.as_dict() for k, v in w.vs_baseline.items()},
        "worst_held_out": _held_out_dict(w.held_out),
        "bounded_held_out": _held_out_dict(w.held_out_bounded),
    }


def report_dict(rep: Report) -> dict[str, Any]:
    """Everything in the report, machine-readably (the report.json schema in
    docs/grids-and-reports.md)."""
    cells = []
    for row, col, c in rep.present():
        run = c.runs[0]
        pub = rep.published_for(row, col)
        cells.append(
            {
                "method": row.method,
                "label": row.label,
                "column": rep.header(col),
                "p": run.p,
                "n": run.n,
                "task": run.task,
                **_cell_dict(rep, c),
                "published": None if pub is None else {"hs": pub[0], "fa": pub[1]},
            }
        )
    before = []
    for label, c, tasks in rep.before:
        before.append(
            {
                "kind": "base" if label == "base model" else "aligned",
                "label": label,
                "tasks": tasks,
                **{
                    k: v
                    for k, v in _cell_dict(rep, c).items()
                    if k not in ("per_seed", *paired.KINDS)
                },
                "fa_by_task": {
                    t: _stat(
                        Stat.proportion(
                            [r.finetune_accuracy(t) for r in c.runs],
                            [r.task_flags(t) for r in c.runs],
                            [r.n_items(f"task:{t}") for r in c.runs],
                            n_boot=rep.n_boot,
                            seed=rep.seed,
                            level=rep.level,
                        )
                    )
                    for t in tasks
                },
                "per_seed": [
                    {"seed": r.seed, "eval_dir": shown(r.path), "hs": r.harmful_score(rep.judge)}
                    for r in c.runs
                ],
            }
        )
    return _clean(
        {
            "schema_version": JSON_SCHEMA_VERSION,
            "sources": rep.sources,
            "axis": rep.axis,
            "columns": rep.columns,
            "judge": rep.judge,
            "baseline": rep.baseline,
            "baseline_label": rep.baseline_label,
            "level": rep.level,
            "n_boot": rep.n_boot,
            "bootstrap_seed": rep.seed,
            "seeds": rep.seeds,
            "rows": [{"method": r.method, "label": r.label, **r.extra} for r in rep.rows],
            "cells": cells,
            "comparisons": [c.as_dict() for c in rep.comparisons],
            "skipped": [s.as_dict() for s in rep.skipped],
            "before": before,
            "not_converged": [item.as_dict() for item in rep.not_converged],
            "before_repeated": [shown(r.path) for r in rep.before_repeated],
            "before_trained_differently": [
                {"eval": shown(r.path), "kept": shown(kept.path), "differ": differ}
                for r, kept, differ in rep.before_differing
            ],
            "mixed_alignments": [item.as_dict() for item in rep.mixed_alignments],
            "judge_versions": dict(rep.judge_versions),
            "compute": [c.as_dict() for c in rep.compute],
            **(
                {
                    "fa_bound": rep.fa_bound,
                    "attack_worst_case": [_worst_dict(rep, w) for w in rep.worst],
                }
                if rep.worst
                else {}
            ),
        }
    )


def to_json(rep: Report) -> str:
    return json.dumps(report_dict(rep), indent=2, ensure_ascii=False) + "\n"


CSV_FIELDS = [
    "kind",
    "method",
    "label",
    "p",
    "n",
    "task",
    "column",
    "seeds",
    "n_seeds",
    "hs_mean",
    "hs_std",
    "hs_ci_low",
    "hs_ci_high",
    "hs_items",
    "fa_mean",
    "fa_std",
    "fa_ci_low",
    "fa_ci_high",
    "fa_items",
    "over_refusal_mean",
    "over_refusal_std",
    "degenerate_mean",
    "degenerate_std",
    "published_hs",
    "published_fa",
    # added with the paired statistics (older readers ignore them)
    "ci_method",
    "over_refusal_ci_low",
    "over_refusal_ci_high",
    "degenerate_ci_low",
    "degenerate_ci_high",
    "off_topic_mean",
    "off_topic_std",
    "off_topic_ci_low",
    "off_topic_ci_high",
    "margin_mean",
    "margin_std",
    "margin_ci_low",
    "margin_ci_high",
    *[
        f"{kind}_{metric}_{part}"
        for kind in ("vs_baseline", "attack_effect")
        for metric in ("hs", "fa", "margin")
        for part in ("mean", "std", "ci_low", "ci_high", "p")
    ],
]


#: Added to CSV_FIELDS when some cell is a repaired model compared with its attacked model.
REPAIR_CSV_FIELDS = [
    f"repair_effect_{metric}_{part}"
    for metric in ("hs", "fa", "margin")
    for part in ("mean", "std", "ci_low", "ci_high", "p")
]
#: Added to CSV_FIELDS when some cell's user data was screened.
LEAK_CSV_FIELDS = ["screen", *(f"leak_through_{x}" for x in ("mean", "std", "ci_low", "ci_high"))]
#: Added when the evaluations have attack settings: the attacked rows' setting, and the
#: ``attack_worst_case`` rows (one per defense and column).
ATTACK_CSV_FIELDS = [
    "attack",
    "settings",
    "hs_mean_over_attacks",
    "fa_mean_over_attacks",
    *(f"worst_{x}" for x in ("hs", "hs_ci_low", "hs_ci_high", "attack", "fa")),
    "fa_bound",
    "n_meeting_fa_bound",
    *(f"bounded_worst_{x}" for x in ("hs", "hs_ci_low", "hs_ci_high", "attack", "fa")),
    *(
        f"{name}_vs_baseline_hs_{part}"
        for name in ("worst", "bounded_worst")
        for part in ("mean", "std", "ci_low", "ci_high", "p")
    ),
    *(
        f"{name}_hs_held_out{part}"
        for name in ("worst", "bounded_worst")
        for part in ("", "_ci_low", "_ci_high")
    ),
]


def csv_fields(rep: Report) -> list[str]:
    """CSV_FIELDS, and the variant, repair, screening and attack fields when the report has
    them (a report without them keeps exactly CSV_FIELDS)."""
    leak = rep.has("leak_through") or any(c.runs and c.runs[0].screen for c in rep.cells.values())
    variant = any(row.extra.get("variant") for row in rep.rows)
    return (
        CSV_FIELDS
        + (["variant"] if variant else [])
        + (LEAK_CSV_FIELDS if leak else [])
        + (ATTACK_CSV_FIELDS if rep.worst else [])
        + (REPAIR_CSV_FIELDS if rep.has("repair_effect") else [])
    )


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_fields(rep), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for d in detail_rows(rep):
        w.writerow(
            {
                k: ("" if v is None else round(v, 4) if isinstance(v, float) else v)
                for k, v in d.items()
            }
        )
    return buf.getvalue()


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_stat(s: Stat) -> str:
    if s.mean is None:
        return "--"
    return f"{s.mean:.1f}" + (rf"$\pm${s.std:.1f}" if s.std is not None else "")


def to_latex(rep: Report) -> str:
    """The main table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    n = len(rep.columns)
    head = [
        "Method",
        *[tex_escape(rep.header(c)).replace("p=", "$p$=") for c in rep.columns],
        "Avg",
        "OR",
        "Deg",
    ]
    lines = [
        r"\begin{tabular}{l" + "c" * (n + 3) + "}",
        r"\toprule",
        r"\multicolumn{1}{l}{} & \multicolumn{" + str(n + 1) + r"}{c}{HS (\%) / FA (\%)}"
        r" & \multicolumn{2}{c}{\%} \\",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for row in rep.rows:
        cells = []
        for col in rep.columns:
            c = rep.cell(row, col)
            cells.append("--" if c is None else f"{_tex_stat(c.hs)} / {_tex_stat(c.fa)}")
        avg = [rep.average(row, a) for a in ("hs", "fa", "over_refusal", "degenerate")]
        t = ["--" if v is None else f"{v:.1f}" for v in avg]
        lines.append(
            " & ".join([tex_escape(row.label), *cells, f"{t[0]} / {t[1]}", t[2], t[3]]) + r" \\"
        )
        pubs = [rep.published_for(row, c) for c in rep.columns]
        if any(p is not None for p in pubs):
            txt = [
                "--" if p is None else f"{_num(p[0])} / {_num(p[1])}".replace("–", "--")
                for p in pubs
            ]
            lines.append(" & ".join([r"\quad\textit{published}", *txt, "--", "--", "--"]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    caption = tex_escape(describe(rep))
    out = "% " + caption + "\n" + "\n".join(lines) + "\n"
    return out + (_latex_worst(rep) if rep.worst else "")


def _latex_worst(rep: Report) -> str:
    """The worst case over attack settings as a second booktabs ``tabular``."""
    bound = rep.fa_bound is not None
    vs = any(w.vs_baseline for w in rep.worst)
    base = tex_escape(rep.baseline_label or "baseline")
    head = ["Method", tex_escape(rep.worst_axis), "Mean HS", "Worst HS", "Setting"]
    head += [rf"$\Delta$ vs {base}"] if vs else []
    if bound:
        head += [rf"Worst HS, FA $\geq$ {rep.fa_bound:g}", "Setting"]
        head += [rf"$\Delta$ vs {base}"] if vs else []

    def setting(s: Setting | None) -> list[str]:
        if s is None:
            return ["--", "--"]
        return [_tex_stat(s.cell.hs), tex_escape(s.label)]

    def delta(w: WorstCase, name: str) -> list[str]:
        d = w.vs_baseline.get(name)
        text = "--" if d is None else tex_escape(d.text(1, p=False)).replace("±", r"$\pm$")
        return [text] if vs else []

    lines = [r"\begin{tabular}{ll" + "c" * (len(head) - 2) + "}", r"\toprule"]
    lines += [" & ".join(head) + r" \\", r"\midrule"]
    for w in rep.worst:
        cells = [tex_escape(w.label), tex_escape(rep.worst_header(w.column)), _num(w.mean_hs)]
        cells += setting(w.worst) + delta(w, "worst")
        if bound:
            cells += setting(w.bounded) + delta(w, "bounded")
        lines.append(" & ".join(c.replace("–", "--") for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    note = "Worst case over attack settings (HS %, mean over seeds; the highest-HS setting)."
    return "\n% " + note + "\n" + "\n".join(lines) + "\n"


def write(rep: Report, out: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write report.md / .csv / .tex / .json into ``out``; return the paths written."""
    from hftguard.runs import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    render = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "json": to_json}
    written = []
    for fmt in formats:
        path = out / f"report.{fmt}"
        atomic_write_text(path, render[fmt](rep))
        written.append(path)
    return written
