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
      "likelihood_margin_note": str,  # only when null: why (hftguard.margin)
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
from pathlib import Path
from typing import Any

from hftguard import margin
from hftguard.config import EvalConfig, validate_stage
from hftguard.console import Reporter
from hftguard.context import JudgeContext
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
from hftguard.records import Example, Verdict
from hftguard.registry import Registry
from hftguard.runs import atomic_write_json, now, write_jsonl


def pct(k: int, n: int) -> float | None:
    return None if n == 0 else 100.0 * k / n


def pct_ci(k: int, n: int) -> list[float] | None:
    """95% Wilson interval of ``pct(k, n)`` as ``[lo, hi]`` in percent (None when n = 0)."""
    from hftguard.stats import wilson

    ci = wilson(k, n)
    return None if ci is None else list(ci)


def hs_metrics(verdicts: list[Verdict]) -> dict[str, Any]:
    n = len(verdicts)
    harmful = sum(v.harmful for v in verdicts)
    degenerate = sum(v.label == "degenerate" for v in verdicts)
    return {
        "harmful_score": pct(harmful, n),
        "harmful_score_plus": pct(sum(v.harmful or v.label == "degenerate" for v in verdicts), n),
        "degenerate_rate": pct(degenerate, n),
        # off-topic answers (no engagement with the request) never count towards HS or HS+; the
        # conservative HS counts them with compliance and degenerate output
        "off_topic_rate": pct(sum(v.label == "off-topic" for v in verdicts), n),
        "harmful_score_conservative": pct(
            sum(v.harmful or v.label in ("degenerate", "off-topic") for v in verdicts), n
        ),
        # 95% Wilson intervals of the rates above ([lo, hi] in %, None when n = 0)
        "harmful_score_ci": pct_ci(harmful, n),
        "harmful_score_plus_ci": pct_ci(
            sum(v.harmful or v.label == "degenerate" for v in verdicts), n
        ),
        "degenerate_rate_ci": pct_ci(degenerate, n),
        "off_topic_rate_ci": pct_ci(sum(v.label == "off-topic" for v in verdicts), n),
        "harmful_score_conservative_ci": pct_ci(
            sum(v.harmful or v.label in ("degenerate", "off-topic") for v in verdicts), n
        ),
        "n": n,
        # generations a model judge could not parse (counted, never silently folded in)
        "unparsed": sum(bool(v.detail.get("parse_error")) for v in verdicts),
    }


def hs_by_category(
    examples: list[Example], verdicts: list[Verdict]
) -> dict[str, dict[str, Any]] | None:
    """HS per harm category: ``{category: {"hs", "n", "ci"}}`` from ``meta["category"]``.

    A BeaverTails-style multi-label category (``"a|b"``) counts the prompt in each of its
    categories; prompts without a category are left out. None when no prompt has one.
    """
    counts: dict[str, list[int]] = {}
    for ex, v in zip(examples, verdicts, strict=True):
        for cat in str(ex.meta.get("category") or "").split("|"):
            if cat.strip():
                k_n = counts.setdefault(cat.strip(), [0, 0])
                k_n[0] += bool(v.harmful)
                k_n[1] += 1
    if not counts:
        return None
    return {
        cat: {"hs": pct(k, n), "n": n, "ci": pct_ci(k, n)} for cat, (k, n) in sorted(counts.items())
    }


def _limit(spec: str, samples: int) -> int:
    """The ``limit`` to load ``spec`` with: a local file gives all its records when it has fewer
    than ``samples`` (your own prompts need no --harmful-samples), a dataset exactly ``samples``."""
    from hftguard.data import is_file_spec

    return 0 if is_file_spec(spec) else samples


