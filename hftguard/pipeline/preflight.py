"""Path checks before a run: every model, data file, judge model and dataset source a config names.

``hftguard validate`` and ``hftguard run --dry-run`` call :func:`check_with_paths` (through
:func:`check_grid` for a pipeline or grid) before anything is written: it collects *every* path
problem of the config (a missing data file, a model directory without ``config.json``, an
unfinished run given as the model, a judge model or a dataset's local ``source`` that does not
exist...) and reports them in one error, together with the first config or component error when
there is one. (A plain ``hftguard run`` meets a missing path in the stage that reads it.)
Without torch: models are checked the way :func:`hftguard.engine.models.resolve` tells them
apart, not loaded. A hub id is not looked up (that needs the network); it is reported when the
model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hftguard import config as cfgmod
from hftguard.errors import ConfigError, HftguardError
from hftguard.registry import Registry

#: The built-in model aliases (``engine.models.ALIASES``, named here without importing torch).
MODEL_ALIASES = ("smollm2-135m-instruct", "tiny-random")


def model_problem(spec: str, where: str) -> str | None:
    """What is wrong with model ``spec`` (an alias, a local model or run directory, a .gguf file
    or a hub id), or None; as :func:`hftguard.engine.models.resolve` would find it."""
    from hftguard import runs

    if not spec:
        return f"{where} is empty."
    p = Path(spec).expanduser()
    if p.is_dir():
        if runs.is_run_dir(p):
            try:
                manifest = runs.read_manifest(p)
                if manifest.get("status") != "completed" or "model" not in manifest:
                    return (
                        f"{where} = '{spec}' is a run directory without a finished model (status: "
                        f"{manifest.get('status')}); finish it first (re-run its stage with "
                        f"--resume --out {spec})."
                    )
                runs.model_recipe(p, manifest)  # its adapters are where the manifest says
            except HftguardError as exc:
                return f"{where} = '{spec}': {exc.message}"
            return None
        if not (p / "config.json").is_file():
            return (
                f"{where} = '{spec}' is neither a Hugging Face model directory (no config.json) "
                "nor an hftguard run directory (no manifest.json)."
            )
        return None
    if spec in MODEL_ALIASES:
        return None
    if p.suffix == ".gguf":
        return f"{where} = '{spec}': GGUF file not found."
    if p.exists():
        return f"{where} = '{spec}' is a file but not a .gguf model."
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local or (p.parent != Path(".") and p.parent.exists()):
        return f"{where} = '{spec}': no such model directory."
    if spec.count("/") == 1:
        return None  # a hub id: looked up when the model is loaded
    return (
        f"{where} = '{spec}' is not a model alias ({', '.join(MODEL_ALIASES)}), a local path or a "
        "hub id (ORG/NAME)."
    )


def data_problem(spec: str, where: str) -> str | None:
    """What is wrong with data ``spec`` when it names a local file (a dataset name is checked by
    the registry), or None."""
    from hftguard.data.hub import is_hf_spec, parse_hf_spec
    from hftguard.data.inputs import is_file_spec

    if is_hf_spec(spec):
        try:
            parse_hf_spec(spec)
        except HftguardError as exc:
            return f"{where} = '{spec}': {exc}"
        return None  # read (from a local copy or the hub) when the stage loads it
    if not spec or not is_file_spec(spec):
        return None
    p = Path(spec).expanduser()
    if p.is_dir():
        return f"{where} = '{spec}' is a directory, not a data file."
    if not p.is_file():
        return f"{where} = '{spec}': file not found."
    return None


def source_problem(source: Any, where: str) -> str | None:
    """A dataset's ``source`` option that looks like a local path which does not exist."""
    from hftguard.data.hub import _looks_like_path

    if not isinstance(source, str) or not source.strip():
        return None
    text = source.strip()
    if _looks_like_path(text) and not Path(text).expanduser().exists():
        return f"{where} = '{text}': no such file or directory."
    return None


def _streams(reg: Registry, kind: str, name: str, options: dict[str, Any]) -> tuple[str, ...]:
    try:
        return tuple(reg.instantiate(kind, name, options, "defense_options").streams)
    except HftguardError:
        return ()  # reported by the component checks


