"""The report's check of the training behind its numbers: alignment and fine-tuning stages whose
loss rose (hftguard/pipeline/trend.py), so that a row whose defense's training diverged is not
read as a test of the defense.

The trend comes from the stage's manifest (``training.loss_trend``) or, for runs written before
hftguard recorded it, from the stage's step log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard.pipeline import trend
from hftguard.pipeline.report.collection import shown

#: (the stage as the report names it, its step log's prefix), for aligned_dir and attacked_dir
_STAGES = (("alignment", "align"), ("fine-tuning", "finetune"))


@dataclass
class NotConverged:
    """One training stage whose loss rose, and the report rows that use its model."""

    stage: str  # "alignment" | "fine-tuning"
    run_dir: Path
    defense: str | None
    key: str
    state: Any
    first: float
    last: float
    steps: int
    window: int
    labels: list[str] = field(default_factory=list)

    def text(self) -> str:
        which = self.key if self.state is None else f"{self.key} (state {self.state:g})"
        used, where = ", ".join(self.labels), shown(self.run_dir)
        return (
            f"{self.stage} `{self.defense or '?'}` ({where}), used by {used}: {which} rose "
            f"from {self.first:.4g} to {self.last:.4g} (medians of the first and last "
            f"{self.window} of {self.steps} steps)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "run_dir": shown(self.run_dir),
            "defense": self.defense,
            "key": self.key,
            "state": self.state,
            "first": self.first,
            "last": self.last,
            "steps": self.steps,
            "window": self.window,
            "labels": self.labels,
        }


def manifest_of(run_dir: Path) -> dict[str, Any]:
    """A run directory's manifest, or {} when it is missing or unreadable."""
    try:
        data = json.loads((run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_trend(run_dir: Path, log_stage: str) -> tuple[list[dict[str, Any]], str | None]:
    """The run's loss trend (its manifest's, else computed from its log) and its defense."""
    m = manifest_of(run_dir)
    recorded = (m.get("training") or {}).get("loss_trend")
    defense = (m.get("config") or {}).get("defense")
    if isinstance(recorded, list):
        return recorded, defense
    return trend.loss_trend(trend.read_log(run_dir / f"{log_stage}_log.jsonl")), defense


def not_converged(runs: list[Any], row_labels: dict[int, str] | None = None) -> list[NotConverged]:
    """Every alignment and fine-tuning stage behind ``runs`` (evaluation runs of the report's
    collection) whose loss rose, once each, with the labels of the rows that use it
    (``row_labels``: the report row of each attacked run, by ``id``; else its label with its
    variant)."""
    found: dict[tuple[str, Path], list[NotConverged]] = {}
    checked: set[tuple[str, Path]] = set()
    for r in runs:
        for (stage, log_stage), run_dir in zip(
            _STAGES, (r.aligned_dir, r.attacked_dir), strict=True
        ):
            if run_dir is None:
                continue
            key = (stage, Path(run_dir))
            if key not in checked:
                checked.add(key)
                trends, defense = stage_trend(Path(run_dir), log_stage)
                found[key] = [
                    NotConverged(
                        stage,
                        Path(run_dir),
                        defense,
                        t["key"],
                        t.get("state"),
                        float(t["first"]),
                        float(t["last"]),
                        int(t["steps"]),
                        int(t["window"]),
                    )
                    for t in trends
                    if t.get("rose")
                ]
            label = (row_labels or {}).get(id(r)) or (r.variant_text if r.label else r.method)
            for item in found[key]:
                if label not in item.labels:
                    item.labels.append(label)
    return [item for items in found.values() for item in items]
