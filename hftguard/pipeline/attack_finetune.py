"""``hftguard attack-finetune``: fine-tune on user data of which a fraction p is harmful."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftguard.config import FinetuneConfig, validate_stage
from hftguard.console import Reporter
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
    cfg: FinetuneConfig,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` (a base model or an aligned run) on a poisoned mixture."""
    from hftguard.data import is_file_spec, load_examples, mix_poison

    reporter = reporter or Reporter()
    reg = get_registry(registry)
    validate_stage(cfg)
    info = reg.get("finetune-defense", cfg.defense)
    defense = reg.instantiate(
        "finetune-defense", cfg.defense, cfg.defense_options, where="defense_options"
    )
    check_streams(defense, ("alignment", "harmful"))
    check_components(cfg, reg)
    run_dir, done = start_run(
        out, "finetune", cfg, resume=resume, overwrite=overwrite, command=command
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()

    def body() -> dict[str, Any]:
        from hftguard import models

        ctx = data_ctx(cfg.seed, reporter)
        benign = load_examples(cfg.task, "task", "train", reg, ctx)
        harmful_split = "train"
        if (
            not is_file_spec(cfg.harmful)
            and "attack" in reg.dataset(cfg.harmful, "harmful").cls.splits
        ):
            harmful_split = "attack"  # prompts disjoint from the alignment-stage harmful set
        harmful = load_examples(cfg.harmful, "harmful", harmful_split, reg, ctx)
        mixture = mix_poison(benign, harmful, cfg.samples, cfg.harmful_ratio, cfg.seed)
        streams = {}
        sources: dict[str, Any] = {
            "main": {"task": cfg.task, "harmful": cfg.harmful, "count": len(mixture.examples)}
        }
        if "alignment" in defense.streams:
            streams["alignment"] = load_examples(cfg.alignment_data, "alignment", "train", reg, ctx)
            sources["alignment"] = {"spec": cfg.alignment_data, "count": len(streams["alignment"])}
        resolved = models.resolve(cfg.model)
        mode = cfg.lora_mode
        if mode == "auto":
            mode = (resolved.run_manifest or {}).get("finetune_lora", "merge")
        if resolved.is_run and (resolved.run_manifest or {}).get("stage") != "align":
            reporter.warn(
                f"{cfg.model} is a '{resolved.run_manifest.get('stage')}' run, not an "
                "aligned one; fine-tuning it anyway."
            )
        reporter.info(
            f"user data: n={mixture.n}, harmful={mixture.n_harmful}, "
            f"benign={mixture.n_benign} (p={cfg.harmful_ratio})"
        )
        return train_stage(
            stage="finetune",
            cfg=cfg,
            run=run_dir,
            defense=defense,
            defense_info=info,
            inputs=StageInputs(
                mixture.examples,
                streams,
                sources,
                {
                    "composition": mixture.composition(),
                    "aligned_run": str(Path(cfg.model).resolve()) if resolved.is_run else None,
                },
            ),
            start_recipe=resolved.recipe,
            lora_mode=mode,
            reporter=reporter,
        )

    return guard(run_dir, body)
