"""Running a grid: shared stages once, skipping, resume, failures kept per cell, progress.

Two ``hftguard run`` processes on one grid share it: each stage locks its run directory
(``hftguard.runs.RunLock``), and a stage another process holds is skipped, with its cells (status
``held``), instead of failing; the run then ends ``incomplete`` (:class:`GridIncomplete`, exit code
1) naming them, and re-running the same command once the other process has finished picks them up.

With ``wait`` (the default of ``hftguard run``) a held stage is not left behind: once this process
has done everything else, it waits for the held stages (an aligned model another process is
building first, as its cells are work to share), and takes each up again as its lock is freed:
the cells built on a finished alignment that the other process has not taken are run here, a cell
the other process finished is found done, one it left unfinished (killed) is resumed. So two
workers split every aligned model's cells between them, and both end with the grid complete.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.config import EvalConfig, PipelineConfig
from hftguard.console import Reporter
from hftguard.errors import HftguardError, RunDirError, RunDirInUse
from hftguard.pipeline.grid.layout import Layout, parse_time, plan, stage_state
from hftguard.pipeline.grid.spec import NO_ALIGN, Cell, Grid, check, same_file_warning, single
from hftguard.registry import Registry
from hftguard.runs import (
    MANIFEST,
    SCHEMA_VERSION,
    atomic_write_json,
    drop_replaced,
    has_checkpoint,
    now,
    read_manifest,
    run_stage,
    running_holder,
    settle_replacement,
)

#: Seconds between two looks at the stages another process holds (``wait``).
WAIT_POLL_S = 15.0
_sleep = time.sleep  # replaced in tests


def _is_free(directory: object) -> bool:
    """Whether no process holds the lock of run directory ``directory`` (its holder finished or
    died). Looks without taking the lock (``runs.running_holder``), so that the holder or a third
    process taking it at that moment is not refused because of the look."""
    return running_holder(Path(str(directory))) is None


def _started_after(path: Path, upstream: Path) -> bool:
    """Whether the stage in ``path`` started after ``upstream`` ended (strictly: to the
    microsecond, or to the second in manifests written before 2026-11-27)."""
    try:
        start = parse_time(read_manifest(path).get("started_at"))
        up_end = parse_time(read_manifest(upstream).get("ended_at"))
    except HftguardError:
        return False
    return start is not None and up_end is not None and start > up_end


class GridFailed(HftguardError):
    """Some cells failed; the others finished. ``summary`` holds what was computed."""

    def __init__(self, message: str, hint: str, summary: dict[str, Any]) -> None:
        super().__init__(message, hint)
        self.summary = summary


class GridIncomplete(GridFailed):
    """No cell failed, but some were skipped: another process holds their stages."""


@dataclass
class _Failure:
    where: str
    error: str
    cells: list[str]
    exc: BaseException
    retry: Callable[[], None] | None = None  # a held stage: take it up again (``wait``)
    alignment: bool = False  # a held alignment: its cells are work to share, waited for first


class _Runner:
    """Runs a grid: shared stages once, a progress line per stage, failures kept per cell."""

    def __init__(
        self,
        grid: Grid,
        root: Path,
        reporter: Reporter,
        registry: Registry | None,
        command: list[str] | None,
        wait: bool = True,
    ) -> None:
        self.grid = grid
        self.wait = wait
        self.layout = Layout(root, grid)
        self.reporter = reporter
        self.kw: dict[str, Any] = {"reporter": reporter, "registry": registry, "command": command}
        self.rows: list[dict[str, Any]] = []
        self.failures: list[_Failure] = []
        self.held: list[_Failure] = []  # stages another process holds (skipped, with their cells)
        self.status: dict[str, str] = {c.name: "left" for c in grid.cells}
        self.running: Cell | None = None
        self.fail_fast = not grid.is_grid  # a single pipeline stops at its first error
        self.on_cell_end: Callable[[], None] = lambda: None
        self.ran: set[Path] = set()  # stages run (not skipped) in this invocation

    # -- progress ------------------------------------------------------------------------

    def _progress(self, what: str) -> None:
        if not self.grid.is_grid:
            self.reporter.info(f"== {what}")
            return
        done = sum(v == "done" for v in self.status.values())
        failed = sum(v == "failed" for v in self.status.values())
        held = sum(v == "held" for v in self.status.values())
        left = len(self.status) - done - failed - held - (self.running is not None)
        where = f"running {self.running.label}" if self.running else "shared stage"
        self.reporter.info(
            f"grid: {done}/{len(self.status)} cells done"
            + (f", {failed} failed" if failed else "")
            + (f", {held} held by another process" if held else "")
            + f", {left} left; {where}: {what}"
        )

    # -- stages --------------------------------------------------------------------------

    def stage(
        self,
        what: str,
        fn: Callable[..., dict[str, Any]],
        cfg: Any,
        path: Path,
        upstream: Path | None = None,
        *,
        derived: bool = False,
    ) -> dict[str, Any]:
        """Run one stage unless it is done. ``derived`` stages (evals) are redone when their
        config changed; a training stage whose config changed is refused by the stage itself.

        A stage built from another stage of the grid (``upstream``) names it relative to the grid
        root (``Layout.rel``) and gets ``model_root``."""
        model_root = self.layout.root if upstream is not None else None
        state = stage_state(path, cfg, upstream, model_root)
        if (
            state == "done"
            and upstream is not None
            and upstream in self.ran
            and path not in self.ran
            and not _started_after(path, upstream)
        ):
            # its input was (re)built just now, and the times tie (whole seconds in older
            # manifests); a stage this run built after it (an attacked model shared by repair
            # cells), or that another process started after it ended (two workers), is not stale
            state = "stale"
        if state == "done":
            if not self.grid.is_grid:
                self.reporter.info(f"== {what}: already complete")
            return read_manifest(path)
        if state == "stale":
            self.reporter.warn(f"{path} was built from an older {upstream}; rebuilding it.")
        self._progress(what + ("" if state == "new" else f" ({state})"))
        redo = state == "stale" or (derived and state == "changed")
        from hftguard.trackers import tracked

        manifest: dict[str, Any] = tracked(
            cfg,
            path,
            self.reporter,
            lambda: fn(
                cfg,
                path,
                resume=state in ("unfinished", "changed") and not redo,
                overwrite=redo,
                **({"model_root": model_root} if model_root is not None else {}),
                **self.kw,
            ),
            self.kw["registry"],
        )
        # only once it ran: a stage that failed, or that another process held (RunDirInUse), did
        # not rebuild anything, and what was built on it is not stale
        self.ran.add(path)
        return manifest

    def evaluate(
        self,
        label: str,
        cfg: EvalConfig,
        path: Path,
        upstream: Path | None,
        coords: dict[str, Any],
        what: str | None = None,
    ) -> None:
        from hftguard.pipeline import evaluate

        manifest = self.stage(
            what or f"eval: {label}", evaluate.run, cfg, path, upstream, derived=True
        )
        self.rows.append(
            {"model": label, "run_dir": str(path), **coords, **(manifest.get("metrics") or {})}
        )

    def fail(
        self,
        where: str,
        exc: Exception,
        cells: list[Cell],
        retry: Callable[[], None] | None = None,
        *,
        alignment: bool = False,
    ) -> bool:
        """Record a failed stage and its cells; a stage another process holds is ``held``, and
        with ``wait`` comes back later through ``retry`` (then True)."""
        if self.fail_fast:
            raise exc
        if isinstance(exc, RunDirInUse):  # another hftguard run on this grid: skip, keep going
            later = retry if self.wait else None
            self.held.append(
                _Failure(where, exc.message, [c.name for c in cells], exc, later, alignment)
            )
            for c in cells:
                self.status[c.name] = "held"
            if later is not None:
                self.reporter.info(
                    f"grid: {where} is being written by another hftguard process ({exc.who}); "
                    "coming back to it after the rest of the grid."
                )
                return True
            self.reporter.warn(
                f"{where} skipped: {exc.message}"
                + (f" ({len(cells)} cell(s) skipped)" if len(cells) > 1 else "")
            )
            return False
        msg = exc.message if isinstance(exc, HftguardError) else f"{type(exc).__name__}: {exc}"
        self.failures.append(_Failure(where, msg, [c.name for c in cells], exc))
        for c in cells:
            self.status[c.name] = "failed"
        self.reporter.warn(
            f"{where} failed: {msg}"
            + (f" ({len(cells)} cell(s) skipped)" if len(cells) > 1 else "")
        )
        return False

    # -- the grid ------------------------------------------------------------------------

    def run(self) -> None:
        g, lay = self.grid, self.layout
        base = g.base.align.model
        if g.base.evaluate_base:

            def base_eval() -> None:
                try:
                    self.evaluate(
                        f"base ({base})",
                        g.eval_config(base),
                        lay.base_eval(),
                        None,
                        {"kind": "base"},
                    )
                except Exception as exc:
                    self.fail(str(lay.base_eval()), exc, [], base_eval)

            base_eval()
        for (align_name, seed), cells in g.groups():
            self.group(align_name, seed, cells)
        self.wait_for_held()

    def wait_for_held(self) -> None:
        """Take up each stage another process held as soon as its lock is free, alignments
        first (their cells are work to share); sleep while none is. Only with ``wait``."""
        told: set[str] = set()
        while pending := [f for f in self.held if f.retry is not None]:
            pending.sort(key=lambda f: not f.alignment)
            ready = next((f for f in pending if _is_free(getattr(f.exc, "path", ""))), None)
            if ready is None:
                for f in pending:
                    if f.where not in told:
                        told.add(f.where)
                        self.reporter.info(
                            f"grid: waiting for another hftguard process to finish {f.where} "
                            f"({getattr(f.exc, 'who', '?')}). Ctrl-C stops; re-running the "
                            "command continues."
                        )
                _sleep(WAIT_POLL_S)
                continue
            self.held.remove(ready)
            for name in ready.cells:
                if self.status[name] == "held":
                    self.status[name] = "left"
            assert ready.retry is not None
            ready.retry()
            if any(f.where == ready.where for f in self.held):  # taken again at once
                _sleep(WAIT_POLL_S)  # (or no flock to look with): do not spin on it

    def group(self, align_name: str, seed: int, cells: list[Cell]) -> None:
        """The aligned model ``align_name``/``seed``, its evaluation and its cells."""
        from hftguard.pipeline import align

        g, lay = self.grid, self.layout
        start, upstream = g.base.align.model, None
        if align_name != NO_ALIGN:
            path = lay.aligned(align_name, seed)
            acfg = g.align_config(align_name, seed)
            try:
                self.stage(
                    f"align: {acfg.defense}" + (f" (s{seed})" if g.is_grid else ""),
                    align.run,
                    acfg,
                    path,
                )
            except Exception as exc:
                later = self.fail(
                    str(path),
                    exc,
                    cells,
                    lambda: self.group(align_name, seed, cells),
                    alignment=True,
                )
                if not later:  # its cells are over for this run; else they tick when taken up
                    for _ in cells:
                        self.on_cell_end()
                return
            start, upstream = lay.rel(path), path
            label = f"aligned ({align_name}, s{seed})" if g.is_grid else f"aligned ({acfg.defense})"
            where = lay.aligned_eval(align_name, seed)

            def aligned_eval() -> None:
                try:
                    self.evaluate(
                        label,
                        g.eval_config(start),
                        where,
                        path,
                        {"kind": "aligned", "align": align_name, "seed": seed},
                    )
                except Exception as exc:
                    self.fail(str(where), exc, [], aligned_eval)

            aligned_eval()
        for cell in cells:
            self.run_cell(cell, start, upstream, tick=True)

    def run_cell(self, cell: Cell, start: str, upstream: Path | None, *, tick: bool) -> None:
        """One cell, its failure recorded; ``tick``: advance the progress bar (once per cell:
        a held cell taken up again does not)."""
        self.running = cell
        try:
            self.cell(cell, start, upstream)
            self.status[cell.name] = "done"
        except Exception as exc:
            self.running = None
            self.fail(
                cell.label, exc, [cell], lambda: self.run_cell(cell, start, upstream, tick=False)
            )
        finally:
            self.running = None
            if tick:
                self.on_cell_end()

    def cell(self, cell: Cell, start: str, upstream: Path | None) -> None:
        from hftguard.pipeline import attack_finetune

        g, lay = self.grid, self.layout
        fcfg = g.finetune_config(cell, start)
        attacked = lay.attacked(cell)
        self.stage(
            f"attack-finetune: {fcfg.defense}, p={fcfg.harmful_ratio}, n={fcfg.samples}",
            attack_finetune.run,
            fcfg,
            attacked,
            upstream,
        )
        evaluated = attacked
        if cell.repair:  # the repair stage on the (shared) attacked model, then eval of it
            from hftguard.pipeline import repair

            evaluated = lay.repaired(cell)
            self.stage(
                f"repair: {cell.repair}",
                repair.run,
                g.repair_config(cell, lay.rel(attacked), self.kw["registry"]),
                evaluated,
                attacked,
                derived=True,  # seconds, deterministic: redone when its options change
            )
        label = (
            cell.label
            if g.is_grid
            else f"repaired ({cell.repair})"
            if cell.repair
            else f"attacked (p={fcfg.harmful_ratio}, {fcfg.defense})"
        )
        self.evaluate(
            label,
            g.cell_eval_config(cell, lay.rel(evaluated)),
            lay.cell_eval(cell),
            evaluated,
            {"kind": "attacked", "cell": cell.name, **cell.coords()},
            what="eval" if g.is_grid else None,
        )


def run(
    cfg: PipelineConfig | Grid,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    overwrite: bool = False,
    command: list[str] | None = None,
    wait: bool = True,
) -> dict[str, Any]:
    """Run every cell of ``cfg`` into ``out``; return a summary with one row per evaluated model.

    Raises :class:`GridFailed` (carrying the summary) when some cells of a grid failed and the
    others finished, :class:`GridIncomplete` when none failed but some were skipped because
    another process holds their stages (``hftguard run`` twice on one grid); a single-pipeline
    config stops at, and re-raises, its stage's own error (``RunDirInUse`` included).

    ``out`` must be new, empty, or the root of an earlier ``hftguard run`` (its manifest's stage is
    ``pipeline``); ``overwrite`` moves such a root aside until this run completes, and puts it back
    if this one fails before any stage finished (see :func:`hftguard.runs.open_run_dir`).

    ``wait``: when another process is building an aligned model of the grid, come back to it
    after everything else and wait for it, then run the cells built on it that the other process
    has not taken (``False``: skip them, as ``held``).
    """
    grid = cfg if isinstance(cfg, Grid) else single(cfg)
    reporter = reporter or Reporter()
    check(grid, registry)
    root = Path(out)
    earlier = {} if overwrite else _earlier_grid(root)
    replaces = _open_root(root, overwrite)
    t0 = time.time()
    head: dict[str, Any] = {
        "stage": "pipeline",
        "schema_version": SCHEMA_VERSION,
        "config": dataclasses.asdict(grid.base),
        "command": command,
        "started_at": now(),
    }
    if replaces:
        head["replaces"] = replaces  # the root this one replaces, until it completes
    if grid.is_grid:
        head["grid"] = {
            **grid.axes,
            **({"align_seed": grid.fixed_align_seed} if grid.fixed_align_seed is not None else {}),
            "align_options": grid.align_options,
            "finetune_options": grid.finetune_options,
            **({"repair_options": grid.repair_options} if grid.repair_options else {}),
            "labels": {**_earlier_labels(earlier), **grid.labels},
            # every method this root has held, earliest invocation first (the report's row order)
            "method_order": _method_order(earlier, grid.axes.get("methods", [])),
        }
    atomic_write_json(root / "manifest.json", {**head, "status": "running"})
    runner = _Runner(grid, root, reporter, registry, command, wait=wait)

    def summary(status: str) -> dict[str, Any]:
        result = {
            **head,
            "status": status,
            "rows": runner.rows,
            "wall_time_s": round(time.time() - t0, 1),
        }
        if grid.is_grid:
            lay = runner.layout
            result["cells"] = [
                {
                    "name": c.name,
                    **c.coords(),
                    "status": runner.status[c.name],
                    "attacked": lay.attacked(c).relative_to(root).as_posix(),
                    **(
                        {"repaired": lay.repaired(c).relative_to(root).as_posix()}
                        if c.repair
                        else {}
                    ),
                    "eval": lay.cell_eval(c).relative_to(root).as_posix(),
                }
                for c in grid.cells
            ]
            # cells an earlier invocation recorded and this one did not plan: kept as recorded
            # (`earlier`), so that the root lists the whole grid however it was resumed
            planned_names = {c.name for c in grid.cells}
            result["cells"] += [
                {**c, "earlier": True}
                for c in earlier.get("cells", [])
                if isinstance(c, dict) and c.get("name") not in planned_names
            ]
            base_eval = lay.base_eval().relative_to(root).as_posix()
            result["evals"] = (
                [{"kind": "base", "eval": base_eval}] if grid.base.evaluate_base else []
            )
            result["evals"] += [
                {
                    "kind": "aligned",
                    "align": a,
                    "seed": s,
                    "aligned": lay.aligned(a, s).relative_to(root).as_posix(),
                    "eval": lay.aligned_eval(a, s).relative_to(root).as_posix(),
                }
                for (a, s), _ in grid.groups()
                if a != NO_ALIGN
            ]
            listed = {e["eval"] for e in result["evals"]}
            result["evals"] += [
                {**e, "earlier": True}
                for e in earlier.get("evals", [])
                if isinstance(e, dict) and e.get("eval") not in listed
            ]
        if runner.failures:
            result["failures"] = [
                {"where": f.where, "error": f.error, "cells": f.cells} for f in runner.failures
            ]
        if runner.held:
            result["held"] = [
                {"where": f.where, "reason": f.error, "cells": f.cells} for f in runner.held
            ]
        return result

    try:
        if grid.is_grid:
            planned = plan(grid, root)
            for cell, row in zip(grid.groups_flat(), planned, strict=True):
                if row["status"] == "done":
                    runner.status[cell.name] = "done"
            done = sum(r["status"] == "done" for r in planned)
            if warning := same_file_warning(grid):
                reporter.warn(warning)
            reporter.info(
                f"grid: {len(grid.cells)} cells ({done} already done), "
                f"{len(grid.groups())} aligned model(s) -> {root}"
            )
            with reporter.task("grid cells", total=len(grid.cells)) as bar:
                runner.on_cell_end = lambda: bar.advance(1)
                runner.run()
        else:
            runner.run()
    except BaseException as exc:
        stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        atomic_write_json(root / "manifest.json", summary(stopped))
        if note := _settle(root):
            reporter.warn(note)
        raise
    if not runner.failures and not runner.held and "replaces" in head:
        drop_replaced(root, head.pop("replaces"))
    status = "failed" if runner.failures else "incomplete" if runner.held else "completed"
    result = summary(status)
    atomic_write_json(root / "manifest.json", result)
    if (runner.failures or runner.held) and (note := _settle(root)):
        reporter.warn(note)
    skipped = _skipped(runner.held, len(grid.cells))
    if runner.failures:
        n_failed = sum(v == "failed" for v in runner.status.values())
        first = runner.failures[0]
        raise GridFailed(
            f"{n_failed} of {len(grid.cells)} cells failed"
            + (f" ({len(runner.failures)} failures in all)" if len(runner.failures) > 1 else "")
            + f"; first: {first.where}: {first.error}"
            + (f" Also {skipped[0].lower()}{skipped[1:]}" if skipped else ""),
            "Fix the cause and re-run the same command: finished stages are skipped and failed "
            f"ones retried. Every failure is listed in {root / 'manifest.json'}.",
            result,
        )
    if runner.held:
        raise GridIncomplete(
            skipped,
            "That process is computing them. Re-run the same command once it has finished to "
            "include them: finished stages are skipped. They are listed in "
            f'{root / "manifest.json"} (status "held").',
            result,
        )
    return result


def _skipped(held: list[_Failure], n_cells: int) -> str:
    """What the stages another process holds kept this run from doing, in a sentence."""
    if not held:
        return ""
    cells = [c for f in held for c in f.cells]
    shown = ", ".join(cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
    shared = [f.where for f in held if not f.cells]
    text = (
        f"{len(cells)} of {n_cells} cells skipped, held by another hftguard process: {shown}"
        if cells
        else "Skipped, held by another hftguard process: " + ", ".join(shared)
    )
    if cells and shared:
        text += f"; and the shared stage(s) {', '.join(shared)}"
    return f"{text} ({held[0].exc.who if isinstance(held[0].exc, RunDirInUse) else '?'})."


#: A grid root's directories (:class:`Layout`), with the depth of the run directories in each.
_STAGE_DIRS = {"aligned": 1, "evals": 1, "cells": 2}


def _copied_stages(root: Path) -> bool:
    """Whether ``root`` holds nothing but hftguard stage runs in a grid's layout (an aligned
    model, its evaluation, cells), e.g. copied from another grid to be reused, without a root
    manifest. Anything else in it (a file, another directory, a stage directory that is not a
    run) makes it somebody else's directory."""

    def runs(path: Path, depth: int) -> bool:
        if not path.is_dir() or path.is_symlink():
            return False
        if depth == 0:
            return run_stage(path) is not None
        children = list(path.iterdir())
        return bool(children) and all(runs(c, depth - 1) for c in children)

    tops = list(root.iterdir())
    return bool(tops) and all(t.name in _STAGE_DIRS and runs(t, _STAGE_DIRS[t.name]) for t in tops)


