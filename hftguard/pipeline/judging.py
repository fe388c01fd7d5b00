"""Judging (prompt, response) pairs: what ``hftguard eval`` and ``hftguard judge`` share, and
``hftguard judge`` itself.

``hftguard judge FILE --judge NAME ... --out DIR`` scores answers made elsewhere (a vLLM server,
another toolkit) or re-scores ours with a new judge: it reads (prompt, response) records from a
JSONL/JSON/CSV/Parquet file, asks every judge (through the same verdict cache as eval), and writes
what eval writes for the harmful prompts: metrics.json (HS, HS+, degenerate rate and the rest of
:func:`hftguard.pipeline.scores.hs_metrics` per judge, Cohen's kappa between judges),
metrics.md, ``verdicts.jsonl`` (one record per judged pair, in the generations.jsonl schema with
each judge's verdict), ``disagreements.jsonl`` with several judges, and manifest.json.

Input records: ``prompt`` and ``response`` are required, ``input``, ``category``, ``id`` and
``set`` optional; each is found under our name or a usual alias (:data:`ALIASES`) or mapped with
``--field ours=column``. A ``set`` field (eval's generations.jsonl has one) selects the records to
judge: only ``set == "harmful"`` records (or records without a set) are judged; the others
(benign prompts, task answers) are skipped and counted in metrics.json ``counts.skipped``, since
the Harmful Score is defined on harmful prompts only. Every problem with the input is a
:class:`~hftguard.errors.DataError` raised before the run directory is created.

metrics.json schema (version 1; fields are only ever added)::

    {
      "harmful_score", "harmful_score_plus", "degenerate_rate", ...: the first judge's values
                                          (every key hs_metrics gives, but n/unparsed/licence),
      "judges": {judge: hs_metrics(...) (+ "license_note")},
      "agreement": [{"judges": [a, b], "kappa", "agreement", "disagreements", "n"}],  # 2+ judges
      "harmful_score_by_category": {...},  # as eval's, when the records have categories
      "counts": {"harmful": int, "skipped": {set name: int}},
      "input": {"path", "sha256", "format", "records", "fields": {ours: column}},
      "headline_judge": str, "schema_version": 1
    }
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.config import check_device, check_range, opt
from hftguard.console import Reporter
from hftguard.context import JudgeContext
from hftguard.errors import ConfigError, DataError, HftguardError, PluginError
from hftguard.records import Example, Verdict
from hftguard.registry import ComponentInfo, Registry

Judges = list[tuple[ComponentInfo, Any]]

#: Our field names and the column names tried, in order, when ``--field`` does not map them.
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "instruction", "question"),
    "response": ("response", "output", "answer", "completion", "generation"),
    "input": ("input",),
    "category": ("category",),
    "id": ("id",),
    "set": ("set",),
}
REQUIRED = ("prompt", "response")
#: The ``set`` value of harmful-prompt records in eval's generations.jsonl.
HARMFUL_SET = "harmful"
VERDICTS_FILE = "verdicts.jsonl"


# ---------------------------------------------------------------------------------------------
# Shared with eval


def build_judges(reg: Registry, names: Sequence[str], options: dict[str, Any]) -> Judges:
    """``(ComponentInfo, judge)`` of each name, built with its ``judge_options`` entry."""
    return [
        (reg.get("judge", j), reg.instantiate("judge", j, options.get(j, {}), f"judge_options.{j}"))
        for j in names
    ]


def judge_all(
    judges: Judges,
    prompts: Sequence[str],
    responses: Sequence[str],
    ctx: JudgeContext,
) -> dict[str, list[Verdict]]:
    """Every judge's verdicts on the pairs, through the verdict cache (as eval does)."""
    from hftguard.pipeline import cache

    return {
        info.name: cache.cached_verdicts(
            info,
            judge.config,
            prompts,
            responses,
            lambda i=info, j=judge: call_judge(i, j, prompts, responses, ctx),
        )
        for info, judge in judges
    }


