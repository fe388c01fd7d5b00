"""What is left of a grid, and about how long it takes: the estimate under ``hftguard run
--dry-run``'s plan. Reads only.

Left: every training stage (alignment, fine-tuning) that is not done, with the steps it still has
to run (an unfinished stage resumes from its last checkpoint, ``checkpoints/step-NNNNNNN``), every
repair and every evaluation that is not done. The time per step is measured on the grid itself:
the median, over the grid's training runs of the same stage and defense, of each run's median
``step_time`` in its step log. Each run also costs what its steps do not: loading the model, a
defense's one-time set-up (EWC's Fisher, an alignment's self-distilled retain set), the analysis
probes, the saves. That is measured too, per stage and defense, as the median over finished
runs that ran in one go (no ``resumed_at``) of the time from ``started_at`` to ``ended_at`` less
the steps at their median time (so a set-up inside the first step counts: EWC's Fisher); a
defense whose runs have not measured it takes SFT's (a lower bound).

A defense with no step measured yet is scaled from SFT's measured step by a ratio: the one a
``hftguard bench --json`` file in ``--timings-from`` measured for it against SFT (same stage, same
model), or else its declared pass count (``passes``, the cost model ``hftguard bench`` checks),
which can be far low where a defense's cost is not in forward/backward passes (RepNoise's logit
lens: 7x SFT on SmolLM2, against 2 passes; docs/performance.md). A repair and an evaluation take
the median wall time of the grid's finished ones (repairs by defense). What cannot be measured or
scaled (no step at all measured for a stage, a stage given in epochs that has never run, a repair
defense that never ran) is named, not guessed.

The estimate is for one process like the ones that ran the measured steps (same machine, same
threads, the same contention): two processes on one grid share its work, but not necessarily at
twice the speed.

Where this plan has measured nothing for a stage and defense (a grid narrowed by ``--set`` to a
ratio or seeds not run yet), the finished runs elsewhere under the same ``--out`` count (basis
``beside``), before any ``--timings-from``: the p = 0.2 cells' step time stands for the p = 0.1
cells' (a dry-run of calibrated-small's p = 0.1 column once showed "no step time measured yet"
and a 16-minute lower bound beside a grid that had timed every stage).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.errors import ConfigError, HftguardError
from hftguard.pipeline import trend
from hftguard.pipeline.grid.layout import Layout, stage_state
from hftguard.pipeline.grid.spec import NO_ALIGN, Grid
from hftguard.runs import is_run_dir, read_manifest, set_aside

#: the stage as the plan names it -> the step log's prefix and the registry's component kind
_KIND = {"align": "alignment-defense", "finetune": "finetune-defense"}


class _Row:
    """A row of the estimate: its fields and ``seconds`` (None where a rate is not known), as
    the JSON of ``hftguard run --dry-run --json`` writes them."""

    @property
    def seconds(self) -> float | None:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seconds": self.seconds}  # type: ignore[call-overload]


@dataclass
class Left(_Row):
    """The unfinished training runs of one stage and defense."""

    stage: str  # "align" | "finetune"
    defense: str
    runs: int = 0
    steps: int = 0
    runs_with_unknown_steps: int = 0  # runs whose step count is not known (epochs, never run)
    s_per_step: float | None = None
    basis: str | None = None  # "measured" | "beside" | "elsewhere" | "bench" | "passes" | None
    s_per_run: float | None = None  # measured cost of a run beyond its steps (set-up, saves)
    #: "measured" | "beside" | "elsewhere" | "sft" (SFT's, a lower bound) | None
    run_basis: str | None = None
    note: str = ""  # with basis "passes": what the defense's passes leave out (passes_note)

    @property
    def seconds(self) -> float | None:
        if self.s_per_step is None:
            return None
        return self.steps * self.s_per_step + self.runs * (self.s_per_run or 0.0)


@dataclass
class RepairsLeft(_Row):
    """The repairs of one defense that are not done."""

    defense: str
    runs: int = 0
    s_per_run: float | None = None
    basis: str | None = None  # "measured" | "beside" | "elsewhere" | None

    @property
    def seconds(self) -> float | None:
        return None if self.s_per_run is None else self.runs * self.s_per_run


@dataclass
class Timings:
    """What finished runs measured: step times (each training run's median) and the cost of a
    run beyond its steps, by stage and defense; repairs' wall times by defense; evaluations'."""

    steps: dict[tuple[str, str], list[float]]
    per_run: dict[tuple[str, str], list[float]]
    repairs: dict[str, list[float]]
    evals: list[float]

    @classmethod
    def empty(cls) -> Timings:
        return cls({}, {}, {}, [])

    def add_training(self, stage: str, defense: str, path: Path) -> None:
        med = _run_median_step(path, stage)
        if med is not None:
            self.steps.setdefault((stage, defense), []).append(med)
        if (extra := _beyond_steps(path, stage)) is not None:
            self.per_run.setdefault((stage, defense), []).append(extra)


def _run_median_step(run_dir: Path, stage: str) -> float | None:
    times = trend.step_times(run_dir / f"{stage}_log.jsonl")
    return statistics.median(times) if times else None


def _beyond_steps(run_dir: Path, stage: str) -> float | None:
    """A finished run's time from ``started_at`` (the run directory opened, before its data, a
    retain set, the model) to ``ended_at``, less its steps at their median step time: what it
    cost beyond its steps as the estimate counts them. None for a run resumed (its times span
    invocations, its log every step) or unfinished, or one without a log or those times."""
    import datetime as dt

    try:
        m = read_manifest(run_dir)
        start, end = (dt.datetime.fromisoformat(m[k]) for k in ("started_at", "ended_at"))
    except (HftguardError, KeyError, TypeError, ValueError):
        return None
    times = trend.step_times(run_dir / f"{stage}_log.jsonl")
    if m.get("status") != "completed" or "resumed_at" in m or not times:
        return None
    # less the steps at their median time, as the estimate counts them: a one-time set-up run
    # inside the first step (EWC's Fisher: 41 min in one step on SmolLM2) counts as set-up
    return max(0.0, (end - start).total_seconds() - len(times) * statistics.median(times))


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


def _passes_note(registry: Any, stage: str, name: str) -> str:
    try:
        return str(getattr(registry.get(_KIND[stage], name).cls, "passes_note", "") or "")
    except Exception:  # as _passes
        return ""


def measured_in(dirs: Sequence[str | Path], skip: frozenset[Path] = frozenset()) -> Timings:
    """What the finished runs in other run directories measured (``--timings-from``: a grid
    that ran on this machine; the rest of a plan's own ``--out``), for a grid that has not
    measured it yet. Runs kept aside (``--overwrite``'s hidden copies, ``hftguard rejudge``'s
    backups) are not runs of their own; ``skip``: run directories already counted."""
    found = Timings.empty()
    for root in map(Path, dirs):
        for mpath in sorted(root.rglob("manifest.json")):
            if mpath.parent in skip or set_aside(root, mpath):
                continue
            try:
                m = read_manifest(mpath.parent)
            except HftguardError:
                continue
            stage, defense = m.get("stage"), (m.get("config") or {}).get("defense")
            if stage in _KIND and isinstance(defense, str):
                found.add_training(stage, defense, mpath.parent)
            elif stage == "repair" and isinstance(defense, str):
                if (seconds := _wall_time(m)) is not None:
                    found.repairs.setdefault(defense, []).append(seconds)
            elif stage == "eval" and (seconds := _wall_time(m)) is not None:
                found.evals.append(seconds)
    return found


def bench_ratios(path: str | Path) -> tuple[str, dict[tuple[str, str], float]]:
    """The model a ``hftguard bench --json`` file timed, and each defense's measured step time
    over SFT's (``ratio_to_sft``), by stage and defense."""
    import json

    where = f"--timings-from {path}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{where}: cannot read it as JSON ({exc}).",
            hint="Give a grid's --out directory, or the file `hftguard bench --json` (or "
            "--out) wrote.",
        ) from None
    if not isinstance(data, dict):
        data = {}
    rows, model = data.get("defenses"), (data.get("model") or {}).get("name")
    if "runs" in data:
        raise ConfigError(
            f"{where}: this bench compared several precisions; its ratios differ by precision.",
            hint="Run `hftguard bench` with the one precision the grid runs in, and give that "
            "file.",
        )
    if not isinstance(rows, list) or not isinstance(model, str):
        raise ConfigError(
            f"{where}: not a `hftguard bench` result (no 'defenses' rows or no 'model').",
            hint="Give a grid's --out directory, or the file `hftguard bench --json` (or "
            "--out) wrote.",
        )
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if not isinstance(r, dict):
            continue
        ratio = r.get("ratio_to_sft")
        if r.get("stage") in _KIND and isinstance(ratio, (int, float)) and ratio > 0:
            ratios.setdefault((r["stage"], str(r.get("defense"))), []).append(float(ratio))
    return model, {k: statistics.median(v) for k, v in ratios.items()}


