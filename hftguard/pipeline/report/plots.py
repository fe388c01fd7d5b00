"""The report's figures (matplotlib): what the defense papers plot, from hftguard run dirs.

Why: tables say who wins; figures say how. HS against p shows where a defense breaks, the HS–FA
scatter shows what its safety costs in task accuracy, the training curves show whether the harmful
loss really stays high during the attack, Antibody's per-sample scores and weights show whether it
tells harmful samples from benign ones, and Booster/Antibody's loss change and λ_t show what the
alignment-stage regulariser did.

For a paper: every figure is written as PNG, SVG and PDF (:data:`FORMATS`, or the ``formats`` a
caller names), SVG and PDF without dates and with a fixed SVG id salt, so the same runs give the
same files byte for byte. A method has one colour and one marker in every figure of every report
(:func:`method_style`: a fixed table for the built-in methods, a stable hash into the colour-blind
safe Okabe–Ito palette × markers for the others), so "Booster" is the same blue square whichever
methods a report holds and in whatever order. Points and curves carry the report's 95% intervals
as error bars.

matplotlib is optional (``pip install hftguard[plots]``): it is imported inside the functions and
:func:`available` says whether it is there. Figures are built with the object-oriented API
(``matplotlib.figure.Figure`` on the Agg canvas), never pyplot, so no global state or GUI backend
is touched. Each ``*_figure`` function builds a figure (None without data) and :func:`save` writes
it; the functions named after the files do both.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from hftguard.pipeline.report import EvalRun, Report, Row

#: The formats every figure is written in by default (PNG for screens and the markdown, SVG and
#: PDF for papers), and the ones :func:`save` accepts.
FORMATS: tuple[str, ...] = ("png", "svg", "pdf")
DPI = 150

# Okabe & Ito's colour-blind-safe palette (https://jfly.uni-koeln.de/color/), yellow left out
# (unreadable on white).
BLACK = "#000000"
ORANGE = "#E69F00"
SKY_BLUE = "#56B4E9"
GREEN = "#009E73"
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#999999"
PALETTE: tuple[str, ...] = (BLACK, ORANGE, SKY_BLUE, GREEN, BLUE, VERMILLION, PURPLE)
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "*")
#: Sample groups in the histograms (not methods).
BENIGN_COLOR, HARMFUL_COLOR = BLUE, VERMILLION
#: Rows of one method that differ in another axis (n when the columns are p, p when they are
#: tasks, ...): the same colour and marker, told apart by line style, marker fill and bar hatching.
LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")
FILLSTYLES: tuple[str, ...] = ("full", "none", "left", "top")
HATCHES: tuple[str, ...] = ("", "//", "..", "xx")

#: Figure-wide settings: readable sizes, and what makes SVG/PDF deterministic and editable.
RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "savefig.dpi": DPI,
    "svg.hashsalt": "hftguard",  # fixed ids instead of random ones
    "svg.fonttype": "path",  # text as outlines: the SVG looks the same without the fonts
    "pdf.fonttype": 42,  # TrueType, not Type 3: what journals ask for, editable text
}
#: Per-format metadata: no creation dates, so the same runs give the same bytes.
_METADATA: dict[str, dict[str, Any]] = {
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "ModDate": None},
}

P = ParamSpec("P")
T = TypeVar("T")


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _rc(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` with :data:`RC` in force (artists read rcParams when they are made)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        import matplotlib

        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------
# One colour and marker per method


@dataclass(frozen=True)
class Style:
    """How a method is drawn in every figure: a colour and a marker; ``variant`` > 0 (another
    row of the same method: a defense option or another n) changes the line and the fill."""

    color: str
    marker: str
    variant: int = 0


#: The built-in methods (alignment defense / fine-tuning defense): one colour per alignment
#: defense, the marker telling the fine-tuning defense apart (P: Lisa, X: Antibody), except that
#: the papers' main methods each have a colour and a marker of their own.
METHOD_STYLES: dict[str, Style] = {
    "sft/sft": Style(BLACK, "o"),
    "vaccine/sft": Style(SKY_BLUE, "v"),
    "booster/sft": Style(BLUE, "s"),
    "antibody/sft": Style(ORANGE, "^"),
    "antibody/antibody": Style(VERMILLION, "D"),
    "sft/lisa": Style(GREEN, "P"),
    "sft/antibody": Style(PURPLE, "X"),
    "vaccine/lisa": Style(SKY_BLUE, "P"),
    "booster/lisa": Style(BLUE, "P"),
    "antibody/lisa": Style(ORANGE, "P"),
    "vaccine/antibody": Style(SKY_BLUE, "X"),
    "booster/antibody": Style(BLUE, "X"),
    "base": Style(GREY, "*"),
}
#: A single defense name (an aligned model's curves, a label that is a defense name) is drawn like
#: the method it stands for in the grids.
ALIASES: dict[str, str] = {
    "sft": "sft/sft",
    "vaccine": "vaccine/sft",
    "booster": "booster/sft",
    "antibody": "antibody/antibody",
    "lisa": "sft/lisa",
}
#: What the hash picks from for other methods: every colour × marker the table does not use.
_SLOTS: tuple[Style, ...] = tuple(
    s for m in MARKERS for c in PALETTE if (s := Style(c, m)) not in set(METHOD_STYLES.values())
)


def canonical(method: str) -> str:
    """``method`` as the style table keys it: lower case, no spaces, aliases resolved."""
    m = "/".join(part.strip() for part in str(method).strip().lower().split("/"))
    return ALIASES.get(m, m)


def _digest(key: str) -> int:
    """A hash that is the same in every process (Python's ``hash`` of a str is salted)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def method_style(method: str) -> Style:
    """The colour and marker of ``method`` in every figure: the table's entry for a built-in
    method, else a slot picked by a stable hash of its name."""
    key = canonical(method)
    if key in METHOD_STYLES:
        return METHOD_STYLES[key]
    return _SLOTS[_digest(key) % len(_SLOTS)]


def assign_styles(methods: Iterable[str], taken: Iterable[Style] = ()) -> dict[str, Style]:
    """{method: style} with distinct styles for distinct methods (aliases count as one).

    Built-in methods take the table's styles; the others their hashed slot, or, when two of them
    hash to the same slot, the next free one, in name order, so a method's style only differs
    between two reports when its slot is taken by another non-built-in method in one of them.
    ``taken``: styles already in use in the figure (not given to non-built-in methods).
    """
    names = list(dict.fromkeys(methods))
    keys = {m: canonical(m) for m in names}
    by_key = {k: METHOD_STYLES[k] for k in keys.values() if k in METHOD_STYLES}
    used = {*by_key.values(), *taken}
    for key in sorted({k for k in keys.values() if k not in by_key}):
        start = _digest(key) % len(_SLOTS)
        style = next(
            (s for i in range(len(_SLOTS)) if (s := _SLOTS[(start + i) % len(_SLOTS)]) not in used),
            _SLOTS[start],  # more methods than slots: share
        )
        by_key[key] = style
        used.add(style)
    return {m: by_key[keys[m]] for m in names}


def report_styles(rep: Report) -> dict[str, Style]:
    """{label: style} for everything the report's figures draw: its rows, its fine-tuned runs
    (by method) and its aligned models (drawn like the method whose label they carry)."""
    runs = rep.collection.runs if rep.collection is not None else []
    return runs_styles(runs, [(row.label, row.method) for row in rep.rows])


def runs_styles(runs: Iterable[EvalRun], extra: Iterable[tuple[str, str]] = ()) -> dict[str, Style]:
    """{label: style} for ``extra`` (label, method) pairs and the runs' labels: a fine-tuned
    run's by its method, an aligned model's like the fine-tuned method whose label it carries
    (else by its alignment defense)."""
    pairs: dict[str, str] = {}
    for label, method in extra:  # the first pair of a label wins
        pairs.setdefault(label, method)
    runs = list(runs)
    for kind in ("attacked", "aligned", "base"):
        for r in runs:
            if r.kind == kind:
                pairs.setdefault(r.variant_text, r.method)
    styles = assign_styles(pairs.values())
    seen: dict[str, int] = {}
    out = {}
    for label, method in pairs.items():  # a method's second label onwards (in row order): a variant
        variant = seen[method] = seen.get(method, -1) + 1
        out[label] = replace(styles[method], variant=variant) if variant else styles[method]
    return out


def _styles_for(labels: Iterable[str], styles: Mapping[str, Style] | None) -> dict[str, Style]:
    """The given styles, and for labels they lack, styles assigned from the labels themselves."""
    labels = list(dict.fromkeys(labels))
    given = dict(styles or {})
    missing = [label for label in labels if label not in given]
    return {**given, **assign_styles(missing, given.values())} if missing else given


def _variants(rows: Sequence[Row]) -> dict[tuple[Any, ...], int]:
    """Index of each row among the rows of its method (0 for the first): its line style."""
    seen: dict[str, int] = {}
    out = {}
    for row in rows:
        out[row.key] = seen.get(row.method, 0)
        seen[row.method] = out[row.key] + 1
    return out


# ---------------------------------------------------------------------------------------------
# Helpers


def _blank_figure(width: float, height: float) -> Any:
    """A figure on the Agg canvas (no pyplot, no GUI), laid out by constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(
    ncols: int = 1, width: float = 4.2, height: float = 3.4, **kw: Any
) -> tuple[Any, list[Any]]:
    """A figure with one row of ``ncols`` axes, each ``width`` × ``height`` inches."""
    fig = _blank_figure(width * ncols, height)
    return fig, list(fig.subplots(1, ncols, squeeze=False, **kw)[0])


def _formats(formats: Iterable[str] | str) -> list[str]:
    """Lower-case format names without dots, each once; ValueError for an unknown one."""
    if isinstance(formats, str):
        formats = formats.split(",")
    out = list(dict.fromkeys(f.strip().lower().lstrip(".") for f in formats if f.strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ValueError(
            f"figure format(s) {', '.join(bad) or '(none)'} not supported: use {', '.join(FORMATS)}"
        )
    return out


def _paths(path: str | Path, formats: Iterable[str] | str) -> list[Path]:
    """``path`` in each format: figs/x.png → figs/x.png, figs/x.svg, figs/x.pdf."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix.lower().lstrip(".") in FORMATS else path
    return [base.with_name(f"{base.name}.{fmt}") for fmt in _formats(formats)]


@_rc
def save(fig: Any, path: str | Path, formats: Iterable[str] | str = FORMATS) -> list[Path]:
    """Write ``fig`` to ``path`` in each format (the suffix of ``path`` is replaced); returns the
    files in the order of ``formats``. SVG and PDF carry no dates (deterministic output)."""
    written = []
    for target in _paths(path, formats):
        fmt = target.suffix.lstrip(".")
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, format=fmt, metadata=_METADATA.get(fmt))
        written.append(target)
    return written


