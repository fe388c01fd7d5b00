"""``hftguard run``: align -> attack-finetune -> eval in one command, evaluating every model.

Each stage writes its own run directory under OUT (``base-eval``, ``aligned``, ``aligned-eval``,
``attacked``, ``attacked-eval``); a finished stage is skipped on re-run and an interrupted one
resumes from its last checkpoint, so ``hftguard run`` can simply be run again after a crash.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from hftguard.config import PipelineConfig, validate_stage
from hftguard.console import Reporter
from hftguard.registry import Registry
from hftguard.runs import atomic_write_json, is_run_dir, read_manifest


def _stage_resume(path: Path) -> bool:
    return is_run_dir(path)


def run(cfg: PipelineConfig, out: str | Path, *, reporter: Reporter | None = None,
        registry: Registry | None = None, overwrite: bool = False,
        command: list[str] | None = None) -> dict[str, Any]:
    """Run the three stages into ``out``; return a summary with one row per evaluated model."""
    from hftguard.pipeline import align, attack_finetune, evaluate
    from hftguard.runs import open_run_dir

    reporter = reporter or Reporter()
    validate_stage(cfg)
    root = Path(out)
    if overwrite and root.exists():
        open_run_dir(root, "pipeline", overwrite=True)  # refuses non-hftguard directories
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    atomic_write_json(root / "manifest.json", {"stage": "pipeline", "status": "running",
                                               "config": dataclasses.asdict(cfg),
                                               "command": command})
    kw: dict[str, Any] = {"reporter": reporter, "registry": registry, "command": command}
    rows: list[dict[str, Any]] = []

    def evaluate_model(label: str, model: str, path: Path) -> None:
        ecfg = dataclasses.replace(cfg.eval, model=model)
        reporter.info(f"== eval: {label}")
        manifest = evaluate.run(ecfg, path, resume=_stage_resume(path), **kw)
        rows.append({"model": label, "run_dir": str(path), **manifest["metrics"]})

    if cfg.evaluate_base:
        evaluate_model(f"base ({cfg.align.model})", cfg.align.model, root / "base-eval")
    start = cfg.align.model
    if not cfg.skip_align:
        reporter.info(f"== align: {cfg.align.defense}")
        align.run(cfg.align, root / "aligned", resume=_stage_resume(root / "aligned"), **kw)
        start = str(root / "aligned")
        evaluate_model(f"aligned ({cfg.align.defense})", start, root / "aligned-eval")
    fcfg = dataclasses.replace(cfg.finetune, model=start)
    reporter.info(f"== attack-finetune: {fcfg.defense}, p={fcfg.harmful_ratio}, n={fcfg.samples}")
    attack_finetune.run(fcfg, root / "attacked", resume=_stage_resume(root / "attacked"), **kw)
    evaluate_model(f"attacked (p={fcfg.harmful_ratio}, {fcfg.defense})", str(root / "attacked"),
                   root / "attacked-eval")
    summary = {"stage": "pipeline", "status": "completed", "config": dataclasses.asdict(cfg),
               "command": command, "rows": rows, "wall_time_s": round(time.time() - t0, 1)}
    atomic_write_json(root / "manifest.json", summary)
    return summary


def summary_rows(out: str | Path) -> list[dict[str, Any]]:
    return list(read_manifest(out).get("rows", []))
