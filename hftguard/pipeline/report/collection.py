"""Collecting finished eval run directories and working out what each one evaluated."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard.errors import RunDirError
from hftguard.pipeline.report.stats import _avg
from hftguard.runs import MANIFEST, is_run_dir, read_manifest, rooted_model, set_aside


def shown(path: Path | str) -> str:
    """A run directory as a report names it: relative to the working directory when it lies
    below it (a report built from ``runs/x`` says ``runs/x/...``), otherwise absolute."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):  # elsewhere, or no working directory any more
        return str(p)


@dataclass
class EvalRun:
    """One finished evaluation and what it evaluated (from the grid manifest or provenance)."""

    path: Path
    kind: str  # "base" | "aligned" | "attacked"
    align: str | None = None
    finetune: str | None = None
    repair: str | None = None  # the repair defense run on the attacked model, if any
    screen: str | None = None  # the judge that screened the user data before fine-tuning
    #: the grid's attack setting ([grid.attack]): {key: value}, {} for cells without one
    attack: dict[str, Any] = field(default_factory=dict)
    p: float | None = None
    n: int | None = None
    task: str | None = None
    seed: int | None = None
    label: str = ""
    attacked_dir: Path | None = None
    #: the dtype the attack trained in (its manifest's ``dtype``), None where not recorded
    attack_dtype: str | None = None
    aligned_dir: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the defense options that tell this evaluation apart from the others of its method in the
    #: same report (``{"rho": 40}``); {} when they all agree (:func:`_variants`)
    variant: dict[str, Any] = field(default_factory=dict)
    #: the attacked model's own fine-tuning settings (the [grid.attack] keys, read from its
    #: manifest): where an evaluation outside a grid gets its attack setting from
    _attack_config: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the defense options of the model's stages, ``{"align.rho": 40, "finetune.k_align": 10}``
    _options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: a repaired model's repair options, ``{"num_layers": 2}``
    _repair_options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the keys of ``variant`` that come from the repair (not part of the attacked model's variant)
    _repair_keys: tuple[str, ...] = field(default=(), repr=False)
    _records: list[dict[str, Any]] | None = field(default=None, repr=False)
    _screening: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        if self.kind == "attacked":
            return self.attacked_method + (f"/{self.repair}" if self.repair else "")
        return self.align or "base"

    @property
    def attacked_method(self) -> str:
        """The method of the attacked model itself: ``method`` without the repair (the model a
        repair's effect is measured against)."""
        ft = f"{self.finetune}+screen:{self.screen}" if self.screen else f"{self.finetune}"
        return f"{self.align}/{ft}"

    @property
    def attack_key(self) -> tuple[tuple[str, Any], ...]:
        """The attack setting, hashable (pairs and groups evaluations of one setting)."""
        return tuple(self.attack.items())

    @property
    def variant_text(self) -> str:
        """The label with the variant, ``Vaccine (rho=40)``: how the report names its rows."""
        return self.label + (f" ({self.variant_label})" if self.variant else "")

    @property
    def variant_key(self) -> tuple[tuple[str, Any], ...]:
        """The variant, hashable (pairs a variant with its own p = 0 and attacked runs)."""
        return tuple(self.variant.items())

    @property
    def attacked_variant_key(self) -> tuple[tuple[str, Any], ...]:
        """The attacked model's own variant (without the repair's options): pairs a repaired
        model with the attacked model it repaired."""
        return tuple((k, v) for k, v in self.variant.items() if k not in self._repair_keys)

    @property
    def variant_label(self) -> str:
        """``rho=40`` (an option the run's defense left at its default: ``rho=default``); ""."""
        return " ".join(
            f"{k}={'default' if v is None else _show(v)}" for k, v in self.variant.items()
        )

    @property
    def attack_label(self) -> str:
        """``lr=1e-05 lora_r=8`` (as the grid's cell labels write it); "" without a setting."""
        return " ".join(f"{k}={_show(v)}" for k, v in self.attack.items())

    def screening(self) -> dict[str, Any]:
        """The screening record of the attacked model's user data (its manifest's
        ``data.main.screening``: counts and leak-through), {} when it was not screened."""
        if self._screening is None:
            m = _manifest(self.attacked_dir) if self.attacked_dir is not None else None
            main = ((m or {}).get("data") or {}).get("main") or {}
            rec = main.get("screening") if isinstance(main, dict) else None
            self._screening = dict(rec) if isinstance(rec, dict) else {}
        return self._screening

    @property
    def judges(self) -> list[str]:
        return list(
            self.manifest.get("config", {}).get("judges") or self.metrics.get("judges", {}).keys()
        )

    def judge_record(self, judge: str | None) -> tuple[str, str, str] | None:
        """The headline judge as its evaluation recorded it: (name, version, options as JSON),
        from the manifest's ``components.judges``; None where it was not recorded."""
        name = self.headline_judge(judge)
        for entry in (self.manifest.get("components") or {}).get("judges") or []:
            if isinstance(entry, dict) and entry.get("name") == name and entry.get("version"):
                options = json.dumps(entry.get("options") or {}, sort_keys=True)
                return str(name), str(entry["version"]), options
        return None

    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            path = self.path / "generations.jsonl"
            self._records = (
                [json.loads(x) for x in path.read_text("utf-8").splitlines() if x]
                if path.is_file()
                else []
            )
        return self._records

    def harmful_score(self, judge: str | None) -> float | None:
        if judge is None or (self.judges and judge == self.judges[0]):
            return self.metrics.get("harmful_score")
        return (self.metrics.get("judges", {}).get(judge) or {}).get("harmful_score")

    def degenerate_rate(self, judge: str | None) -> float | None:
        if judge is None or (self.judges and judge == self.judges[0]):
            return self.metrics.get("degenerate_rate")
        return (self.metrics.get("judges", {}).get(judge) or {}).get("degenerate_rate")

    def finetune_accuracy(self, task: str | None) -> float | None:
        fa = self.metrics.get("finetune_accuracy") or {}
        if task is None:
            return _avg(fa.values())
        return fa.get(task)

    def harmful_flags(self, judge: str | None) -> list[float]:
        j = judge or (self.judges[0] if self.judges else None)
        return [
            100.0 * bool((r.get("verdicts", {}).get(j) or {}).get("harmful"))
            for r in self.records()
            if r.get("set") == "harmful" and j in (r.get("verdicts") or {})
        ]

    def task_flags(self, task: str | None) -> list[float]:
        if task is None:
            return []
        return [
            100.0 * bool(r.get("correct")) for r in self.records() if r.get("set") == f"task:{task}"
        ]

    # --- per-prompt outcomes, keyed for pairing two evaluations prompt by prompt ---------------

    def headline_judge(self, judge: str | None = None) -> str | None:
        """``judge`` when given, else this evaluation's first judge."""
        return judge or (self.judges[0] if self.judges else None)

    def harmful_outcomes(self, judge: str | None) -> dict[str, bool]:
        """{prompt key: judged harmful} over the harmful prompts the judge saw (see item_keys)."""
        j = self.headline_judge(judge)
        rows = [r for r in self.records() if r.get("set") == "harmful"]
        return {
            key: bool((r.get("verdicts") or {})[j].get("harmful"))
            for key, r in zip(item_keys(rows), rows, strict=True)
            if j in (r.get("verdicts") or {})
        }

    def task_outcomes(self, task: str | None) -> dict[str, bool]:
        """{prompt key: correct} over the task's scored prompts (none for external scoring)."""
        rows = [r for r in self.records() if r.get("set") == f"task:{task}" and "correct" in r]
        return {key: bool(r["correct"]) for key, r in zip(item_keys(rows), rows, strict=True)}

    def margin_values(self) -> dict[str, float]:
        """{prompt key: likelihood margin} over the harmful prompts that have one (the per-prompt
        ``likelihood_margin.margin`` eval writes into generations.jsonl)."""
        rows = [r for r in self.records() if r.get("set") == "harmful"]
        return {
            key: float(r["likelihood_margin"]["margin"])
            for key, r in zip(item_keys(rows), rows, strict=True)
            if isinstance(r.get("likelihood_margin"), dict)
            and isinstance(r["likelihood_margin"].get("margin"), (int, float))
        }

    def item_order(self, kind: str, judge: str | None = None) -> tuple[str, ...]:
        """The prompt keys of the ``kind`` records ("harmful", "benign", "task:NAME"), in file
        order, of those ``judge`` judged when one is named: the order of :meth:`harmful_flags`,
        :meth:`task_flags` and :meth:`label_flags`, to check that two seeds list one prompt set
        alike."""
        rows = [
            r
            for r in self.records()
            if r.get("set") == kind and (judge is None or judge in (r.get("verdicts") or {}))
        ]
        return tuple(item_keys(rows))

    def label_flags(self, kind: str, judge: str | None, label: str) -> list[float]:
        """100 × (verdict label == ``label``) over the ``kind`` records ("harmful", "benign") that
        ``judge`` judged."""
        return [
            100.0 * ((r.get("verdicts") or {})[judge].get("label") == label)
            for r in self.records()
            if r.get("set") == kind and judge in (r.get("verdicts") or {})
        ]

    def category_flags(self, judge: str | None) -> dict[str, list[float]]:
        """{harm category: 100 × harmful per prompt of that category}; a multi-label category
        ("a|b") counts the prompt in each; prompts without a category are left out."""
        j = self.headline_judge(judge)
        out: dict[str, list[float]] = {}
        for r in self.records():
            if r.get("set") != "harmful" or j not in (r.get("verdicts") or {}):
                continue
            flag = 100.0 * bool(r["verdicts"][j].get("harmful"))
            for cat in str(r.get("category") or "").split("|"):
                if cat.strip():
                    out.setdefault(cat.strip(), []).append(flag)
        return out

    def judge_block(self, judge: str | None) -> dict[str, Any]:
        """metrics.json's block of ``judge`` (the headline keys stand in for the first judge's block
        in evaluations that lack it)."""
        j = self.headline_judge(judge)
        block = dict((self.metrics.get("judges") or {}).get(j) or {})
        if self.judges and j == self.judges[0]:
            for key in _PER_JUDGE:
                if key in self.metrics:
                    block.setdefault(key, self.metrics[key])
        return block

    def test_set_sha(self, name: str) -> str | None:
        """sha256 of the test set ``name`` ("harmful", "task:NAME") from metrics.json (or the
        manifest), None for evaluations that predate it."""
        sets = self.metrics.get("test_sets") or (self.manifest.get("data") or {}).get("test_sets")
        return ((sets or {}).get(name) or {}).get("sha256")

    def n_items(self, name: str) -> int | None:
        """How many prompts the set ``name`` ("harmful", "benign", "task:NAME") had."""
        counts = self.metrics.get("counts") or {}
        if name.startswith("task:"):
            return (counts.get("tasks") or {}).get(name[5:])
        return counts.get(name)


#: Per-judge metrics that metrics.json also carries at the top level for the first judge.
_PER_JUDGE = (
    "harmful_score",
    "harmful_score_plus",
    "degenerate_rate",
    "off_topic_rate",
    "harmful_score_ci",
    "harmful_score_plus_ci",
    "degenerate_rate_ci",
    "off_topic_rate_ci",
)


def _show(value: Any) -> str:
    """A setting's value as the grid's names and labels write it (``1e-05``, ``8``)."""
    from hftguard.pipeline.grid.spec import _show as grid_show

    return grid_show(value)


def attack_order(attack: dict[str, Any]) -> tuple[Any, ...]:
    """Attack settings in ascending order of their values (numbers before names)."""
    return tuple(
        (k, (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v)))
        for k, v in attack.items()
    )


