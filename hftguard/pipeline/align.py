"""``hftguard align``: safety-align a base model with an alignment-stage defense."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard.config import AlignConfig
from hftguard.console import Reporter
from hftguard.errors import ConfigError, DataError
from hftguard.pipeline.common import (
    StageInputs,
    check_streams_have_data,
    data_ctx,
    guard,
    open_training_stage,
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
    reporter = reporter or Reporter()
    opened = open_training_stage(
        cfg,
        out,
        kind="alignment-defense",
        stage="align",
        streams=("harmful",),
        registry=registry,
        reporter=reporter,
        resume=resume,
        overwrite=overwrite,
        command=command,
        prepare=lambda reg, defense: _load_data(cfg, reg, defense, reporter),
    )
    info, defense, run_dir = opened.info, opened.defense, opened.run
    if opened.done:
        return run_dir.read_manifest()
    data: _AlignData = opened.prepared

    def body() -> dict[str, Any]:
        from hftguard.engine import models

        main, streams, sources = data.main, data.streams, data.sources
        resolved = models.resolve(cfg.model)
        if resolved.is_run:
            raise ConfigError(
                f"--model {cfg.model} is a run directory; align starts from a base model.",
                hint="Pass a base model (alias, directory, .gguf, hub id).",
            )
        if data.retain_chosen:
            retain = _retain_answers(
                cfg, data.retain_chosen, data.retain_judge, resolved.recipe, reporter
            )
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


#: Drops the refusals and degenerate answers among the self-distilled retain answers.
RETAIN_JUDGE = "refusal-keywords"


@dataclass
class _AlignData:
    """The alignment data, extra streams and retain requests, loaded before the run dir."""

    main: list[Any]
    streams: dict[str, list[Any]]
    sources: dict[str, Any]
    #: Benign requests picked for the retain set (answers still to be distilled); [] = off.
    retain_chosen: list[Any] = field(default_factory=list)
    #: The judge that filters the distilled answers (the registry's ``refusal-keywords``).
    retain_judge: Any = None


def _load_data(cfg: AlignConfig, reg: Registry, defense: Any, reporter: Reporter) -> _AlignData:
    """Load and check the data before the run directory exists: an empty stream or retain set
    fails here, not as a failed run (or a silently different one)."""
    from hftguard.data.inputs import fields_for, load_examples

    ctx = data_ctx(cfg.seed, reporter)
    opts = cfg.dataset_options
    main = load_examples(
        cfg.data,
        "alignment",
        "train",
        reg,
        ctx,
        limit=cfg.samples,
        fields=fields_for(cfg, "data"),
        options=opts,
    )
    if not main:
        raise DataError(
            f"The alignment data '{cfg.data}' has no rows.",
            hint="Point align.data at a dataset or file with examples.",
        )
    streams: dict[str, list[Any]] = {}
    sources: dict[str, Any] = {"main": {"spec": cfg.data, "count": len(main)}}
    if "harmful" in defense.streams:
        streams["harmful"] = load_examples(
            cfg.harmful,
            "harmful",
            "train",
            reg,
            ctx,
            limit=cfg.samples,
            fields=fields_for(cfg, "harmful"),
            options=opts,
        )
        sources["harmful"] = {"spec": cfg.harmful, "count": len(streams["harmful"])}
    check_streams_have_data(defense, streams, {"harmful": cfg.harmful})
    chosen: list[Any] = []
    if cfg.retain and cfg.retain_ratio > 0:
        chosen = _retain_requests(cfg, reg, ctx, len(main), reporter)
    judge = reg.instantiate("judge", RETAIN_JUDGE) if chosen else None
    return _AlignData(main, streams, sources, chosen, judge)


def _retain_requests(
    cfg: AlignConfig, reg: Registry, ctx: Any, n_align: int, reporter: Reporter
) -> list[Any]:
    """The benign requests of the retain set: retain_ratio x n_align of them (at least one)."""
    import random

    from hftguard.data.inputs import fields_for, load_examples

    pool = load_examples(
        cfg.retain,
        "instructions",
        "train",
        reg,
        ctx,
        fields=fields_for(cfg, "retain"),
        options=cfg.dataset_options,
    )
    want = max(1, round(cfg.retain_ratio * n_align))
    if not pool:
        raise DataError(
            f"The retain set would be empty: '{cfg.retain}' has no rows, so none of the "
            f"{want} benign requests asked for (retain_ratio={cfg.retain_ratio} x {n_align} "
            "alignment examples) would be mixed into the alignment data.",
            hint="Point retain at a dataset or file with benign requests, or turn the retain "
            "set off on purpose with retain='' (--set retain= ; in a pipeline: "
            "align.retain='').",
        )
    if want > len(pool):
        reporter.warn(
            f"retain set: {want} requests asked for (retain_ratio={cfg.retain_ratio} x "
            f"{n_align}), '{cfg.retain}' has {len(pool)}; using all {len(pool)}."
        )
    return random.Random(cfg.seed).sample(pool, min(len(pool), want))


def _retain_answers(
    cfg: AlignConfig, chosen: list[Any], judge: Any, recipe: Any, reporter: Reporter
) -> list[Any]:
    """The retain examples with answers: the file's, or self-distilled from the base model."""
    from hftguard.data.distill import distill

    if all(e.response for e in chosen):
        return chosen
    kept = distill(chosen, recipe, cfg.template, cfg.retain_max_new_tokens, reporter, judge=judge)
    if not kept:
        raise DataError(
            f"The retain set ended up empty: the base model's answers to 0 of {len(chosen)} "
            f"retain requests ('{cfg.retain}') were kept (refusals and degenerate answers are "
            "dropped), so the alignment data would silently have no benign part.",
            hint="Give the retain set answers (a file with responses), ask for more requests "
            "(a larger retain_ratio or more samples), or turn the retain set off on purpose with "
            "retain=''.",
        )
    return kept
