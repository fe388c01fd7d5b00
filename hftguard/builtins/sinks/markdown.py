"""Writes an evaluation's headline metrics as a small markdown table (``metrics.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftguard.components import ReportSink
from hftguard.runs import atomic_write_text


class MarkdownSink(ReportSink):
    """Write metrics.md beside metrics.json: one row per metric, human-readable."""

    name = "markdown"
    version = "1"

    def write(self, run_dir: Any, metrics: dict[str, Any]) -> None:
        rows = ["| metric | value |", "|---|---|"]
        for key in ("harmful_score", "harmful_score_plus", "over_refusal_rate", "degenerate_rate"):
            if metrics.get(key) is not None:
                rows.append(f"| {key} | {metrics[key]:.2f} |")
        for task, acc in (metrics.get("finetune_accuracy") or {}).items():
            rows.append(f"| finetune_accuracy[{task}] | {acc:.2f} |")
        atomic_write_text(Path(run_dir) / "metrics.md", "\n".join(rows) + "\n")