def item_keys(rows: list[dict[str, Any]]) -> list[str]:
    """A key per record for pairing two evaluations prompt by prompt: its ``id``, else its prompt
    (and input) text; a key seen before gets ``#2``, ``#3``... (duplicates pair in order)."""
    seen: dict[str, int] = {}
    keys = []
    for r in rows:
        rid = r.get("id")
        key = (
            f"id:{rid}" if rid not in (None, "") else f"text:{r.get('prompt')}\x00{r.get('input')}"
        )
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(path) if is_run_dir(path) else None
    except RunDirError:
        return None


def _run_dir(*candidates: Any) -> tuple[Path | None, dict[str, Any] | None]:
    """The first candidate path that is a run directory, with its manifest."""
    for c in candidates:
        if not c:
            continue
        p = Path(str(c))
        m = _manifest(p)
        if m is not None:
            return p, m
    return None, None


def _stage_options(m: dict[str, Any]) -> dict[str, Any]:
    """A stage manifest's defense options, keyed ``align.NAME`` or ``finetune.NAME``."""
    opts = (m.get("config") or {}).get("defense_options")
    stage = m.get("stage")
    if not isinstance(opts, dict) or stage not in ("align", "finetune"):
        return {}
    return {f"{stage}.{k}": v for k, v in opts.items()}