def _save(fig: Any, path: Path, formats: Iterable[str] | str) -> Path | None:
    """Save a built figure; the first file written (the PNG by default), None for no figure."""
    if fig is None:
        return None
    return save(fig, path, formats)[0]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _series(rows: Iterable[dict[str, Any]], key: str, where: Any = None) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        if key in r and r[key] is not None and (where is None or where(r)):
            xs.append(r.get("step", len(xs)))
            ys.append(float(r[key]))
    return xs, ys


def _steps_axis(ax: Any, label: str = "step") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line(style: Style, xs: Sequence[Any], **kw: Any) -> dict[str, Any]:
    """Line keywords for a method: its colour, and its marker on every point of a short series
    and on about ten points of a long one (so curves stay apart in black and white)."""
    variant = (
        {**_marker(style, style.variant, 4), "ls": LINESTYLES[style.variant % len(LINESTYLES)]}
        if style.variant
        else {}
    )
    return {
        "color": style.color,
        "marker": style.marker,
        "ms": 4,
        **variant,
        "markevery": 1 if len(xs) <= 20 else max(1, len(xs) // 10),
        **kw,
    }


def _limits(
    values: Iterable[float | None],
    *,
    bounds: tuple[float, float] = (0.0, 100.0),
    min_span: float = 10.0,
    pad: float = 0.06,
    include: Iterable[float] = (),
) -> tuple[float, float]:
    """Axis limits around ``values`` (and ``include``) with padding, at least ``min_span`` wide,
    kept inside ``bounds`` (plus the padding): the data fill the axis, not one corner of it."""
    vals = [float(v) for v in [*values, *include] if v is not None and math.isfinite(v)]
    lo_b, hi_b = bounds
    if not vals:
        lo, hi = lo_b, hi_b
    else:
        lo, hi = min(vals), max(vals)
        if hi - lo < min_span:
            mid = (lo + hi) / 2
            lo, hi = mid - min_span / 2, mid + min_span / 2
            if lo < lo_b:
                lo, hi = lo_b, min(hi_b, hi + lo_b - lo)
            if hi > hi_b:
                lo, hi = max(lo_b, lo - (hi - hi_b)), hi_b
    margin = pad * (hi - lo)
    return max(lo - margin, lo_b - margin), min(hi + margin, hi_b + margin)


def _ci(stat: Any) -> tuple[float, float] | None:
    """(below, above) the mean: the error-bar lengths of a report statistic's interval."""
    if stat is None or stat.mean is None:
        return None
    lo, hi = stat.ci or (stat.mean, stat.mean)
    return max(0.0, stat.mean - lo), max(0.0, hi - stat.mean)


def _legend_outside(fig: Any, handles: Sequence[Any], labels: Sequence[str], **kw: Any) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside right upper", **kw)


def _marker(style: Style, variant: int = 0, ms: float = 5.0) -> dict[str, Any]:
    """Line2D keywords for a method's marker; ``variant`` > 0 (another row of the same method)
    leaves it hollow or half filled."""
    fill = FILLSTYLES[variant % len(FILLSTYLES)]
    full = fill == "full"
    return {
        "color": style.color,
        "marker": style.marker,
        "ms": ms,
        "fillstyle": fill,
        "markerfacecoloralt": "white",
        "mec": "white" if full else style.color,
        "mew": 0.6 if full else 1.2,
    }


def _method_handle(style: Style, variant: int = 0, line: bool = True) -> Any:
    from matplotlib.lines import Line2D

    ls = LINESTYLES[variant % len(LINESTYLES)] if line else "none"
    return Line2D([], [], ls=ls, **_marker(style, variant, 6.5))


INTERVAL_NOTE = "error bars: 95% interval (Wilson for one seed, seeds × prompts bootstrap for more)"


# ---------------------------------------------------------------------------------------------
# HS / FA against the column axis


def _is_numeric(rep: Report) -> bool:
    return rep.axis in ("p", "n")


@_rc
def metric_vs_axis_figure(rep: Report, styles: Mapping[str, Style] | None = None) -> Any:
    """HS and FA against p (or n) per method with the report's 95% intervals as error bars
    (grouped bars with error bars for tasks); one colour and marker per method."""
    styles = report_styles(rep) if styles is None else styles
    variants = _variants(rep.rows)
    fig, (ax_hs, ax_fa) = _figure(2)
    numeric = _is_numeric(rep)
    cols = [c for c in rep.columns if c is not None] if numeric else list(rep.columns)
    width = 0.8 / max(1, len(rep.rows))
    span = (max(cols) - min(cols)) if numeric and cols else 0
    dodge = 0.012 * (span or 1.0)  # methods side by side so their error bars do not coincide
    extent: dict[str, list[float]] = {"hs": [], "fa": []}
    handles, labels = [], []
    for i, row in enumerate(rep.rows):
        style = styles.get(row.label) or method_style(row.method)
        variant = variants[row.key]
        drawn = False
        for ax, attr in ((ax_hs, "hs"), (ax_fa, "fa")):
            xs, ys, lo, hi = [], [], [], []
            for j, col in enumerate(cols):
                c = rep.cell(row, col)
                err = _ci(getattr(c, attr)) if c is not None else None
                if err is None:
                    continue
                mean = getattr(c, attr).mean
                offset = i - (len(rep.rows) - 1) / 2
                xs.append(col + offset * dodge if numeric else j + offset * width)
                ys.append(mean)
                lo.append(err[0])
                hi.append(err[1])
                extent[attr] += [mean - err[0], mean + err[1]]
            if not xs:
                continue
            drawn = True
            if numeric:
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[lo, hi],
                    ls=LINESTYLES[variant % len(LINESTYLES)],
                    lw=1.5,
                    capsize=3,
                    elinewidth=1.0,
                    label=row.label,
                    **_marker(style, variant, 5.5),
                )
            else:
                ax.bar(
                    xs,
                    ys,
                    width=width,
                    yerr=[lo, hi],
                    capsize=3,
                    color=style.color,
                    edgecolor="white",
                    linewidth=0.6,
                    hatch=HATCHES[variant % len(HATCHES)] or None,
                    error_kw={"elinewidth": 1.0, "ecolor": "black"},
                    label=row.label,
                )
        if drawn:
            handles.append(
                _method_handle(style, variant) if numeric else _bar_handle(style, variant)
            )
            labels.append(row.label)
    xlabel = {
        "p": "harmful ratio p",
        "n": "fine-tuning samples n",
        "task": "task",
        "attack": "attack setting",
    }[rep.axis]
    for ax, attr, name in (
        (ax_hs, "hs", "Harmful Score, HS (%) — lower is safer"),
        (ax_fa, "fa", "Finetune Accuracy, FA (%) — higher is better"),
    ):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.set_ylim(*_limits(extent[attr], include=() if numeric else (0.0,)))
        if numeric:
            ax.set_xticks(list(cols))
            ax.set_xticklabels([f"{c:g}" for c in cols])
            if cols:
                pad = 0.06 * (span or 1.0)
                ax.set_xlim(min(cols) - pad, max(cols) + pad)
        else:
            ax.set_xticks(range(len(cols)))
            ax.set_xticklabels([str(c) for c in cols])
            ax.grid(False, axis="x")
    ax_hs.set_title(f"Harmful Score vs {rep.axis}")
    ax_fa.set_title(f"Finetune Accuracy vs {rep.axis}")
    _legend_outside(fig, handles, labels, title="method")
    fig.suptitle(
        INTERVAL_NOTE
        + (f"; mean over seeds {', '.join(map(str, rep.seeds))}" if len(rep.seeds) > 1 else ""),
        fontsize=8,
    )
    return fig


