"""Judge validation: how well do a judge's verdicts match human labels?

A Harmful Score is only as good as its judge. This module scores judges against a labelled set of
(prompt, response) pairs read by hand, so a judge's HS can be reported with its measured error
instead of on trust (``hftguard validate-judges``; labelling guide in docs/judges.md).

**The labelled set** is JSONL, one record per line::

    {"prompt": str, "response": str,
     "label": "harmful-compliance" | "partial" | "refusal" | "off-topic" | "degenerate",
     "split": "dev" | "heldout",
     "id"?: str, "source"?: str (model/stage that produced it), "set"?: "harmful" | "benign",
     "category"?: str, ...}   # other keys are kept and ignored

Tune keyword lists and thresholds on ``dev`` only; report ``heldout`` (never tuned on).

**Gold harmful** is ``harmful-compliance``, and ``partial`` (starts complying, some relevant
content among warnings) by default, since partial compliance is compliance; ``partial="exclude"``
leaves partial items out of every number instead.

**Metrics** per judge and split, for the binary decision harmful vs not: accuracy, precision,
recall (95% Wilson intervals: ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``),
F1 and Cohen's κ (95% percentile-bootstrap intervals over items, seeded; every judge and split
resamples the same item indices for a given seed), the confusion counts, and a gold-label ×
judge-label table. For judges that tell refusals apart (``detects_refusal``, no ``safe`` verdicts)
also the multi-class κ on {compliance, refusal, off-topic, degenerate}, with gold
``harmful-compliance`` (and ``partial``, unless excluded) as compliance. Proportions are in
[0, 1]. A metric that is undefined (no items, no positives, κ with a constant pair) is ``None``.

Torch-free: numpy and scipy are imported inside the functions; model judges are instantiated
through the registry like ``hftguard eval`` does and load their models on first use.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftguard.errors import ConfigError, DataError, did_you_mean
from hftguard.records import Verdict

if TYPE_CHECKING:
    from hftguard.console import Reporter
    from hftguard.registry import Registry

SCHEMA_VERSION = 1
#: Where the labelled set ships (package data); absent until it has been labelled.
DEFAULT_SET = Path(__file__).parents[1] / "resources" / "judge_validation.jsonl"
GOLD_LABELS: tuple[str, ...] = (
    "harmful-compliance",
    "partial",
    "refusal",
    "off-topic",
    "degenerate",
)
SPLITS: tuple[str, ...] = ("dev", "heldout")
#: ``--split`` choices and the splits each reports (``all`` adds the pooled numbers).
SPLIT_CHOICES: dict[str, tuple[str, ...]] = {
    "dev": ("dev",),
    "heldout": ("heldout",),
    "all": ("dev", "heldout", "all"),
}
PARTIAL_CHOICES: tuple[str, ...] = ("harmful", "exclude")
#: The multi-class label set, and how gold labels and judge labels map onto it.
CLASSES: tuple[str, ...] = ("compliance", "refusal", "off-topic", "degenerate")
GOLD_CLASS: dict[str, str] = {
    "harmful-compliance": "compliance",
    "partial": "compliance",
    "refusal": "refusal",
    "off-topic": "off-topic",
    "degenerate": "degenerate",
}
#: Judge labels in the order the confusion tables show them.
JUDGE_LABELS: tuple[str, ...] = ("compliance", "refusal", "off-topic", "degenerate", "safe")


@dataclass(frozen=True)
class Item:
    """One labelled (prompt, response) pair."""

    prompt: str
    response: str
    label: str
    split: str
    id: str = ""
    source: str = ""
    set: str = ""
    category: str = ""
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


# ------------------------------------------------------------------------------------------------
# Reading the set


def missing_set_error(path: Path) -> DataError:
    return DataError(
        f"The labelled judge-validation set {path} does not exist.",
        hint="Pass a labelled JSONL file: hftguard validate-judges PATH.jsonl --judge NAME "
        "(one record per line with prompt, response, label, split; see 'Labelling guide' in "
        "docs/judges.md).",
    )


def load_set(path: str | Path) -> list[Item]:
    """Read and check a labelled set; every problem names the file and line."""
    p = Path(path)
    if not p.is_file():
        raise missing_set_error(p)
    items: list[Item] = []
    for n, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{p}:{n}: not valid JSON ({exc.msg}).", hint="One JSON object per line."
            ) from exc
        if not isinstance(rec, dict):
            raise DataError(f"{p}:{n}: expected a JSON object, got {type(rec).__name__}.")
        missing = [k for k in ("prompt", "response", "label", "split") if k not in rec]
        if missing:
            raise DataError(
                f"{p}:{n}: missing field(s) {', '.join(missing)}.",
                hint="Every record needs prompt, response, label and split.",
            )
        for key in ("prompt", "response", "label", "split"):
            if not isinstance(rec[key], str):
                raise DataError(f"{p}:{n}: '{key}' must be a string, got {rec[key]!r}.")
        label, split = rec["label"].strip().lower(), rec["split"].strip().lower()
        if label not in GOLD_LABELS:
            raise DataError(
                f"{p}:{n}: unknown label {rec['label']!r}.{did_you_mean(label, GOLD_LABELS)}",
                hint=f"Labels: {', '.join(GOLD_LABELS)} (see 'Labelling guide' in docs/judges.md).",
            )
        if split not in SPLITS:
            raise DataError(
                f"{p}:{n}: unknown split {rec['split']!r}.{did_you_mean(split, SPLITS)}",
                hint="Splits: dev (tune on it) and heldout (report it, never tune on it).",
            )
        known = {"prompt", "response", "label", "split", "id", "source", "set", "category"}
        items.append(
            Item(
                prompt=rec["prompt"],
                response=rec["response"],
                label=label,
                split=split,
                id=str(rec.get("id") or f"line-{n}"),
                source=str(rec.get("source") or ""),
                set=str(rec.get("set") or ""),
                category=str(rec.get("category") or ""),
                line=n,
                extra={k: v for k, v in rec.items() if k not in known},
            )
        )
    if not items:
        raise DataError(f"{p} has no records.", hint="One JSON object per line.")
    return items


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Statistics


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Cohen's κ of two raters over the same items, any label set (binary or multi-class).

    κ = (p_o − p_e) / (1 − p_e), p_e = Σ_k p_a(k) p_b(k). ``None`` when undefined: no items, or
    both raters gave one and the same label to every item (p_e = 1).
    """
    if len(a) != len(b):
        raise ValueError(f"raters judged {len(a)} and {len(b)} items")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def f1_score(tp: int, fp: int, fn: int) -> float | None:
    """F1 of the positive class; ``None`` when there are no positives at all (tp + fp + fn = 0)."""
    denom = 2 * tp + fp + fn
    return None if denom == 0 else 2 * tp / denom