def stage_problems(
    cfg: Any, reg: Registry, *, prefix: str = "", check_model: bool = True
) -> list[str]:
    """Every path problem of one stage config (keys named with ``prefix``, e.g. ``align.``)."""
    out: list[str | None] = []
    if check_model:
        out.append(model_problem(cfg.model, f"{prefix}model"))
    data: list[tuple[str, str]] = []
    if isinstance(cfg, cfgmod.AlignConfig):
        data.append((cfg.data, "data"))
        if "harmful" in _streams(reg, "alignment-defense", cfg.defense, cfg.defense_options):
            data.append((cfg.harmful, "harmful"))
        if cfg.retain and cfg.retain_ratio > 0:
            data.append((cfg.retain, "retain"))
    elif isinstance(cfg, cfgmod.FinetuneConfig):
        data += [(cfg.task, "task"), (cfg.harmful, "harmful")]
        if "alignment" in _streams(reg, "finetune-defense", cfg.defense, cfg.defense_options):
            data.append((cfg.alignment_data, "alignment_data"))
    elif isinstance(cfg, cfgmod.EvalConfig):
        data += [(cfg.harmful_prompts, "harmful_prompts"), (cfg.benign_prompts, "benign_prompts")]
        data += [(t, f"tasks[{i}]") for i, t in enumerate(cfg.tasks)]
        for name in cfg.judges:
            where = f"{prefix}judge_options.{name}"
            try:
                judge = reg.instantiate("judge", name, cfg.judge_options.get(name, {}), where)
            except HftguardError:
                continue  # reported by the component checks
            spec = getattr(judge.config, "model", None)
            if isinstance(spec, str) and spec:
                out.append(model_problem(spec, f"{where}.model"))
    elif isinstance(cfg, cfgmod.RepairConfig) and "harmful" in _streams(
        reg, "repair-defense", cfg.defense, cfg.defense_options
    ):
        data.append((cfg.harmful, "harmful"))
    out += [data_problem(spec, f"{prefix}{key}") for spec, key in data]
    for name, options in (getattr(cfg, "dataset_options", None) or {}).items():
        if isinstance(options, dict):
            out.append(source_problem(options.get("source"), f"dataset_options.{name}.source"))
    return [p for p in out if p]


def grid_problems(grid: Any, reg: Registry) -> list[str]:
    """Every path problem of a pipeline or grid (``hftguard.pipeline.grid.Grid``): the base model
    (the later stages' models are the grid's own runs), and each distinct stage's data, judge
    models and dataset sources."""
    from hftguard.pipeline.grid.spec import _stage_configs

    sections = {
        cfgmod.AlignConfig: "align.",
        cfgmod.FinetuneConfig: "finetune.",
        cfgmod.EvalConfig: "eval.",
        cfgmod.RepairConfig: "repair.",  # its model is a grid run; its data: Antidote's
    }
    problems = [model_problem(grid.base.align.model, "align.model")]
    for cfg in _stage_configs(grid, reg):
        problems += stage_problems(cfg, reg, prefix=sections[type(cfg)], check_model=False)
    return _unique(p for p in problems if p)


def check_grid(grid: Any, reg: Registry) -> None:
    """:func:`hftguard.pipeline.grid.check` (configs and component names) and every path problem
    of the grid, in one error (``hftguard validate``, ``hftguard run --dry-run``)."""
    from hftguard.pipeline.grid.spec import check

    check_with_paths(lambda: check(grid, reg), grid_problems(grid, reg))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def check_with_paths(checks: Callable[[], None], problems: list[str]) -> None:
    """Run ``checks`` (config and component checks, which stop at their first error) and raise
    one error listing that error and every path problem; nothing when all is well."""
    try:
        checks()
    except HftguardError as exc:
        if not problems:
            raise
        first = exc.message + (f" ({exc.hint})" if exc.hint else "")
        raise ConfigError(_listing([first, *problems]), hint=PATH_HINT) from exc
    if problems:
        raise ConfigError(_listing(problems), hint=PATH_HINT)


PATH_HINT = (
    "Fix each one (relative paths start from the current directory); nothing was written. "
    "`hftguard validate CONFIG` checks a config again."
)


def _listing(problems: list[str]) -> str:
    n = len(problems)
    head = "1 problem in the config:" if n == 1 else f"{n} problems in the config:"
    return head + "".join(f"\n  - {p}" for p in problems)