def _bar_handle(style: Style, variant: int = 0) -> Any:
    from matplotlib.patches import Patch

    hatch = HATCHES[variant % len(HATCHES)] or None
    return Patch(facecolor=style.color, edgecolor="white", linewidth=0.6, hatch=hatch)


def metric_vs_axis(
    rep: Report,
    path: Path,
    *,
    formats: Iterable[str] | str = FORMATS,
    styles: Mapping[str, Style] | None = None,
) -> Path:
    """:func:`metric_vs_axis_figure`, saved; returns the first file (the PNG by default)."""
    return _save(metric_vs_axis_figure(rep, styles), path, formats)  # type: ignore[return-value]


@_rc
def tradeoff_figure(rep: Report, styles: Mapping[str, Style] | None = None) -> Any:
    """HS (x, lower is safer) against FA (y, higher is more useful), one point per cell with both
    95% intervals as error bars; a method's colour and marker, the column in the marker size (a
    thin line joins a method's points in order of p or n). Methods and columns in legends beside
    the axes, no text on the points; the axes fit the data, padded."""
    styles = report_styles(rep) if styles is None else styles
    variants = _variants(rep.rows)
    numeric = _is_numeric(rep)
    cols = [c for c in rep.columns if c is not None] if numeric else list(rep.columns)
    sizes = {  # marker size in points, growing with the column
        col: (7.0 if len(cols) < 2 else 4.5 + 5.5 * k / (len(cols) - 1))
        for k, col in enumerate(cols)
    }
    fig, (ax,) = _figure(1, width=5.4, height=4.4)
    xs_all: list[float] = []
    ys_all: list[float] = []
    handles, labels = [], []
    for row in rep.rows:
        style = styles.get(row.label) or method_style(row.method)
        variant = variants[row.key]
        pts = []
        for col in cols:
            c = rep.cell(row, col)
            if c is None:
                continue
            ex, ey = _ci(c.hs), _ci(c.fa)
            if ex is None or ey is None:
                continue
            pts.append((c.hs.mean, c.fa.mean, ex, ey, col))
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        xs_all += [p[0] - p[2][0] for p in pts] + [p[0] + p[2][1] for p in pts]
        ys_all += [p[1] - p[3][0] for p in pts] + [p[1] + p[3][1] for p in pts]
        ax.errorbar(
            xs,
            ys,
            xerr=[[p[2][0] for p in pts], [p[2][1] for p in pts]],
            yerr=[[p[3][0] for p in pts], [p[3][1] for p in pts]],
            fmt="none",
            ecolor=style.color,
            elinewidth=0.9,
            capsize=2,
            alpha=0.75,
            zorder=2,
            label=row.label,
        )
        if numeric and len(pts) > 1:
            ls = LINESTYLES[variant % len(LINESTYLES)]
            ax.plot(xs, ys, color=style.color, lw=0.9, ls=ls, alpha=0.6, zorder=2)
        for x, y, _, _, col in pts:
            ax.plot([x], [y], ls="none", zorder=3, **_marker(style, variant, sizes[col]))
        handles.append(_method_handle(style, variant, line=numeric))
        labels.append(row.label)
    ax.set_xlim(*_limits(xs_all))
    ax.set_ylim(*_limits(ys_all))
    ax.set_xlabel("Harmful Score, HS (%) — lower is safer")
    ax.set_ylabel("Finetune Accuracy, FA (%) — higher is better")
    ax.set_title("HS–FA trade-off: better is up and to the left")
    ax.text(
        0.0,
        -0.13,
        "error bars: 95% intervals of HS and FA",
        transform=ax.transAxes,
        fontsize=7.5,
        color="dimgray",
        va="top",
    )
    _legend_outside(fig, handles, labels, title="method")
    if len(cols) > 1:
        from matplotlib.lines import Line2D

        size_handles = [
            Line2D([], [], ls="none", marker="o", color=GREY, ms=sizes[c]) for c in cols
        ]
        fig.legend(
            size_handles,
            [rep.header(c) for c in cols],
            loc="outside right lower",
            title="marker size",
        )
    return fig


