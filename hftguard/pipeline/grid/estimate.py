"""What is left of a grid, and about how long it takes: the estimate under ``hftguard run
--dry-run``'s plan. Reads only.

Left: every training stage (alignment, fine-tuning) that is not done, with the steps it still has
to run (an unfinished stage resumes from its last checkpoint, ``checkpoints/step-NNNNNNN``), and
every evaluation that is not done. The time per step is measured on the grid itself: the median,
over the grid's training runs of the same stage and defense, of each run's median ``step_time``
in its step log. A defense with no step measured yet is scaled from SFT's measured step by its
declared pass count (``passes``, the cost model ``hftguard bench`` checks); an evaluation takes
the median wall time of the grid's finished evaluations. What cannot be measured or scaled (no
step at all measured for a stage, a stage given in epochs that has never run, repairs) is named,
not guessed.

The estimate is for one process like the ones that ran the measured steps (same machine, same
threads, the same contention): two processes on one grid share its work, but not necessarily at
twice the speed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.errors import HftguardError
from hftguard.pipeline import trend
from hftguard.pipeline.grid.layout import Layout, stage_state
from hftguard.pipeline.grid.spec import NO_ALIGN, Grid
from hftguard.runs import is_run_dir, read_manifest

#: the stage as the plan names it -> the step log's prefix and the registry's component kind
_KIND = {"align": "alignment-defense", "finetune": "finetune-defense"}


@dataclass
class Left:
    """The unfinished training runs of one stage and defense."""

    stage: str  # "align" | "finetune"
    defense: str
    runs: int = 0
    steps: int = 0
    unknown_steps: int = 0  # runs whose step count is not known (epochs, never run)
    s_per_step: float | None = None
    basis: str | None = None  # "measured" | "passes" | None

    @property
    def seconds(self) -> float | None:
        if self.s_per_step is None:
            return None
        return self.steps * self.s_per_step

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "defense": self.defense,
            "runs": self.runs,
            "steps": self.steps,
            "runs_with_unknown_steps": self.unknown_steps,
            "s_per_step": self.s_per_step,
            "basis": self.basis,
            "seconds": self.seconds,
        }


def _run_median_step(run_dir: Path, stage: str) -> float | None:
    times = trend.step_times(run_dir / f"{stage}_log.jsonl")
    return statistics.median(times) if times else None


def steps_done(run_dir: Path) -> int:
    """The steps an unfinished run resumes after: its last checkpoint's (0 without one)."""
    steps = []
    for p in (run_dir / "checkpoints").glob("step-*"):
        try:
            steps.append(int(p.name.removeprefix("step-")))
        except ValueError:
            continue
    return max(steps, default=0)


def _eval_seconds(path: Path) -> float | None:
    if not is_run_dir(path):
        return None
    try:
        m = read_manifest(path)
    except HftguardError:  # a damaged manifest simply measures nothing
        return None
    return _wall_time(m)


def _wall_time(manifest: dict[str, Any]) -> float | None:
    """A finished run's wall time from its manifest; None while unfinished or unrecorded."""
    seconds = manifest.get("wall_time_s")
    done = manifest.get("status") == "completed"
    return float(seconds) if done and isinstance(seconds, (int, float)) else None


def _passes(registry: Any, stage: str, name: str) -> float | None:
    if registry is None:
        return None
    try:
        return float(registry.get(_KIND[stage], name).cls.passes)
    except Exception:  # an unknown defense, or a plugin without passes: no scaling
        return None


def measured_in(
    dirs: Sequence[str | Path],
) -> tuple[dict[tuple[str, str], list[float]], list[float]]:
    """Step times (each training run's median, by stage and defense) and finished evaluations'
    wall times found in other run directories (``--timings-from``: a grid that ran on this
    machine), for a grid that has measured nothing yet."""
    steps: dict[tuple[str, str], list[float]] = {}
    evals: list[float] = []
    for root in dirs:
        for mpath in sorted(Path(root).rglob("manifest.json")):
            try:
                m = read_manifest(mpath.parent)
            except HftguardError:
                continue
            stage, defense = m.get("stage"), (m.get("config") or {}).get("defense")
            if stage in _KIND and isinstance(defense, str):
                med = _run_median_step(mpath.parent, stage)
                if med is not None:
                    steps.setdefault((stage, defense), []).append(med)
            elif stage == "eval" and (seconds := _wall_time(m)) is not None:
                evals.append(seconds)
    return steps, evals