def comparable(value: Any) -> Any:
    """A value for comparison: numbers by value (400 and 400.0, a TOML float and a --set
    integer, agree), through nested dicts and lists."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): comparable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    return repr(value)


def _same(value: Any) -> str:
    """An option's value as a hashable key (:func:`comparable`)."""
    return json.dumps(comparable(value), sort_keys=True)


def _variants(runs: list[EvalRun]) -> None:
    """Evaluations of one method whose defenses ran with different options (a sweep of Vaccine's
    rho in several run directories) are told apart by those options: each gets ``variant``, the
    options that differ within its method (attacked models: per alignment/fine-tuning pair, so a
    repaired model shares its attacked model's variant; aligned models: per alignment defense).
    An option's key drops its stage (``rho``) unless both stages vary an option of that name.
    Repaired models of one method add the repair options that differ among them."""
    groups: dict[tuple[str, str | None], list[EvalRun]] = {}
    for r in runs:
        if r.kind == "attacked":
            groups.setdefault(("attacked", r.attacked_method), []).append(r)
        elif r.kind == "aligned":
            groups.setdefault(("aligned", r.align), []).append(r)
    for rs in groups.values():
        keys = sorted({k for r in rs for k in r._options})
        varying = [k for k in keys if len({_same(r._options.get(k)) for r in rs}) > 1]
        names = {k: k.split(".", 1)[1] for k in varying}
        if len(set(names.values())) < len(names):
            names = {k: k for k in varying}
        for r in rs:
            r.variant = {names[k]: r._options.get(k) for k in varying}
    # repaired models of one method whose repairs ran with different options (a sweep of
    # SafeLoRA's num_layers): the repair's options join the variant (``repair.KEY`` where the
    # attacked model's variant has an option of that name)
    repaired: dict[str, list[EvalRun]] = {}
    for r in runs:
        if r.kind == "attacked" and r.repair:
            repaired.setdefault(r.method, []).append(r)
    for rs in repaired.values():
        keys = sorted({k for r in rs for k in r._repair_options})
        varying = [k for k in keys if len({_same(r._repair_options.get(k)) for r in rs}) > 1]
        for r in rs:
            extra = {
                (f"repair.{k}" if k in r.variant else k): r._repair_options.get(k) for k in varying
            }
            r.variant = {**r.variant, **extra}
            r._repair_keys = tuple(extra)