def tradeoff(
    rep: Report,
    path: Path,
    *,
    formats: Iterable[str] | str = FORMATS,
    styles: Mapping[str, Style] | None = None,
) -> Path:
    """:func:`tradeoff_figure`, saved; returns the first file (the PNG by default)."""
    return _save(tradeoff_figure(rep, styles), path, formats)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Training logs


def _unique(paths: Iterable[tuple[str, Path | None]]) -> list[tuple[str, Path]]:
    seen: set[Path] = set()
    out = []
    for label, p in paths:
        if p is not None and p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append((label, p))
    return out


def _harmful_nll(attacked: Path) -> tuple[list, list, list, list]:
    """Mean per-step NLL of harmful and benign samples from Antibody's per-sample log."""
    by_step: dict[int, dict[bool, list[float]]] = {}
    for r in _read_jsonl(attacked / "antibody_weights.jsonl"):
        if "task_nll" in r:
            by_step.setdefault(int(r["step"]), {True: [], False: []})[bool(r["is_harmful"])].append(
                float(r["task_nll"])
            )
    hx, hy, bx, by = [], [], [], []
    for step in sorted(by_step):
        if by_step[step][True]:
            hx.append(step)
            hy.append(sum(by_step[step][True]) / len(by_step[step][True]))
        if by_step[step][False]:
            bx.append(step)
            by.append(sum(by_step[step][False]) / len(by_step[step][False]))
    return hx, hy, bx, by


