"""``hftguard repair``: repair a fine-tuned model after the user's fine-tuning (post-fine-tuning
defenses: SafeLoRA, ...).

A linear recipe: plan (the config, the defense built once, the attacked run read and checked),
open the run directory, let the defense write its repaired artefact into it, write the manifest.
The repaired model is a recipe like every stage's (base + adapters): the attacked model's with its
fine-tuning adapter replaced by the repaired one, so ``hftguard eval --model DIR`` takes it as it
takes an attacked run, and ``hftguard export DIR`` exports it with the repair in its model card.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.config import RepairConfig, validate_stage
from hftguard.console import Reporter
from hftguard.context import RepairContext
from hftguard.errors import ConfigError, ModelError
from hftguard.pipeline.common import (
    check_components,
    component_record,
    get_registry,
    guard,
    model_spec,
    start_run,
)
from hftguard.registry import Registry
from hftguard.runs import RunDir, atomic_write_json, stamp

KIND = "repair-defense"


@dataclass
class _Plan:
    info: Any  # the defense's ComponentInfo
    defense: Any
    spec: str  # the attacked run, as given (relative to the grid root inside a grid)
    recipe: Any  # ModelRecipe of the attacked model
    underneath: list[str]  # the adapters under the fine-tuning adapter (the aligned model's)
    manifest: dict[str, Any]  # the attacked run's
    streams: dict[str, list[Any]]  # the data the defense declared, loaded and checked
    sources: dict[str, Any]  # what was loaded, for the manifest
    template: str  # the calibration data's prompt template (default: the attack's own)


def run(
    cfg: RepairConfig,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
    model_root: str | Path | None = None,
) -> dict[str, Any]:
    """Repair the fine-tuned model of the run directory ``cfg.model`` into ``out``."""
    reporter = reporter or Reporter()
    reg = get_registry(registry)
    plan = _plan(cfg, reg, model_root)
    run_dir, done = start_run(
        out,
        "repair",
        cfg,
        resume=resume,
        overwrite=overwrite,
        command=command,
        model_root=model_root,
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()
    return guard(run_dir, lambda: _repair(cfg, plan, run_dir, reporter))


def _plan(cfg: RepairConfig, reg: Registry, model_root: str | Path | None) -> _Plan:
    """Everything that can be wrong fails here, before the run directory exists."""
    from hftguard.engine import models

    validate_stage(cfg)
    if not cfg.defense:
        raise ConfigError(
            "No repair defense given.", hint="Pass --defense safelora (see `hftguard plugins`)."
        )
    defense = check_components(cfg, reg)[KIND, cfg.defense]
    spec = model_spec(cfg.model, model_root)
    resolved = models.resolve(spec)
    manifest = resolved.run_manifest or {}
    if not resolved.is_run or manifest.get("stage") != "finetune":
        raise ModelError(
            f"--model {spec} is not a finished attack-finetune run: repair works on the model "
            "a user's fine-tuning produced.",
            hint="Pass the run directory of `hftguard attack-finetune` (in a grid: "
            "GRID/cells/CELL/attacked).",
        )
    if manifest.get("lora_mode") == "continue":
        raise ModelError(
            f"{spec} fine-tuned the alignment adapter itself (lora_mode 'continue'), so its "
            "fine-tuning update is not a separate adapter that a repair can project.",
            hint="Repair a run fine-tuned with lora_mode = 'merge' (a new adapter on the "
            "merged aligned model).",
        )
    recipe = resolved.recipe
    if not recipe.adapters:
        raise ModelError(f"{spec} has no LoRA adapter to repair.")
    if len(recipe.adapters) < 2 and getattr(defense, "needs_alignment", True):
        raise ModelError(
            f"{spec} was fine-tuned from a model without an alignment adapter, so there is no "
            "alignment update to repair it towards.",
            hint="Repair a model fine-tuned from an aligned run (hftguard align, then "
            "attack-finetune --model ALIGNED_RUN).",
        )
    from hftguard.engine.repair import read_lora

    read_lora(recipe.adapters[-1])  # a readable LoRA adapter, before the run directory exists
    streams, sources = _load_streams(cfg, reg, defense)
    template = cfg.template or str((manifest.get("config") or {}).get("template") or "chat")
    return _Plan(
        reg.get(KIND, cfg.defense),
        defense,
        spec,
        recipe,
        list(recipe.adapters[:-1]),
        manifest,
        streams,
        sources,
        template,
    )


#: The streams a repair defense may declare, and the config key that names each one's data.
STREAMS = {"harmful": "harmful"}


def _load_streams(
    cfg: RepairConfig, reg: Registry, defense: Any
) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The data the defense declared in ``streams`` (train split), before the run directory."""
    from hftguard.context import DataContext
    from hftguard.data.inputs import check_data_fields, fields_for, load_examples
    from hftguard.pipeline.common import check_streams_have_data

    check_data_fields(cfg)
    unknown = [name for name in defense.streams if name not in STREAMS]
    if unknown:
        raise ConfigError(
            f"repair defense {cfg.defense} declares the stream {unknown[0]!r}, which the repair "
            "stage does not provide.",
            hint=f"A repair defense may declare: {', '.join(STREAMS)}.",
        )
    streams: dict[str, list[Any]] = {}
    sources: dict[str, Any] = {}
    for name in defense.streams:
        spec = getattr(cfg, STREAMS[name])
        streams[name] = load_examples(
            spec,
            name,
            "train",
            reg,
            DataContext(seed=cfg.seed),
            limit=cfg.samples,
            fields=fields_for(cfg, STREAMS[name]),
            options=cfg.dataset_options,
        )
        sources[name] = {"spec": spec, "split": "train", "count": len(streams[name])}
    check_streams_have_data(defense, streams, {n: getattr(cfg, STREAMS[n]) for n in streams})
    return streams, sources