def call_judge(
    info: ComponentInfo,
    judge: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    ctx: JudgeContext,
) -> list[Verdict]:
    """``judge.judge(prompts, responses, ctx)``, with a judge that crashes (or returns the wrong
    number of verdicts) reported by name and provider: a :class:`PluginError` (exit code 3) for a
    plugin's judge, a run failure (exit code 1) for a built-in one. Its own HftguardErrors (a
    model judge's ModelError...) pass through unchanged."""
    from hftguard.plugins import BUILTIN_DISTRIBUTION

    try:
        verdicts = list(judge.judge(prompts, responses, ctx))
        if len(verdicts) != len(prompts):
            raise ValueError(f"it returned {len(verdicts)} verdicts for {len(prompts)} pairs")
    except HftguardError:
        raise
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}"
        if info.distribution == BUILTIN_DISTRIBUTION:
            raise HftguardError(
                f"The built-in judge '{info.name}' failed on {len(prompts)} responses: {what}",
                hint="This is a bug in hftguard: HFTGUARD_DEBUG=1 shows the traceback to report. "
                "Meanwhile evaluate with another judge (--judge).",
            ) from exc
        raise PluginError(
            f"Judge '{info.name}' of plugin '{info.plugin}' (distribution {info.distribution} "
            f"{info.distribution_version}) failed on {len(prompts)} responses: {what}",
            hint="A bug in that plugin or in its setup (HFTGUARD_DEBUG=1 shows the traceback for "
            f"its authors). Meanwhile evaluate without it (another --judge), or turn the plugin "
            f"off with HFTGUARD_DISABLE_PLUGINS={info.plugin}.",
        ) from exc
    return verdicts


def judge_metrics(
    judges: Judges, per_judge: dict[str, list[Verdict]], reporter: Reporter | None = None
) -> dict[str, dict[str, Any]]:
    """``hs_metrics`` of each judge's verdicts, with the judge's licence note (warned about)."""
    from hftguard.pipeline.scores import hs_metrics

    out = {name: hs_metrics(v) for name, v in per_judge.items()}
    for info, _ in judges:
        if info.cls.license_note:
            out[info.name]["license_note"] = info.cls.license_note
            if reporter is not None:
                reporter.warn(f"judge {info.name}: {info.cls.license_note}")
    return out


# ---------------------------------------------------------------------------------------------
# Reading the pairs


@dataclass
class Pairs:
    """The records of an input file to judge, and what was left out."""

    examples: list[Example]  # prompt, input, meta (id, category, record); response = reference
    responses: list[str]
    skipped: dict[str, int]
    columns: dict[str, str]  # our field -> the file's column, for the fields found
    records: int
    fmt: str


def parse_field_map(items: Sequence[str] | None) -> dict[str, str]:
    """``["prompt=instruction", "response=output,id=uid"]`` -> ``{"prompt": "instruction", ..}``
    (each ``--field`` value parsed by :func:`hftguard.data.files.parse_fields`; the same mapping
    given twice is accepted, two different ones for a field are an error)."""
    from hftguard.data.files import parse_fields

    syntax = "write --field OURS=COLUMN, e.g. --field prompt=instruction --field response=output"
    mapping: dict[str, str] = {}
    for item in items or []:
        for ours, theirs in parse_fields(str(item), ALIASES, syntax=syntax).items():
            if mapping.setdefault(ours, theirs) != theirs:
                raise ConfigError(f"field {ours!r} is mapped twice", hint=syntax)
    return mapping


