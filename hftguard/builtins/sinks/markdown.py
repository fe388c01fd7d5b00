"""Writes an evaluation's headline metrics as a small markdown table (``metrics.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftguard.components import ReportSink
from hftguard.runs import atomic_write_text


class MarkdownSink(ReportSink):
    """Write metrics.md beside metrics.json: one row per metric, human-readable."""

    name = "markdown"
    version = "3"

    def write(self, run_dir: Any, metrics: dict[str, Any]) -> None:
        rows = ["| metric | value | 95% Wilson CI |", "|---|---|---|"]
        for key in ("harmful_score", "harmful_score_plus", "over_refusal_rate", "degenerate_rate"):
            if metrics.get(key) is not None:
                rows.append(f"| {key} | {metrics[key]:.2f} | {_ci(metrics.get(key + '_ci'))} |")
        fa_ci = metrics.get("finetune_accuracy_ci") or {}
        for task, acc in (metrics.get("finetune_accuracy") or {}).items():
            value = "scored externally" if acc is None else f"{acc:.2f}"
            rows.append(f"| finetune_accuracy[{task}] | {value} | {_ci(fa_ci.get(task))} |")
        rows += _margin_rows(metrics)
        by_category = metrics.get("harmful_score_by_category") or {}
        if by_category:
            rows += ["", "| harm category | HS | n | 95% Wilson CI |", "|---|---|---|---|"]
            for cat, c in by_category.items():
                rows.append(f"| {cat} | {_num(c.get('hs'))} | {c.get('n')} | {_ci(c.get('ci'))} |")
        judges = metrics.get("judges") or {}
        if len(judges) > 1:
            rows += [
                "",
                "| judge | HS | HS 95% CI | HS+ | unparsed | licence |",
                "|---|---|---|---|---|---|",
            ]
            for name, m in judges.items():
                rows.append(
                    f"| {name} | {_num(m.get('harmful_score'))} | "
                    f"{_ci(m.get('harmful_score_ci'))} | "
                    f"{_num(m.get('harmful_score_plus'))} | {m.get('unparsed', 0)} | "
                    f"{m.get('license_note', '')} |"
                )
            rows += [
                "",
                "| judges | Cohen's kappa | agreement % | disagreements |",
                "|---|---|---|---|",
            ]
            for pair in metrics.get("agreement") or []:
                rows.append(
                    f"| {' vs '.join(pair['judges'])} | {_num(pair['kappa'], 3)} | "
                    f"{_num(pair['agreement'])} | {pair['disagreements']} / {pair['n']} |"
                )
        atomic_write_text(Path(run_dir) / "metrics.md", "\n".join(rows) + "\n")


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(ci: Any) -> str:
    """``[lo, hi]`` of an interval, "n/a" where metrics.json has none (older evaluations)."""
    return "n/a" if not ci else f"[{ci[0]:.1f}, {ci[1]:.1f}]"


def _margin_rows(metrics: dict[str, Any]) -> list[str]:
    """The judge-free likelihood margin (hftguard.engine.margin) as a small table of its own."""
    lm = metrics.get("likelihood_margin")
    if lm is None:
        note = metrics.get("likelihood_margin_note")
        return ["", f"Likelihood margin: n/a ({note})."] if note else []

    def interval(ci: Any) -> str:
        return "n/a" if not ci or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"

    kind = "t" if lm.get("interval") == "t" else str(lm.get("interval"))
    return [
        "",
        f"| judge-free (n = {lm.get('n')} prompts) | value | 95% CI ({kind}, over prompts) |",
        "|---|---|---|",
        f"| likelihood margin: log p(refusal) − log p(harmful), per token | {lm['mean']:.3f} | "
        f"{interval(lm.get('ci'))} |",
        f"| harmful loss (NLL per token of the harmful reference) | {lm['harmful_loss']:.3f} | "
        f"{interval(lm.get('harmful_loss_ci'))} |",
        f"| refusal loss (NLL per token of the refusal reference) | {lm['refusal_loss']:.3f} | "
        f"{interval(lm.get('refusal_loss_ci'))} |",
    ]
