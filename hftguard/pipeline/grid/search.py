"""``hftguard search``: successive halving over the attack settings of a grid (#19).

Why: a grid's attack axes are coarse, and sweeping every setting at the full budget costs the
whole product. Successive halving spends the budget where the attack is strongest: every
candidate setting (the product of ``[grid.attack]`` without ``max_steps``) is trained with the
smallest step budget, the best ``1/eta`` of them (highest HS among those that keep FA at least
``fa_bound``) go on to the next budget, and so on up to the largest. The step budgets ("rungs")
are the values of ``[grid.attack] max_steps``, in ascending order.

Every trial is an ordinary grid cell (its attack setting includes its ``max_steps``), run with
:func:`hftguard.pipeline.grid.run` into the same ``--out``: trials are resumable, cached, shared
(one aligned model per alignment defense), and re-running the search does no finished work. The
selection is deterministic from the trials' metrics, so a re-run makes the same choices. At the
end the grid manifest lists every trial (``hftguard report OUT`` reports them all, with the worst
case over settings), and ``OUT/search.json`` records each rung's trials, scores and survivors.

Each defense (method) at each p, n and task is searched on its own; a setting's HS and FA are
means over the grid's seeds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from hftguard.console import Reporter
from hftguard.errors import ConfigError
from hftguard.pipeline.grid.runner import run as run_grid
from hftguard.pipeline.grid.spec import ATTACK_KEYS, Cell, Grid
from hftguard.registry import Registry
from hftguard.runs import atomic_write_json, now

SEARCH_FILE = "search.json"


def _group(cell: Cell) -> tuple[Any, ...]:
    """What one search is over: a defense at one p, n and task."""
    return (cell.method, cell.p, cell.n, cell.task)


def _with_steps(attack: dict[str, Any], steps: int) -> tuple[tuple[str, Any], ...]:
    both = {**attack, "max_steps": steps}
    return tuple((k, both[k]) for k in ATTACK_KEYS if k in both)


def rungs_and_candidates(grid: Grid) -> tuple[list[int], list[dict[str, Any]]]:
    """The step budgets (ascending) and the candidate settings of the search, or a ConfigError
    that says what the grid lacks."""
    axes = dict(grid.axes.get("attack") or {})
    steps = sorted(axes.pop("max_steps", []))
    if len(steps) < 2:
        raise ConfigError(
            "hftguard search needs [grid.attack] max_steps with at least two step budgets (the "
            "rungs of successive halving).",
            hint="Example: [grid.attack] max_steps = [10, 30, 90] and lr = [1e-5, 1e-4, 5e-4]: "
            "every lr at 10 steps, the best third at 30, the best at 90.",
        )
    if 0 in steps:
        raise ConfigError(
            "hftguard search: max_steps = 0 (train by epochs) is not a step budget.",
            hint="Give positive step budgets in [grid.attack] max_steps.",
        )
    candidates = [
        dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())
    ]
    if len(candidates) < 2:
        raise ConfigError(
            "hftguard search: only one attack setting to choose from.",
            hint="Sweep at least one more [grid.attack] key besides max_steps with two or more "
            "values, e.g. lr = [1e-5, 1e-4, 5e-4].",
        )
    return steps, candidates


def _score(hs: float | None, fa: float | None, fa_bound: float | None) -> tuple[Any, ...]:
    """Higher is a stronger attack: feasible (FA >= bound) first, then HS, then FA."""
    feasible = fa_bound is None or (fa is not None and fa >= fa_bound)
    return (feasible, hs if hs is not None else -1.0, fa if fa is not None else -1.0)


def _metrics(rows: list[dict[str, Any]]) -> dict[str, tuple[float | None, float | None]]:
    """{cell name: (HS, FA on the cell's task)} from a grid summary's rows."""
    out = {}
    for r in rows:
        if r.get("kind") != "attacked" or "cell" not in r:
            continue
        fa = (r.get("finetune_accuracy") or {}).get(r.get("task"))
        if fa is None and r.get("finetune_accuracy"):
            vals = list((r.get("finetune_accuracy") or {}).values())
            fa = sum(vals) / len(vals)
        out[r["cell"]] = (r.get("harmful_score"), fa)
    return out


def _mean(values: list[float | None]) -> float | None:
    from hftguard.pipeline.report.stats import _avg

    return _avg(values)


def search(
    grid: Grid,
    out: str | Path,
    *,
    fa_bound: float | None = None,
    eta: int = 3,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Run the successive-halving search of ``grid``'s attack settings into ``out``; return the
    record written to ``out/search.json``. Raises what :func:`~hftguard.pipeline.grid.run`
    raises when trials fail (re-running continues)."""
    reporter = reporter or Reporter()
    if eta < 2:
        raise ConfigError(f"--eta {eta}: must be at least 2.", hint="3 keeps a third per rung.")
    from hftguard.pipeline.report.worst import check_fa_bound

    check_fa_bound(fa_bound)
    from hftguard.pipeline.grid.layout import Layout
    from hftguard.pipeline.grid.spec import check
    from hftguard.runs import is_run_dir

    check(grid, registry)  # every trial's configs, later rungs' too, before any training
    steps, candidates = rungs_and_candidates(grid)
    bases: dict[tuple[Any, ...], list[Cell]] = {}
    for c in grid.cells:  # one cell per (method, p, n, task, seed), attack left out
        plain = dataclasses.replace(c, attack=())
        group = bases.setdefault(_group(c), [])
        if plain not in group:
            group.append(plain)
    alive = {g: list(range(len(candidates))) for g in bases}
    record: dict[str, Any] = {
        "stage": "search",
        "started_at": now(),
        "fa_bound": fa_bound,
        "eta": eta,
        "rungs": [],
        "candidates": candidates,
    }
    # trials an earlier run of this search finished stay listed in the grid's manifest from the
    # first rung on (a re-run interrupted early must not drop them from `hftguard report OUT`)
    layout = Layout(Path(out), grid)
    every: list[Cell] = [c for c in grid.cells if is_run_dir(layout.cell_eval(c))]
    for rung, budget in enumerate(steps):
        cells = [
            dataclasses.replace(b, attack=_with_steps(candidates[i], budget))
            for g, base_cells in bases.items()
            for i in alive[g]
            for b in base_cells
        ]
        every += [c for c in cells if c not in every]
        reporter.info(
            f"search: rung {rung + 1}/{len(steps)}, max_steps={budget}: {len(cells)} trial(s)"
        )
        # the grid holds every trial so far (earlier rungs' are finished: no work), so its
        # manifest lists them all and `hftguard report OUT` is right at any point of the search
        summary = run_grid(
            dataclasses.replace(grid, cells=every),
            out,
            reporter=reporter,
            registry=registry,
            command=command,
        )
        metrics = _metrics(summary["rows"])
        trials = []
        for g, base_cells in bases.items():
            scored = []
            for i in alive[g]:
                names = [
                    dataclasses.replace(b, attack=_with_steps(candidates[i], budget)).name
                    for b in base_cells
                ]
                hs = _mean([metrics.get(n, (None, None))[0] for n in names])
                fa = _mean([metrics.get(n, (None, None))[1] for n in names])
                scored.append((i, hs, fa))
            ranked = sorted(scored, key=lambda t: _score(t[1], t[2], fa_bound), reverse=True)
            keep = max(1, math.ceil(len(ranked) / eta)) if rung < len(steps) - 1 else 1
            alive[g] = sorted(i for i, _, _ in ranked[:keep])
            for i, hs, fa in scored:
                trials.append(
                    {
                        "method": g[0],
                        "p": g[1],
                        "n": g[2],
                        "task": g[3],
                        "attack": dict(_with_steps(candidates[i], budget)),
                        "hs": hs,
                        "fa": fa,
                        "meets_fa_bound": _score(hs, fa, fa_bound)[0],
                        "kept": i in alive[g],
                    }
                )
        record["rungs"].append({"max_steps": budget, "trials": trials})
    record["best"] = [t for t in record["rungs"][-1]["trials"] if t["kept"]]
    record.update(ended_at=now(), status="completed", trials=len(every))
    atomic_write_json(Path(out) / SEARCH_FILE, record)
    return record
