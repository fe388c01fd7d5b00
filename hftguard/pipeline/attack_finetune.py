"""``hftguard attack-finetune``: fine-tune on user data of which a fraction p is harmful."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftguard.config import FinetuneConfig
from hftguard.console import Reporter
from hftguard.pipeline.common import (
    StageInputs,
    data_ctx,
    guard,
    model_spec,
    open_training_stage,
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
    model_root: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` (a base model or an aligned run) on a poisoned mixture.

    ``model_root`` (``hftguard run``): ``cfg.model`` is relative to it, the grid's root.
    """
    from hftguard.data.inputs import fields_for, is_file_spec, load_examples, mix_poison

    reporter = reporter or Reporter()
    opened = open_training_stage(
        cfg,
        out,
        kind="finetune-defense",
        stage="finetune",
        streams=("alignment", "harmful"),
        registry=registry,
        reporter=reporter,
        resume=resume,
        overwrite=overwrite,
        command=command,
        model_root=model_root,
    )
    reg, info, defense, run_dir = opened.registry, opened.info, opened.defense, opened.run
    if opened.done:
        return run_dir.read_manifest()

    def body() -> dict[str, Any]:
        from hftguard.engine import models

        ctx = data_ctx(cfg.seed, reporter)
        opts = cfg.dataset_options
        benign = load_examples(
            cfg.task, "task", "train", reg, ctx, fields=fields_for(cfg, "task"), options=opts
        )
        harmful_split = "train"
        if (
            not is_file_spec(cfg.harmful)
            and "attack" in reg.dataset(cfg.harmful, "harmful").cls.splits
        ):
            harmful_split = "attack"  # prompts disjoint from the alignment-stage harmful set
        harmful = load_examples(
            cfg.harmful,
            "harmful",
            harmful_split,
            reg,
            ctx,
            fields=fields_for(cfg, "harmful"),
            options=opts,
        )
        mixture = mix_poison(benign, harmful, cfg.samples, cfg.harmful_ratio, cfg.seed)
        streams = {}
        sources: dict[str, Any] = {
            "main": {"task": cfg.task, "harmful": cfg.harmful, "count": len(mixture.examples)}
        }
        user = mixture.examples
        if cfg.screen:  # the provider's filter in front of training (pipeline/screening.py)
            from hftguard.pipeline.screening import screen_user_data

            user, screening = screen_user_data(
                user, cfg.screen, cfg.screen_options, reg, reporter, cfg.train.device
            )
            sources["main"]["screening"] = screening
            sources["main"]["trained_count"] = len(user)
            reporter.info(
                f"screening ({cfg.screen}): dropped {screening['flagged']} of {screening['n']} "
                f"user samples; {screening.get('harmful_leaked', '?')} harmful leaked through, "
                f"{screening.get('benign_dropped', '?')} benign dropped"
            )
        if "alignment" in defense.streams:
            streams["alignment"] = load_examples(
                cfg.alignment_data,
                "alignment",
                "train",
                reg,
                ctx,
                fields=fields_for(cfg, "alignment_data"),
                options=opts,
            )
            sources["alignment"] = {"spec": cfg.alignment_data, "count": len(streams["alignment"])}
        main = _with_appended(defense, user, streams, sources, cfg, reporter)
        probes = _analysis_probes(cfg, reg, ctx, harmful, mixture) if cfg.analysis_every else {}
        spec = model_spec(cfg.model, model_root)
        resolved = models.resolve(spec)
        mode = cfg.lora_mode
        if mode == "auto":
            mode = (resolved.run_manifest or {}).get("finetune_lora", "merge")
        if resolved.is_run and (resolved.run_manifest or {}).get("stage") != "align":
            reporter.warn(
                f"{spec} is a '{resolved.run_manifest.get('stage')}' run, not an "
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
                main,
                streams,
                sources,
                {
                    "composition": mixture.composition(),
                    "aligned_run": str(Path(spec).resolve()) if resolved.is_run else None,
                    **({"analysis": _probe_record(cfg, probes)} if probes else {}),
                },
                probes=probes,
                probe_every=cfg.analysis_every,
            ),
            start_recipe=resolved.recipe,
            lora_mode=mode,
            reporter=reporter,
        )

    return guard(run_dir, body)


def _with_appended(
    defense: Any,
    user: list[Any],
    streams: dict[str, list[Any]],
    sources: dict[str, Any],
    cfg: FinetuneConfig,
    reporter: Reporter,
) -> list[Any]:
    """The main data the loop trains on: the user data plus what the defense appends to it
    (``FinetuneDefense.appended_user_data``, e.g. safety-data mixing). The user data's
    bookkeeping (``composition``, ``data.main.count``) stays n; the addition is recorded under
    ``data.main.appended`` with where it came from, how many and its hash."""
    from hftguard.data.inputs import data_hash

    extra = list(defense.appended_user_data(streams))
    if not extra:
        return user
    sources["main"]["appended"] = {
        "by": defense.name,
        "spec": cfg.alignment_data if "alignment" in streams else "",
        "count": len(extra),
        "sha256": data_hash(extra),
    }
    # train_stage hashes the data trained on as data.main.sha256; this is the user data alone
    sources["main"]["user_sha256"] = data_hash(user)
    sources["main"]["trained_count"] = len(user) + len(extra)
    reporter.info(
        f"{defense.name}: appended {len(extra)} examples to the user data "
        f"({len(user)} -> {len(user) + len(extra)} training examples)"
    )
    return [*user, *extra]


def _analysis_probes(
    cfg: FinetuneConfig, reg: Any, ctx: Any, harmful: list[Any], mixture: Any
) -> dict[str, list[Any]]:
    """The fixed probe sets of the analysis metrics (hftguard.engine.probes): refusal answers of the
    alignment data, harmful attack samples the user data does not contain, and a sample of the
    user data itself (harmful first, then benign) for the per-sample gradient norms."""
    from hftguard.data.inputs import fields_for, load_examples

    k = cfg.analysis_samples
    alignment = load_examples(
        cfg.alignment_data,
        "alignment",
        "train",
        reg,
        ctx,
        fields=fields_for(cfg, "alignment_data"),
        options=cfg.dataset_options,
    )[:k]
    used = set(mixture.harmful_ids)
    held_out = [e for e in harmful if str(e.meta.get("id", e.prompt[:40])) not in used][:k]
    user_h = [e for e in mixture.examples if e.kind == "harmful"][:k]
    user_b = [e for e in mixture.examples if e.kind != "harmful"][:k]
    return {"alignment": alignment, "harmful": held_out, "user": user_h + user_b}


def _probe_record(cfg: FinetuneConfig, probes: dict[str, list[Any]]) -> dict[str, Any]:
    return {
        "every": cfg.analysis_every,
        "alignment_probe": {"spec": cfg.alignment_data, "count": len(probes["alignment"])},
        "harmful_probe": {"spec": cfg.harmful, "count": len(probes["harmful"]), "held_out": True},
        "user_probe": {
            "harmful": sum(e.kind == "harmful" for e in probes["user"]),
            "benign": sum(e.kind != "harmful" for e in probes["user"]),
        },
    }
