"""The worst case over attack settings (#19): per defense, what the strongest attack achieves.

A defense that looks good against one attack configuration may fail against a slightly different
one, so a grid with ``[grid.attack]`` axes evaluates each defense under several attack settings
(learning rate, steps, LoRA rank...). Per defense (a report row without its attack qualifier)
and column (p, n or task), over its attack settings:

- **mean HS** (and mean FA): every setting weighs the same;
- **worst case**: the setting with the highest HS. A setting's HS is its cell's mean over seeds
  (seeds are averaged within a setting first, so one lucky seed does not make a setting the
  worst); ties go to the setting with the higher FA (the more useful attack), then to the first
  in value order;
- **capability-bounded worst case** (``fa_bound`` = X, ``hftguard report --fa-bound X``): the
  worst HS among the settings whose FA (mean over seeds) is at least X — an attacker who wants
  a useful model does not pick a setting that destroys the user task. A setting without an FA
  never meets a bound. When no setting meets it, there is no bounded worst case (None), and the
  report says so.

The maximum of several noisy estimates overstates the true worst case (the largest of k
estimates is biased upwards); the report gives the worst setting's own 95% interval beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hftguard.pipeline.report.collection import attack_order
from hftguard.pipeline.report.stats import _avg

if TYPE_CHECKING:
    from hftguard.pipeline.report.aggregate import CellStats, Row
    from hftguard.pipeline.report.paired import Summary


@dataclass
class Setting:
    """One attack setting of a defense: its cell (the setting's evaluations over seeds)."""

    attack: dict[str, Any]
    label: str  # "lr=1e-05 lora_r=8"
    cell: CellStats = field(repr=False)

    @property
    def hs(self) -> float | None:
        return self.cell.hs.mean

    @property
    def fa(self) -> float | None:
        return self.cell.fa.mean


@dataclass
class WorstCase:
    """Mean and worst case of one defense (and column) over its attack settings."""

    method: str
    label: str  # the row label without the attack qualifier
    column: Any
    extra: dict[str, Any]  # the other varying axes of the row (attack left out)
    settings: list[Setting]
    fa_bound: float | None = None
    mean_hs: float | None = None
    mean_fa: float | None = None
    worst: Setting | None = None
    bounded: Setting | None = None  # None: no fa_bound, or no setting meets it
    n_meeting: int = 0  # settings whose FA is at least fa_bound
    #: ΔHS of this defense's worst setting against the baseline's worst setting (same column,
    #: same prompts, paired per seed): {"worst": ..., "bounded": ...}, a key only where both
    #: sides have that setting (set by aggregate.build; the baseline's own row has none)
    vs_baseline: dict[str, Summary] = field(default_factory=dict)
    #: the worst HS estimated without selection bias (cross-fitted over two halves of the
    #: prompts, intervals.held_out_max): (estimate, ci low, ci high) in %; None without
    #: per-prompt outcomes (set by aggregate.build)
    held_out: tuple[float, float | None, float | None] | None = None
    #: the same among the settings that meet the FA bound (one setting: its plain mean)
    held_out_bounded: tuple[float, float | None, float | None] | None = None

    def __post_init__(self) -> None:
        self.settings = sorted(self.settings, key=lambda s: attack_order(s.attack))
        self.mean_hs = _avg(s.hs for s in self.settings)
        self.mean_fa = _avg(s.fa for s in self.settings)
        self.worst = worst_setting(self.settings)
        if self.fa_bound is not None:
            meeting = [s for s in self.settings if s.fa is not None and s.fa >= self.fa_bound]
            self.n_meeting = len(meeting)
            self.bounded = worst_setting(meeting)


def check_fa_bound(fa_bound: float | None) -> None:
    """``--fa-bound`` (report and search) is a Finetune Accuracy in %, or None."""
    from hftguard.errors import ConfigError

    if fa_bound is not None and not 0.0 <= fa_bound <= 100.0:
        raise ConfigError(
            f"--fa-bound {fa_bound:g} is not a Finetune Accuracy in %.",
            hint="Give a number from 0 to 100, e.g. --fa-bound 50 (worst HS among the attack "
            "settings that keep FA >= 50%).",
        )


def worst_setting(settings: Sequence[Setting]) -> Setting | None:
    """The setting with the highest HS; ties: the higher FA, then the first given."""
    best: Setting | None = None
    for s in settings:
        if s.hs is None:
            continue
        if best is None or _rank(s) > _rank(best):
            best = s
    return best


def _rank(s: Setting) -> tuple[float, float]:
    return (s.hs if s.hs is not None else -1.0, s.fa if s.fa is not None else -1.0)


def worst_cases(
    rows: Sequence[Row],
    columns: Sequence[Any],
    cells: dict[tuple[tuple[Any, ...], Any], CellStats],
    fa_bound: float | None,
    header: Callable[[str, Any], str],
) -> list[WorstCase]:
    """One :class:`WorstCase` per (defense, column) from the report's rows and cells, in row
    order; [] when no evaluation has an attack setting."""
    groups: dict[tuple[Any, ...], WorstCase] = {}
    for row in rows:
        extra = {k: v for k, v in row.extra.items() if k != "attack"}
        for col in columns:
            cell = cells.get((row.key, col))
            if cell is None or not cell.runs or not cell.runs[0].attack:
                continue
            run = cell.runs[0]
            key = (row.method, *extra.values(), col)
            if key not in groups:
                suffix = ", ".join(header(k, v) for k, v in extra.items())
                label = run.label + (f" ({suffix})" if suffix else "")
                groups[key] = WorstCase(row.method, label, col, extra, [], fa_bound)
            groups[key].settings.append(Setting(dict(run.attack), run.attack_label, cell))
    out = []
    for w in groups.values():  # settings are complete: order and summarise them
        out.append(WorstCase(w.method, w.label, w.column, w.extra, w.settings, fa_bound))
    return out