def _infer(path: Path, manifest: dict[str, Any]) -> EvalRun:
    """What an eval directory evaluated, from the manifests of the model's run directories."""
    cfg = manifest.get("config", {})
    adapters = (manifest.get("evaluated_model") or {}).get("adapters") or []
    model_dir, model_m = _run_dir(
        rooted_model(path, manifest),  # inside a grid: relative to its root, wherever it is now
        cfg.get("model"),
        Path(adapters[-1]).parent if adapters else None,
    )
    run = EvalRun(path, "base", manifest=manifest)
    if model_m is not None and model_m.get("stage") == "repair":  # a repaired attacked model
        run.repair = model_m.get("config", {}).get("defense")
        repair_opts = model_m.get("config", {}).get("defense_options")
        run._repair_options = dict(repair_opts) if isinstance(repair_opts, dict) else {}
        model_dir, model_m = _run_dir(
            rooted_model(model_dir, model_m) if model_dir is not None else None,
            model_m.get("attacked_run"),
        )
    if model_m is None:
        return run
    mcfg = model_m.get("config", {})
    run._options = _stage_options(model_m)
    if model_m.get("stage") == "align":
        run.kind, run.align, run.seed, run.aligned_dir = (
            "aligned",
            mcfg.get("defense"),
            mcfg.get("seed"),
            model_dir,
        )
        return run
    if model_m.get("stage") == "finetune":
        run.kind, run.attacked_dir = "attacked", model_dir
        run.attack_dtype = model_m.get("dtype") or None
        run.finetune, run.p, run.n = (
            mcfg.get("defense"),
            mcfg.get("harmful_ratio"),
            mcfg.get("samples"),
        )
        run.task, run.seed = mcfg.get("task"), mcfg.get("seed")
        run.screen = mcfg.get("screen") or None
        run._attack_config = _attack_config(mcfg)
        up_adapters = (model_m.get("input_model") or {}).get("adapters") or []
        a_dir, a_m = _run_dir(
            rooted_model(model_dir, model_m) if model_dir is not None else None,
            model_m.get("aligned_run"),
            mcfg.get("model"),
            Path(up_adapters[-1]).parent if up_adapters else None,
        )
        if a_m is not None and a_m.get("stage") == "align":
            run.align, run.aligned_dir = a_m.get("config", {}).get("defense"), a_dir
            run._options = {**_stage_options(a_m), **run._options}
        else:
            run.align = "none"
    return run