def read_pairs(path: str | Path, fields: dict[str, str] | None = None) -> Pairs:
    """Read the (prompt, response) records of ``path``; every problem is a DataError.

    ``fields`` maps our field names to the file's columns (others by :data:`ALIASES`). A required
    column that no record has is an error naming the columns the file does have. Per record: the
    prompt must be non-empty text; a response that is null (JSON) or an empty cell (CSV) is an
    empty answer, judged like any other (degenerate), but a JSON record without the response key
    at all is an error. Records whose ``set`` is not ``harmful`` are skipped and counted.
    """
    from hftguard.data.files import file_format, read_records

    path = Path(path)
    fields = dict(fields or {})
    for ours in fields:
        if ours not in ALIASES:
            raise ConfigError(
                f"unknown field {ours!r} in the field mapping",
                hint=f"fields that can be mapped: {', '.join(ALIASES)}",
            )
    raw = list(read_records(path))  # missing file, bad extension, non-UTF-8, malformed lines
    if not raw:
        raise DataError(
            f"{path}: the file contains no records",
            hint="give a file with one (prompt, response) record per line or row",
        )
    for where, _, record in raw:
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: {where}: expected an object, found {type(record).__name__}",
                hint='each record must look like {"prompt": "...", "response": "..."}',
            )
    seen: set[str] = set()
    for _, _, record in raw:
        seen.update(record)
    columns: dict[str, str] = {}
    for ours, names in ALIASES.items():
        candidates = (fields[ours],) if ours in fields else names
        found = next((c for c in candidates if c in seen), None)
        if found is not None:
            columns[ours] = found
        elif ours in REQUIRED:
            raise DataError(
                f"{path}: no record has the {ours} field (looked for: {', '.join(candidates)}); "
                f"the file's fields: {', '.join(sorted(seen)) or '(none)'}",
                hint=f"map the right column, e.g. --field {ours}=COLUMN",
            )
    found_format = file_format(path)
    fmt = found_format[0] if found_format else path.suffix.lstrip(".")
    examples: list[Example] = []
    responses: list[str] = []
    skipped: Counter[str] = Counter()
    for where, number, record in raw:
        value = {ours: _text(path, where, record, col) for ours, col in columns.items()}
        kind = value.get("set")
        if kind not in (None, "", HARMFUL_SET):
            skipped[kind] += 1
            continue
        prompt = value["prompt"]
        if prompt is None or not prompt.strip():
            state = "is empty" if prompt is not None else "is missing"
            raise DataError(
                f"{path}: {where}: the prompt (field {columns['prompt']!r}) {state}",
                hint="give every record a non-empty prompt",
            )
        response = value["response"]
        if response is None:
            if fmt != "csv" and columns["response"] not in record:
                raise DataError(
                    f"{path}: {where}: the record has no {columns['response']!r} field",
                    hint='give every record a response (null or "" for an empty answer)',
                )
            response = ""
        meta: dict[str, Any] = {"source": str(path), "record": number}
        meta["id"] = value.get("id") or f"{path.name}:{number}"
        if value.get("category"):
            meta["category"] = value["category"]
        reference = record.get("reference")
        examples.append(
            Example(
                prompt,
                reference if isinstance(reference, str) else "",
                "harmful",
                value.get("input") or "",
                meta,
            )
        )
        responses.append(response)
    if not examples:
        sets = ", ".join(f"{k} ({v})" for k, v in sorted(skipped.items()))
        raise DataError(
            f"{path}: no record to judge: every record's set is other than {HARMFUL_SET!r} "
            f"({sets})",
            hint=f"the Harmful Score is on harmful prompts: give records with set {HARMFUL_SET!r}"
            ", or map another column (or none) to set",
        )
    return Pairs(examples, responses, dict(sorted(skipped.items())), columns, len(raw), fmt)