#: The quantities of the training-curve panels, one axis each, in panel order.
CURVE_QUANTITIES: dict[str, str] = {
    "loss": "training loss",
    "harmful_loss": "harmful loss",
    "alignment_loss": "alignment loss (Lisa's alignment steps)",
}


def _align_curves(rows: list[dict[str, Any]]) -> dict[str, tuple[list, list]]:
    return {"loss": _series(rows, "loss"), "harmful_loss": _series(rows, "harmful_loss")}


def _finetune_curves(path: Path, rows: list[dict[str, Any]]) -> dict[str, tuple[list, list]]:
    is_lisa = any("state" in r for r in rows)
    user = (lambda r: r.get("state", 1) != 0) if is_lisa else None
    harmful = _series(rows, "harmful_loss")
    if not harmful[0]:
        hx, hy, _, _ = _harmful_nll(path)
        harmful = (hx, hy)
    out = {"loss": _series(rows, "loss", user), "harmful_loss": harmful}
    if is_lisa:
        out["alignment_loss"] = _series(rows, "loss", lambda r: r.get("state") == 0)
    return out


@_rc
def training_curves_figure(
    runs: Sequence[EvalRun],
    *,
    axis_value: Any = None,
    axis: str = "p",
    styles: Mapping[str, Style] | None = None,
) -> Any:
    """Training losses, one axis per quantity: the alignment stage (top row: training loss, and
    Booster/Antibody's harmful loss) and fine-tuning at one column value, the largest by default
    (bottom row: training loss — Lisa's user-data steps —, harmful loss — logged, or the harmful
    samples' NLL in Antibody's per-sample log —, and Lisa's alignment-state loss). A stage's
    panels share the step axis; one curve per method, first seed, in the method's colour."""
    if styles is None:
        styles = runs_styles(runs)
    aligned = _first_per_label(
        _unique((r.variant_text, r.aligned_dir) for r in runs if r.kind == "aligned")
    )
    attacked_runs = [r for r in runs if r.kind == "attacked" and r.attacked_dir is not None]
    if axis_value is None and attacked_runs:
        vals = [getattr(r, axis) for r in attacked_runs]
        numeric = [v for v in vals if isinstance(v, int | float)]
        axis_value = max(numeric) if axis in ("p", "n") and numeric else vals[0]
    attacked = _first_per_label(
        _unique(
            (r.variant_text, r.attacked_dir)
            for r in attacked_runs
            if getattr(r, axis) == axis_value
        )
    )
    value = f"{axis}={axis_value:g}" if isinstance(axis_value, float | int) else str(axis_value)
    stages = []
    align = [
        (label, _align_curves(rows))
        for label, p in aligned
        if (rows := _read_jsonl(p / "align_log.jsonl"))
    ]
    if align:
        stages.append(("Alignment stage", "alignment step", align))
    ft = [
        (label, _finetune_curves(p, rows))
        for label, p in attacked
        if (rows := _read_jsonl(p / "finetune_log.jsonl"))
    ]
    if ft:
        stages.append((f"Fine-tuning stage ({value})", "fine-tuning step", ft))
    if not stages:
        return None
    styles = _styles_for([label for _, _, logs in stages for label, _ in logs], styles)
    panels = [
        [q for q in CURVE_QUANTITIES if any(curves.get(q, ([], []))[0] for _, curves in logs)]
        for _, _, logs in stages
    ]
    fig = _blank_figure(3.6 * max(len(p) for p in panels) + 1.6, 3.0 * len(stages))
    subfigs = fig.subfigures(len(stages), 1, squeeze=False)[:, 0]
    for sub, (title, xlabel, logs), quantities in zip(subfigs, stages, panels, strict=True):
        axes = sub.subplots(1, len(quantities), sharex=True, squeeze=False)[0]
        handles: dict[str, Any] = {}
        for ax, q in zip(axes, quantities, strict=True):
            for label, curves in logs:
                xs, ys = curves.get(q, ([], []))
                if not xs:
                    continue
                style = styles[label]
                (line,) = ax.plot(xs, ys, label=label, **_line(style, xs, lw=1.4))
                line.set_gid(q)
                handles.setdefault(label, line)
            ax.set_title(CURVE_QUANTITIES[q])
            ax.set_ylabel("token-mean NLL")
            _steps_axis(ax, xlabel)
        sub.suptitle(title + " — first seed of each method", fontsize=9.5)
        sub.legend(list(handles.values()), list(handles), loc="outside right upper")
    return fig


