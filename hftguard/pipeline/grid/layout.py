"""Where each stage of a grid lives under OUT, what state it is in, and the dry-run plan."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from hftguard.errors import HftguardError
from hftguard.pipeline.grid.spec import NO_ALIGN, Cell, Grid, slug
from hftguard.runs import is_run_dir, read_manifest, running_holder


class Layout:
    """Where each stage of a grid lives under OUT.

    A stage whose input model is another stage of the grid names it relative to OUT
    (:meth:`rel`; the stage gets ``model_root=OUT`` and records ``model_root`` in its manifest), so
    a grid can be moved or copied: its configs stay the same wherever OUT is.
    """

    def __init__(self, root: Path, grid: Grid) -> None:
        self.root = root
        self.legacy = not grid.is_grid

    def rel(self, path: Path) -> str:
        """``path`` (a stage's directory under OUT) relative to OUT, as a stage config names it."""
        return path.relative_to(self.root).as_posix()

    def base_eval(self) -> Path:
        return self.root / ("base-eval" if self.legacy else "evals/base")

    def aligned(self, align: str, seed: int) -> Path:
        return self.root / ("aligned" if self.legacy else f"aligned/{slug(align)}-s{seed}")

    def aligned_eval(self, align: str, seed: int) -> Path:
        name = f"evals/aligned-{slug(align)}-s{seed}"
        return self.root / ("aligned-eval" if self.legacy else name)

    def attacked(self, cell: Cell) -> Path:
        """Shared by the cells that differ only in their repair defense."""
        return self.root / ("attacked" if self.legacy else f"cells/{cell.attack_name}/attacked")

    def repaired(self, cell: Cell) -> Path:
        if self.legacy:
            return self.root / "repaired"
        return self.root / f"cells/{cell.attack_name}/repaired-{slug(cell.repair)}"

    def cell_eval(self, cell: Cell) -> Path:
        if self.legacy:
            return self.root / ("repaired-eval" if cell.repair else "attacked-eval")
        suffix = f"-{slug(cell.repair)}" if cell.repair else ""
        return self.root / f"cells/{cell.attack_name}/eval{suffix}"


def parse_time(value: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def stage_state(
    path: Path, cfg: Any, upstream: Path | None = None, model_root: Path | None = None
) -> str:
    """``new``, ``done`` (completed, same config, newer than its input), ``changed`` (config
    differs, or the base weights it read changed: ``common.base_changed``), ``stale`` (its input
    model was rebuilt after it started) or ``unfinished``.

    ``model_root``: the grid root ``cfg.model`` is relative to (``common.same_stage_config``)."""
    from hftguard.pipeline.common import base_changed, same_stage_config

    if not is_run_dir(path):
        return "new"
    try:
        m = read_manifest(path)
    except HftguardError:
        return "unfinished"
    if not same_stage_config(m.get("config"), cfg, model_root) or base_changed(m, cfg):
        return "changed"
    if upstream is not None and is_run_dir(upstream):
        up_end = parse_time(read_manifest(upstream).get("ended_at"))
        start = parse_time(m.get("started_at"))
        if up_end is not None and start is not None and up_end > start:
            return "stale"
    return "done" if m.get("status") == "completed" else "unfinished"


def _now_running(state: str, path: Path) -> str:
    """``running`` for a stage not done whose directory another process holds now."""
    if state in ("done", "-"):
        return state
    return "running" if running_holder(path) is not None else state


def plan(grid: Grid, out: str | Path) -> list[dict[str, Any]]:
    """Each cell with the state of its stages — for ``hftguard run --dry-run``. Reads only. A
    stage another process is writing now (``hftguard run`` on the same grid) shows ``running``."""
    lay = Layout(Path(out), grid)
    rows = []
    for (align_name, seed), cells in grid.groups():
        start, upstream, a_state = grid.base.align.model, None, "-"
        if align_name != NO_ALIGN:
            upstream = lay.aligned(align_name, seed)
            start = lay.rel(upstream)
            a_state = _now_running(
                stage_state(upstream, grid.align_config(align_name, seed)), upstream
            )
        root = lay.root if upstream is not None else None
        for cell in cells:
            attacked = lay.attacked(cell)
            f_state = _now_running(
                stage_state(attacked, grid.finetune_config(cell, start), upstream, root), attacked
            )
            evaluated, r_state = attacked, "-"
            if cell.repair:
                evaluated = lay.repaired(cell)
                rcfg = grid.repair_config(cell, lay.rel(attacked))
                r_state = _now_running(stage_state(evaluated, rcfg, attacked, lay.root), evaluated)
            e_state = _now_running(
                stage_state(
                    lay.cell_eval(cell),
                    grid.cell_eval_config(cell, lay.rel(evaluated)),
                    evaluated,
                    lay.root,
                ),
                lay.cell_eval(cell),
            )
            done = a_state in ("done", "-") and r_state in ("done", "-")
            done = done and f_state == e_state == "done"
            rows.append(
                {
                    "cell": cell.label,
                    **({"attack setting": cell.attack_label} if cell.attack else {}),
                    "align": a_state,
                    "attack": f_state,
                    "repair": r_state,
                    "eval": e_state,
                    "status": "done" if done else "left",
                    "dir": str(lay.cell_eval(cell).parent if grid.is_grid else lay.root),
                }
            )
    return rows