def check_root(root: Path) -> bool:
    """Raise a RunDirError unless ``root`` may take hftguard run's tree of runs: a new or empty
    directory, one that holds only stages copied in from another grid (:func:`_copied_stages`),
    or the --out of an earlier hftguard run (then True). Reads only, so
    ``--dry-run`` refuses what the run would."""
    if root.exists() and not root.is_dir():
        raise RunDirError(
            f"Output path {root} exists and is not a directory.", hint="Choose another --out."
        )
    if not (root.is_dir() and any(root.iterdir())):
        return False
    found = run_stage(root)
    if found is None and _copied_stages(root):
        return False  # a new grid around stages copied in from another one
    if found != "pipeline":
        what = (
            f"it holds a '{found}' run, whose manifest hftguard run would overwrite"
            if found
            else "it is not empty and has no hftguard run manifest"
        )
        raise RunDirError(
            f"{root} is not the output directory of hftguard run: {what}.",
            hint="Choose another --out (a new or empty directory, or the --out of an earlier "
            "hftguard run to continue it).",
        )
    return True


def _open_root(root: Path, overwrite: bool) -> str | None:
    """Check that ``root`` may take this run's tree of runs and create it; with ``overwrite``, move
    an earlier root aside. Returns the name of the root this one replaces (``replaces``, carried
    over from an earlier ``--overwrite`` that did not complete)."""
    from hftguard.runs import make_out_dir, open_run_dir

    if overwrite and root.exists():
        # refuses non-hftguard directories, and a tree another process is writing a stage in
        run = open_run_dir(root, "pipeline", overwrite=True)
        run.release()  # the root is shared: each stage below locks its own run directory
        return run.replaced.name if run.replaced is not None else None
    if check_root(root):
        replaces = read_manifest(root).get("replaces")
        make_out_dir(root)
        return replaces if isinstance(replaces, str) else None
    make_out_dir(root)  # a RunDirError that says why when it cannot be created or written
    return None