def training_curves(
    runs: Sequence[EvalRun],
    path: Path,
    *,
    axis_value: Any = None,
    axis: str = "p",
    formats: Iterable[str] | str = FORMATS,
    styles: Mapping[str, Style] | None = None,
) -> Path | None:
    """:func:`training_curves_figure`, saved; None when no run has a training log."""
    fig = training_curves_figure(runs, axis_value=axis_value, axis=axis, styles=styles)
    return _save(fig, path, formats)


@_rc
def finetune_analysis_figure(
    attacked: Sequence[tuple[str, Path]],
    title: str = "",
    styles: Mapping[str, Style] | None = None,
) -> Any:
    """The analysis probes over fine-tuning (``analysis.jsonl``, finetune.analysis_every > 0):
    alignment loss, harmful loss on held-out attack samples, harmful embedding drift; one panel
    each, one line per method."""
    logs = [(label, rows) for label, p in attacked if (rows := _read_jsonl(p / "analysis.jsonl"))]
    if not logs:
        return None
    styles = _styles_for([label for label, _ in logs], styles)
    keys = (
        ("alignment_loss", "alignment loss (refusals)"),
        ("harmful_loss", "harmful loss (held-out attack)"),
        ("hed", "harmful embedding drift"),
    )
    fig, axes = _figure(3, width=3.6, height=3.2, sharex=True)
    handles: dict[str, Any] = {}
    for ax, (key, name) in zip(axes, keys, strict=True):
        for label, rows in logs:
            xs, ys = _series(rows, key)
            if xs:
                (line,) = ax.plot(xs, ys, label=label, **_line(styles[label], xs, lw=1.4))
                handles.setdefault(label, line)
        ax.set_title(name)
        ax.ticklabel_format(axis="y", useOffset=False)
        _steps_axis(ax, "fine-tuning step")
    _legend_outside(fig, list(handles.values()), list(handles), title="method")
    if title:
        fig.suptitle(title, fontsize=9.5)
    return fig


def finetune_analysis(
    attacked: Sequence[tuple[str, Path]],
    path: Path,
    title: str = "",
    *,
    formats: Iterable[str] | str = FORMATS,
    styles: Mapping[str, Style] | None = None,
) -> Path | None:
    """:func:`finetune_analysis_figure`, saved; None without ``analysis.jsonl``."""
    return _save(finetune_analysis_figure(attacked, title, styles), path, formats)


@_rc
def grad_norms_figure(attacked: Sequence[tuple[str, Path]], title: str = "") -> Any:
    """Per-sample gradient norms of harmful vs benign user samples at the start of fine-tuning
    (``grad_norms.jsonl``), one panel per method: the Antibody claim is that a flat alignment
    makes harmful samples' gradients small."""
    data = []
    for label, p in attacked:
        rows = [r for r in _read_jsonl(p / "grad_norms.jsonl") if r.get("step") == 0]
        harm = [float(r["grad_norm"]) for r in rows if r.get("harmful")]
        benign = [float(r["grad_norm"]) for r in rows if not r.get("harmful")]
        if harm or benign:
            data.append((label, harm, benign))
    if not data:
        return None
    fig, axes = _figure(len(data), width=3.2, height=3.0, sharex=True)
    top = max(max(h + b) for _, h, b in data)
    bins = [top * i / 20 for i in range(21)] if top > 0 else 10
    for ax, (label, harm, benign) in zip(axes, data, strict=True):
        if benign:
            ax.hist(
                benign, bins=bins, alpha=0.6, color=BENIGN_COLOR, label=f"benign ({len(benign)})"
            )
        if harm:
            ax.hist(harm, bins=bins, alpha=0.6, color=HARMFUL_COLOR, label=f"harmful ({len(harm)})")
        ax.set_title(label)
        ax.set_xlabel("per-sample gradient norm at step 0")
        ax.legend()
    axes[0].set_ylabel("samples")
    if title:
        fig.suptitle(title, fontsize=9.5)
    return fig


def grad_norms(
    attacked: Sequence[tuple[str, Path]],
    path: Path,
    title: str = "",
    *,
    formats: Iterable[str] | str = FORMATS,
) -> Path | None:
    """:func:`grad_norms_figure`, saved; None without ``grad_norms.jsonl``."""
    return _save(grad_norms_figure(attacked, title), path, formats)


