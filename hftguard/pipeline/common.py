"""What the two training stages (align, attack-finetune) share: opening the run directory, loading
the model, encoding data, running the loop, saving the adapter and writing the manifest."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard import config as cfgmod
from hftguard.console import Reporter
from hftguard.context import DataContext, PlanContext
from hftguard.engine import distributed
from hftguard.errors import ConfigError, DataError, HftguardError, RunDirError
from hftguard.records import Example
from hftguard.registry import ComponentInfo, Registry, default_registry
from hftguard.runs import (
    RunDir,
    base_manifest,
    has_checkpoint,
    now,
    open_run_dir,
    settle_replacement,
    stamp,
)


@dataclass
class StageInputs:
    """Everything a training stage needs once data and components are resolved."""

    main: list[Example]
    streams: dict[str, list[Example]]
    data_sources: dict[str, Any] = field(default_factory=dict)
    extra_manifest: dict[str, Any] = field(default_factory=dict)
    #: Analysis probe sets ("alignment", "harmful", "user") and how often to probe (0 = never).
    probes: dict[str, list[Example]] = field(default_factory=dict)
    probe_every: int = 0


def component_record(info: ComponentInfo, options: Any = None) -> dict[str, Any]:
    rec = {
        "name": info.name,
        "kind": info.kind,
        "version": info.version,
        "distribution": info.distribution,
        "distribution_version": info.distribution_version,
        "plugin": info.plugin,
    }
    if options is not None:
        rec["options"] = (
            cfgmod.as_dict(options) if hasattr(options, "__dataclass_fields__") else options
        )
    if info.cls.license_note:
        rec["license_note"] = info.cls.license_note
    return rec


def model_spec(model: str, model_root: str | Path | None) -> str:
    """Where a stage finds its input model: ``model`` itself, or, inside a grid, ``model`` relative
    to ``model_root`` (the grid's root; the manifest records it as ``model_root``)."""
    return model if model_root is None else str(Path(model_root) / model)


def same_stage_config(recorded: Any, cfg: Any, model_root: str | Path | None = None) -> bool:
    """``cfgmod.same_config``, for a stage whose ``cfg.model`` is relative to ``model_root``: a
    run recorded before grids recorded relative paths (its model spelled ``ROOT/model``, ROOT as
    given to ``hftguard run --out``) is the same run too."""
    if cfgmod.same_config(recorded, cfg):
        return True
    if model_root is None or not isinstance(getattr(cfg, "model", None), str):
        return False
    return cfgmod.same_config(
        recorded, dataclasses.replace(cfg, model=model_spec(cfg.model, model_root))
    )


def base_changed(recorded: dict[str, Any], cfg: Any) -> str | None:
    """Why a run's base model is not the one ``cfg.model`` names now, in words, or None.

    Only a run that read its base weights itself is checked (its ``input_model`` or
    ``evaluated_model`` has no adapters and a ``base_key``, ``models.recipe_record``): one built
    on another run rests on that run, which is checked itself. The key now is that of the
    directory ``cfg.model`` loads from now (``models.base_dir_now``: a re-exported local
    directory, a GGUF file's conversion, a hub cache holding a newer revision), or of the
    recorded base where the spec names none. A GGUF file replaced but not converted yet is
    compared with the file the recorded base was converted from (its ``SOURCE.txt``). Weights
    that cannot be read now are not a change."""
    from hftguard.engine import models
    from hftguard.pipeline.cache import file_sha256, weights_key

    model = recorded.get("input_model") or recorded.get("evaluated_model")
    if not isinstance(model, dict) or model.get("adapters") or not model.get("base_key"):
        return None
    then, base = str(model["base_key"]), str(model.get("base"))
    spec = getattr(cfg, "model", None)
    now_dir = models.base_dir_now(spec) if isinstance(spec, str) else None
    gguf = Path(spec).expanduser() if isinstance(spec, str) and spec.endswith(".gguf") else None
    if now_dir is None and gguf is not None and gguf.is_file():
        source = models.gguf_source(Path(base))
        if source is None or source == (current := file_sha256(gguf)):
            return None
        return (
            f"its base model {spec} is another file now (sha256 {current[:12]}; the run read "
            f"{base}, converted from sha256 {source[:12]})"
        )
    now = weights_key(now_dir) if now_dir is not None else models.base_key(base)
    if now is None or now == then:
        return None
    if now_dir is None or str(now_dir) == base:
        where = f"{base} holds other weights now"
    else:
        where = f"it read {base}, and {spec} loads {now_dir} now"
    return (
        f"the weights of its base model {spec} changed since it ran: {where} (content key "
        f"{then[:12]} then, {now[:12]} now)"
    )


#: What to do about :func:`base_changed` (start_run, train_stage).
def _base_changed_hint(path: Path) -> str:
    return (
        f"To rebuild it on the new weights, delete {path} (in a grid, the stages built on it "
        "are then rebuilt too) or, for this stage alone, pass --overwrite. To keep it, put the "
        "old weights back, or write runs on the new weights to another --out."
    )


def start_run(
    out: str | Path,
    stage: str,
    cfg: Any,
    *,
    resume: bool,
    overwrite: bool,
    command: list[str] | None,
    model_root: str | Path | None = None,
) -> tuple[RunDir, bool]:
    """Open (and lock) the run dir. Returns (run, already_done). A resumed run must have the same
    config.

    With ``overwrite``, the run it replaces waits aside (manifest ``replaces``) until this one
    completes, and is put back if this one fails first with nothing to resume from
    (:func:`fail_run`), e.g. on a missing data file or model found only now.

    The run directory stays locked (``runs.RunLock``) until the stage releases it (:func:`guard`);
    when it is already done, or cannot be opened, it is released here. ``model_root``: the grid
    root ``cfg.model`` is relative to; recorded as ``model_root``, relative to the run directory,
    so the grid can move (:func:`model_spec`).
    """
    run = open_run_dir(out, stage, resume=resume, overwrite=overwrite)
    try:
        cfg_dict = cfgmod.as_dict(cfg)
        if run.resumed:
            old = run.read_manifest()
            if not same_stage_config(old.get("config"), cfg, model_root):
                changed = sorted(k for k in cfg_dict if old.get("config", {}).get(k) != cfg_dict[k])
                raise RunDirError(
                    f"Cannot resume {run.path}: the configuration differs from the original run "
                    f"(changed: {', '.join(changed) or 'format'}).",
                    hint="Resume with the same options, or use --overwrite to start again.",
                )
            if why := base_changed(old, cfg):
                raise RunDirError(
                    f"Cannot resume {run.path}: {why}.", hint=_base_changed_hint(run.path)
                )
            if old.get("status") == "completed":
                # a kill between the completed manifest and the clean-up leaves checkpoints
                shutil.rmtree(run.checkpoints, ignore_errors=True)
                run.release()
                return run, True
            # the stop being resumed from is history, not this run's state: a run that then
            # completes must not read as completed with an error beside it (nor a running one
            # as ended)
            stops = list(old.get("earlier_stops") or [])
            if "error" in old:
                stops.append({k: old[k] for k in ("status", "error", "ended_at") if k in old})
            run.update_manifest(
                drop=("error", "ended_at"),
                status="running",
                resumed_at=now(),
                **({"earlier_stops": stops} if stops else {}),
            )
            return run, False
        manifest = base_manifest(stage, command, cfg_dict, getattr(cfg, "seed", 0))
        if model_root is not None:
            manifest["model_root"] = Path(os.path.relpath(model_root, run.path)).as_posix()
        if run.replaced is not None:
            manifest["replaces"] = run.replaced.name
        run.update_manifest(**manifest)
    except BaseException:
        run.release()
        raise
    return run, False


def fail_run(run: RunDir, exc: BaseException) -> None:
    """Mark ``run`` failed (or interrupted). If it was replacing a run (``--overwrite``), put that
    one back unless this one has a checkpoint to resume from (``runs.settle_replacement``)."""
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    try:
        if run.read_manifest().get("status") == "completed":
            return  # interrupted during the clean-up after completion: the run stays complete
    except Exception:
        pass
    try:
        run.update_manifest(status=status, error=f"{type(exc).__name__}: {exc}", ended_at=stamp())
    except Exception:  # never hide the original error
        pass
    try:
        note = settle_replacement(run.path, resumable=has_checkpoint(run.path))
    except Exception as err:  # never hide the original error
        note = f"Could not put back the run that {run.path} was replacing: {err}"
    if note:
        from hftguard.console import stderr

        stderr.print(f"Note: {note}", highlight=False)


def data_ctx(seed: int, reporter: Reporter) -> DataContext:
    return DataContext(seed=seed, reporter=reporter)


def get_registry(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


def check_streams(defense: Any, available: Sequence[str]) -> None:
    missing = [s for s in defense.streams if s not in available]
    if missing:
        raise ConfigError(
            f"Defense '{defense.name}' needs the data stream(s) {missing}, which this "
            "stage does not provide.",
            hint="Use it in the other stage.",
        )


# ---------------------------------------------------------------------------------------------
# The budget: a stage whose defense or data cannot run as intended stops before it writes anything


def config_steps(cfg: Any) -> tuple[int, str] | None:
    """(optimizer steps, where they come from) of a training stage when the config alone
    determines them: always for attack-finetune (the user data has exactly ``samples`` examples),
    for align only with ``max_steps`` (otherwise they depend on the data and the retain set)."""
    t = cfg.train
    if t.max_steps < 1 and not (math.isfinite(t.epochs) and t.epochs > 0 and t.batch_size >= 1):
        return None  # out of range: validate_stage's error
    if t.max_steps > 0 or isinstance(cfg, cfgmod.FinetuneConfig):
        return data_steps(cfg, cfg.samples)
    return None


def data_steps(cfg: Any, n_main: int, what: str = "samples") -> tuple[int, str]:
    """(optimizer steps, where they come from) for ``n_main`` examples of main data.

    The count is ``hftguard.engine.training.total_steps`` (a test keeps the two equal); it is
    repeated here so that ``hftguard validate`` need not import torch.
    """
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps, f"max_steps={t.max_steps}"
    steps = max(1, math.ceil(t.epochs * math.ceil(n_main / t.batch_size)))
    return steps, f"{what}={n_main}, batch_size={t.batch_size}, epochs={t.epochs:g}"


def plan_defense(defense: Any, cfg: Any, steps: tuple[int, str], stage: str) -> None:
    """Let the defense check (or, where its options allow, adapt) its schedule to the budget."""
    defense.plan(
        PlanContext(
            total_steps=steps[0],
            batch_size=cfg.train.batch_size,
            steps_source=steps[1],
            stage=stage,
            group_by_length=cfg.train.group_by_length,
        )
    )


def check_poison_counts(cfg: Any) -> None:
    """The attack must be the one asked for: harmful_ratio > 0 needs at least one harmful user
    example and harmful_ratio < 1 at least one benign one, after ``mix_poison``'s rounding.
    p = 0 (a clean run) and p = 1 (all harmful) are legal."""
    n, p = cfg.samples, cfg.harmful_ratio
    if not (math.isfinite(p) and 0 <= p <= 1 and n >= 1):
        return  # out of range: validate_stage's error
    n_h = round(p * n)  # exactly as data.inputs.mix_poison counts them (round half to even)
    if p > 0 and n_h == 0:
        m = max(n + 1, math.floor(0.5 / p))
        while round(p * m) < 1:
            m += 1
        p_min = _round_up(1 / n)
        raise ConfigError(
            f"harmful_ratio = {p} of samples = {n} is {p * n:.3g}, which rounds to 0 harmful "
            "examples: the attack would silently be a clean, benign-only fine-tuning run.",
            hint=f"Use samples >= {m} (--samples {m}) or harmful_ratio >= {p_min} "
            f"({p_min} x {n} rounds to 1 harmful example); or set harmful_ratio = 0 for a clean "
            "run on purpose.",
        )
    if p < 1 and n_h == n:
        m = max(n + 1, math.floor(0.5 / (1 - p)))
        while round(p * m) >= m:
            m += 1
        p_max = math.floor((n - 1) / n * 1000) / 1000
        raise ConfigError(
            f"harmful_ratio = {p} of samples = {n} is {p * n:.3g}, which rounds to {n} harmful "
            "and 0 benign examples: the benign task would silently drop out of the user data.",
            hint=f"Use samples >= {m} (--samples {m}) or harmful_ratio <= {p_max}; or set "
            "harmful_ratio = 1 for an all-harmful attack on purpose.",
        )


def _round_up(x: float, places: int = 3) -> float:
    """``x`` rounded up to ``places`` decimals (for hints that must reach a threshold)."""
    return math.ceil(x * 10**places - 1e-9) / 10**places


def check_streams_have_data(
    defense: Any, streams: dict[str, list[Any]], specs: dict[str, str]
) -> None:
    """Every extra stream the defense draws from must have examples."""
    for name in defense.streams:
        if name in streams and not streams[name]:
            raise DataError(
                f"Defense '{defense.name}' draws from the '{name}' stream, but its data "
                f"'{specs.get(name, '?')}' has no rows.",
                hint="Point it at a dataset or file with examples.",
            )


@dataclass
class OpenedStage:
    """A training stage whose inputs are checked and whose run directory is open."""

    registry: Registry
    info: ComponentInfo
    defense: Any
    run: RunDir
    done: bool
    #: What the stage's ``prepare`` returned (data loaded and checked before the run dir).
    prepared: Any = None


def open_training_stage(
    cfg: Any,
    out: str | Path,
    *,
    kind: str,
    stage: str,
    streams: Sequence[str],
    registry: Registry | None,
    reporter: Reporter,
    resume: bool,
    overwrite: bool,
    command: list[str] | None,
    prepare: Callable[[Registry, Any], Any] | None = None,
    model_root: str | Path | None = None,
) -> OpenedStage:
    """Validate ``cfg``, build the defense, check every name and the budget, then open the run
    directory.

    Everything that can be wrong with the input fails here, before the run directory exists:
    the config, the names, whether the defense's schedule fits the run (``Defense.plan``) when
    the step count is known from the config, and whatever ``prepare(registry, defense)`` checks
    (it may load data; its result is ``OpenedStage.prepared``).
    With several processes (``torchrun``, ``accelerate launch``) every process validates, process
    0 alone opens (and locks) the run directory, and the others get its path
    (``hftguard.engine.distributed``).
    """
    team = distributed.join(lambda: _trains_on_cpu(cfg))
    team.begin_stage()
    opened: list[RunDir] = []

    def open_stage() -> OpenedStage:
        reg = get_registry(registry)
        cfgmod.validate_stage(cfg)
        info = reg.get(kind, cfg.defense)
        defense = check_components(cfg, reg)[kind, cfg.defense]  # built once, here
        check_streams(defense, streams)
        prepared = prepare(reg, defense) if prepare is not None else None
        if not team.is_main:  # filled in from process 0's answer below
            return OpenedStage(reg, info, defense, RunDir(Path(out), stage), False, prepared)
        run, done = start_run(
            out,
            stage,
            cfg,
            resume=resume,
            overwrite=overwrite,
            command=command,
            model_root=model_root,
        )
        opened.append(run)
        return OpenedStage(reg, info, defense, run, done, prepared)

    try:
        result, shared = team.sync(
            "open", open_stage, share=lambda o: (str(o.run.path), o.run.resumed, o.done)
        )
    except distributed.PeerFailed as exc:  # another process rejected the input
        if opened:
            fail_run(opened[0], exc)
            opened[0].release()
        raise
    except BaseException:
        if opened:
            opened[0].release()
        raise
    if not team.is_main:
        path, resumed, result.done = shared
        result.run = RunDir(Path(path), stage, resumed)
    if result.done:
        team.end_stage()
        reporter.info(f"{result.run.path} is already complete; nothing to do.")
    return result


def _trains_on_cpu(cfg: Any) -> bool:
    import torch

    return cfg.train.device == "cpu" or (
        cfg.train.device == "auto" and not torch.cuda.is_available()
    )


def _input_model(run: RunDir, recipe: Any) -> dict[str, Any]:
    """The ``input_model`` record of a training run (``models.recipe_record``). A resumed run
    whose recorded base weights differ from those just loaded is refused: its checkpoint was
    trained on the others (``start_run`` checks the spec before; this catches what changed
    while loading, or a GGUF file converted anew)."""
    from hftguard.engine import models

    record = models.recipe_record(recipe)
    if run.resumed:
        old = run.read_manifest().get("input_model")
        then = old.get("base_key") if isinstance(old, dict) and not old.get("adapters") else None
        now = record.get("base_key")
        if then and now and then != now:
            raise RunDirError(
                f"Cannot resume {run.path}: the base model {recipe.base_spec} loaded now has "
                f"other weights than the run was trained on (content key {str(then)[:12]} "
                f"then, {str(now)[:12]} now; {recipe.base}).",
                hint=_base_changed_hint(run.path),
            )
    return record


def train_stage(
    *,
    stage: str,
    cfg: Any,
    run: RunDir,
    defense: Any,
    defense_info: ComponentInfo,
    inputs: StageInputs,
    start_recipe: Any,
    lora_mode: str,
    reporter: Reporter,
) -> dict[str, Any]:
    """Load the model, train with the defense, save the adapter, complete the manifest."""
    from hftguard.data.inputs import data_hash, encode_all, hub_sources
    from hftguard.data.inputs import pad_id as padding_id
    from hftguard.engine import models, training

    t0 = time.time()
    # The schedule against the loop's own step count, before the model is loaded (align: known
    # only now, with the retain set; attack-finetune: checked before the run dir already).
    _, source = data_steps(cfg, len(inputs.main), "samples" if stage == "finetune" else "examples")
    plan_defense(defense, cfg, (training.total_steps(len(inputs.main), cfg.train), source), stage)
    team = distributed.current()
    device = team.device(models.pick_device(cfg.train.device))
    dtype, precision = models.setup_precision(cfg.train.precision, device, reporter.warn)
    reporter.info(
        f"{stage}: loading {start_recipe.base_spec} on {device} ({str(dtype)[6:]}), "
        f"LoRA mode {lora_mode}"
    )
    model, tok, underneath = models.load_for_training(
        start_recipe, lora_mode, cfg.lora, device, dtype, cfg.seed
    )
    main = encode_all(inputs.main, tok, cfg.template, cfg.train.max_length, defense.refusal_view)
    streams = {
        name: encode_all(ex, tok, cfg.template, cfg.train.max_length, defense.refusal_view)
        for name, ex in inputs.streams.items()
        if name in defense.streams
    }
    sources = {k: {**v} for k, v in inputs.data_sources.items()}
    sources.setdefault("main", {})["sha256"] = data_hash(inputs.main)
    if hub_sources(inputs.main):  # hf:ID datasets: id, config, split, revision, content sha256
        sources["main"]["hf"] = hub_sources(inputs.main)
    for name, ex in inputs.streams.items():
        if name in defense.streams:
            sources.setdefault(name, {})["sha256"] = data_hash(ex)
            if hub_sources(ex):
                sources[name]["hf"] = hub_sources(ex)
    record = component_record(defense_info, defense.config)
    effective = defense.effective_options()
    if effective:  # what Defense.plan changed (e.g. Lisa's scaled schedule), as run
        record["effective"] = effective
    if team.is_main:
        # what was loaded (a hub model may have just downloaded a newer revision): a resumed
        # run's checkpoint on other base weights is not continued (a refusal here reaches the
        # other processes at the "ready" sync point, through guard's team.fail)
        input_model = _input_model(run, start_recipe)
        run.update_manifest(
            components={"defense": record},
            data=sources,
            input_model=input_model,
            lora_mode=lora_mode,
            device=str(device),
            dtype=str(dtype),
            precision=precision,
            **inputs.extra_manifest,
            **({"processes": team.world} if team.multi else {}),
        )
    pad_id = padding_id(tok)
    probe = None
    if inputs.probe_every and team.is_main:
        from hftguard.engine.probes import FinetuneProbe

        def enc(name: str) -> list[Any]:
            return encode_all(inputs.probes.get(name, []), tok, cfg.template, cfg.train.max_length)

        probe = FinetuneProbe(
            model,
            alignment=enc("alignment"),
            harmful=enc("harmful"),
            user=enc("user"),
            params=models.trainable_parameters(model),
            every=inputs.probe_every,
            total=training.total_steps(len(main), cfg.train),
            pad_id=pad_id,
            device=device,
            out_dir=run.path,
        )
    team.sync("ready", lambda: None)  # every process has its data and model
    team.training(True)
    result = training.train(
        model,
        defense,
        main,
        streams,
        cfg.train,
        run,
        reporter,
        seed=cfg.seed,
        pad_id=pad_id,
        device=device,
        dtype=dtype,
        label=stage,
        after_step=probe,
        keep_checkpoints=True,
    )
    team.training(False)
    if not team.is_main:
        return {}  # process 0 saves the adapter and the manifest; guard() returns its manifest
    # The checkpoints (one at the last step) stay until the adapter and the completed manifest
    # are durable: a crash or a full disk before that resumes at the end of training.
    import shutil

    from hftguard.engine.checkpoints import fsync_dir
    from hftguard.pipeline import trend

    loss_trend = trend.loss_trend(trend.read_log(run.path / f"{stage}_log.jsonl"))
    message = trend.warning(stage, loss_trend, trend.hint_for(defense))
    if message:
        reporter.warn(message)
    adapter_dir = run.path / "adapter"
    models.save_adapter(model, adapter_dir)  # fsynced
    recipe = models.ModelRecipe(
        underneath.base, underneath.base_spec, [*underneath.adapters, str(adapter_dir.resolve())]
    )
    manifest = run.update_manifest(
        status="completed",
        model=recipe.as_dict(),
        training={**result.as_dict(), **({"loss_trend": loss_trend} if loss_trend else {})},
        ended_at=stamp(),
        wall_time_s=round(time.time() - t0, 2),
    )
    fsync_dir(run.path)  # the manifest's rename
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    return manifest


def guard(run: RunDir, fn: Any) -> Any:
    """Run ``fn``, mark the run failed/interrupted if it raises, and release the run directory's
    lock (:func:`start_run`) either way.

    In a training stage run by several processes, an error is also reported to the others at the
    next sync point, and every process returns process 0's result.
    """
    team = distributed.current()
    if not (team.multi and team.active):
        try:
            return fn()
        except (HftguardError, Exception, KeyboardInterrupt) as exc:
            fail_run(run, exc)
            raise
        finally:
            run.release()
    try:
        try:
            result = fn()
        except (HftguardError, Exception, KeyboardInterrupt) as exc:
            if team.is_main:
                fail_run(run, exc)
            team.fail(exc)
            raise
        return team.sync("done", lambda: result, share=lambda r: r)[1]
    finally:
        team.end_stage()
        run.release()


def check_components(cfg: Any, reg: Registry) -> dict[tuple[str, str], Any]:
    """Resolve every component and dataset name in ``cfg`` and build every component Config.

    Returns the defense and judges it built, by ``(kind, name)``, so that a stage builds each of
    its components once (datasets are built again where they load, with their context).

    Called before a stage creates its run directory, so a typo never leaves a failed run behind,
    and by ``hftguard validate`` and ``hftguard run --dry-run``. It also checks what the config
    alone says about the run's budget: the defense's schedule (``Defense.plan``) when the step
    count is known without data, and that the poisoned mixture has the harmful and benign
    examples its ratio asks for.
    """
    from hftguard.data.inputs import check_data_fields, is_file_spec

    check_data_fields(cfg)

    def datasets(*pairs: tuple[str, str]) -> None:
        for spec, role in pairs:
            if spec and not is_file_spec(spec):
                reg.dataset(spec, role)
        for name, options in getattr(cfg, "dataset_options", {}).items():
            reg.instantiate("dataset", name, options, f"dataset_options.{name}")

    from hftguard.trackers import check_names

    check_names(getattr(cfg, "report_to", None) or [], reg)
    built: dict[tuple[str, str], Any] = {}
    if isinstance(cfg, cfgmod.PipelineConfig):
        for sub in (cfg.align, cfg.finetune, cfg.eval):
            built.update(check_components(sub, reg))
    elif isinstance(cfg, cfgmod.AlignConfig):
        d = built["alignment-defense", cfg.defense] = reg.instantiate(
            "alignment-defense", cfg.defense, cfg.defense_options, "defense_options"
        )
        datasets((cfg.data, "alignment"), (cfg.harmful, "harmful"), (cfg.retain, "instructions"))
        steps = config_steps(cfg)
        if steps is not None:
            plan_defense(d, cfg, steps, "align")
    elif isinstance(cfg, cfgmod.FinetuneConfig):
        d = built["finetune-defense", cfg.defense] = reg.instantiate(
            "finetune-defense", cfg.defense, cfg.defense_options, "defense_options"
        )
        if cfg.screen:  # the screening judge's name and options, before anything is written
            reg.instantiate("judge", cfg.screen, cfg.screen_options, "screen_options")
        datasets((cfg.task, "task"), (cfg.harmful, "harmful"), (cfg.alignment_data, "alignment"))
        check_poison_counts(cfg)
        steps = config_steps(cfg)
        if steps is not None:
            plan_defense(d, cfg, steps, "finetune")
    elif isinstance(cfg, cfgmod.RepairConfig):
        built["repair-defense", cfg.defense] = reg.instantiate(
            "repair-defense", cfg.defense, cfg.defense_options, "defense_options"
        )
    elif isinstance(cfg, cfgmod.EvalConfig):
        for j in cfg.judges:
            built["judge", j] = reg.instantiate(
                "judge", j, cfg.judge_options.get(j, {}), f"judge_options.{j}"
            )
        for t in cfg.tasks:
            if not is_file_spec(t):  # a file task is scored by task_scoring (data.filetask)
                reg.dataset(t, "task")
        for sink in cfg.sinks:
            reg.get("report-sink", sink)
        datasets((cfg.harmful_prompts, "harmful-eval"), (cfg.benign_prompts, "benign-eval"))
    return built


def check_eval_files(cfg: cfgmod.EvalConfig) -> None:
    """A :class:`DataError` for every eval file (prompts, file tasks) that is not there, so a
    wrong path fails before the run directory is made or a model is loaded."""
    from hftguard.pipeline.preflight import data_problem

    named = [("harmful_prompts", cfg.harmful_prompts), ("benign_prompts", cfg.benign_prompts)]
    named += [(f"tasks[{i}]", t) for i, t in enumerate(cfg.tasks)]
    problems = [p for key, spec in named if (p := data_problem(spec, key))]
    if problems:
        raise DataError(
            " ".join(problems),
            hint="Check the path (relative to the current directory), or give a dataset name "
            "(hftguard datasets).",
        )
