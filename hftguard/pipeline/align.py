"""``hftguard align``: safety-align a base model with an alignment-stage defense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftguard.config import AlignConfig, validate_stage
from hftguard.console import Reporter
from hftguard.errors import ConfigError
from hftguard.pipeline.common import (
    StageInputs,
    check_components,
    check_streams,
    data_ctx,
    get_registry,
    guard,
    start_run,
    train_stage,
)
from hftguard.registry import Registry


def run(
    cfg: AlignConfig,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Align ``cfg.model`` and write the run directory ``out``; return its manifest."""
    from hftguard.data import load_examples

    reporter = reporter or Reporter()
    reg = get_registry(registry)
    validate_stage(cfg)
    info = reg.get("alignment-defense", cfg.defense)
    defense = reg.instantiate(
        "alignment-defense", cfg.defense, cfg.defense_options, where="defense_options"
    )
    check_streams(defense, ("harmful",))
    check_components(cfg, reg)
    run_dir, done = start_run(
        out, "align", cfg, resume=resume, overwrite=overwrite, command=command
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()

    def body() -> dict[str, Any]:
        from hftguard import models

        ctx = data_ctx(cfg.seed, reporter)
        main = load_examples(cfg.data, "alignment", "train", reg, ctx, limit=cfg.samples)
        streams = {}
        sources: dict[str, Any] = {"main": {"spec": cfg.data, "count": len(main)}}
        if "harmful" in defense.streams:
            streams["harmful"] = load_examples(
                cfg.harmful, "harmful", "train", reg, ctx, limit=cfg.samples
            )
            sources["harmful"] = {"spec": cfg.harmful, "count": len(streams["harmful"])}
        resolved = models.resolve(cfg.model)
        if resolved.is_run:
            raise ConfigError(
                f"--model {cfg.model} is a run directory; align starts from a base model.",
                hint="Pass a base model (alias, directory, .gguf, hub id).",
            )
        if cfg.retain and cfg.retain_ratio > 0:
            retain = _retain_set(cfg, reg, ctx, resolved.recipe, len(main), reporter)
            sources["retain"] = {
                "spec": cfg.retain,
                "count": len(retain),
                "self_distilled": any(e.meta.get("distilled") for e in retain),
            }
            main = main + retain
        return train_stage(
            stage="align",
            cfg=cfg,
            run=run_dir,
            defense=defense,
            defense_info=info,
            inputs=StageInputs(
                main, streams, sources, {"finetune_lora": type(defense).finetune_lora}
            ),
            start_recipe=resolved.recipe,
            lora_mode="new",
            reporter=reporter,
        )

    return guard(run_dir, body)


def _retain_set(
    cfg: AlignConfig, reg: Registry, ctx: Any, recipe: Any, n_align: int, reporter: Reporter
) -> list[Any]:
    """Benign requests with answers (from the file, or self-distilled from the base model)."""
    import random

    from hftguard.data import load_examples
    from hftguard.distill import distill

    pool = load_examples(cfg.retain, "instructions", "train", reg, ctx)
    want = min(len(pool), max(1, round(cfg.retain_ratio * n_align)))
    chosen = random.Random(cfg.seed).sample(pool, want)
    if all(e.response for e in chosen):
        return chosen
    return distill(chosen, recipe, cfg.template, cfg.retain_max_new_tokens, reporter)
