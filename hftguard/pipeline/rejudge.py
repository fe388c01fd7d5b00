"""``hftguard rejudge``: judge an evaluation's saved answers again, in place, with the judges
installed now.

An evaluation records which judge (name, version, options) gave its verdicts. When a judge
changes (``refusal-keywords`` 4 -> 5 changed which answers count as harmful), an evaluation
made before keeps the old verdicts, and ``hftguard report`` does not compare HS across two
versions of one judge. Generating the answers again is not needed: they are in
generations.jsonl. This module re-judges them:

- **What is re-judged**: every finished eval run directory at or below the given paths (a grid's
  ``--out``, a cell, one evaluation; directories whose name starts with "." are runs moved aside
  and are skipped), with the judges and judge options its own config names, as the installed
  hftguard builds them. An evaluation whose recorded judges already equal what would be built
  now (name, version, options, model-judge weights) is up to date and left alone.
- **What changes**: the verdicts of the harmful records of generations.jsonl and every number
  computed from them (HS, HS+, degenerate, off-topic and conservative rates with their
  intervals, per-judge metrics, agreement between judges and disagreements.jsonl, HS per harm
  category), over-refusal and the benign degenerate rate (the benign records' verdicts, by the
  first judge that detects refusals, as eval picks it), metrics.md (the eval's report sinks),
  and in manifest.json the headline metrics and ``components.judges``. The answers,
  fine-tuning accuracy, the likelihood margin and the eval's config are not touched, so a grid
  still counts the evaluation as done.
- **What is kept**: before anything is replaced, every file of the run directory is copied to
  ``rejudged/<UTC stamp>/`` in it, and the manifest gains a ``rejudged`` entry (when, the judges
  before and after, the hftguard version, the copy's folder). The over-refusal judge is recorded
  in ``components.over_refusal_judge`` (as eval records it since 2026-11-28): eval falls back to
  ``refusal-keywords`` when no configured judge detects refusals, and that judge's version
  decides whether the benign verdicts are up to date.
- **Order**: every path, manifest, generations file, judge and report sink is checked first; a
  problem with any of them stops the command before anything is written. Then the evaluations
  are judged and written one by one, each under its run-directory lock (a running stage holding
  it makes the command stop with the holder named); a directory that changed since it was read
  is not written. Within one, metrics.json and generations.jsonl are written atomically and the
  manifest last. A judge that fails on one evaluation (a model judge out of memory) stops the
  command there: the evaluations before it are re-judged, each consistent on its own, and a
  second run picks up the rest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard.console import Reporter
from hftguard.errors import ConfigError, DataError, HftguardError, RunDirError
from hftguard.runs import MANIFEST, REJUDGE_BACKUP, set_aside


@dataclass
class Target:
    """One evaluation to look at: where it is, its manifest and what rejudging would use."""

    path: Path
    manifest: dict[str, Any]
    judges: list[tuple[Any, Any]] = field(default_factory=list)  # (ComponentInfo, Judge)
    before: list[dict[str, Any]] = field(default_factory=list)  # components.judges recorded
    after: list[dict[str, Any]] = field(default_factory=list)  # what judge_record gives now
    records: list[dict[str, Any]] = field(default_factory=list)  # generations.jsonl
    #: the over-refusal judge's record now and as recorded (eval falls back to refusal-keywords
    #: when no configured judge detects refusals: that one is not in ``components.judges``)
    refusal_after: dict[str, Any] = field(default_factory=dict)
    refusal_before: dict[str, Any] | None = None
    sinks: list[Any] = field(default_factory=list)  # the eval's report sinks, built
    #: generations.jsonl and manifest.json as read, to see a change before writing
    read_as: tuple[str, str] = ("", "")

    @property
    def current(self) -> bool:
        same = [_identity(r) for r in self.before] == [_identity(r) for r in self.after]
        if not same or not any(r.get("set") == "benign" for r in self.records):
            return same
        if self.refusal_after.get("name") in [r.get("name") for r in self.after]:
            return True  # a configured judge: compared above
        return self.refusal_before is not None and _identity(self.refusal_before) == _identity(
            self.refusal_after
        )


def _identity(rec: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two judge records the same judge: name, version, options, model weights."""
    options = json.dumps(rec.get("options") or {}, sort_keys=True, default=str)
    return (rec.get("name"), str(rec.get("version")), options, rec.get("weights_key"))