def estimate(
    grid: Grid, out: str | Path, registry: Any = None, timings_from: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """The work left in ``grid`` under ``out`` and its estimated time (see the module doc).
    ``timings_from``: other run directories whose measurements count where this grid has none
    of its own (basis ``elsewhere``)."""
    lay = Layout(Path(out), grid)
    measured: dict[tuple[str, str], list[float]] = {}
    left: dict[tuple[str, str], Left] = {}
    eval_times: list[float] = []
    evals_left = repairs_left = 0

    def training(stage: str, defense: str, path: Path, state: str, max_steps: int) -> None:
        med = _run_median_step(path, stage) if is_run_dir(path) else None
        if med is not None:
            measured.setdefault((stage, defense), []).append(med)
        if state == "done":
            return
        item = left.setdefault((stage, defense), Left(stage, defense))
        item.runs += 1
        if max_steps <= 0:
            item.unknown_steps += 1
            return
        resumes = state == "unfinished"
        item.steps += max_steps - (min(steps_done(path), max_steps) if resumes else 0)

    def evaluation(path: Path, state: str) -> None:
        nonlocal evals_left
        seconds = _eval_seconds(path)
        if seconds is not None:
            eval_times.append(seconds)
        if state != "done":
            evals_left += 1

    if grid.base.evaluate_base:
        base = grid.base.align.model
        evaluation(lay.base_eval(), stage_state(lay.base_eval(), grid.eval_config(base)))
    for (align_name, seed), cells in grid.groups():
        start, upstream = grid.base.align.model, None
        if align_name != NO_ALIGN:
            upstream = lay.aligned(align_name, seed)
            acfg = grid.align_config(align_name, seed)
            training(
                "align", acfg.defense, upstream, stage_state(upstream, acfg), acfg.train.max_steps
            )
            start = lay.rel(upstream)
            ev = lay.aligned_eval(align_name, seed)
            evaluation(ev, stage_state(ev, grid.eval_config(start), upstream, lay.root))
        root = lay.root if upstream is not None else None
        seen: set[Path] = set()
        for cell in cells:
            attacked = lay.attacked(cell)
            if attacked not in seen:  # shared by the cells that differ only in their repair
                seen.add(attacked)
                fcfg = grid.finetune_config(cell, start)
                state = stage_state(attacked, fcfg, upstream, root)
                training("finetune", fcfg.defense, attacked, state, fcfg.train.max_steps)
            evaluated = attacked
            if cell.repair:
                evaluated = lay.repaired(cell)
                rcfg = grid.repair_config(cell, lay.rel(attacked))
                if stage_state(evaluated, rcfg, attacked, lay.root) != "done":
                    repairs_left += 1
            ev = lay.cell_eval(cell)
            ecfg = grid.cell_eval_config(cell, lay.rel(evaluated))
            evaluation(ev, stage_state(ev, ecfg, evaluated, lay.root))

    other_steps, other_evals = measured_in(timings_from) if timings_from else ({}, [])
    for (stage, defense), item in left.items():
        for source, basis in ((measured, "measured"), (other_steps, "elsewhere")):
            if (stage, defense) in source:
                item.s_per_step, item.basis = statistics.median(source[(stage, defense)]), basis
                break
        else:
            sft = measured.get((stage, "sft")) or other_steps.get((stage, "sft"))
            ratio = _passes(registry, stage, defense)
            base_passes = _passes(registry, stage, "sft")
            if sft and ratio is not None and base_passes:
                item.s_per_step = statistics.median(sft) * ratio / base_passes
                item.basis = "passes"
    eval_times = eval_times or other_evals
    eval_s = statistics.median(eval_times) if eval_times else None
    items = list(left.values())
    evals = None if eval_s is None else eval_s * evals_left
    parts = [i.seconds for i in items] + ([evals] if evals_left else [])
    known = [s for s in parts if s is not None]
    return {
        "training": [i.as_dict() for i in items],
        "evaluations_left": evals_left,
        "eval_seconds": eval_s,
        "repairs_left": repairs_left,
        "seconds": sum(known) if known else None,
        "complete": len(known) == len(parts)
        and not any(i.unknown_steps for i in items)
        and not repairs_left,
    }


def _hours(seconds: float) -> str:
    if seconds < 60:  # an evaluation on a GPU: seconds, not "0 min"
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def describe(est: dict[str, Any]) -> list[str]:
    """The estimate as lines of text for the dry-run."""
    items, n_eval = est["training"], est["evaluations_left"]
    if not items and not n_eval and not est["repairs_left"]:
        return ["Nothing is left: re-running this grid does no work."]
    lines = []
    names = {"align": "alignment", "finetune": "fine-tuning"}
    for i in items:
        what = f"{names[i['stage']]} {i['defense']}: {i['runs']} run(s), {i['steps']} steps left"
        if i["runs_with_unknown_steps"]:
            what += f" (+{i['runs_with_unknown_steps']} run(s) in epochs, steps not known)"
        if i["s_per_step"] is None:
            what += ", no step time measured yet (here or in --timings-from)"
        else:
            how = {
                "measured": "measured here",
                "elsewhere": "measured in --timings-from",
                "passes": "SFT's × its passes",
            }[i["basis"]]
            what += f" × {i['s_per_step']:.2f} s ({how}) ≈ {_hours(i['seconds'])}"
        lines.append(what)
    if n_eval:
        what = f"evaluations: {n_eval} left"
        if est["eval_seconds"] is None:
            what += ", none finished here yet to time"
        else:
            what += f" × {_hours(est['eval_seconds'])} ≈ {_hours(n_eval * est['eval_seconds'])}"
        lines.append(what)
    if est["repairs_left"]:
        lines.append(f"repairs: {est['repairs_left']} left, not timed")
    if est["seconds"] is not None:
        total = _hours(est["seconds"])
        lines.append(
            f"In all ≈ {total} for one process like the ones that ran here"
            + ("" if est["complete"] else " (a lower bound: some work above is not timed)")
        )
    return lines