def _earlier_grid(root: Path) -> dict[str, Any]:
    """The manifest an earlier ``hftguard run`` of a grid left at ``root`` ({} when there is none,
    it was not a grid, or it cannot be read: it is only carried over, never relied on)."""
    try:
        m = read_manifest(root) if (root / MANIFEST).is_file() else {}
    except HftguardError:
        return {}
    return m if m.get("stage") == "pipeline" and isinstance(m.get("grid"), dict) else {}


def _earlier_labels(earlier: dict[str, Any]) -> dict[str, Any]:
    labels = (earlier.get("grid") or {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def _method_order(earlier: dict[str, Any], methods: list[str]) -> list[str]:
    """The earlier root's method order (or its methods, or its cells' methods), then this
    invocation's methods that are new."""
    g = earlier.get("grid") or {}
    order = [str(x) for x in g.get("method_order") or g.get("methods") or []]
    order += [
        str(c["method"]) for c in earlier.get("cells", []) if isinstance(c, dict) and "method" in c
    ]
    order += list(methods)
    return list(dict.fromkeys(order))


def _settle(root: Path) -> str | None:
    """After a failed or interrupted run: put back the root it replaces unless some stage under
    the new root finished or has a checkpoint (then re-running the command continues it)."""
    progress = False
    for manifest in root.rglob(MANIFEST):
        run = manifest.parent
        if run == root or any(part.startswith(".") for part in run.relative_to(root).parts):
            continue
        try:
            done = read_manifest(run).get("status") == "completed"
        except HftguardError:
            continue
        if done or has_checkpoint(run):
            progress = True
            break
    try:
        return settle_replacement(root, resumable=progress, how="by re-running the command")
    except OSError as exc:
        return f"Could not put back the run that {root} was replacing: {exc}"


def summary_rows(out: str | Path) -> list[dict[str, Any]]:
    return list(read_manifest(out).get("rows", []))