def bench_setting(path: str | Path) -> tuple[str, str] | None:
    """The device type and dtype a ``hftguard bench`` file measured in (``cuda``, ``bfloat16``),
    from its ``environment``; None where it does not say (a file :func:`bench_ratios` read)."""
    import json

    env = json.loads(Path(path).read_text()).get("environment")
    if not isinstance(env, dict):
        return None
    device, dtype = env.get("device"), env.get("dtype")
    if not isinstance(device, str) or not isinstance(dtype, str):
        return None
    return device.split(":")[0], dtype


_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def training_setting(train: Any) -> tuple[str, str]:
    """The device type and dtype a stage with options ``train`` trains in on this machine."""
    from hftguard.engine import models

    device = models.pick_device(train.device)
    dtype, _ = models.precision_choice(train.precision, device)
    return device.type, str(dtype).removeprefix("torch.")


def _same_model(a: str, b: str) -> bool:
    """Two model specs name one model: the same alias or hub id, or paths to one directory."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def estimate(
    grid: Grid, out: str | Path, registry: Any = None, timings_from: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """The work left in ``grid`` under ``out`` and its estimated time (see the module doc).
    ``timings_from``: other run directories whose measurements count where this grid has none
    of its own (basis ``elsewhere``), and ``hftguard bench --json`` files whose ratios to SFT
    scale SFT's step where a defense has no step measured (basis ``bench``)."""
    lay = Layout(Path(out), grid)
    here = Timings.empty()
    left: dict[tuple[str, str], Left] = {}
    repairs: dict[str, RepairsLeft] = {}
    evals_left = 0
    seen_runs: set[Path] = set()  # the plan's run directories, measured here already

    def training(stage: str, defense: str, path: Path, state: str, max_steps: int) -> None:
        seen_runs.add(path)
        if is_run_dir(path):
            here.add_training(stage, defense, path)
        if state == "done":
            return
        item = left.setdefault((stage, defense), Left(stage, defense))
        item.runs += 1
        if max_steps <= 0:
            item.runs_with_unknown_steps += 1
            return
        resumes = state == "unfinished"
        item.steps += max_steps - (min(steps_done(path), max_steps) if resumes else 0)

    def evaluation(path: Path, state: str) -> None:
        nonlocal evals_left
        seen_runs.add(path)
        seconds = _eval_seconds(path)
        if seconds is not None:
            here.evals.append(seconds)
        if state != "done":
            evals_left += 1

    def repair(defense: str, path: Path, state: str) -> None:
        seen_runs.add(path)
        if (seconds := _eval_seconds(path)) is not None:  # any finished run's wall time
            here.repairs.setdefault(defense, []).append(seconds)
        if state != "done":
            repairs.setdefault(defense, RepairsLeft(defense)).runs += 1

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
                repair(rcfg.defense, evaluated, stage_state(evaluated, rcfg, attacked, lay.root))
            ev = lay.cell_eval(cell)
            ecfg = grid.cell_eval_config(cell, lay.rel(evaluated))
            evaluation(ev, stage_state(ev, ecfg, evaluated, lay.root))

    # the runs under --out that this plan does not name (a grid narrowed by --set to other
    # seeds or ratios): same directory, most likely the same machine; before --timings-from
    beside = measured_in([lay.root], frozenset(seen_runs)) if lay.root.is_dir() else Timings.empty()
    dirs = [d for d in timings_from if not Path(d).is_file()]
    other = measured_in(dirs) if dirs else Timings.empty()
    bench: dict[tuple[str, str], float] = {}
    for f in (f for f in timings_from if Path(f).is_file()):
        model, ratios = bench_ratios(f)
        if not _same_model(model, grid.base.align.model):
            raise ConfigError(
                f"--timings-from {f}: that bench timed {model}; this grid trains "
                f"{grid.base.align.model}. A defense's cost relative to SFT depends on the model "
                "(RepNoise's logit lens on a large vocabulary).",
                hint=f"Run `hftguard bench --model {grid.base.align.model} --json` on this "
                "machine, or leave the file out.",
            )
        measured_in_setting = bench_setting(f)
        for stage, train in (
            ("align", grid.base.align.train),
            ("finetune", grid.base.finetune.train),
        ):
            setting = training_setting(train)
            if measured_in_setting is not None and measured_in_setting != setting:
                raise ConfigError(
                    f"--timings-from {f}: that bench ran in {measured_in_setting[1]} on "
                    f"{measured_in_setting[0]}; this grid's {stage} stage trains in {setting[1]} "
                    f"on {setting[0]} here. A defense's cost relative to SFT depends on both "
                    "(a full-vocabulary softmax is cheaper on a GPU, bf16 matmuls on a CPU).",
                    hint=f"Run `hftguard bench --model {grid.base.align.model} --precision "
                    f"{_PRECISION.get(setting[1], 'auto')} --json` on the machine "
                    "the grid runs on, or leave the file out.",
                )
        bench.update(ratios)
    for (stage, defense), item in left.items():
        for source, basis in (
            (here.steps, "measured"),
            (beside.steps, "beside"),
            (other.steps, "elsewhere"),
        ):
            if (stage, defense) in source:
                item.s_per_step, item.basis = statistics.median(source[(stage, defense)]), basis
                break
        else:
            sft = (
                here.steps.get((stage, "sft"))
                or beside.steps.get((stage, "sft"))
                or other.steps.get((stage, "sft"))
            )
            if sft and (stage, defense) in bench and (stage, "sft") in bench:
                ratio = bench[(stage, defense)] / bench[(stage, "sft")]
                item.s_per_step, item.basis = statistics.median(sft) * ratio, "bench"
            elif (
                sft
                and (passes := _passes(registry, stage, defense)) is not None
                and (base_passes := _passes(registry, stage, "sft"))
            ):
                item.s_per_step = statistics.median(sft) * passes / base_passes
                item.basis = "passes"
                item.note = _passes_note(registry, stage, defense)
        for source, basis, key in (
            (here.per_run, "measured", (stage, defense)),
            (beside.per_run, "beside", (stage, defense)),
            (other.per_run, "elsewhere", (stage, defense)),
            (here.per_run, "sft", (stage, "sft")),  # a defense's own set-up not measured yet:
            (beside.per_run, "sft", (stage, "sft")),  # SFT's, a lower bound (EWC's Fisher...)
            (other.per_run, "sft", (stage, "sft")),
        ):
            if key in source:
                item.s_per_run, item.run_basis = statistics.median(source[key]), basis
                break
    for name, rep in repairs.items():
        for source, basis in (
            (here.repairs, "measured"),
            (beside.repairs, "beside"),
            (other.repairs, "elsewhere"),
        ):
            if name in source:
                rep.s_per_run, rep.basis = statistics.median(source[name]), basis
                break
    eval_times = here.evals or beside.evals or other.evals
    eval_s = statistics.median(eval_times) if eval_times else None
    items = list(left.values())
    evals = None if eval_s is None else eval_s * evals_left
    parts = [i.seconds for i in items] + [r.seconds for r in repairs.values()]
    parts += [evals] if evals_left else []
    known = [s for s in parts if s is not None]
    return {
        "training": [i.as_dict() for i in items],
        "evaluations_left": evals_left,
        "eval_seconds": eval_s,
        "repairs_left": sum(r.runs for r in repairs.values()),
        "repairs": [r.as_dict() for r in repairs.values()],
        "seconds": sum(known) if known else None,
        "complete": len(known) == len(parts)
        and not any(i.runs_with_unknown_steps for i in items)
        and all(i.run_basis in ("measured", "beside", "elsewhere") for i in items),
    }