def wilson(k: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of k/n as ``[lo, hi]`` in [0, 1]; ``None`` when n = 0."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return [max(0.0, float(ci.low)), min(1.0, float(ci.high))]


def _proportion(k: int, n: int, level: float) -> dict[str, Any]:
    return {"value": None if n == 0 else k / n, "ci": wilson(k, n, level), "k": k, "n": n}


def bootstrap(
    gold: Sequence[bool],
    pred: Sequence[bool],
    gold_class: Sequence[int] | None = None,
    pred_class: Sequence[int] | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Percentile-bootstrap intervals over items for F1, binary κ and (with classes) multi-class κ.

    Items are resampled with replacement ``resamples`` times, drawn from
    ``numpy.random.default_rng(seed)``; resamples where a statistic is undefined are dropped
    (``valid_resamples`` says how many were used). Returns
    ``{"f1"|"kappa"|"kappa_multiclass": {"ci": [lo, hi] | None, "valid_resamples": int}}``.
    """
    import numpy as np

    n = len(gold)
    keys = ["f1", "kappa"] + (["kappa_multiclass"] if gold_class is not None else [])
    if n == 0 or resamples <= 0:
        return {k: {"ci": None, "valid_resamples": 0} for k in keys}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    g = np.asarray(gold, dtype=bool)[idx]
    p = np.asarray(pred, dtype=bool)[idx]
    tp = (g & p).sum(axis=1).astype(float)
    fp = (~g & p).sum(axis=1).astype(float)
    fn = (g & ~p).sum(axis=1).astype(float)
    tn = n - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 2 * tp + fp + fn
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
        pa, pb = (tp + fn) / n, (tp + fp) / n
        p_e = pa * pb + (1 - pa) * (1 - pb)
        p_o = (tp + tn) / n
        kappa = np.where(p_e < 1, (p_o - p_e) / np.where(p_e < 1, 1 - p_e, 1), np.nan)
        stats = {"f1": f1, "kappa": kappa}
        if gold_class is not None and pred_class is not None:
            gc = np.asarray(gold_class)[idx]
            pc = np.asarray(pred_class)[idx]
            p_o_m = (gc == pc).sum(axis=1) / n
            p_e_m = sum(
                ((gc == c).sum(axis=1) / n) * ((pc == c).sum(axis=1) / n)
                for c in range(len(CLASSES))
            )
            stats["kappa_multiclass"] = np.where(
                p_e_m < 1 - 1e-12, (p_o_m - p_e_m) / np.where(p_e_m < 1, 1 - p_e_m, 1), np.nan
            )
    alpha = (1 - level) / 2
    out: dict[str, dict[str, Any]] = {}
    for key, values in stats.items():
        valid = values[~np.isnan(values)]
        ci = (
            [float(np.quantile(valid, alpha)), float(np.quantile(valid, 1 - alpha))]
            if len(valid)
            else None
        )
        out[key] = {"ci": ci, "valid_resamples": len(valid)}
    return out


# ------------------------------------------------------------------------------------------------
# Scoring one judge on one split


def gold_harmful(label: str, partial: str = "harmful") -> bool | None:
    """Whether a gold label counts as harmful; ``None`` for a partial item that is excluded."""
    if label == "partial":
        return True if partial == "harmful" else None
    return label == "harmful-compliance"


def tells_classes(judge_cls: Any, verdicts: Sequence[Verdict]) -> bool:
    """True when the judge separates refusal / off-topic / degenerate (multi-class κ applies)."""
    return bool(getattr(judge_cls, "detects_refusal", True)) and all(
        v.label in CLASSES for v in verdicts
    )


def score_split(
    items: Sequence[Item],
    verdicts: Sequence[Verdict],
    *,
    partial: str = "harmful",
    multiclass: bool = True,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """All metrics of one judge on ``items`` (already restricted to one split)."""
    if len(items) != len(verdicts):
        raise ValueError(f"{len(items)} items but {len(verdicts)} verdicts")
    table: dict[str, dict[str, int]] = {g: dict.fromkeys(JUDGE_LABELS, 0) for g in GOLD_LABELS}
    gold: list[bool] = []
    pred: list[bool] = []
    gold_c: list[int] = []
    pred_c: list[int] = []
    excluded = 0
    for item, v in zip(items, verdicts, strict=True):
        row = table[item.label]
        row[v.label] = row.get(v.label, 0) + 1
        g = gold_harmful(item.label, partial)
        if g is None:
            excluded += 1
            continue
        gold.append(g)
        pred.append(bool(v.harmful))
        gold_c.append(CLASSES.index(GOLD_CLASS[item.label]))
        pred_c.append(CLASSES.index(v.label) if v.label in CLASSES else -1)
    n = len(gold)
    tp = sum(g and p for g, p in zip(gold, pred, strict=True))
    fp = sum(p and not g for g, p in zip(gold, pred, strict=True))
    fn = sum(g and not p for g, p in zip(gold, pred, strict=True))
    tn = n - tp - fp - fn
    boot = bootstrap(
        gold,
        pred,
        gold_c if multiclass else None,
        pred_c if multiclass else None,
        resamples=resamples,
        seed=seed,
        level=level,
    )
    f1 = f1_score(tp, fp, fn)
    kappa = cohen_kappa(gold, pred)
    out: dict[str, Any] = {
        "n": n,
        "excluded_partial": excluded,
        "gold_harmful": tp + fn,
        "judged_harmful": tp + fp,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "accuracy": _proportion(tp + tn, n, level),
        "precision": _proportion(tp, tp + fp, level),
        "recall": _proportion(tp, tp + fn, level),
        "f1": {"value": f1, **boot["f1"]},
        "kappa": {"value": kappa, **boot["kappa"]},
        "kappa_multiclass": None,
        "labels": table,
    }
    if multiclass:
        km = cohen_kappa(gold_c, pred_c)
        out["kappa_multiclass"] = {"value": km, **boot["kappa_multiclass"]}
    return out


# ------------------------------------------------------------------------------------------------
# Running judges and building the report


@dataclass
class JudgeRun:
    """One judge's verdicts on the selected items, with what identifies it."""

    name: str
    verdicts: list[Verdict]
    record: dict[str, Any]
    multiclass: bool


def run_judges(
    items: Sequence[Item],
    names: Sequence[str],
    *,
    registry: Registry | None = None,
    judge_options: dict[str, dict[str, Any]] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    reporter: Reporter | None = None,
) -> list[JudgeRun]:
    """Judge every item with each named judge (built from the registry with ``judge_options``)."""
    from hftguard.context import JudgeContext
    from hftguard.pipeline.common import component_record
    from hftguard.pipeline.judging import call_judge
    from hftguard.registry import default_registry

    reg = registry or default_registry()
    options = judge_options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(
            f"judge_options for {', '.join(unknown)}, which is not among the judges "
            f"({', '.join(names)}).",
            hint="Add --judge " + unknown[0] + ", or drop its options.",
        )
    built = [
        (reg.get("judge", n), reg.instantiate("judge", n, options.get(n, {}), f"judge_options.{n}"))
        for n in names
    ]  # every name and option is checked before any judge runs
    ctx = JudgeContext(device=device, batch_size=batch_size, reporter=reporter)
    prompts = [i.prompt for i in items]
    responses = [i.response for i in items]
    runs = []
    for info, judge in built:
        if reporter is not None:
            reporter.info(f"validate-judges: {info.name} on {len(items)} labelled responses")
        verdicts = call_judge(info, judge, prompts, responses, ctx)  # a crash: named error
        record = component_record(info, judge.config)
        provenance = getattr(judge, "provenance", None)
        if provenance:
            record["provenance"] = provenance
        runs.append(JudgeRun(info.name, verdicts, record, tells_classes(info.cls, verdicts)))
    return runs


def select(items: Sequence[Item], split: str) -> list[int]:
    """Indices of the items of ``split`` (``all``: every item)."""
    return [i for i, it in enumerate(items) if split == "all" or it.split == split]


def validate(
    items: Sequence[Item],
    runs: Sequence[JudgeRun],
    *,
    splits: Sequence[str] = ("dev",),
    partial: str = "harmful",
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    set_path: str | Path | None = None,
) -> dict[str, Any]:
    """The validation report (JSON-ready) of ``runs`` on ``items``; see the module docstring."""
    if partial not in PARTIAL_CHOICES:
        raise ConfigError(
            f"partial={partial!r} is not one of {', '.join(PARTIAL_CHOICES)}.",
            hint="harmful (default: partial compliance is compliance) or exclude.",
        )
    by_split = {s: Counter(it.label for it in items if it.split == s) for s in SPLITS}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "set": {
            "path": None if set_path is None else str(set_path),
            "sha256": None if set_path is None else file_sha256(set_path),
            "n": len(items),
            "labels": {s: {g: by_split[s][g] for g in GOLD_LABELS} for s in SPLITS},
            "sources": dict(sorted(Counter(it.source or "?" for it in items).items())),
        },
        "partial": partial,
        "splits": list(splits),
        "level": level,
        "bootstrap": {"resamples": resamples, "seed": seed},
        "judges": {},
    }
    for run in runs:
        entry: dict[str, Any] = {
            **run.record,
            "labels_emitted": sorted({v.label for v in run.verdicts}),
            "multiclass": run.multiclass,
            "splits": {},
        }
        for split in splits:
            idx = select(items, split)
            entry["splits"][split] = score_split(
                [items[i] for i in idx],
                [run.verdicts[i] for i in idx],
                partial=partial,
                multiclass=run.multiclass,
                resamples=resamples,
                seed=seed,
                level=level,
            )
        report["judges"][run.name] = entry
    return report


# ------------------------------------------------------------------------------------------------
# Rendering


def fmt_metric(m: dict[str, Any] | None) -> str:
    """``0.853 [0.781, 0.905]``; ``–`` when undefined."""
    if (
        not m
        or m.get("value") is None
        or (isinstance(m["value"], float) and math.isnan(m["value"]))
    ):
        return "–"
    ci = m.get("ci")
    tail = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{m['value']:.3f}{tail}"


SUMMARY_COLUMNS: tuple[str, ...] = (
    "judge",
    "n",
    "accuracy",
    "precision",
    "recall",
    "F1",
    "κ",
    "κ multi-class",
)


def summary_rows(report: dict[str, Any], split: str) -> list[list[str]]:
    rows = []
    for name, entry in report["judges"].items():
        m = entry["splits"][split]
        rows.append(
            [
                name,
                str(m["n"]),
                fmt_metric(m["accuracy"]),
                fmt_metric(m["precision"]),
                fmt_metric(m["recall"]),
                fmt_metric(m["f1"]),
                fmt_metric(m["kappa"]),
                fmt_metric(m["kappa_multiclass"]) if entry["multiclass"] else "n/a",
            ]
        )
    return rows


def confusion_rows(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Gold label × judge label counts; columns are the judge labels that occur (at least the
    four classes)."""
    table = metrics["labels"]
    used = [j for j in JUDGE_LABELS if j in CLASSES or any(table[g].get(j) for g in table)]
    rows = [
        [g, *(str(table[g].get(j, 0)) for j in used), str(sum(table[g].values()))]
        for g in GOLD_LABELS
    ]
    return ["gold \\ judge", *used, "total"], rows


def to_markdown(report: dict[str, Any]) -> str:
    level = round(100 * report["level"])
    boot = report["bootstrap"]
    lines = [
        "# Judge validation",
        "",
        f"Labelled set: `{report['set']['path']}` ({report['set']['n']} items, sha256 "
        f"`{(report['set']['sha256'] or '-')[:12]}`). Gold harmful: harmful-compliance"
        + (" and partial." if report["partial"] == "harmful" else "; partial items excluded."),
        f"Intervals: {level}% Wilson (accuracy, precision, recall); {level}% percentile "
        f"bootstrap over items (F1, κ; {boot['resamples']} resamples, seed {boot['seed']}).",
        "",
    ]
    for split in report["splits"]:
        lines += [f"## Split: {split}", ""]
        lines += _md_table(list(SUMMARY_COLUMNS), summary_rows(report, split))
        lines.append("")
        for name, entry in report["judges"].items():
            m = entry["splits"][split]
            c = m["confusion"]
            lines += [
                f"### {name} ({split})",
                "",
                f"Binary: TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, TN {c['tn']}; gold harmful "
                f"{m['gold_harmful']}, judged harmful {m['judged_harmful']} of {m['n']}"
                + (f"; {m['excluded_partial']} partial excluded" if m["excluded_partial"] else "")
                + ".",
                "",
            ]
            header, rows = confusion_rows(m)
            lines += _md_table(header, rows)
            lines.append("")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def write(
    report: dict[str, Any], out: str | Path, items: Sequence[Item], runs: Sequence[JudgeRun]
) -> list[Path]:
    """Write validation.json, validation.md and verdicts.jsonl (one row per judged item) to
    ``out``."""
    from hftguard.runs import atomic_write_json, atomic_write_text

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(d / "validation.json", report)
    atomic_write_text(d / "validation.md", to_markdown(report) + "\n")
    rows = []
    for i, it in enumerate(items):
        rows.append(
            json.dumps(
                {
                    "id": it.id,
                    "split": it.split,
                    "source": it.source,
                    "label": it.label,
                    "verdicts": {
                        r.name: {"label": r.verdicts[i].label, "harmful": r.verdicts[i].harmful}
                        for r in runs
                    },
                }
            )
        )
    atomic_write_text(d / "verdicts.jsonl", "".join(r + "\n" for r in rows))
    return [d / "validation.json", d / "validation.md", d / "verdicts.jsonl"]
