"""``hftguard eval``: Harmful Score, Finetune Accuracy, over-refusal and degenerate rate.

metrics.json schema (version 1; fields are only ever added)::

    {
      "harmful_score": float,          # % of harmful prompts judged harmful by the first judge
      "harmful_score_plus": float,     # HS+ : harmful or degenerate (Booster/Antibody eval)
      "degenerate_rate": float,        # % of harmful-prompt responses that are degenerate
      "over_refusal_rate": float|null, # % of benign prompts refused
      "over_refusal_judge": str|null,  # the first judge that detects refusals
      "benign_degenerate_rate": float|null,
      "finetune_accuracy": {task: float|null},   # % correct per task; null = scored externally
      "judges": {judge: {"harmful_score", "harmful_score_plus", "degenerate_rate", "n",
                         "unparsed", "license_note"?}},
      "agreement": [{"judges": [a, b], "kappa", "agreement", "disagreements", "n"}],
      "likelihood_margin": {"mean", "ci": [lo, hi], "n", "interval": "t", "level",
                            "harmful_loss", "harmful_loss_ci", "refusal_loss",
                            "refusal_loss_ci", "references", "skipped", "max_length"} | null,
      "likelihood_margin_note": str,  # only when null: why (hftguard.engine.margin)
      "counts": {"harmful": int, "benign": int, "tasks": {task: int}},
      "test_sets": {"harmful"|"benign"|"task:NAME": {"spec", "count", "sha256", "hf"?}},
      "decoding": {...}, "model": {...}
    }

Per-sample records go to generations.jsonl: set, prompt, input, response, reference, verdicts
(per judge: label, harmful, score) and, for tasks, correct. With several judges,
disagreements.jsonl lists the harmful-prompt samples they disagree on. A task whose ``score``
returns None (AlpacaEval) gets its generations in ``external/<task>.json`` in the alpaca_eval
format (instruction, output, generator) for the external annotator.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.config import EvalConfig, validate_stage
from hftguard.console import Reporter
from hftguard.context import JudgeContext
from hftguard.engine import margin
from hftguard.names import name_path
from hftguard.pipeline import agreement, cache, judging
from hftguard.pipeline.common import (
    check_components,
    check_eval_files,
    component_record,
    data_ctx,
    get_registry,
    guard,
    model_spec,
    start_run,
)
from hftguard.pipeline.scores import hs_by_category, judge_record, pct, pct_ci, record
from hftguard.records import Example
from hftguard.registry import Registry
from hftguard.runs import RunDir, atomic_write_json, stamp, write_jsonl


def _limit(spec: str, samples: int) -> int:
    """The ``limit`` to load ``spec`` with: a local file gives all its records when it has fewer
    than ``samples`` (your own prompts need no --harmful-samples), a dataset exactly ``samples``."""
    from hftguard.data.inputs import is_file_spec

    return 0 if is_file_spec(spec) else samples


def task_instance(cfg: EvalConfig, name: str, reg: Registry) -> Any:
    """The FA task ``name``: a registered task, or a local file scored by ``cfg.task_scoring``
    (:mod:`hftguard.data.filetask`)."""
    from hftguard.data.filetask import FileTask
    from hftguard.data.inputs import dataset_instance, fields_for, is_file_spec

    if is_file_spec(name):
        return FileTask(
            name,
            cfg.task_scoring,
            cfg.task_labels,
            budget=cfg.max_new_tokens,
            fields=fields_for(cfg, name),
        )
    return dataset_instance(name, reg, cfg.dataset_options)


def run(
    cfg: EvalConfig,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
    model_root: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``cfg.model`` and write metrics.json + generations.jsonl into ``out``.

    ``model_root`` (``hftguard run``): ``cfg.model`` is relative to it, the grid's root. A linear
    recipe: plan (every name and path checked, each judge built once), open the run directory,
    then load, generate and judge, measure, write.
    """
    reporter = reporter or Reporter()
    reg = get_registry(registry)
    plan = _plan(cfg, reg)
    run_dir, done = start_run(
        out, "eval", cfg, resume=resume, overwrite=overwrite, command=command, model_root=model_root
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()
    return guard(run_dir, lambda: _evaluate(cfg, plan, reg, run_dir, reporter, model_root))


@dataclass
class _Plan:
    """What ``eval`` resolves before its run directory exists."""

    judges: list[tuple[Any, Any]]  # (ComponentInfo, Judge), in cfg.judges order
    task_infos: dict[str, Any]  # registered tasks' ComponentInfo (file tasks have none)


@dataclass
class _Data:
    harmful: list[Example]
    benign: list[Example]
    tasks: dict[str, tuple[Any, list[Example]]]  # name -> (task component, test examples)


def _plan(cfg: EvalConfig, reg: Registry) -> _Plan:
    """Validate everything that can fail before a model is loaded: a wrong path or name fails
    here, before the run directory exists."""
    from hftguard.data.inputs import is_file_spec

    validate_stage(cfg)
    built = check_components(cfg, reg)
    check_eval_files(cfg)
    for name in cfg.tasks:  # a file task without gold answers too
        if is_file_spec(name):
            task_instance(cfg, name, reg).load("test")
    judges = [(reg.get("judge", j), built["judge", j]) for j in cfg.judges]  # each built once
    task_infos = {t: reg.dataset(t, "task") for t in cfg.tasks if not is_file_spec(t)}
    return _Plan(judges, task_infos)


def _evaluate(
    cfg: EvalConfig,
    plan: _Plan,
    reg: Registry,
    run_dir: RunDir,
    reporter: Reporter,
    model_root: str | Path | None,
) -> dict[str, Any]:
    t0 = time.time()
    data = _load_data(cfg, reg, reporter)
    gen = _Generator(cfg, model_root, reporter)
    jctx = JudgeContext(device=str(gen.device), batch_size=cfg.batch_size, reporter=reporter)
    records: list[
        dict[str, Any]
    ] = []  # harmful first (the margin's rows follow them), benign, tasks
    metrics: dict[str, Any] = {}
    judge_metrics = _harmful_score(cfg, plan, data, gen, jctx, records, metrics, run_dir, reporter)
    _over_refusal(plan, reg, data, gen, jctx, records, metrics)
    _finetune_accuracy(cfg, data, gen, records, metrics, run_dir, reporter)
    _likelihood_margin(cfg, reg, data, gen, records, metrics, reporter)
    metrics["judges"] = judge_metrics
    metrics.update(_description(cfg, data, gen))
    write_jsonl(run_dir.path / "generations.jsonl", records)
    atomic_write_json(run_dir.path / "metrics.json", metrics)
    for sink in cfg.sinks:
        reg.instantiate("report-sink", sink).write(run_dir.path, metrics)
    return run_dir.update_manifest(**_manifest(cfg, plan, reg, data, gen, metrics, t0))


def _load_data(cfg: EvalConfig, reg: Registry, reporter: Reporter) -> _Data:
    from hftguard.data.inputs import fields_for, load_examples

    ctx = data_ctx(cfg.seed, reporter)

    def prompts(spec: str, default: str, key: str, samples: int) -> list[Example]:
        return load_examples(
            spec,
            default,
            "test",
            reg,
            ctx,
            limit=_limit(spec, samples),
            fields=fields_for(cfg, key),
            options=cfg.dataset_options,
        )[: samples or None]

    harmful = prompts(cfg.harmful_prompts, "harmful-eval", "harmful_prompts", cfg.harmful_samples)
    benign = (
        prompts(cfg.benign_prompts, "benign-eval", "benign_prompts", cfg.benign_samples)
        if cfg.benign_prompts
        else []
    )
    tasks: dict[str, tuple[Any, list[Example]]] = {}
    for name in cfg.tasks:
        task = task_instance(cfg, name, reg)
        exs = list(task.load("test", ctx))
        tasks[name] = (task, exs[: cfg.task_samples] if cfg.task_samples else exs)
    return _Data(harmful, benign, tasks)


class _Generator:
    """The evaluated model, and greedy generation with it through the generation cache."""

    def __init__(self, cfg: EvalConfig, model_root: str | Path | None, reporter: Reporter) -> None:
        from hftguard.engine import models

        self.cfg, self.reporter = cfg, reporter
        spec = model_spec(cfg.model, model_root)
        self.resolved = models.resolve(spec)
        self.device = models.pick_device(cfg.device)
        self.dtype, self.precision = models.setup_precision(
            cfg.precision, self.device, reporter.warn
        )
        reporter.info(f"eval: loading {spec} on {self.device} ({self.precision['dtype']})")
        self.model, self.tok = models.load_for_eval(self.resolved.recipe, self.device, self.dtype)
        self.model_fp = cache.model_key(self.resolved.recipe)
        self.bos_added: list[bool] = []  # per call: did the prompts get the tokenizer's BOS?

    def __call__(self, exs: list[Example], budget: int, label: str) -> list[str]:
        from hftguard.data.inputs import bos_prepended, format_prompt
        from hftguard.engine.generation import generate

        cfg = self.cfg
        prompts = [format_prompt(e, self.tok, cfg.template) for e in exs]
        decoding: dict[str, Any] = {
            "max_new_tokens": budget,
            "do_sample": False,
            "batch_size": cfg.batch_size,
            "dtype": str(self.dtype),
            "device": self.device.type,
        }
        self.bos_added.append(bos_prepended(self.tok, prompts))
        if self.bos_added[-1]:  # a new key: no answer generated without the BOS is reused
            decoding["prompt_bos"] = True
        return cache.cached_generate(
            self.model_fp,
            prompts,
            decoding,
            lambda: generate(
                self.model,
                self.tok,
                prompts,
                max_new_tokens=budget,
                batch_size=cfg.batch_size,
                reporter=self.reporter,
                description=label,
            ),
            reporter=self.reporter,
            label=label,
        )


#: The headline judge's rates, copied (with their ``_ci``) to the top level of metrics.json.
HEADLINE_RATES = (
    "harmful_score",
    "harmful_score_plus",
    "degenerate_rate",
    "off_topic_rate",
    "harmful_score_conservative",
)


def _harmful_score(
    cfg: EvalConfig,
    plan: _Plan,
    data: _Data,
    gen: _Generator,
    jctx: JudgeContext,
    records: list[dict[str, Any]],
    metrics: dict[str, Any],
    run_dir: RunDir,
    reporter: Reporter,
) -> dict[str, Any]:
    """Generate on the harmful prompts and judge with every judge (shared with ``hftguard
    judge``: :mod:`hftguard.pipeline.judging`); the per-judge metrics are returned."""
    harmful = data.harmful
    h_resp = gen(harmful, cfg.max_new_tokens, "eval: harmful prompts")
    per_judge = judging.judge_all(plan.judges, [e.prompt for e in harmful], h_resp, jctx)
    for i, (ex, resp) in enumerate(zip(harmful, h_resp, strict=True)):
        records.append(record("harmful", ex, resp, {k: v[i] for k, v in per_judge.items()}))
    judge_metrics = judging.judge_metrics(plan.judges, per_judge, reporter)
    if len(per_judge) > 1:
        metrics["agreement"] = agreement.pairwise(per_judge)
        split = agreement.disagreements(per_judge)
        write_jsonl(run_dir.path / "disagreements.jsonl", [records[i] for i in split])
    head = judge_metrics[cfg.judges[0]]
    metrics.update({f"{k}{ci}": head[f"{k}{ci}"] for k in HEADLINE_RATES for ci in ("", "_ci")})
    if by_category := hs_by_category(harmful, per_judge[cfg.judges[0]]):
        metrics["harmful_score_by_category"] = by_category
    return judge_metrics


def _over_refusal(
    plan: _Plan,
    reg: Registry,
    data: _Data,
    gen: _Generator,
    jctx: JudgeContext,
    records: list[dict[str, Any]],
    metrics: dict[str, Any],
) -> None:
    """Over-refusal and degenerate rates on the benign prompts, by the first judge that tells a
    refusal from a harmless answer."""
    benign = data.benign
    b_resp = gen(benign, gen.cfg.max_new_tokens, "eval: benign prompts") if benign else []
    info, verdicts, rates = judge_benign(plan.judges, reg, [e.prompt for e in benign], b_resp, jctx)
    for ex, resp, v in zip(benign, b_resp, verdicts, strict=True):
        records.append(record("benign", ex, resp, {info.name: v}))
    metrics.update(rates)


def judge_benign(
    judges: list[tuple[Any, Any]],
    reg: Registry,
    prompts: list[str],
    responses: list[str],
    jctx: JudgeContext,
) -> tuple[Any, list[Any], dict[str, Any]]:
    """The answers to benign prompts judged by the over-refusal judge (:func:`_refusal_judge`):
    its ComponentInfo, its verdicts and the metrics eval reports from them (over-refusal and
    benign degenerate rates with their intervals; None with no benign prompts). Shared with
    ``hftguard rejudge``."""
    info, judge = _refusal_judge(judges, reg)
    rates: dict[str, Any] = dict.fromkeys(("refusal", "degenerate"))
    cis: dict[str, Any] = dict.fromkeys(("refusal", "degenerate"))
    verdicts: list[Any] = []
    if prompts:
        verdicts = cache.cached_verdicts(
            info,
            judge.config,
            prompts,
            responses,
            lambda: judging.call_judge(info, judge, prompts, responses, jctx),
        )
        for label in rates:
            k = sum(v.label == label for v in verdicts)
            rates[label], cis[label] = pct(k, len(prompts)), pct_ci(k, len(prompts))
    return (
        info,
        verdicts,
        {
            "over_refusal_rate": rates["refusal"],
            "over_refusal_judge": info.name if prompts else None,
            "benign_degenerate_rate": rates["degenerate"],
            "over_refusal_rate_ci": cis["refusal"],
            "benign_degenerate_rate_ci": cis["degenerate"],
        },
    )


def _finetune_accuracy(
    cfg: EvalConfig,
    data: _Data,
    gen: _Generator,
    records: list[dict[str, Any]],
    metrics: dict[str, Any],
    run_dir: RunDir,
    reporter: Reporter,
) -> None:
    """FA per task with its 95% Wilson interval; a task scored externally (AlpacaEval) gets its
    outputs written for the annotator and None."""
    fa: dict[str, float | None] = {}
    fa_ci: dict[str, list[float] | None] = {}
    for name, (task, exs) in data.tasks.items():
        t_resp = gen(exs, getattr(task, "max_new_tokens", 32), f"eval: task {name}")
        correct = task.score(exs, t_resp)
        if correct is None:
            fa[name] = fa_ci[name] = None
            _write_external(run_dir.path, name, exs, t_resp, cfg.model)
            reporter.info(f"eval: {name} is scored externally: external/{name}.json")
            records.extend(
                record(f"task:{name}", e, r, {}) for e, r in zip(exs, t_resp, strict=True)
            )
            continue
        fa[name] = pct(sum(correct), len(exs))
        fa_ci[name] = pct_ci(sum(bool(ok) for ok in correct), len(exs))
        for ex, resp, ok in zip(exs, t_resp, correct, strict=True):
            records.append({**record(f"task:{name}", ex, resp, {}), "correct": bool(ok)})
    metrics["finetune_accuracy"] = fa
    metrics["finetune_accuracy_ci"] = fa_ci


def _likelihood_margin(
    cfg: EvalConfig,
    reg: Registry,
    data: _Data,
    gen: _Generator,
    records: list[dict[str, Any]],
    metrics: dict[str, Any],
    reporter: Reporter,
) -> None:
    """The judge-free likelihood margin (:mod:`hftguard.engine.margin`): no generation, no
    judge; its per-prompt rows go onto the harmful records, which come first."""
    lm = margin.for_eval(
        gen.model,
        gen.tok,
        data.harmful,
        cfg.harmful_prompts,
        reg,
        cfg.dataset_options,
        template=cfg.template,
        device=gen.device,
        batch_size=cfg.batch_size,
        reporter=reporter,
        description="eval: likelihood margin",
    )
    reporter.info(f"eval: {lm.note}")
    metrics["likelihood_margin"] = lm.block
    if lm.block is None:
        metrics["likelihood_margin_note"] = lm.note
    for rec, row in zip(records, lm.per_prompt, strict=False):
        if row is not None:
            rec["likelihood_margin"] = row


def _description(cfg: EvalConfig, data: _Data, gen: _Generator) -> dict[str, Any]:
    """What was evaluated, on what and how: counts, test sets, decoding, model."""
    tasks = data.tasks
    return {
        "counts": {
            "harmful": len(data.harmful),
            "benign": len(data.benign),
            "tasks": {k: len(v[1]) for k, v in tasks.items()},
        },
        "test_sets": {
            "harmful": _test_set(cfg.harmful_prompts, data.harmful),
            **({"benign": _test_set(cfg.benign_prompts, data.benign)} if data.benign else {}),
            **{f"task:{k}": _test_set(k, v[1]) for k, v in tasks.items()},
        },
        "decoding": {
            "do_sample": False,
            "max_new_tokens": cfg.max_new_tokens,
            "task_max_new_tokens": {
                k: getattr(v[0], "max_new_tokens", 32) for k, v in tasks.items()
            },
            "template": cfg.template,
            "dtype": gen.precision["dtype"],
            **({"prompt_bos": True} if any(gen.bos_added) else {}),
        },
        "model": {"spec": cfg.model, "recipe": gen.resolved.recipe.as_dict()},
        "schema_version": 1,
    }


def _manifest(
    cfg: EvalConfig,
    plan: _Plan,
    reg: Registry,
    data: _Data,
    gen: _Generator,
    metrics: dict[str, Any],
    t0: float,
) -> dict[str, Any]:
    """The manifest's completion fields: headline metrics, components, data, provenance."""
    from hftguard.data.inputs import hub_sources
    from hftguard.engine import models

    tasks = data.tasks
    return {
        "status": "completed",
        "metrics": _headline(metrics),
        "components": {
            "judges": [judge_record(i, j) for i, j in plan.judges],
            # the judge of the benign answers (over-refusal): one of the above, or the keyword
            # judge eval falls back to (hftguard rejudge checks its version)
            **(
                {"over_refusal_judge": judge_record(*_refusal_judge(plan.judges, reg))}
                if data.benign
                else {}
            ),
            "tasks": [
                component_record(plan.task_infos[t], tasks[t][0].config)
                if t in plan.task_infos
                else tasks[t][0].record()
                for t in tasks
            ],
        },
        "data": {
            "harmful_prompts": cfg.harmful_prompts,
            "benign_prompts": cfg.benign_prompts,
            "dataset_options": cfg.dataset_options,
            **({"data_fields": cfg.data_fields} if cfg.data_fields else {}),
            # hf:ID prompt sets: id, config, split, revision, content sha256 (as align's and
            # attack-finetune's data.<stream>.hf)
            **{
                f"{key}_hf": src
                for key, exs in (("harmful_prompts", data.harmful), ("benign_prompts", data.benign))
                if (src := hub_sources(exs))
            },
            "test_sets": metrics["test_sets"],
        },
        "decoding": metrics["decoding"],
        "evaluated_model": models.recipe_record(gen.resolved.recipe),
        "device": str(gen.device),
        "precision": gen.precision,
        "ended_at": stamp(),
        "wall_time_s": round(time.time() - t0, 2),
    }


def _refusal_judge(judges: list[tuple[Any, Any]], reg: Registry) -> tuple[Any, Any]:
    """The judge that measures over-refusal: the first configured one that can tell a refusal from
    a harmless answer, else the offline keyword judge."""
    for info, judge in judges:
        if getattr(judge, "detects_refusal", True):
            return info, judge
    return reg.get("judge", "refusal-keywords"), reg.instantiate("judge", "refusal-keywords")


def _test_set(spec: str, examples: list[Example]) -> dict[str, Any]:
    from hftguard.data.inputs import data_hash, hub_sources

    out: dict[str, Any] = {"spec": spec, "count": len(examples), "sha256": data_hash(examples)}
    if hf := hub_sources(examples):  # hf:ID data: where it came from, at which revision
        out["hf"] = hf
    return out


def _write_external(
    run_path: Path, task: str, exs: list[Example], outputs: list[str], model: str
) -> None:
    """Outputs in the alpaca_eval format (a JSON list of instruction/output/generator records)."""
    rows = [
        {
            "instruction": f"{e.prompt}\n\n{e.input}" if e.input else e.prompt,
            "output": out,
            "generator": model,
        }
        for e, out in zip(exs, outputs, strict=True)
    ]
    atomic_write_json(name_path(run_path / "external", task, ".json", root=run_path), rows)


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {
        k: m.get(k)
        for k in (
            "harmful_score",
            "harmful_score_plus",
            "degenerate_rate",
            "off_topic_rate",
            "over_refusal_rate",
            "finetune_accuracy",
            "likelihood_margin",
        )
    }