def _hours(seconds: float) -> str:
    if seconds < 60:  # an evaluation on a GPU: seconds, not "0 min"
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


_HOW = {
    "measured": "measured here",
    "beside": "measured under --out, outside this plan",
    "elsewhere": "measured in --timings-from",
    "bench": "SFT's × the bench's ratio",
    "passes": "SFT's × its passes",
}


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
            what += f" × {i['s_per_step']:.2f} s ({_HOW[i['basis']]})"
            if i["s_per_run"] is not None:
                what += f" + {_hours(i['s_per_run'])} a run beyond its steps" + (
                    " (SFT's)" if i["run_basis"] == "sft" else ""
                )
            else:
                what += " + a run's set-up, not measured yet"
            what += f" ≈ {_hours(i['seconds'])}"
            if i["basis"] == "passes" and i.get("note"):
                what += f" ({i['note']}; `hftguard bench --json` measures it: --timings-from)"
        lines.append(what)
    if n_eval:
        what = f"evaluations: {n_eval} left"
        if est["eval_seconds"] is None:
            what += ", none finished here yet to time"
        else:
            what += f" × {_hours(est['eval_seconds'])} ≈ {_hours(n_eval * est['eval_seconds'])}"
        lines.append(what)
    for r in est.get("repairs", []):
        what = f"repair {r['defense']}: {r['runs']} left"
        if r["s_per_run"] is None:
            what += ", none finished here yet to time"
        else:
            what += f" × {_hours(r['s_per_run'])} ({_HOW[r['basis']]}) ≈ {_hours(r['seconds'])}"
        lines.append(what)
    if est["seconds"] is not None:
        total = _hours(est["seconds"])
        lines.append(
            f"In all ≈ {total} for one process like the ones that ran here"
            + ("" if est["complete"] else " (a lower bound: some work above is not timed)")
        )
    return lines
