"""What the report's numbers cost: the time each row spent in alignment, fine-tuning and
evaluation, read from the runs on disk.

Training time is the sum of the per-step wall times in the stage's step log (``step_time``, one
line per step; a resumed run's log keeps only the steps its checkpoint covers, so a re-run step
counts once). It leaves out loading, checkpoints and the analysis probes, and it is the same
whether the run finished in one go or over several resumes. An evaluation's time is its
manifest's ``wall_time_s``: for a resumed evaluation, the last run only. The machines are the
ones the stages' manifests name; timings from different machines, or from a machine shared with
other jobs, are not comparable with each other.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard.pipeline import trend
from hftguard.pipeline.report.collection import shown
from hftguard.pipeline.report.convergence import manifest_of

#: (the stage as the report names it, its step log's prefix), for aligned_dir and attacked_dir
_TRAINING = (("alignment", "align"), ("fine-tuning", "finetune"))


@dataclass
class StageTime:
    """One stage's run directory and the time it took."""

    stage: str  # "alignment" | "fine-tuning" | "evaluation"
    run_dir: Path
    seconds: float
    steps: int = 0  # training steps in the step log (0 for an evaluation)
    median_step: float | None = None  # median seconds per training step
    machine: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "run_dir": shown(self.run_dir),
            "seconds": round(self.seconds, 2),
            "steps": self.steps,
            "median_step_s": None if self.median_step is None else round(self.median_step, 3),
            "machine": self.machine,
        }


@dataclass
class Cost:
    """One report row's stages, each run directory once."""

    label: str
    method: str
    stages: dict[str, list[StageTime]] = field(default_factory=dict)

    def of(self, stage: str) -> list[StageTime]:
        return self.stages.get(stage, [])

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "method": self.method}
        for stage in ("alignment", "fine-tuning", "evaluation"):
            items = self.of(stage)
            out[stage] = {
                "runs": len(items),
                "mean_seconds": mean_seconds(items),
                "median_step_s": median_step(items),
                "each": [t.as_dict() for t in items],
            }
        return out


def mean_seconds(items: list[StageTime]) -> float | None:
    """The mean time of the runs, in seconds."""
    return round(sum(t.seconds for t in items) / len(items), 2) if items else None


def median_step(items: list[StageTime]) -> float | None:
    """The median over the runs of their median seconds per training step."""
    steps = [t.median_step for t in items if t.median_step is not None]
    return round(statistics.median(steps), 3) if steps else None


def _machine(manifest: dict[str, Any]) -> str | None:
    host = manifest.get("host") or {}
    if not isinstance(host, dict) or not host:
        return None
    threads = host.get("torch_threads")  # recorded since 2026-11-26 (eighth session)
    parts = [f"{host.get('cpus')} CPUs"]
    if threads is not None:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    device = str(manifest.get("device") or "?")
    card = host.get("accelerator")  # recorded since 2026-11-27 (ninth session)
    parts.append(f"{device}: {card}" if card and device.startswith("cuda") else device)
    return f"{host.get('node', '?')} ({', '.join(parts)})"


def training_time(run_dir: Path, stage: str, log_stage: str) -> StageTime | None:
    """The summed step times of a training run, or None when its step log has no timed step."""
    times = trend.step_times(run_dir / f"{log_stage}_log.jsonl")
    if not times:
        return None
    return StageTime(
        stage,
        run_dir,
        sum(times),
        len(times),
        statistics.median(times),
        _machine(manifest_of(run_dir)),
    )


def eval_time(run: Any) -> StageTime | None:
    seconds = run.manifest.get("wall_time_s")
    if not isinstance(seconds, (int, float)):
        return None
    return StageTime("evaluation", Path(run.path), float(seconds), machine=_machine(run.manifest))


def costs(runs: list[Any], row_labels: dict[int, str] | None = None) -> list[Cost]:
    """Per report row (``row_labels``: each attacked run's row label, by ``id``; else its label
    with its variant), in order of first appearance: its alignment, fine-tuning and evaluation
    runs, each directory read and counted once. Rows that differ in an attack setting are
    timed apart (200 steps do not cost what 400 do)."""
    out: dict[str, Cost] = {}
    seen: set[tuple[str, str, Path]] = set()
    for r in runs:
        if r.kind != "attacked":
            continue
        label = (row_labels or {}).get(id(r)) or (r.variant_text if r.label else r.method)
        cost = out.setdefault(label, Cost(label, r.method))
        todo = [
            (stage, Path(d), log_stage)
            for (stage, log_stage), d in zip(
                _TRAINING, (r.aligned_dir, r.attacked_dir), strict=True
            )
            if d is not None
        ] + [("evaluation", Path(r.path), None)]
        for stage, run_dir, log_stage in todo:
            if (label, stage, run_dir) in seen:
                continue
            seen.add((label, stage, run_dir))
            item = eval_time(r) if log_stage is None else training_time(run_dir, stage, log_stage)
            if item is not None:
                cost.stages.setdefault(stage, []).append(item)
    return [c for c in out.values() if c.stages]


def machines(items: list[Cost]) -> list[str]:
    """The machines the stages ran on, as their manifests name them."""
    found = {
        t.machine for c in items for ts in c.stages.values() for t in ts if t.machine is not None
    }
    return sorted(found)