def _text(path: Path, where: str, record: dict[str, Any], column: str) -> str | None:
    value = record.get(column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(
            f"{path}: {where}: field {column!r} must be text, found {type(value).__name__}",
            hint="store prompts, responses, ids, categories and sets as strings",
        )
    return str(value)


# ---------------------------------------------------------------------------------------------
# hftguard judge


@dataclass
class JudgeConfig:
    """``hftguard judge``: judge (prompt, response) records from a file."""

    input: str = opt("", "File of (prompt, response) records: JSONL, JSON, CSV or Parquet.")
    judges: list[str] = opt(["refusal-keywords"], "Judges (the first is the headline).")
    judge_options: dict[str, Any] = opt({}, "Per-judge options: {judge name: {option: value}}.")
    fields: dict[str, str] = opt(
        {},
        "Field mapping {our field: the file's column}: prompt, response, input, category, id, set.",
    )
    sinks: list[str] = opt(["markdown"], "Report sinks that also export metrics.json.")
    batch_size: int = opt(16, "Judge batch size (model judges).")
    device: str = opt("auto", "Device of model judges: auto, cpu, cuda ...")


def validate(cfg: JudgeConfig) -> None:
    if not cfg.input:
        raise ConfigError("No input file given.", hint="hftguard judge FILE --out DIR")
    if not cfg.judges:
        raise ConfigError("No judge given.", hint="Pass --judge refusal-keywords (or another).")
    twice = sorted(j for j, k in Counter(cfg.judges).items() if k > 1)
    if twice:
        raise ConfigError(
            f"Judge(s) given more than once: {', '.join(twice)}.",
            hint="Name each judge once; its options go in --set judge_options.NAME.option=value.",
        )
    check_range("batch_size", cfg.batch_size, 1)
    check_device("device", cfg.device)
    parse_field_map([f"{k}={v}" for k, v in cfg.fields.items()])


def run(
    cfg: JudgeConfig,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Judge the records of ``cfg.input``; write metrics.json, verdicts.jsonl, metrics.md."""
    from hftguard.pipeline import agreement
    from hftguard.pipeline.common import get_registry, guard, start_run
    from hftguard.pipeline.scores import hs_by_category, judge_record, record
    from hftguard.runs import atomic_write_json, sha256_file, stamp, write_jsonl

    reporter = reporter or Reporter()
    reg = get_registry(registry)
    validate(cfg)
    judges = build_judges(reg, cfg.judges, cfg.judge_options)
    for sink in cfg.sinks:
        reg.get("report-sink", sink)
    pairs = read_pairs(cfg.input, cfg.fields)  # every input problem, before the run dir exists
    run_dir, done = start_run(
        out, "judge", cfg, resume=resume, overwrite=overwrite, command=command
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()

    def body() -> dict[str, Any]:
        t0 = time.time()
        device = _device(cfg.device)
        if pairs.skipped:
            reporter.info(
                "judge: skipped records whose set is not 'harmful': "
                + ", ".join(f"{k} {v}" for k, v in pairs.skipped.items())
            )
        jctx = JudgeContext(device=device, batch_size=cfg.batch_size, reporter=reporter)
        prompts = [e.prompt for e in pairs.examples]
        per_judge = judge_all(judges, prompts, pairs.responses, jctx)
        records = [
            {
                **record("harmful", ex, resp, {k: v[i] for k, v in per_judge.items()}),
                "record": ex.meta["record"],
            }
            for i, (ex, resp) in enumerate(zip(pairs.examples, pairs.responses, strict=True))
        ]
        per = judge_metrics(judges, per_judge, reporter)
        head = per[cfg.judges[0]]
        metrics: dict[str, Any] = {
            k: v for k, v in head.items() if k not in ("n", "unparsed", "license_note")
        }
        if len(per_judge) > 1:
            metrics["agreement"] = agreement.pairwise(per_judge)
            split = agreement.disagreements(per_judge)
            write_jsonl(run_dir.path / "disagreements.jsonl", [records[i] for i in split])
        if by_category := hs_by_category(pairs.examples, per_judge[cfg.judges[0]]):
            metrics["harmful_score_by_category"] = by_category
        metrics["judges"] = per
        metrics["headline_judge"] = cfg.judges[0]
        metrics["counts"] = {"harmful": len(records), "skipped": pairs.skipped}
        metrics["input"] = {
            "path": str(cfg.input),
            "sha256": sha256_file(Path(cfg.input)),
            "format": pairs.fmt,
            "records": pairs.records,
            "fields": pairs.columns,
        }
        metrics["schema_version"] = 1
        write_jsonl(run_dir.path / VERDICTS_FILE, records)
        atomic_write_json(run_dir.path / "metrics.json", metrics)
        for sink in cfg.sinks:
            reg.instantiate("report-sink", sink).write(run_dir.path, metrics)
        return run_dir.update_manifest(
            status="completed",
            metrics={
                "harmful_score": metrics.get("harmful_score"),
                "harmful_score_plus": metrics.get("harmful_score_plus"),
                "degenerate_rate": metrics.get("degenerate_rate"),
                "n": len(records),
            },
            components={"judges": [judge_record(i, j) for i, j in judges]},
            data={"input": metrics["input"], "skipped": pairs.skipped},
            device=device,
            ended_at=stamp(),
            wall_time_s=round(time.time() - t0, 2),
        )

    return guard(run_dir, body)


def _device(name: str) -> str:
    """The judges' device: ``auto`` is CUDA when torch sees one, else the CPU."""
    if name != "auto":
        return name
    from hftguard.engine.models import pick_device

    return str(pick_device("auto"))


def table_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """One row per judge: name, HS %, HS+ %, degenerate %, unparsed, n (the printed table)."""
    return [
        [
            name,
            m.get("harmful_score"),
            m.get("harmful_score_plus"),
            m.get("degenerate_rate"),
            m.get("unparsed", 0),
            m.get("n"),
        ]
        for name, m in (metrics.get("judges") or {}).items()
    ]