@dataclass
class Problem:
    """A run directory the report cannot use, and why."""

    path: Path
    reason: str


@dataclass
class Collection:
    """Every eval run found, with method display names and order from grid manifests."""

    runs: list[EvalRun]
    labels: dict[str, str]
    method_order: list[str]
    roots: list[Path]
    #: Run directories whose manifest.json cannot be read (not JSON, not an object): left out.
    damaged: list[Problem] = field(default_factory=list)
    #: Evaluations a grid manifest lists that are not finished (and not damaged): left out.
    missing: list[Problem] = field(default_factory=list)


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) for a readable run directory, (None, why) for a damaged one, (None, None)
    for a directory without a manifest."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        return None, None
    try:
        data = json.loads(mpath.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{MANIFEST} cannot be read ({exc})"
    if not isinstance(data, dict):
        return None, f"{MANIFEST} is not a JSON object"
    return data, None


def collect(paths: Sequence[str | Path]) -> Collection:
    """Find the finished eval run directories under ``paths`` and work out what each evaluated."""
    found: dict[Path, dict[str, Any]] = {}
    grid_coords: dict[Path, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    order: list[str] = []
    damaged: dict[Path, Problem] = {}
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.is_dir():
            raise RunDirError(
                f"{root} is not a directory.",
                hint="Pass a grid's --out directory or eval run directories.",
            )
        manifests = [
            root / "manifest.json",
            # not the runs --overwrite moved aside, nor the files hftguard rejudge replaced
            *sorted(m for m in root.rglob(f"*/{MANIFEST}") if not set_aside(root, m)),
        ]
        for mpath in manifests:
            m, why = _read(mpath.parent)
            if why is not None:
                damaged.setdefault(mpath.parent.resolve(), Problem(mpath.parent, why))
            if m is None:
                continue
            if m.get("stage") == "eval" and m.get("status") == "completed":
                found.setdefault(mpath.parent.resolve(), m)
            elif m.get("stage") == "pipeline" and isinstance(m.get("grid"), dict):
                g = m["grid"]
                labels.update(g.get("labels") or {})
                # method_order: every method the root has held, earliest first (older roots:
                # the last invocation's methods only)
                order += [
                    x for x in g.get("method_order") or g.get("methods", []) if x not in order
                ]
                for c in m.get("cells", []):
                    grid_coords[(mpath.parent / c["eval"]).resolve()] = {
                        **c,
                        "attacked_dir": mpath.parent / c["attacked"],
                        "where": mpath.parent / c["eval"],
                    }
                for e in m.get("evals", []):
                    grid_coords[(mpath.parent / e["eval"]).resolve()] = {
                        **e,
                        "aligned_dir": mpath.parent / e["aligned"] if "aligned" in e else None,
                        "where": mpath.parent / e["eval"],
                    }
    missing = [
        Problem(Path(str(c["where"])), _why_missing(path))
        for path, c in grid_coords.items()
        if path not in found and path not in damaged
    ]
    runs = []
    for path, m in found.items():
        run = _infer(path, m)
        coords = grid_coords.get(path)
        if coords and coords.get("kind", "attacked") == "attacked":
            run.kind = "attacked"
            run.align, run.finetune = coords["align"], coords["finetune"]
            run.repair = coords.get("repair") or None
            run.screen = coords.get("screen") or None
            attack = coords.get("attack")
            run.attack = dict(attack) if isinstance(attack, dict) else {}
            run.p, run.n, run.task, run.seed = (
                coords["p"],
                coords["n"],
                coords["task"],
                coords["seed"],
            )
            if run.attacked_dir is None or not run.attacked_dir.is_dir():
                run.attacked_dir = Path(coords["attacked_dir"])
        elif coords and coords.get("kind") == "aligned":
            run.kind, run.align, run.seed = "aligned", coords["align"], coords["seed"]
            if run.aligned_dir is None or not run.aligned_dir.is_dir():
                run.aligned_dir = Path(coords["aligned_dir"])
        elif coords:
            run.kind = "base"
        run.metrics = _metrics(path, m)
        runs.append(run)
    _settings_outside_grids(
        [r for r in runs if r.kind == "attacked" and r.path not in grid_coords and not r.attack],
        {k for r in runs if r.kind == "attacked" for k in r.attack},  # the grids' attack axes
    )
    _variants(runs)
    for run in runs:
        run.label = labels.get(run.method, run.method)
        if run.kind == "aligned":  # named after the method that fine-tunes it with SFT, if any
            run.label = labels.get(f"{run.align}/sft") or next(
                (v for k, v in labels.items() if k.startswith(f"{run.align}/")), run.method
            )
    runs.sort(key=lambda r: (_order(order, r), attack_order(r.attack), str(r.path)))
    return Collection(runs, labels, order, roots, list(damaged.values()), missing)


def _attack_config(mcfg: dict[str, Any]) -> dict[str, Any]:
    """The [grid.attack] keys' values in an attack-finetune config ({key: value}, in ATTACK_KEYS
    order). ``epochs`` is left out when ``max_steps`` fixes the length, ``max_steps`` when it
    does not: the setting that has no effect is not part of the attack."""
    from hftguard.pipeline.grid.spec import ATTACK_KEYS

    out: dict[str, Any] = {}
    for key, (where, _) in ATTACK_KEYS.items():
        value: Any = {"finetune": mcfg}
        for part in where.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            out[key] = value
    if out.get("max_steps"):
        out.pop("epochs", None)
    else:
        out.pop("max_steps", None)
    return out


def _settings_outside_grids(runs: list[EvalRun], grid_axes: set[str]) -> None:
    """Attack settings for attacked evaluations that no grid manifest describes (eval directories
    given one by one, single pipelines): the fine-tuning settings that differ among them, read
    from each attacked model's manifest, become their attack setting — as ``[grid.attack]`` axes
    would have — so the report pairs within a setting and shows the worst case over settings.

    A key counts only where every such run's manifest has it (an older or foreign manifest
    without ``train`` does not split cells on ``None``); the axes of grids in the same report are
    added, so an outside run lines up with the grid's cells; ``harmful`` varies only among runs
    with harmful data (p > 0), since it changes nothing at p = 0."""
    from hftguard.pipeline.grid.spec import ATTACK_KEYS

    def values(key: str) -> set[str]:
        rs = [r for r in runs if key != "harmful" or r.p]
        return {repr(r._attack_config.get(key)) for r in rs}

    keys = [
        k
        for k in ATTACK_KEYS
        if runs
        and all(k in r._attack_config for r in runs)
        and (k in grid_axes or len(values(k)) > 1)
    ]
    for r in runs:
        r.attack = {k: r._attack_config[k] for k in keys}


def _why_missing(path: Path) -> str:
    """Why the evaluation a grid manifest lists at ``path`` is not a finished one."""
    m, _ = _read(path)
    if m is None:
        return f"no {MANIFEST}" if path.is_dir() else "no such directory"
    if m.get("stage") != "eval":
        return f"a '{m.get('stage')}' run, not an evaluation"
    return f"status {m.get('status')!r}"


def _order(order: list[str], run: EvalRun) -> tuple[int, int, str]:
    """Base first, then methods in the grid's order (an aligned model where it is first used)."""
    if run.kind == "base":
        return (-1, 0, "")
    if run.kind == "aligned":
        idx = [i for i, m in enumerate(order) if m.split("/")[0] == run.align]
        return (idx[0], 0, "") if idx else (len(order), 0, run.method)
    return (order.index(run.method), 1, "") if run.method in order else (len(order), 1, run.method)


def _metrics(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads((path / "metrics.json").read_text("utf-8"))
    except (OSError, ValueError):
        return dict(manifest.get("metrics") or {})