def _repair(cfg: RepairConfig, plan: _Plan, run_dir: RunDir, reporter: Reporter) -> dict[str, Any]:
    from hftguard.engine import models

    t0 = time.time()
    recipe = plan.recipe
    tokenizer = functools.cache(lambda: models.load_tokenizer(recipe.base))  # once per repair
    ctx = RepairContext(
        adapter=Path(recipe.adapters[-1]),
        underneath=plan.underneath,
        base=recipe.base,
        output_dir=run_dir.path,
        reporter=reporter,
        seed=cfg.seed,
        write_json=lambda name, data: atomic_write_json(run_dir.path / name, data),
        streams=plan.streams,
        load_model=lambda: _attacked_model(cfg, recipe, tokenizer()),
        batches=lambda name, size, length: _batches(cfg, plan, tokenizer(), name, size, length),
    )
    result = plan.defense.apply(ctx)
    expected = (run_dir.path / "adapter").resolve()
    adapter = Path(str((result or {}).get("adapter", ""))).resolve()
    if adapter != expected:
        raise ModelError(
            f"repair defense {cfg.defense} returned the adapter {adapter}, not {expected}.",
            hint="A repair defense writes its repaired adapter to ctx.output_dir / 'adapter' and "
            'returns {"adapter": that path, "metrics": {...}}.',
        )
    from hftguard.engine.repair import read_lora

    read_lora(adapter)  # eval must be able to load what the manifest will name
    repaired = models.ModelRecipe(recipe.base, recipe.base_spec, [*plan.underneath, str(adapter)])
    return run_dir.update_manifest(
        status="completed",
        model=repaired.as_dict(),
        input_model=recipe.as_dict(),
        attacked_run=str(Path(plan.spec).resolve()),
        components={"defense": component_record(plan.info, plan.defense.config)},
        **({"data": {**plan.sources, "template": plan.template}} if plan.sources else {}),
        repair=result.get("metrics", {}),
        ended_at=stamp(),
        wall_time_s=round(time.time() - t0, 2),
    )


def _attacked_model(cfg: RepairConfig, recipe: Any, tok: Any = None) -> tuple[Any, Any]:
    """The attacked model for ``ctx.load_model``: base + the adapters underneath merged, the
    fine-tuning adapter attached unmerged (PEFT), eval mode, fp32 on the stage's device."""
    import torch
    from peft import PeftModel

    from hftguard.engine import models

    adapters = list(recipe.adapters)
    models._check_adapter(adapters[-1])  # the ones underneath are checked by the merge
    tok = tok if tok is not None else models.load_tokenizer(recipe.base)
    base = models._merge_adapters(models.load_base(recipe.base, torch.float32), adapters[:-1])
    model = PeftModel.from_pretrained(base, adapters[-1])
    model.to(models.pick_device(cfg.device)).eval()
    return model, tok


def _batches(
    cfg: RepairConfig, plan: _Plan, tok: Any, name: str, batch_size: int, max_length: int
) -> list[Any]:
    """``ctx.batches``: a declared stream, encoded with the stage's template (by default the
    attacked run's), in order."""
    from hftguard.data.inputs import collate, encode_all
    from hftguard.data.inputs import pad_id as padding_id
    from hftguard.engine import models

    streams = plan.streams
    if name not in streams:
        raise ConfigError(
            f"repair defense {cfg.defense} asked for the stream {name!r}, which it did not "
            "declare in its `streams`.",
            hint=f"Declared: {', '.join(streams) or 'none'}.",
        )
    pad = padding_id(tok)
    encoded = encode_all(streams[name], tok, plan.template, max_length)
    device = models.pick_device(cfg.device)
    return [
        collate(encoded[i : i + batch_size], pad).to(device)
        for i in range(0, len(encoded), batch_size)
    ]