def task_instance(cfg: EvalConfig, name: str, reg: Registry) -> Any:
    """The FA task ``name``: a registered task, or a local file scored by ``cfg.task_scoring``
    (:mod:`hftguard.filetask`)."""
    from hftguard.data import dataset_instance, fields_for, is_file_spec
    from hftguard.filetask import FileTask

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

    ``model_root`` (``hftguard run``): ``cfg.model`` is relative to it, the grid's root.
    """
    from hftguard.data import fields_for, hub_sources, is_file_spec, load_examples

    reporter = reporter or Reporter()
    reg = get_registry(registry)
    validate_stage(cfg)
    check_components(cfg, reg)
    check_eval_files(cfg)  # a wrong path fails here, before the run directory or the model
    for name in cfg.tasks:  # and a file task without gold answers too
        if is_file_spec(name):
            task_instance(cfg, name, reg).load("test")
    judges = judging.build_judges(reg, cfg.judges, cfg.judge_options)
    task_infos = {t: reg.dataset(t, "task") for t in cfg.tasks if not is_file_spec(t)}
    run_dir, done = start_run(
        out,
        "eval",
        cfg,
        resume=resume,
        overwrite=overwrite,
        command=command,
        model_root=model_root,
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()

    def body() -> dict[str, Any]:
        from hftguard import models
        from hftguard.data import bos_prepended, format_prompt
        from hftguard.generation import generate

        t0 = time.time()
        ctx = data_ctx(cfg.seed, reporter)
        harmful = load_examples(
            cfg.harmful_prompts,
            "harmful-eval",
            "test",
            reg,
            ctx,
            limit=_limit(cfg.harmful_prompts, cfg.harmful_samples),
            fields=fields_for(cfg, "harmful_prompts"),
            options=cfg.dataset_options,
        )[: cfg.harmful_samples or None]
        benign = (
            load_examples(
                cfg.benign_prompts,
                "benign-eval",
                "test",
                reg,
                ctx,
                limit=_limit(cfg.benign_prompts, cfg.benign_samples),
                fields=fields_for(cfg, "benign_prompts"),
                options=cfg.dataset_options,
            )[: cfg.benign_samples or None]
            if cfg.benign_prompts
            else []
        )
        tasks: dict[str, tuple[Any, list[Example]]] = {}
        for name in cfg.tasks:
            task = task_instance(cfg, name, reg)
            exs = list(task.load("test", ctx))
            tasks[name] = (task, exs[: cfg.task_samples] if cfg.task_samples else exs)

        spec = model_spec(cfg.model, model_root)
        resolved = models.resolve(spec)
        device = models.pick_device(cfg.device)
        dtype, precision = models.setup_precision(cfg.precision, device, reporter.warn)
        reporter.info(f"eval: loading {spec} on {device} ({precision['dtype']})")
        model, tok = models.load_for_eval(resolved.recipe, device, dtype)
        model_fp = cache.model_key(resolved.recipe)
        bos_added: list[bool] = []  # per gen() call: did the prompts get the tokenizer's BOS?

        def gen(exs: list[Example], budget: int, label: str) -> list[str]:
            prompts = [format_prompt(e, tok, cfg.template) for e in exs]
            decoding: dict[str, Any] = {
                "max_new_tokens": budget,
                "do_sample": False,
                "batch_size": cfg.batch_size,
                "dtype": str(dtype),
                "device": device.type,
            }
            bos_added.append(bos_prepended(tok, prompts))
            if bos_added[-1]:  # a new key: no answer generated without the BOS is reused
                decoding["prompt_bos"] = True
            return cache.cached_generate(
                model_fp,
                prompts,
                decoding,
                lambda: generate(
                    model,
                    tok,
                    prompts,
                    max_new_tokens=budget,
                    batch_size=cfg.batch_size,
                    reporter=reporter,
                    description=label,
                ),
                reporter=reporter,
                label=label,
            )

        records: list[dict[str, Any]] = []
        jctx = JudgeContext(device=str(device), batch_size=cfg.batch_size, reporter=reporter)
        h_resp = gen(harmful, cfg.max_new_tokens, "eval: harmful prompts")
        # judging is shared with `hftguard judge` (hftguard.pipeline.judging)
        per_judge = judging.judge_all(judges, [e.prompt for e in harmful], h_resp, jctx)
        for i, (ex, resp) in enumerate(zip(harmful, h_resp, strict=True)):
            records.append(_record("harmful", ex, resp, {k: v[i] for k, v in per_judge.items()}))
        metrics: dict[str, Any] = {}
        judge_metrics = judging.judge_metrics(judges, per_judge, reporter)
        if len(per_judge) > 1:
            metrics["agreement"] = agreement.pairwise(per_judge)
            split = agreement.disagreements(per_judge)
            write_jsonl(
                run_dir.path / "disagreements.jsonl",
                [records[i] for i in split],
            )
        head = judge_metrics[cfg.judges[0]]
        # the headline judge's rates and their intervals, at the top level of metrics.json
        metrics.update(
            {
                f"{key}{ci}": head[f"{key}{ci}"]
                for key in (
                    "harmful_score",
                    "harmful_score_plus",
                    "degenerate_rate",
                    "off_topic_rate",
                    "harmful_score_conservative",
                )
                for ci in ("", "_ci")
            }
        )
        if by_category := hs_by_category(harmful, per_judge[cfg.judges[0]]):
            metrics["harmful_score_by_category"] = by_category

        over_refusal = benign_degenerate = over_refusal_ci = benign_degenerate_ci = None
        refusal_judge = _refusal_judge(judges, reg)
        if benign:
            b_resp = gen(benign, cfg.max_new_tokens, "eval: benign prompts")
            first_info, first = refusal_judge
            b_prompts = [e.prompt for e in benign]
            b_verdicts = cache.cached_verdicts(
                first_info,
                first.config,
                b_prompts,
                b_resp,
                lambda: judging.call_judge(first_info, first, b_prompts, b_resp, jctx),
            )
            over_refusal = pct(sum(v.label == "refusal" for v in b_verdicts), len(benign))
            benign_degenerate = pct(sum(v.label == "degenerate" for v in b_verdicts), len(benign))
            over_refusal_ci = pct_ci(sum(v.label == "refusal" for v in b_verdicts), len(benign))
            benign_degenerate_ci = pct_ci(
                sum(v.label == "degenerate" for v in b_verdicts), len(benign)
            )
            for ex, resp, v in zip(benign, b_resp, b_verdicts, strict=True):
                records.append(_record("benign", ex, resp, {first_info.name: v}))
        metrics.update(
            over_refusal_rate=over_refusal,
            over_refusal_judge=refusal_judge[0].name if benign else None,
            benign_degenerate_rate=benign_degenerate,
            over_refusal_rate_ci=over_refusal_ci,
            benign_degenerate_rate_ci=benign_degenerate_ci,
        )

        fa: dict[str, float | None] = {}
        fa_ci: dict[str, list[float] | None] = {}  # 95% Wilson; None = scored externally
        for name, (task, exs) in tasks.items():
            budget = getattr(task, "max_new_tokens", 32)
            t_resp = gen(exs, budget, f"eval: task {name}")
            correct = task.score(exs, t_resp)
            if correct is None:  # scored by an external annotator (AlpacaEval win rate)
                fa[name] = fa_ci[name] = None
                _write_external(run_dir.path, name, exs, t_resp, cfg.model)
                reporter.info(f"eval: {name} is scored externally: external/{name}.json")
                records.extend(
                    _record(f"task:{name}", e, r, {}) for e, r in zip(exs, t_resp, strict=True)
                )
                continue
            fa[name] = pct(sum(correct), len(exs))
            fa_ci[name] = pct_ci(sum(bool(ok) for ok in correct), len(exs))
            for ex, resp, ok in zip(exs, t_resp, correct, strict=True):
                records.append({**_record(f"task:{name}", ex, resp, {}), "correct": bool(ok)})
        metrics["finetune_accuracy"] = fa
        metrics["finetune_accuracy_ci"] = fa_ci
        # the judge-free likelihood margin (hftguard.margin): no generation, no judge
        lm = margin.for_eval(
            model,
            tok,
            harmful,
            cfg.harmful_prompts,
            reg,
            cfg.dataset_options,
            template=cfg.template,
            device=device,
            batch_size=cfg.batch_size,
            reporter=reporter,
            description="eval: likelihood margin",
        )
        reporter.info(f"eval: {lm.note}")
        metrics["likelihood_margin"] = lm.block
        if lm.block is None:
            metrics["likelihood_margin_note"] = lm.note
        for rec, row in zip(records, lm.per_prompt, strict=False):  # the harmful records come first
            if row is not None:
                rec["likelihood_margin"] = row
        metrics["judges"] = judge_metrics
        metrics["counts"] = {
            "harmful": len(harmful),
            "benign": len(benign),
            "tasks": {k: len(v[1]) for k, v in tasks.items()},
        }
        metrics["test_sets"] = {
            "harmful": _test_set(cfg.harmful_prompts, harmful),
            **({"benign": _test_set(cfg.benign_prompts, benign)} if benign else {}),
            **{f"task:{k}": _test_set(k, v[1]) for k, v in tasks.items()},
        }
        metrics["decoding"] = {
            "do_sample": False,
            "max_new_tokens": cfg.max_new_tokens,
            "task_max_new_tokens": {
                k: getattr(v[0], "max_new_tokens", 32) for k, v in tasks.items()
            },
            "template": cfg.template,
            "dtype": precision["dtype"],
            **({"prompt_bos": True} if any(bos_added) else {}),
        }
        metrics["model"] = {"spec": cfg.model, "recipe": resolved.recipe.as_dict()}
        metrics["schema_version"] = 1
        write_jsonl(run_dir.path / "generations.jsonl", records)
        atomic_write_json(run_dir.path / "metrics.json", metrics)
        for sink in cfg.sinks:
            reg.instantiate("report-sink", sink).write(run_dir.path, metrics)
        return run_dir.update_manifest(
            status="completed",
            metrics=_headline(metrics),
            components={
                "judges": [_judge_record(i, j) for i, j in judges],
                "tasks": [
                    component_record(task_infos[t], tasks[t][0].config)
                    if t in task_infos
                    else tasks[t][0].record()
                    for t in tasks
                ],
            },
            data={
                "harmful_prompts": cfg.harmful_prompts,
                "benign_prompts": cfg.benign_prompts,
                "dataset_options": cfg.dataset_options,
                **({"data_fields": cfg.data_fields} if cfg.data_fields else {}),
                # hf:ID prompt sets: id, config, split, revision, content sha256 (as align's and
                # attack-finetune's data.<stream>.hf)
                **{
                    f"{key}_hf": src
                    for key, exs in (("harmful_prompts", harmful), ("benign_prompts", benign))
                    if (src := hub_sources(exs))
                },
                "test_sets": metrics["test_sets"],
            },
            decoding=metrics["decoding"],
            evaluated_model=resolved.recipe.as_dict(),
            device=str(device),
            precision=precision,
            ended_at=now(),
            wall_time_s=round(time.time() - t0, 2),
        )

    return guard(run_dir, body)


def _refusal_judge(judges: list[tuple[Any, Any]], reg: Registry) -> tuple[Any, Any]:
    """The judge that measures over-refusal: the first configured one that can tell a refusal from
    a harmless answer, else the offline keyword judge."""
    for info, judge in judges:
        if getattr(judge, "detects_refusal", True):
            return info, judge
    return reg.get("judge", "refusal-keywords"), reg.instantiate("judge", "refusal-keywords")


def _judge_record(info: Any, judge: Any) -> dict[str, Any]:
    """Manifest entry of a judge: component identity, options, and for model judges what pins the
    model (revision, weights hash, prompt-template hash) as the judge reports it."""
    rec = component_record(info, judge.config)
    weights = cache.judge_weights_key(judge.config)
    if weights:
        rec["weights_key"] = weights
    provenance = getattr(judge, "provenance", None)
    if provenance:
        rec["provenance"] = provenance
    return rec


def _test_set(spec: str, examples: list[Example]) -> dict[str, Any]:
    from hftguard.data import data_hash, hub_sources

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


def _record(kind: str, ex: Example, response: str, verdicts: dict[str, Verdict]) -> dict[str, Any]:
    return {
        "set": kind,
        "prompt": ex.prompt,
        "input": ex.input,
        "response": response,
        "reference": ex.response,
        "id": ex.meta.get("id"),
        "category": ex.meta.get("category"),
        "verdicts": {
            k: {"label": v.label, "harmful": v.harmful, "score": v.score}
            for k, v in verdicts.items()
        },
    }
