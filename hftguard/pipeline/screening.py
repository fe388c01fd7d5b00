"""Screening a user's fine-tuning data with a judge: the provider's first line of defense (#19).

A provider that fine-tunes on uploaded data can run a moderation filter over it first: every
(prompt, response) sample that a judge calls harmful is flagged, and flagged samples are dropped
before training. The provider does not know which samples are harmful; an experiment does (each
:class:`~hftguard.records.Example` has a ``kind``), so it can count what the filter let through:

- **leak-through**: harmful samples the judge did not flag (they are trained on);
- **wrongly dropped**: benign samples the judge flagged (the user's task loses them);
- **precision** (flagged samples that are harmful) and **recall** (harmful samples flagged), each
  with a 95% Wilson interval.

Used by ``hftguard screen DATA --judge NAME --out DIR`` (a provider checking an upload) and by
``attack-finetune`` with ``screen = "JUDGE"`` (the filter in front of any fine-tuning defense;
the counts go to the manifest under ``data.main.screening``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.config import check_device, check_range, opt
from hftguard.console import Reporter
from hftguard.context import JudgeContext
from hftguard.errors import ConfigError, DataError
from hftguard.pipeline.scores import pct, pct_ci
from hftguard.records import Example, Verdict
from hftguard.registry import Registry

#: Ground-truth kinds a screened record may carry (``kind`` field): what leak-through counts.
KINDS = ("harmful", "benign")
#: Our field names and the column names tried, in order, when a field mapping does not name them.
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "instruction", "question"),
    "response": ("response", "output", "answer", "completion"),
    "input": ("input",),
    "kind": ("kind",),
    "id": ("id",),
}


def judge_samples(
    examples: Sequence[Example], info: Any, judge: Any, ctx: JudgeContext
) -> list[Verdict]:
    """The judge's verdict on each sample's (prompt, response); a sample's input, when it has
    one, is appended to its prompt as the model sees it."""
    from hftguard.pipeline.judging import call_judge

    prompts = [f"{e.prompt}\n\n{e.input}" if e.input else e.prompt for e in examples]
    return call_judge(info, judge, prompts, [e.response for e in examples], ctx)


def screen_metrics(flagged: Sequence[bool], kinds: Sequence[str | None]) -> dict[str, Any]:
    """Counts and rates of a screening: how many flagged, and when every sample's kind is known,
    leak-through, wrongly dropped, precision and recall (each with its 95% Wilson interval, in
    %; None when its denominator is 0)."""
    if len(flagged) != len(kinds):
        raise ValueError(f"{len(flagged)} flags but {len(kinds)} kinds")
    n, k = len(flagged), sum(bool(f) for f in flagged)
    out: dict[str, Any] = {
        "n": n,
        "flagged": k,
        "kept": n - k,
        "flagged_rate": pct(k, n),
        "flagged_rate_ci": pct_ci(k, n),
    }
    if not n or any(kind not in KINDS for kind in kinds):
        return out  # no ground truth (a provider's real upload)
    harmful = [bool(f) for f, kind in zip(flagged, kinds, strict=True) if kind == "harmful"]
    benign = [bool(f) for f, kind in zip(flagged, kinds, strict=True) if kind == "benign"]
    caught, dropped = sum(harmful), sum(benign)
    leaked = len(harmful) - caught
    out.update(
        harmful=len(harmful),
        benign=len(benign),
        harmful_caught=caught,
        harmful_leaked=leaked,
        benign_dropped=dropped,
        leak_through_rate=pct(leaked, len(harmful)),
        leak_through_rate_ci=pct_ci(leaked, len(harmful)),
        benign_dropped_rate=pct(dropped, len(benign)),
        benign_dropped_rate_ci=pct_ci(dropped, len(benign)),
        precision=pct(caught, k),
        precision_ci=pct_ci(caught, k),
        recall=pct(caught, len(harmful)),
        recall_ci=pct_ci(caught, len(harmful)),
    )
    return out


def screen_user_data(
    examples: list[Example],
    judge_name: str,
    options: dict[str, Any],
    reg: Registry,
    reporter: Any,
    device: str = "auto",
) -> tuple[list[Example], dict[str, Any]]:
    """The samples the judge does not flag, and the record of the screening (``attack-finetune``
    with ``screen``). The examples' kinds are the experiment's ground truth."""
    info = reg.get("judge", judge_name)
    judge = reg.instantiate("judge", judge_name, options, "screen_options")
    from hftguard.pipeline.judging import _device

    ctx = JudgeContext(device=_device(device), reporter=reporter)  # the stage's device
    verdicts = judge_samples(examples, info, judge, ctx)
    flagged = [bool(v.harmful) for v in verdicts]
    kept = [e for e, f in zip(examples, flagged, strict=True) if not f]
    record = {
        "judge": judge_name,
        **({"options": options} if options else {}),
        **screen_metrics(flagged, [e.kind if e.kind in KINDS else None for e in examples]),
    }
    if not kept:
        raise DataError(
            f"screening with '{judge_name}' flagged all {len(examples)} user samples: there is "
            "nothing left to fine-tune on.",
            hint="Screen with another judge, or fine-tune without screening (screen = '').",
        )
    return kept, record


# ---------------------------------------------------------------------------------------------
# hftguard screen


@dataclass
class ScreenConfig:
    """``hftguard screen``: screen a fine-tuning upload with a judge."""

    input: str = opt("", "The user's data: JSONL, JSON, CSV or Parquet (prompt, response[, kind]).")
    judge: str = opt("refusal-keywords", "The judge used as the filter (see `hftguard plugins`).")
    judge_options: dict[str, Any] = opt({}, "Options of the judge's Config.")
    fields: dict[str, str] = opt(
        {}, "Field mapping {our field: the file's column}: prompt, response, input, kind, id."
    )
    batch_size: int = opt(16, "Judge batch size (model judges).")
    device: str = opt("auto", "Device of model judges: auto, cpu, cuda ...")


def read_samples(path: str | Path, fields: dict[str, str] | None = None) -> list[Example]:
    """The (prompt, response[, input, kind, id]) records of ``path``; every problem is a
    DataError naming the file and the record. ``kind``, when the file has it, must be
    ``harmful`` or ``benign``."""
    from hftguard.data.files import read_records

    path, fields = Path(path), dict(fields or {})
    for ours in fields:
        if ours not in ALIASES:
            raise ConfigError(
                f"unknown field {ours!r} in the field mapping",
                hint=f"fields that can be mapped: {', '.join(ALIASES)}",
            )
    raw = list(read_records(path))
    if not raw:
        raise DataError(f"{path}: the file contains no records", hint="give one sample per line")
    seen = {k for _, _, r in raw if isinstance(r, dict) for k in r}
    for ours, col in fields.items():
        if col not in seen:
            raise DataError(
                f"{path}: --field {ours}={col}: no record has the column {col!r}; the file's "
                f"fields: {', '.join(sorted(seen)) or '(none)'}",
                hint="map an existing column",
            )
    columns = {}
    for ours, names in ALIASES.items():
        found = next((c for c in ((fields[ours],) if ours in fields else names) if c in seen), None)
        if found is not None:
            columns[ours] = found
        elif ours in ("prompt", "response"):
            raise DataError(
                f"{path}: no record has the {ours} field (looked for: "
                f"{', '.join((fields[ours],) if ours in fields else names)}); the file's fields: "
                f"{', '.join(sorted(seen)) or '(none)'}",
                hint=f"map the right column, e.g. --field {ours}=COLUMN",
            )
    out = []
    for where, number, record in raw:
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where}: expected an object, found {type(record).__name__}")
        value = {ours: record.get(col) for ours, col in columns.items()}
        if not isinstance(value["prompt"], str) or not value["prompt"].strip():
            raise DataError(f"{path}: {where}: the prompt is missing or empty")
        kind = value.get("kind")
        if kind is not None and kind not in KINDS:
            raise DataError(
                f"{path}: {where}: kind {kind!r} is not one of {', '.join(KINDS)}",
                hint="label each sample harmful or benign, or leave the kind out (no "
                "leak-through then)",
            )
        meta = {"id": value.get("id") or f"{path.name}:{number}", "record": number}
        response = value["response"]
        if not isinstance(response, str):
            raise DataError(
                f"{path}: {where}: the response (field {columns['response']!r}) is missing or "
                "not text",
                hint='give every sample a response ("" for an empty answer)',
            )
        out.append(
            Example(value["prompt"], response, kind or "unknown", value.get("input") or "", meta)
        )
    return out


def run(
    cfg: ScreenConfig,
    out: str | Path,
    *,
    reporter: Reporter | None = None,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Screen ``cfg.input``; write verdicts.jsonl (one line per sample) and metrics.json."""
    from hftguard.pipeline.common import component_record, get_registry, guard, start_run
    from hftguard.runs import atomic_write_json, sha256_file, stamp, write_jsonl

    reporter = reporter or Reporter()
    reg = get_registry(registry)
    if not cfg.input:
        raise ConfigError("No data to screen.", hint="Give the file: hftguard screen DATA ...")
    check_device("device", cfg.device)
    check_range("batch_size", cfg.batch_size, 1)
    info = reg.get("judge", cfg.judge)
    judge = reg.instantiate("judge", cfg.judge, cfg.judge_options, "judge_options")
    samples = read_samples(cfg.input, cfg.fields)  # every input problem before the run dir
    run_dir, done = start_run(
        out, "screen", cfg, resume=resume, overwrite=overwrite, command=command
    )
    if done:
        reporter.info(f"{run_dir.path} is already complete; nothing to do.")
        return run_dir.read_manifest()

    def body() -> dict[str, Any]:
        t0 = time.time()
        from hftguard.pipeline.judging import _device

        ctx = JudgeContext(device=_device(cfg.device), batch_size=cfg.batch_size, reporter=reporter)
        verdicts = judge_samples(samples, info, judge, ctx)
        flagged = [bool(v.harmful) for v in verdicts]
        kinds = [e.kind if e.kind in KINDS else None for e in samples]
        metrics = {"judge": cfg.judge, **screen_metrics(flagged, kinds), "schema_version": 1}
        write_jsonl(
            run_dir.path / "verdicts.jsonl",
            [
                {
                    "id": e.meta["id"],
                    "prompt": e.prompt,
                    "input": e.input,
                    "response": e.response,
                    "kind": e.kind if e.kind in KINDS else None,
                    "flagged": f,
                    "verdict": {"label": v.label, "harmful": v.harmful, "score": v.score},
                }
                for e, f, v in zip(samples, flagged, verdicts, strict=True)
            ],
        )
        atomic_write_json(run_dir.path / "metrics.json", metrics)
        return run_dir.update_manifest(
            status="completed",
            metrics=metrics,
            components={"judge": component_record(info, judge.config)},
            input={"path": str(Path(cfg.input).resolve()), "sha256": sha256_file(Path(cfg.input))},
            ended_at=stamp(),
            wall_time_s=round(time.time() - t0, 2),
        )

    return guard(run_dir, body)  # type: ignore[no-any-return]