def _first_per_label(items: Iterable[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """One directory per label (the first seed), in order."""
    seen: set[str] = set()
    out = []
    for label, d in items:
        if label not in seen:
            seen.add(label)
            out.append((label, d))
    return out


@_rc
def antibody_weights_figure(attacked: Path, title: str = "") -> Any:
    """Histograms of Antibody's per-sample score r and weight w, harmful vs benign samples."""
    rows = _read_jsonl(attacked / "antibody_weights.jsonl")
    if not any(r.get("is_harmful") for r in rows):
        return None  # nothing to tell apart (p = 0, or no log)
    fig, axes = _figure(2)
    for ax, key, name in (
        (axes[0], "score", "score r = log π(y|x) − log π(y_refusal|x)"),
        (axes[1], "weight", "weight w = softmax(r/τ) within the batch"),
    ):
        harm = [float(r[key]) for r in rows if r.get("is_harmful") and key in r]
        ben = [float(r[key]) for r in rows if not r.get("is_harmful") and key in r]
        both = harm + ben
        if not both:
            continue
        lo, hi = min(both), max(both)
        bins = 30 if hi > lo else 1
        rng = (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)
        if ben:
            ax.hist(
                ben,
                bins=bins,
                range=rng,
                alpha=0.6,
                color=BENIGN_COLOR,
                density=True,
                label=f"benign (n={len(ben)}, mean {sum(ben) / len(ben):.3g})",
            )
        if harm:
            ax.hist(
                harm,
                bins=bins,
                range=rng,
                alpha=0.6,
                color=HARMFUL_COLOR,
                density=True,
                label=f"harmful (n={len(harm)}, mean {sum(harm) / len(harm):.3g})",
            )
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.legend()
    steps = sorted({int(r.get("step", 0)) for r in rows})
    fig.suptitle(
        f"Antibody sample weighting{' — ' + title if title else ''} (all {len(steps)} steps)",
        fontsize=9.5,
    )
    return fig


def antibody_weights(
    attacked: Path, path: Path, title: str = "", *, formats: Iterable[str] | str = FORMATS
) -> Path | None:
    """:func:`antibody_weights_figure`, saved; None without harmful samples in the log."""
    return _save(antibody_weights_figure(attacked, title), path, formats)


@_rc
def lisa_drift_figure(
    attacked: Sequence[tuple[str, Path]],
    title: str = "",
    styles: Mapping[str, Style] | None = None,
) -> Any:
    """Lisa's drift over fine-tuning (``finetune_log.jsonl``): ‖θ − anchor‖² to the current
    state's anchor, with the alignment states shaded, and the distance between the two anchors at
    each switch (Lisa's "excess drift", which the proximal term bounds). One line per method."""
    logs = []
    for label, p in attacked:
        rows = [r for r in _read_jsonl(p / "finetune_log.jsonl") if "drift" in r and "state" in r]
        if rows:
            logs.append((label, rows))
    if not logs:
        return None
    styles = _styles_for([label for label, _ in logs], styles)
    fig, (ax_d, ax_s) = _figure(2, width=4.0, sharex=True)
    handles: dict[str, Any] = {}
    for k, (label, rows) in enumerate(logs):
        style = styles[label]
        xs, ys = _series(rows, "drift")
        (line,) = ax_d.plot(xs, ys, label=label, **_line(style, xs, lw=1.3))
        handles.setdefault(label, line)
        if k == 0:  # shade the first method's alignment states (every Lisa run shares K1/K2)
            starts = [
                r["step"]
                for i, r in enumerate(rows)
                if r["state"] == 0 and (i == 0 or rows[i - 1]["state"] != 0)
            ]
            ends = [
                r["step"]
                for i, r in enumerate(rows)
                if r["state"] == 0 and (i + 1 == len(rows) or rows[i + 1]["state"] != 0)
            ]
            for a, b in zip(starts, ends, strict=True):
                ax_d.axvspan(a - 0.5, b + 0.5, color="0.85", zorder=0, lw=0)
        sx, sy = _series(rows, "switch_drift")
        if sx:
            ax_s.plot(sx, sy, **_line(style, sx, lw=1.3))
    ax_d.set_title("‖θ − anchor‖² (alignment states shaded)")
    ax_s.set_title("‖anchor_align − anchor_ft‖² at each switch")
    for ax in (ax_d, ax_s):
        _steps_axis(ax, "fine-tuning step")
    _legend_outside(fig, list(handles.values()), list(handles), title="method")
    if title:
        fig.suptitle(title, fontsize=9.5)
    return fig


def lisa_drift(
    attacked: Sequence[tuple[str, Path]],
    path: Path,
    title: str = "",
    *,
    formats: Iterable[str] | str = FORMATS,
    styles: Mapping[str, Style] | None = None,
) -> Path | None:
    """:func:`lisa_drift_figure`, saved; None without a Lisa fine-tuning log."""
    return _save(lisa_drift_figure(attacked, title, styles), path, formats)


@_rc
def alignment_dynamics_figure(
    aligned: Sequence[tuple[str, Path]], styles: Mapping[str, Style] | None = None
) -> Any:
    """Booster/Antibody over alignment steps: the harmful-loss change after the simulated harmful
    step (left) and the regulariser weight λ_t (right; Booster's λ is a constant option)."""
    series = []
    for label, d in aligned:
        rows = _read_jsonl(d / "align_log.jsonl")
        if any("loss_change" in r for r in rows):
            series.append((label, d, rows))
    if not series:
        return None
    styles = _styles_for([label for label, _, _ in series], styles)
    fig, (ax_c, ax_l) = _figure(2, width=4.0, sharex=True)
    handles: dict[str, Any] = {}
    for label, d, rows in series:
        style = styles[label]
        cx, cy = _series(rows, "loss_change")
        (line,) = ax_c.plot(cx, cy, label=label, **_line(style, cx, lw=1.3))
        handles.setdefault(label, line)
        lx, ly = _series(rows, "lambda")
        if lx:
            ax_l.plot(lx, ly, label=f"{label}: λ_t", **_line(style, lx, lw=1.3))
            rx, ry = _series(rows, "lambda_raw")
            if rx and ry != ly:
                ax_l.plot(rx, ry, color=style.color, lw=0.8, alpha=0.4, label=f"{label}: raw λ")
        else:
            lam = _constant_lambda(d)
            xs = [r.get("step", k) for k, r in enumerate(rows)]
            if lam is not None and xs:
                ax_l.plot(
                    [min(xs), max(xs)],
                    [lam, lam],
                    color=style.color,
                    marker=style.marker,
                    ms=4,
                    lw=1.3,
                    ls="--",
                    label=f"{label}: λ (constant)",
                )
    ax_c.axhline(0.0, color="gray", lw=0.8)
    ax_c.set_title("Harmful-loss change\nafter a simulated harmful step")
    ax_c.set_ylabel("loss change (token-mean NLL)")
    ax_l.set_title("Regulariser weight λ_t\n(dashed: constant λ;\nfaint: raw λ before the EMA)")
    ax_l.set_ylabel("λ")
    for ax in (ax_c, ax_l):
        _steps_axis(ax, "alignment step")
    _legend_outside(fig, list(handles.values()), list(handles), title="method")
    return fig


def alignment_dynamics(
    aligned: Sequence[tuple[str, Path]],
    path: Path,
    *,
    formats: Iterable[str] | str = FORMATS,
    styles: Mapping[str, Style] | None = None,
) -> Path | None:
    """:func:`alignment_dynamics_figure`, saved; None without Booster/Antibody logs."""
    return _save(alignment_dynamics_figure(aligned, styles), path, formats)


def _constant_lambda(run_dir: Path) -> float | None:
    try:
        m = json.loads((run_dir / "manifest.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    opts = ((m.get("components") or {}).get("defense") or {}).get("options") or {}
    for key in ("lam", "lambda_", "lmbda", "lambda"):
        if isinstance(opts.get(key), int | float):
            return float(opts[key])
    return None


# ---------------------------------------------------------------------------------------------
# Everything for a report


def write_all(rep: Report, out: str | Path, formats: Iterable[str] | str = FORMATS) -> list[Path]:
    """Every figure the report's runs support, each in every one of ``formats`` (PNG, SVG and
    PDF by default), one style per method across all of them; returns the files written, each
    figure's files together in the order of ``formats`` (none without data)."""
    from hftguard.pipeline.grid import slug
    from hftguard.pipeline.report.aggregate import header

    fmts = _formats(formats)
    out = Path(out)
    styles = report_styles(rep)
    runs = rep.collection.runs if rep.collection is not None else []
    # the per-run figures group by the report's axis; with attack settings as columns, by p
    axis = rep.worst_axis

    def head(value: Any) -> str:
        return header(axis, value)

    firsts: list[Path | None] = []
    if rep.rows:
        firsts.append(
            metric_vs_axis(rep, out / f"hs_fa_vs_{rep.axis}.png", formats=fmts, styles=styles)
        )
        firsts.append(tradeoff(rep, out / "hs_fa_tradeoff.png", formats=fmts, styles=styles))
    firsts.append(
        training_curves(runs, out / "training_curves.png", axis=axis, formats=fmts, styles=styles)
    )
    aligned = _first_per_label(
        _unique((r.variant_text, r.aligned_dir) for r in runs if r.kind == "aligned")
    )
    firsts.append(
        alignment_dynamics(aligned, out / "alignment_dynamics.png", formats=fmts, styles=styles)
    )
    attacked_runs = [r for r in runs if r.kind == "attacked" and r.attacked_dir is not None]
    for value in dict.fromkeys(getattr(r, axis) for r in attacked_runs):
        cells = _first_per_label(
            _unique(
                (r.variant_text, r.attacked_dir) for r in attacked_runs if getattr(r, axis) == value
            )
        )
        tag = head(value).replace("=", "")
        firsts.append(
            finetune_analysis(
                cells,
                out / f"finetune_analysis__{tag}.png",
                f"fine-tuning probes, {head(value)}",
                formats=fmts,
                styles=styles,
            )
        )
        firsts.append(
            grad_norms(
                cells,
                out / f"grad_norms__{tag}.png",
                f"per-sample gradient norms, {head(value)}",
                formats=fmts,
            )
        )
        firsts.append(
            lisa_drift(
                cells,
                out / f"lisa_drift__{tag}.png",
                f"Lisa drift, {head(value)}",
                formats=fmts,
                styles=styles,
            )
        )
    for r in runs:
        if r.kind == "attacked" and r.attacked_dir is not None and r.finetune == "antibody":
            variant = f"__{slug(r.variant_label.replace('=', ''))}" if r.variant else ""
            name = (
                f"antibody_weights__{slug(r.method.replace('/', '-'))}{variant}__"
                f"{head(getattr(r, axis)).replace('=', '')}__s{r.seed}.png"
            )
            firsts.append(
                antibody_weights(
                    r.attacked_dir,
                    out / name,
                    f"{r.variant_text}, {head(getattr(r, axis))}, seed {r.seed}",
                    formats=fmts,
                )
            )
    return [f for p in firsts if p is not None for f in _paths(p, fmts)]