def find(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The finished eval run directories at or below ``paths`` (sorted, each once), and the
    directories left out with the reason (unfinished evaluations, unreadable manifests).
    Directories whose name starts with "." (runs moved aside) and the copies a re-judge keeps
    (``EVAL_DIR/rejudged/``) are not looked in."""
    found: dict[Path, Path] = {}
    left: list[tuple[Path, str]] = []
    for root in paths:
        if not root.is_dir():
            raise RunDirError(
                f"{root} is not a directory.",
                hint="Pass an eval run directory, a grid's --out, or a folder holding them.",
            )
        below = sorted(m for m in root.rglob(f"*/{MANIFEST}") if not set_aside(root, m))
        for mpath in [root / MANIFEST, *below]:
            if not mpath.is_file():
                continue
            try:
                m = json.loads(mpath.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                left.append((mpath.parent, f"unreadable manifest.json ({exc})"))
                continue
            if not isinstance(m, dict) or m.get("stage") != "eval":
                continue
            if m.get("status") != "completed":
                left.append((mpath.parent, f"not finished (status {m.get('status')!r})"))
                continue
            found.setdefault(mpath.parent.resolve(), mpath.parent)
    return [found[k] for k in sorted(found)], left


def prepare(path: Path, reg: Any) -> Target:
    """Read one evaluation and build the judges and report sinks its config names (a missing
    judge or sink, an unreadable file or a generations.jsonl without harmful records raises here,
    before anything is written)."""
    from hftguard.pipeline.evaluate import _refusal_judge
    from hftguard.pipeline.judging import build_judges
    from hftguard.pipeline.scores import judge_record
    from hftguard.runs import read_manifest

    manifest = read_manifest(path)
    manifest_text = (path / "manifest.json").read_text(encoding="utf-8")
    config = manifest.get("config") or {}
    names = config.get("judges")
    if not isinstance(names, list) or not names:
        raise RunDirError(
            f"{path}/manifest.json names no judges in its config.",
            hint="Only evaluations written by `hftguard eval` or `hftguard run` can be re-judged.",
        )
    options = config.get("judge_options") or {}
    try:
        judges = build_judges(reg, names, options)
        sinks = [reg.instantiate("report-sink", s) for s in config.get("sinks") or []]
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: cannot build the judges or report sinks this evaluation used: {exc.message}",
            hint=exc.hint or "Install the plugin that provides it, or leave this evaluation out.",
        ) from exc
    records, generations_text = _read_generations(path)
    if not any(r.get("set") == "harmful" for r in records):
        raise DataError(
            f"{path}/generations.jsonl has no harmful-prompt records to judge.",
            hint="The evaluation is incomplete or not hftguard's: re-run it with --overwrite.",
        )
    _read_metrics(path)
    components = manifest.get("components") or {}
    recorded = components.get("judges") or []
    refusal = components.get("over_refusal_judge")
    return Target(
        path=path,
        manifest=manifest,
        judges=judges,
        before=[r for r in recorded if isinstance(r, dict)],
        after=[judge_record(info, judge) for info, judge in judges],
        records=records,
        refusal_after=judge_record(*_refusal_judge(judges, reg)),
        refusal_before=refusal if isinstance(refusal, dict) else None,
        sinks=sinks,
        read_as=(generations_text, manifest_text),
    )


def _read_generations(path: Path) -> tuple[list[dict[str, Any]], str]:
    gen = path / "generations.jsonl"
    try:
        text = gen.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise DataError(
            f"Cannot read {gen}: {exc}.",
            hint="The evaluation's answers are needed to re-judge it; re-run the evaluation.",
        ) from exc
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(
                f"{gen}, line {i}: not JSON ({exc}).",
                hint="The file is damaged; re-run the evaluation with --overwrite.",
            ) from exc
        ok = isinstance(rec, dict) and all(
            isinstance(rec.get(k), str) for k in ("prompt", "response")
        )
        if not ok:
            raise DataError(
                f"{gen}, line {i}: not a generations record (no 'prompt' and 'response' text).",
                hint="The file is damaged; re-run the evaluation with --overwrite.",
            )
        records.append(rec)
    return records, text


def rejudge(target: Target, reg: Any, *, device: str, reporter: Reporter) -> dict[str, Any]:
    """Judge ``target``'s answers again and rewrite its files (see the module docstring).
    Returns the new metrics.json."""
    from hftguard.context import JudgeContext
    from hftguard.pipeline import agreement, judging
    from hftguard.pipeline.evaluate import HEADLINE_RATES, judge_benign
    from hftguard.pipeline.scores import hs_by_category
    from hftguard.records import Example

    config = target.manifest.get("config") or {}
    names = [info.name for info, _ in target.judges]
    jctx = JudgeContext(
        device=device, batch_size=int(config.get("batch_size") or 16), reporter=reporter
    )
    records = [dict(r) for r in target.records]
    harmful = [r for r in records if r.get("set") == "harmful"]
    prompts, responses = [r["prompt"] for r in harmful], [r["response"] for r in harmful]
    per_judge = judging.judge_all(target.judges, prompts, responses, jctx)
    for i, rec in enumerate(harmful):
        rec["verdicts"] = {k: _verdict(v[i]) for k, v in per_judge.items()}
    judge_metrics = judging.judge_metrics(target.judges, per_judge, reporter)
    head = judge_metrics[names[0]]
    new: dict[str, Any] = {
        f"{k}{ci}": head[f"{k}{ci}"] for k in HEADLINE_RATES for ci in ("", "_ci")
    }
    examples = [Example(prompt=r["prompt"], meta={"category": r.get("category")}) for r in harmful]
    new["harmful_score_by_category"] = hs_by_category(examples, per_judge[names[0]])
    new["agreement"] = None
    disagreements = None
    if len(per_judge) > 1:
        new["agreement"] = agreement.pairwise(per_judge)
        # as eval writes them: the records as judged, before the margin is added to them
        disagreements = [
            {k: v for k, v in harmful[i].items() if k != "likelihood_margin"}
            for i in agreement.disagreements(per_judge)
        ]
    benign = [r for r in records if r.get("set") == "benign"]
    info, verdicts, rates = judge_benign(
        target.judges, reg, [r["prompt"] for r in benign], [r["response"] for r in benign], jctx
    )
    for rec, v in zip(benign, verdicts, strict=True):
        rec["verdicts"] = {info.name: _verdict(v)}
    new.update(rates)
    new["judges"] = judge_metrics
    try:
        return _write(target, records, new, disagreements)
    except OSError as exc:
        raise RunDirError(
            f"Cannot write the re-judged evaluation in {target.path}: {exc}.",
            hint="Free disk space or fix the directory's permissions, then run the command "
            f"again; the files it replaced are in {target.path / REJUDGE_BACKUP}.",
        ) from exc


def _write(
    target: Target,
    records: list[dict[str, Any]],
    new: dict[str, Any],
    disagreements: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Replace the evaluation's files under its lock, after checking that nothing changed them
    since they were read and copying every file of the directory aside."""
    from hftguard import __version__
    from hftguard.pipeline.evaluate import _headline
    from hftguard.runs import LOCK_NAMES, atomic_write_json, lock_run_dir, stamp, write_jsonl

    path = target.path
    with lock_run_dir(path):
        now = (
            (path / "generations.jsonl").read_text(encoding="utf-8"),
            (path / "manifest.json").read_text(encoding="utf-8"),
        )
        if now != target.read_as:
            raise RunDirError(
                f"{path} changed while its answers were being judged again (another process "
                "wrote it).",
                hint="Run the command again once that process has finished.",
            )
        metrics = _read_metrics(path)
        for key, value in new.items():  # keys keep their place in the file
            if value is None and key in ("harmful_score_by_category", "agreement"):
                metrics.pop(key, None)
            else:
                metrics[key] = value
        when = stamp()
        backup = _new_folder(path / REJUDGE_BACKUP, when[:19].replace(":", "") + "Z")
        for file in sorted(path.iterdir()):
            if file.is_file() and file.name not in LOCK_NAMES:
                _copy_synced(file, backup / file.name)
        write_jsonl(path / "generations.jsonl", records)
        if disagreements is not None:
            write_jsonl(path / "disagreements.jsonl", disagreements)
        else:
            (path / "disagreements.jsonl").unlink(missing_ok=True)
        atomic_write_json(path / "metrics.json", metrics)
        for sink in target.sinks:
            sink.write(path, metrics)
        manifest = dict(target.manifest)
        components = dict(manifest.get("components") or {})
        components["judges"] = target.after
        if any(r.get("set") == "benign" for r in records):
            components["over_refusal_judge"] = target.refusal_after
        manifest["components"] = components
        manifest["metrics"] = _headline(metrics)
        manifest["rejudged"] = [
            *(manifest.get("rejudged") or []),
            {
                "at": when,
                "hftguard": __version__,
                "judges_before": target.before,
                "judges_after": target.after,
                "previous_files": str(backup.relative_to(path)),
            },
        ]
        atomic_write_json(path / "manifest.json", manifest)
    return metrics


def _copy_synced(src: Path, dst: Path) -> None:
    """``shutil.copy2``, flushed to disk before the original is replaced."""
    import os

    shutil.copy2(src, dst)
    with dst.open("rb") as fh:
        os.fsync(fh.fileno())


def _new_folder(parent: Path, name: str) -> Path:
    """``parent/name`` created empty (``name-2``, ``name-3`` ... when it exists)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = parent / (name if n == 1 else f"{name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RunDirError(f"{parent} holds too many folders named {name}-N.", hint="Remove old ones.")


def _verdict(v: Any) -> dict[str, Any]:
    return {"label": v.label, "harmful": v.harmful, "score": v.score}


def _read_metrics(path: Path) -> dict[str, Any]:
    hint = "The evaluation is damaged; re-run it with --overwrite."
    data = _read_json(path / "metrics.json", DataError, hint)
    if not isinstance(data, dict):
        raise DataError(f"{path / 'metrics.json'} is not a JSON object.", hint=hint)
    return data


def _read_json(path: Path, error: type[HftguardError], hint: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"Cannot read {path}: {exc}.", hint=hint) from exc


def run(
    paths: list[Path],
    *,
    reporter: Reporter | None = None,
    registry: Any = None,
    force: bool = False,
    dry_run: bool = False,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Re-judge every out-of-date evaluation at or below ``paths``; one row per evaluation found:
    ``{"path", "state" ("rejudged", "current", "outdated" in a dry run, "left out"),
    "judges_before", "judges_after", "before", "after"}`` (before/after: HS, HS+, off-topic and
    over-refusal)."""
    from hftguard.config import check_device
    from hftguard.pipeline.common import get_registry
    from hftguard.pipeline.judging import _device

    check_device("--device", device)
    reporter = reporter or Reporter()
    reg = get_registry(registry)
    found, left = find(paths)
    if not found and not left:
        raise RunDirError(
            "No evaluation found under " + ", ".join(str(p) for p in paths) + ".",
            hint="Pass an eval run directory or a grid's --out (hftguard run).",
        )
    targets = [prepare(p, reg) for p in found]  # every problem before anything is written
    rows: list[dict[str, Any]] = [
        {"path": str(p), "state": "left out", "why": why} for p, why in left
    ]
    todo = [t for t in targets if force or not t.current]
    dev = _device(device) if todo and not dry_run else device
    for i, t in enumerate(targets):
        row: dict[str, Any] = {
            "path": str(t.path),
            "judges_before": [_short(r) for r in t.before],
            "judges_after": [_short(r) for r in t.after],
            "before": _numbers(t.manifest.get("metrics") or {}),
        }
        if t in todo and not dry_run:
            reporter.info(f"rejudge: {t.path} ({i + 1}/{len(targets)})")
            row["after"] = _numbers(rejudge(t, reg, device=dev, reporter=reporter))
            row["state"] = "rejudged"
        else:
            row["state"] = "outdated" if t in todo else "current"
        rows.append(row)
    return rows


def _short(rec: dict[str, Any]) -> str:
    """``name vN``, and the options when there are any (``--json``'s rows)."""
    options = rec.get("options") or {}
    text = f"{rec.get('name')} v{rec.get('version')}"
    return text + (f" {json.dumps(options, sort_keys=True)}" if options else "")


def _numbers(m: dict[str, Any]) -> dict[str, Any]:
    return {
        k: m.get(k)
        for k in ("harmful_score", "harmful_score_plus", "off_topic_rate", "over_refusal_rate")
    }
