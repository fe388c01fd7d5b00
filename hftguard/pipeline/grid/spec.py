"""Grid definition: the ``[grid]`` table expanded into cells, their stage configs, validation.

A :class:`Grid` is a base pipeline config and its cells (:class:`Cell`); :func:`load` reads one
from a parsed config file (a plain pipeline config is the one-cell grid of :func:`single`), and
:func:`check` validates every distinct stage config before anything runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftguard import config as cfgmod
from hftguard.config import (
    AlignConfig,
    EvalConfig,
    FinetuneConfig,
    PipelineConfig,
    RepairConfig,
    validate_stage,
)
from hftguard.errors import ConfigError, did_you_mean
from hftguard.registry import Registry

NO_ALIGN = "none"
AXES = ("align_defense", "finetune_defense", "harmful_ratio", "samples", "task", "seed")
GRID_KEYS = (
    *AXES,
    "methods",
    "align_seed",
    "align_options",
    "finetune_options",
    "repair_options",
    "labels",
    "attack",
)

#: ``[grid.attack]``: the attacker's fine-tuning settings swept as axes, in their canonical order
#: (names and labels list them in this order): key -> (what it sets, the token in a cell's name).
ATTACK_KEYS: dict[str, tuple[str, str]] = {
    "lr": ("finetune.train.lr", "lr"),
    "epochs": ("finetune.train.epochs", "ep"),
    "max_steps": ("finetune.train.max_steps", "steps"),
    "batch_size": ("finetune.train.batch_size", "bs"),
    "lora_r": ("finetune.lora.r", "r"),
    "lora_alpha": ("finetune.lora.alpha", "a"),
    "harmful": ("finetune.harmful", "h-"),
}
#: The suffix of a fine-tuning defense that screens the user data first: ``sft+screen:JUDGE``.
SCREEN = "+screen:"


def _repair_reads_data(name: str, registry: Registry | None) -> bool:
    """Whether the repair defense ``name`` declares data streams (unknown: assume it does; the
    registry's error comes from the component checks)."""
    from hftguard.errors import HftguardError
    from hftguard.registry import default_registry

    try:
        info = (registry or default_registry()).get("repair-defense", name)
    except HftguardError:
        return True
    return bool(getattr(info.cls, "streams", ()))


def fmt_num(x: float) -> str:
    """0.1 -> '0.1', 0.0 -> '0', 200.0 -> '200' (for names and labels)."""
    return f"{x:g}"


def slug(text: str) -> str:
    """A directory-safe name: a data file is named by its stem, odd characters become '-'."""
    name = text
    if "/" in text or "\\" in text or re.search(r"\.(jsonl?|csv|tsv|parquet)$", text):
        name = Path(text).stem
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "x"
    if out != text:  # keep different files with one stem apart
        from hftguard.pipeline.cache import digest

        out = f"{out}-{digest(text)[:6]}"
    return out


@dataclass(frozen=True)
class Cell:
    """One point of the grid: an attacked (and, with ``repair``, repaired) model and its
    evaluation. Cells that differ only in ``repair`` share one attacked model."""

    align: str
    finetune: str
    p: float
    n: int
    task: str
    seed: int
    repair: str = ""  # a repair defense run on the attacked model ("" = none)
    screen: str = ""  # the judge screening the user data before fine-tuning ("" = none)
    #: the ``[grid.attack]`` setting: ((key, value), ...) in ATTACK_KEYS order (() = none)
    attack: tuple[tuple[str, Any], ...] = ()

    @property
    def method(self) -> str:
        ft = self.finetune + (f"{SCREEN}{self.screen}" if self.screen else "")
        return f"{self.align}/{ft}" + (f"/{self.repair}" if self.repair else "")

    def attack_dict(self) -> dict[str, Any]:
        return dict(self.attack)

    @property
    def attack_label(self) -> str:
        """``lr=1e-05 lora_r=8``: the attack setting as the labels and reports show it."""
        return " ".join(f"{k}={_show(v)}" for k, v in self.attack)

    @property
    def attack_name(self) -> str:
        """The attacked model's name: the same for every repair of it. Screening and attack
        settings are appended, so cells without them keep the names of earlier grids."""
        out = (
            f"{slug(self.align)}__{slug(self.finetune)}__p{fmt_num(self.p)}__n{self.n}__"
            f"{slug(self.task)}__s{self.seed}"
        )
        if self.screen:
            out += f"__screen-{slug(self.screen)}"
        for key, value in self.attack:
            token = ATTACK_KEYS[key][1]
            out += f"__{token}{slug(value) if key == 'harmful' else _show(value)}"
        return out

    @property
    def name(self) -> str:
        return self.attack_name + (f"__r-{slug(self.repair)}" if self.repair else "")

    @property
    def label(self) -> str:
        out = f"{self.method} p={fmt_num(self.p)} n={self.n} {self.task} s{self.seed}"
        return out + (f" {self.attack_label}" if self.attack else "")

    def coords(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "align": self.align,
            "finetune": self.finetune,
            **({"screen": self.screen} if self.screen else {}),
            **({"repair": self.repair} if self.repair else {}),
            "p": self.p,
            "n": self.n,
            "task": self.task,
            "seed": self.seed,
            **({"attack": self.attack_dict()} if self.attack else {}),
        }


def _show(value: Any) -> str:
    """A setting's value in names and labels: numbers as fmt_num writes them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt_num(value)
    return str(value)


@dataclass
class Grid:
    """A base pipeline config and the cells to run from it."""

    base: PipelineConfig
    cells: list[Cell]
    align_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    repair_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    is_grid: bool = False  # a [grid] table was given: grid layout
    task_axis: bool = False  # the [grid] table names tasks: cells measure FA on their own task
    seed_axis: bool = False  # the [grid] table names seeds: they set the align and finetune seeds
    #: ``grid.align_seed``: every alignment uses this seed, so the seed axis (if any) varies only
    #: the fine-tuning stage and one aligned model per alignment defense serves every seed.
    fixed_align_seed: int | None = None
    axes: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """FA tasks of the shared (base, aligned) evals."""
        if not self.task_axis:
            return list(self.base.eval.tasks)
        return list(dict.fromkeys(c.task for c in self.cells))

    def same_file_tasks(self) -> list[str]:
        """Local-file tasks that a cell both fine-tunes on and scores FA on.

        A file has no splits (data.filetask), so such a cell's FA is measured on the records
        it trained on: fitting, not held-out accuracy. A hub dataset (``hf:ID``) is not listed:
        attack-finetune reads its train split and eval its test split.
        """
        from hftguard.data.hub import is_hf_spec

        if not self.task_axis:
            return []
        from hftguard.data.inputs import DATA_SUFFIXES

        return [t for t in self.tasks if t.lower().endswith(DATA_SUFFIXES) and not is_hf_spec(t)]

    def align_config(self, align: str, seed: int) -> AlignConfig:
        return dataclasses.replace(
            self.base.align,
            defense=align,
            seed=seed,
            defense_options=_options(
                self.base.align.defense, self.base.align.defense_options, self.align_options, align
            ),
        )

    def finetune_config(self, cell: Cell, model: str) -> FinetuneConfig:
        ft = self.base.finetune
        changes: dict[str, Any] = {
            "model": model,
            "defense": cell.finetune,
            "harmful_ratio": cell.p,
            "samples": cell.n,
            "task": cell.task,
            "seed": cell.seed,
            "defense_options": _options(
                ft.defense, ft.defense_options, self.finetune_options, cell.finetune
            ),
        }
        if cell.screen:  # the base config's screen_options apply to its own judge only
            changes["screen"] = cell.screen
            changes["screen_options"] = ft.screen_options if ft.screen in ("", cell.screen) else {}
        attack = cell.attack_dict()
        train = {k: attack[k] for k in ("lr", "epochs", "max_steps", "batch_size") if k in attack}
        lora = {k[5:]: attack[k] for k in ("lora_r", "lora_alpha") if k in attack}
        if train:
            changes["train"] = dataclasses.replace(ft.train, **train)
        if lora:
            changes["lora"] = dataclasses.replace(ft.lora, **lora)
        if "harmful" in attack:
            changes["harmful"] = attack["harmful"]
        return dataclasses.replace(ft, **changes)

    def eval_config(self, model: str, tasks: list[str] | None = None) -> EvalConfig:
        return dataclasses.replace(
            self.base.eval, model=model, tasks=list(self.tasks if tasks is None else tasks)
        )

    def repair_config(
        self, cell: Cell, model: str, registry: Registry | None = None
    ) -> RepairConfig:
        """The repair stage of ``cell`` on the attacked model ``model``.

        The ``[repair]`` table's data options (``harmful``, ``samples``, ...) reach only the
        repair defenses that read data (``streams``, e.g. Antidote): a SafeLoRA cell's config,
        and so its identity, stays what it was before the table existed."""
        base = self.base.repair
        options = _options(base.defense, base.defense_options, self.repair_options, cell.repair)
        plain = RepairConfig(
            model=model, defense=cell.repair, defense_options=dict(options), seed=cell.seed
        )
        if not _repair_reads_data(cell.repair, registry):
            return plain
        return dataclasses.replace(
            base,
            model=model,
            defense=cell.repair,
            defense_options=dict(options),
            dataset_options={k: dict(v) for k, v in base.dataset_options.items()},
            data_fields=dict(base.data_fields),
            seed=cell.seed,
        )

    def cell_eval_config(self, cell: Cell, model: str) -> EvalConfig:
        return self.eval_config(model, [cell.task] if self.task_axis else None)

    def align_seed(self, cell: Cell) -> int:
        if self.fixed_align_seed is not None:
            return self.fixed_align_seed
        return cell.seed if self.seed_axis else self.base.align.seed

    def groups(self) -> list[tuple[tuple[str, int], list[Cell]]]:
        """Cells grouped by their aligned model (alignment defense, seed), in first-seen order."""
        out: dict[tuple[str, int], list[Cell]] = {}
        for c in self.cells:
            out.setdefault((c.align, self.align_seed(c)), []).append(c)
        return list(out.items())

    def groups_flat(self) -> list[Cell]:
        """The cells in the order they run (grouped by aligned model)."""
        return [c for _, cells in self.groups() for c in cells]

    def method_label(self, method: str) -> str:
        return self.labels.get(method, method)


def _options(
    base_defense: str, base_options: dict[str, Any], per_defense: dict[str, Any], defense: str
) -> dict[str, Any]:
    """The base config's options when it names this defense, overlaid with the grid's for it."""
    own = dict(base_options) if defense == base_defense else {}
    return cfgmod.merge(own, per_defense.get(defense, {}))


@dataclass
class _Axes:
    """The list-valued keys of ``[grid]``, typed so ``config.build`` coerces and names errors."""

    align_defense: list[str] | None = None
    finetune_defense: list[str] | None = None
    methods: list[str] | None = None
    harmful_ratio: list[float] | None = None
    samples: list[int] | None = None
    task: list[str] | None = None
    seed: list[int] | None = None


def _axes(raw: dict[str, Any]) -> _Axes:
    lists = {
        k: (v if isinstance(v, list) else [v]) for k, v in raw.items() if k in (*AXES, "methods")
    }
    for key, values in lists.items():
        if not values:
            raise ConfigError(
                f"grid.{key} is an empty list.",
                hint=f"Give grid.{key} at least "
                "one value, or leave it out to use the base config's value.",
            )
    axes = cfgmod.build(_Axes, lists, "grid")
    for f in dataclasses.fields(axes):  # duplicates dropped, order kept
        value = getattr(axes, f.name)
        if value is not None:
            setattr(axes, f.name, list(dict.fromkeys(value)))
    return axes


def load(data: dict[str, Any]) -> Grid:
    """Build a :class:`Grid` from a parsed config file: a pipeline config, optionally ``[grid]``."""
    data = dict(data)
    raw = data.pop("grid", None)
    base = cfgmod.build(PipelineConfig, data)
    validate_stage(base)
    if raw is None:
        return single(base)
    if base.repair.defense_options:
        raise ConfigError(
            "repair.defense_options in a grid: each repair defense's options go in "
            "[grid.repair_options.NAME].",
            hint="Move them to [grid.repair_options.<defense>] (e.g. "
            "[grid.repair_options.antidote]).",
        )
    if base.repair.defense:
        raise ConfigError(
            f"repair.defense = {base.repair.defense!r} in a grid: a grid names its repairs in "
            "grid.methods.",
            hint=f'Add "align/finetune/{base.repair.defense}" to grid.methods; keep the '
            "[repair] table for the repairs' data options (harmful, samples, ...).",
        )
    if not isinstance(raw, dict):
        raise ConfigError("grid must be a table.", hint="Write it as [grid] with list values.")
    for key in raw:
        if key not in GRID_KEYS:
            raise ConfigError(
                f"Unknown option 'grid.{key}'.{did_you_mean(key, GRID_KEYS)}",
                hint=f"Valid options of grid: {', '.join(GRID_KEYS)}.",
            )
    for key in ("align_options", "finetune_options", "repair_options", "labels"):
        table = raw.get(key, {})
        if not isinstance(table, dict) or (
            key != "labels" and not all(isinstance(v, dict) for v in table.values())
        ):
            raise ConfigError(
                f"grid.{key} must be a table"
                + (" of tables, one per defense." if key != "labels" else "."),
                hint=f"Example: [grid.{key}.booster]"
                if key != "labels"
                else 'Example: [grid.labels] "booster/sft" = "Booster"',
            )
    ax = _axes(raw)
    align_seed = raw.get("align_seed")
    if align_seed is not None and (isinstance(align_seed, bool) or not isinstance(align_seed, int)):
        raise ConfigError(
            f"grid.align_seed must be one integer, not {align_seed!r}.",
            hint="Example: align_seed = 42 (every alignment uses seed 42; grid.seed then varies "
            "only the fine-tuning stage).",
        )
    if ax.methods is not None:
        if ax.align_defense is not None or ax.finetune_defense is not None:
            raise ConfigError(
                "grid.methods cannot be combined with grid.align_defense or grid.finetune_defense.",
                hint="List every align/fine-tune pair in grid.methods, or use the "
                "two axes (their product is taken).",
            )
        methods = []
        for i, m in enumerate(ax.methods):
            parts = [x.strip() for x in str(m).split("/")]
            if len(parts) not in (2, 3) or not all(parts):
                raise ConfigError(
                    f"grid.methods[{i}] = {m!r} is not 'align/finetune' or "
                    "'align/finetune/repair'.",
                    hint='Example: methods = ["sft/sft", "booster/sft", "sft/sft/safelora"]',
                )
            ft, screen = _screened(parts[1], f"grid.methods[{i}]")
            methods.append((parts[0], ft, screen, parts[2] if len(parts) == 3 else ""))
    else:
        default_align = NO_ALIGN if base.skip_align else base.align.defense
        fts = [
            _screened(f, f"grid.finetune_defense[{i}]")
            for i, f in enumerate(ax.finetune_defense or [base.finetune.defense])
        ]
        methods = [
            (a, f, scr, "")
            for a, (f, scr) in itertools.product(ax.align_defense or [default_align], fts)
        ]
    ps = ax.harmful_ratio or [base.finetune.harmful_ratio]
    ns = ax.samples or [base.finetune.samples]
    tasks = ax.task or [base.finetune.task]
    seeds = ax.seed or [base.finetune.seed]
    for p in ps:
        cfgmod.check_range("grid.harmful_ratio", p, 0.0, 1.0)
    for n in ns:
        cfgmod.check_range("grid.samples", n, 1)
    attack_axes = _attack_axes(raw.get("attack"), base)
    attacks = [
        tuple(zip(attack_axes, values, strict=True))
        for values in itertools.product(*attack_axes.values())
    ]
    cells = [
        Cell(a, f, p, n, t, s, r, scr, at)
        for (a, f, scr, r), t, n, p, at, s in itertools.product(
            methods, tasks, ns, ps, attacks, seeds
        )
    ]
    axes: dict[str, Any] = {
        "methods": [Cell(a, f, 0, 0, "", 0, r, scr).method for a, f, scr, r in methods],
        "harmful_ratio": ps,
        "samples": ns,
        "task": tasks,
        "seed": seeds,
    }
    if attack_axes:
        axes["attack"] = attack_axes
    names: dict[str, Cell] = {}
    for cell in cells:  # e.g. two learning rates equal to 6 significant digits
        other = names.setdefault(cell.name, cell)
        if other != cell:
            raise ConfigError(
                f"grid: two cells share the name {cell.name} ({other.label} and {cell.label}); "
                "their runs would share one directory.",
                hint="Make the axis values differ in their first 6 significant digits.",
            )
    return Grid(
        base,
        cells,
        dict(raw.get("align_options", {})),
        dict(raw.get("finetune_options", {})),
        {str(k): str(v) for k, v in raw.get("labels", {}).items()},
        dict(raw.get("repair_options", {})),
        is_grid=True,
        task_axis="task" in raw,
        seed_axis="seed" in raw,
        fixed_align_seed=align_seed,
        axes=axes,
    )


def _screened(defense: str, where: str) -> tuple[str, str]:
    """``sft+screen:JUDGE`` -> ("sft", "JUDGE"); a defense without the suffix -> (it, "")."""
    name, plus, rest = defense.partition("+")
    if not plus:
        return defense, ""
    judge = ("+" + rest)[len(SCREEN) :].strip() if ("+" + rest).startswith(SCREEN) else ""
    if not name.strip() or not judge:
        raise ConfigError(
            f"{where} = {defense!r}: a fine-tuning defense takes one suffix, '+screen:JUDGE' "
            "(screen the user data with the judge JUDGE before fine-tuning).",
            hint='Example: methods = ["sft/sft", "sft/sft+screen:refusal-keywords"] '
            "(`hftguard plugins` lists the judges).",
        )
    return name.strip(), judge


@dataclass
class _Attack:
    """``[grid.attack]``: typed lists, so ``config.build`` coerces and names errors."""

    lr: list[float] | None = None
    epochs: list[float] | None = None
    max_steps: list[int] | None = None
    batch_size: list[int] | None = None
    lora_r: list[int] | None = None
    lora_alpha: list[float] | None = None
    harmful: list[str] | None = None


def _attack_axes(raw: Any, base: PipelineConfig) -> dict[str, list[Any]]:
    """The ``[grid.attack]`` table checked: {key: values} in ATTACK_KEYS order ({} = none)."""
    if raw is None:
        return {}
    example = "Example:\n  [grid.attack]\n  lr = [1e-5, 1e-4]\n  lora_r = [8, 32]"
    if not isinstance(raw, dict):
        raise ConfigError(
            "grid.attack must be a table of lists, one per fine-tuning setting.", hint=example
        )
    for key, value in raw.items():
        if key in ("harmful_ratio", "samples"):
            raise ConfigError(
                f"grid.attack.{key}: {key} is already an axis of the grid.",
                hint=f"Sweep it with grid.{key} = [...] (outside [grid.attack]).",
            )
        if key in ATTACK_KEYS and not isinstance(value, list):
            raise ConfigError(
                f"grid.attack.{key} must be a list of values, not {value!r}.",
                hint=f"Write {key} = [{value!r}], or set {ATTACK_KEYS[key][0]} for one fixed "
                "value that does not name the cells.",
            )
        if isinstance(value, list) and not value:
            raise ConfigError(
                f"grid.attack.{key} is an empty list.",
                hint=f"Give grid.attack.{key} at least one value, or leave it out.",
            )
    table = cfgmod.build(_Attack, raw, "grid.attack")  # unknown keys, types
    out: dict[str, list[Any]] = {}
    for key in ATTACK_KEYS:
        values = getattr(table, key)
        if values is not None:
            out[key] = list(dict.fromkeys(values))
    lows = {"lr": 0.0, "epochs": 0.0, "max_steps": 0, "batch_size": 1, "lora_r": 1}
    for key, lo in lows.items():
        for v in out.get(key, []):
            cfgmod.check_range(f"grid.attack.{key}", v, lo, cfgmod.FLOAT32_MAX)
    for v in out.get("lora_alpha", []):
        cfgmod.check_range("grid.attack.lora_alpha", v, None, None)
    if any(not str(h).strip() for h in out.get("harmful", [])):
        raise ConfigError(
            "grid.attack.harmful has an empty name.",
            hint="Give dataset names, local files or hf:ID specs, e.g. harmful = "
            '["harmful-compliance", "data/my-harmful.jsonl"].',
        )
    steps = out.get("max_steps", [base.finetune.train.max_steps])
    if "epochs" in out and any(s > 0 for s in steps):
        raise ConfigError(
            "grid.attack.epochs has no effect on cells that train a fixed number of steps "
            "(finetune.train.max_steps > 0, or a max_steps value in grid.attack).",
            hint="Set finetune.train.max_steps = 0 to train by epochs, or sweep "
            "grid.attack.max_steps instead of epochs.",
        )
    return out


def single(cfg: PipelineConfig) -> Grid:
    """The one-cell grid of a plain pipeline config (single-pipeline layout)."""
    ft = cfg.finetune
    align = NO_ALIGN if cfg.skip_align else cfg.align.defense
    cell = Cell(align, ft.defense, ft.harmful_ratio, ft.samples, ft.task, ft.seed)
    if cfg.repair.defense_options and not cfg.repair.defense:
        raise ConfigError(
            "repair.defense_options without repair.defense: there is no repair to apply them to.",
            hint='Name the repair: [repair] defense = "antidote" (or remove the options).',
        )
    # [repair] defense = NAME: the attacked model is evaluated, then repaired and evaluated again
    cells = (
        [cell, dataclasses.replace(cell, repair=cfg.repair.defense)]
        if cfg.repair.defense
        else [cell]
    )
    return Grid(
        cfg,
        cells,
        axes={
            "methods": [c.method for c in cells],
            "harmful_ratio": [ft.harmful_ratio],
            "samples": [ft.samples],
            "task": [ft.task],
            "seed": [ft.seed],
        },
    )


def load_file(path: str | Path, sets: list[str] | None = None) -> Grid:
    """Read a grid (or plain pipeline) TOML file with ``--set`` overrides applied."""
    return load(cfgmod.layered(config_file=path, sets=sets))


def same_file_warning(grid: Grid) -> str | None:
    """The warning for :meth:`Grid.same_file_tasks`, or None."""
    files = grid.same_file_tasks()
    if not files:
        return None
    return (
        f"The task axis names the file(s) {', '.join(files)}: each such cell fine-tunes on the "
        "file and scores its FA on the same records (a file has no train/test split), so FA "
        "measures fitting, not held-out accuracy. For held-out FA use a hub-layout copy with "
        "train and test splits (hf:ID, docs/datasets.md), or run attack-finetune and eval "
        "with separate files."
    )


def check(grid: Grid, registry: Registry | None = None) -> None:
    """Validate every distinct stage config of the grid and resolve every component name.

    Run before anything is written, so a typo in one defense's options fails the whole command
    at once instead of an hour into the grid. (``hftguard validate`` for grids calls this.)
    """
    from hftguard.pipeline.common import check_components, get_registry

    reg = get_registry(registry)
    for cell in grid.cells:
        if cell.repair:
            _check_repairable(grid, cell, reg)
    seen: set[str] = set()
    for cfg in _stage_configs(grid, reg):
        key = type(cfg).__name__ + json.dumps(cfgmod.as_dict(cfg), sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        validate_stage(cfg)
        check_components(cfg, reg)


def _check_repairable(grid: Grid, cell: Cell, reg: Registry) -> None:
    """A repair needs an aligned model under a separate fine-tuning adapter: refuse, before any
    training, the cells whose attack would not leave one (found out only after hours otherwise)."""
    where = "grid.methods" if grid.is_grid else "repair.defense"
    if cell.align == NO_ALIGN:
        if not getattr(reg.get("repair-defense", cell.repair).cls, "needs_alignment", True):
            return  # it repairs the fine-tuning adapter alone (Antidote)
        raise ConfigError(
            f"{where}: {cell.method} repairs a model fine-tuned without alignment; "
            f"{cell.repair} needs the alignment update to repair towards.",
            hint="Use an alignment defense in the method (e.g. sft/sft/safelora)."
            if grid.is_grid
            else "Set skip_align = false, or use a repair that needs no alignment (antidote).",
        )
    mode = grid.finetune_config(cell, "aligned").lora_mode
    if mode == "auto":
        mode = getattr(reg.get("alignment-defense", cell.align).cls, "finetune_lora", "merge")
    if mode == "continue":
        raise ConfigError(
            f"{where}: {cell.method} fine-tunes the alignment adapter itself (lora_mode "
            "'continue'), so the attack leaves no separate adapter to repair.",
            hint="Set finetune.lora_mode = 'merge' for the grid, or drop the repair from this "
            "method.",
        )


def _stage_configs(grid: Grid, registry: Registry | None = None) -> Iterator[Any]:
    model = grid.base.align.model
    if grid.base.evaluate_base:
        yield grid.eval_config(model)
    for (align, seed), cells in grid.groups():
        if align != NO_ALIGN:
            yield grid.align_config(align, seed)
            yield grid.eval_config("aligned")
        for cell in cells:
            yield grid.finetune_config(cell, "aligned")
            if cell.repair:
                yield grid.repair_config(cell, "attacked", registry)
            yield grid.cell_eval_config(cell, "attacked")
