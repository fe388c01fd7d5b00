"""The report's figures (PNG, matplotlib): what the defense papers plot, from hftguard run dirs.

Why: tables say who wins; figures say how. HS against p shows where a defense breaks, the HS–FA
scatter shows what its safety costs in task accuracy, the training curves show whether the harmful
loss really stays high during the attack, Antibody's per-sample scores and weights show whether it
tells harmful samples from benign ones, and Booster/Antibody's loss change and λ_t show what the
alignment-stage regulariser did.

matplotlib is optional (``pip install hftguard[plots]``): it is imported inside the functions and
:func:`available` says whether it is there. Figures are built with the object-oriented API
(``matplotlib.figure.Figure``), never pyplot, so no global state or GUI backend is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftguard.pipeline.report import EvalRun, Report

COLORS = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
DPI = 130


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(ncols: int = 1, width: float = 5.2, height: float = 3.8) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


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


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _steps_axis(ax: Any, label: str = "step") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _marker(xs: Sequence[Any]) -> dict[str, Any]:
    """Markers on short series (a few logged steps), plain lines on long ones."""
    return {"marker": "o", "ms": 3} if len(xs) <= 20 else {}


# ---------------------------------------------------------------------------------------------
# HS / FA against the column axis


def metric_vs_axis(rep: Report, path: Path) -> Path:
    """HS and FA against p (or n) per method, with the report's 95% intervals; bars for tasks."""
    fig, (ax_hs, ax_fa) = _figure(2)
    numeric = rep.axis in ("p", "n")
    width = 0.8 / max(1, len(rep.rows))
    span = (max(rep.columns) - min(rep.columns)) if numeric and rep.columns else 0
    dodge = 0.012 * (span or 1.0)  # methods side by side so their error bars do not coincide
    for i, row in enumerate(rep.rows):
        for ax, attr in ((ax_hs, "hs"), (ax_fa, "fa")):
            xs, ys, lo, hi = [], [], [], []
            for j, col in enumerate(rep.columns):
                c = rep.cell(row, col)
                s = getattr(c, attr) if c is not None else None
                if s is None or s.mean is None:
                    continue
                offset = i - (len(rep.rows) - 1) / 2
                xs.append(col + offset * dodge if numeric else j + offset * width)
                ys.append(s.mean)
                ci = s.ci or (s.mean, s.mean)
                lo.append(max(0.0, s.mean - ci[0]))
                hi.append(max(0.0, ci[1] - s.mean))
            if not xs:
                continue
            if numeric:
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[lo, hi],
                    marker="o",
                    ms=4,
                    capsize=3,
                    lw=1.6,
                    color=_color(i),
                    label=row.label,
                )
            else:
                ax.bar(
                    xs, ys, width=width, yerr=[lo, hi], capsize=3, color=_color(i), label=row.label
                )
    xlabel = {"p": "harmful ratio p", "n": "fine-tuning samples n", "task": "task"}[rep.axis]
    for ax, name in ((ax_hs, "Harmful Score (%) ↓"), (ax_fa, "Finetune Accuracy (%) ↑")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.set_ylim(-3, 103)
        if numeric:
            ax.set_xticks(list(rep.columns))
            ax.set_xticklabels([f"{c:g}" for c in rep.columns])
        else:
            ax.set_xticks(range(len(rep.columns)))
            ax.set_xticklabels([str(c) for c in rep.columns])
    ax_hs.set_title(f"HS vs {rep.axis}")
    ax_fa.set_title(f"FA vs {rep.axis}")
    ax_fa.legend(fontsize=8, loc="best")
    fig.suptitle(
        "Error bars: 95% interval (Wilson for one seed, seeds × prompts bootstrap for several)"
        + (f"; mean over seeds {', '.join(map(str, rep.seeds))}" if len(rep.seeds) > 1 else ""),
        fontsize=9,
    )
    return _save(fig, path)


def tradeoff(rep: Report, path: Path) -> Path:
    """HS (x, lower is better) against FA (y, higher is better): one colour per method, small
    points per column, a large labelled marker at the method's average."""
    fig, (ax,) = _figure(1, width=6.0, height=4.6)
    for i, row in enumerate(rep.rows):
        pts = [
            (c.hs.mean, c.fa.mean, col)
            for col in rep.columns
            if (c := rep.cell(row, col)) is not None
            and c.hs.mean is not None
            and c.fa.mean is not None
        ]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=22, alpha=0.5, color=_color(i))
        for x, y, col in pts:
            ax.annotate(
                rep.header(col),
                (x, y),
                fontsize=6,
                alpha=0.8,
                xytext=(4, 4),
                textcoords="offset points",
                color=_color(i),
                zorder=4,
            )
        hs, fa = rep.average(row, "hs"), rep.average(row, "fa")
        if hs is not None and fa is not None:
            ax.scatter(
                [hs],
                [fa],
                s=80,
                marker="D",
                color=_color(i),
                edgecolor="black",
                label=row.label,
                zorder=3,
                alpha=0.9,
            )
    ax.set_xlabel("Harmful Score (%) — lower is safer")
    ax.set_ylabel("Finetune Accuracy (%) — higher is more useful")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_title(
        f"HS–FA trade-off: better is up and left\n(diamonds: average over {rep.axis}; "
        f"dots: each {rep.axis})",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


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


def training_curves(
    runs: Sequence[EvalRun], path: Path, *, axis_value: Any = None, axis: str = "p"
) -> Path | None:
    """Alignment-stage losses per alignment defense (left) and fine-tuning losses per method at
    one column value, the largest by default (right). Solid: training loss; dashed: harmful loss
    (Booster/Antibody's harmful_loss, or the harmful samples' NLL in Antibody's per-sample log);
    dots: alignment loss during fine-tuning (Lisa's alignment-state steps). One seed per curve."""
    aligned = _first_per_label(
        _unique((r.label, r.aligned_dir) for r in runs if r.kind == "aligned")
    )
    attacked_runs = [r for r in runs if r.kind == "attacked" and r.attacked_dir is not None]
    if axis_value is None and attacked_runs:
        vals = [getattr(r, axis) for r in attacked_runs]
        axis_value = max(vals) if axis in ("p", "n") else vals[0]
    attacked = _first_per_label(
        _unique((r.label, r.attacked_dir) for r in attacked_runs if getattr(r, axis) == axis_value)
    )
    align_logs = [
        (label, rows) for label, p in aligned if (rows := _read_jsonl(p / "align_log.jsonl"))
    ]
    ft_logs = [
        (label, p, rows) for label, p in attacked if (rows := _read_jsonl(p / "finetune_log.jsonl"))
    ]
    if not align_logs and not ft_logs:
        return None
    fig, (ax_a, ax_f) = _figure(2)
    for i, (label, rows) in enumerate(align_logs):
        xs, ys = _series(rows, "loss")
        ax_a.plot(xs, ys, color=_color(i), lw=1.4, label=f"{label}: loss", **_marker(xs))
        hx, hy = _series(rows, "harmful_loss")
        if hx:
            ax_a.plot(
                hx,
                hy,
                color=_color(i),
                lw=1.2,
                ls="--",
                label=f"{label}: harmful loss",
                **_marker(hx),
            )
    ax_a.set_title("Alignment stage")
    for i, (label, p, rows) in enumerate(ft_logs):
        is_lisa = any("state" in r for r in rows)
        user = (lambda r: r.get("state", 1) != 0) if is_lisa else None
        xs, ys = _series(rows, "loss", user)
        if xs:
            ax_f.plot(xs, ys, color=_color(i), lw=1.4, label=f"{label}: loss", **_marker(xs))
        hx, hy = _series(rows, "harmful_loss")
        if not hx:
            hx, hy, _, _ = _harmful_nll(p)
        if hx:
            ax_f.plot(
                hx,
                hy,
                color=_color(i),
                lw=1.2,
                ls="--",
                label=f"{label}: harmful loss",
                **_marker(hx),
            )
        if is_lisa:
            ax_x, ax_y = _series(rows, "loss", lambda r: r.get("state") == 0)
            if ax_x:
                ax_f.plot(
                    ax_x,
                    ax_y,
                    color=_color(i),
                    lw=0,
                    marker=".",
                    ms=5,
                    label=f"{label}: alignment loss",
                )
    value = f"{axis}={axis_value:g}" if isinstance(axis_value, float | int) else str(axis_value)
    ax_f.set_title(f"Fine-tuning ({value})")
    for ax in (ax_a, ax_f):
        _steps_axis(ax)
        ax.set_ylabel("loss (token-mean NLL)")
        if ax.has_data():
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(
                0.5,
                0.5,
                "no training log found",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
    return _save(fig, path)


def finetune_analysis(
    attacked: Sequence[tuple[str, Path]], path: Path, title: str = ""
) -> Path | None:
    """The analysis probes over fine-tuning (``analysis.jsonl``, finetune.analysis_every > 0):
    alignment loss, harmful loss on held-out attack samples, harmful embedding drift; one line
    per method."""
    logs = [(label, rows) for label, p in attacked if (rows := _read_jsonl(p / "analysis.jsonl"))]
    if not logs:
        return None
    keys = (
        ("alignment_loss", "alignment loss (refusals)"),
        ("harmful_loss", "harmful loss (held-out attack)"),
        ("hed", "harmful embedding drift"),
    )
    fig, axes = _figure(3, width=4.2)
    for ax, (key, name) in zip(axes, keys, strict=True):
        for i, (label, rows) in enumerate(logs):
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, color=_color(i), lw=1.4, label=label, **_marker(xs))
        ax.set_title(name, fontsize=9)
        ax.ticklabel_format(axis="y", useOffset=False)
        _steps_axis(ax, "fine-tuning step")
    if axes[0].has_data():
        axes[0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def grad_norms(attacked: Sequence[tuple[str, Path]], path: Path, title: str = "") -> Path | None:
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
    fig, axes = _figure(len(data), width=3.6)
    top = max(max(h + b) for _, h, b in data)
    bins = [top * i / 20 for i in range(21)] if top > 0 else 10
    for ax, (label, harm, benign) in zip(axes, data, strict=True):
        if benign:
            ax.hist(benign, bins=bins, alpha=0.6, color=COLORS[0], label=f"benign ({len(benign)})")
        if harm:
            ax.hist(harm, bins=bins, alpha=0.6, color=COLORS[1], label=f"harmful ({len(harm)})")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("per-sample gradient norm at step 0")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("samples")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _first_per_label(items: Iterable[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """One directory per label (the first seed), in order."""
    seen: set[str] = set()
    out = []
    for label, d in items:
        if label not in seen:
            seen.add(label)
            out.append((label, d))
    return out


def antibody_weights(attacked: Path, path: Path, title: str = "") -> Path | None:
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
                color=COLORS[0],
                density=True,
                label=f"benign (n={len(ben)}, mean {sum(ben) / len(ben):.3g})",
            )
        if harm:
            ax.hist(
                harm,
                bins=bins,
                range=rng,
                alpha=0.6,
                color=COLORS[1],
                density=True,
                label=f"harmful (n={len(harm)}, mean {sum(harm) / len(harm):.3g})",
            )
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    steps = sorted({int(r.get("step", 0)) for r in rows})
    fig.suptitle(
        f"Antibody sample weighting{' — ' + title if title else ''} (all {len(steps)} steps)",
        fontsize=9,
    )
    return _save(fig, path)


def alignment_dynamics(aligned: Sequence[tuple[str, Path]], path: Path) -> Path | None:
    """Booster/Antibody over alignment steps: the harmful-loss change after the simulated harmful
    step (left) and the regulariser weight λ_t (right; Booster's λ is a constant option)."""
    series = []
    for label, d in aligned:
        rows = _read_jsonl(d / "align_log.jsonl")
        if any("loss_change" in r for r in rows):
            series.append((label, d, rows))
    if not series:
        return None
    fig, (ax_c, ax_l) = _figure(2)
    for i, (label, d, rows) in enumerate(series):
        cx, cy = _series(rows, "loss_change")
        ax_c.plot(cx, cy, color=_color(i), lw=1.3, label=label, **_marker(cx))
        lx, ly = _series(rows, "lambda")
        if lx:
            ax_l.plot(lx, ly, color=_color(i), lw=1.3, label=f"{label}: λ_t", **_marker(lx))
            rx, ry = _series(rows, "lambda_raw")
            if rx and ry != ly:
                ax_l.plot(rx, ry, color=_color(i), lw=0.8, alpha=0.4, label=f"{label}: raw λ")
        else:
            lam = _constant_lambda(d)
            xs = [r.get("step", k) for k, r in enumerate(rows)]
            if lam is not None and xs:
                ax_l.plot(
                    [min(xs), max(xs)],
                    [lam, lam],
                    color=_color(i),
                    lw=1.3,
                    ls="--",
                    label=f"{label}: λ (constant)",
                )
    ax_c.axhline(0.0, color="gray", lw=0.8)
    ax_c.set_title("Harmful-loss change after a simulated harmful step")
    ax_c.set_ylabel("loss change")
    ax_l.set_title("Regulariser weight λ_t")
    ax_l.set_ylabel("λ")
    for ax in (ax_c, ax_l):
        _steps_axis(ax, "alignment step")
        if ax.has_data():
            ax.legend(fontsize=7)
    return _save(fig, path)


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


def write_all(rep: Report, out: str | Path) -> list[Path]:
    """Every figure the report's runs support; returns the PNGs written (none without data)."""
    from hftguard.pipeline.grid import slug

    out = Path(out)
    runs = rep.collection.runs if rep.collection is not None else []
    written: list[Path | None] = []
    if rep.rows:
        written.append(metric_vs_axis(rep, out / f"hs_fa_vs_{rep.axis}.png"))
        written.append(tradeoff(rep, out / "hs_fa_tradeoff.png"))
    written.append(training_curves(runs, out / "training_curves.png", axis=rep.axis))
    aligned = _first_per_label(
        _unique((r.label, r.aligned_dir) for r in runs if r.kind == "aligned")
    )
    written.append(alignment_dynamics(aligned, out / "alignment_dynamics.png"))
    attacked_runs = [r for r in runs if r.kind == "attacked" and r.attacked_dir is not None]
    for value in dict.fromkeys(getattr(r, rep.axis) for r in attacked_runs):
        cells = _first_per_label(
            _unique(
                (r.label, r.attacked_dir) for r in attacked_runs if getattr(r, rep.axis) == value
            )
        )
        tag = rep.header(value).replace("=", "")
        written.append(
            finetune_analysis(
                cells,
                out / f"finetune_analysis__{tag}.png",
                f"fine-tuning probes, {rep.header(value)}",
            )
        )
        written.append(
            grad_norms(
                cells,
                out / f"grad_norms__{tag}.png",
                f"per-sample gradient norms, {rep.header(value)}",
            )
        )
    for r in runs:
        if r.kind == "attacked" and r.attacked_dir is not None and r.finetune == "antibody":
            name = (
                f"antibody_weights__{slug(r.method.replace('/', '-'))}__"
                f"{rep.header(getattr(r, rep.axis)).replace('=', '')}__s{r.seed}.png"
            )
            written.append(
                antibody_weights(
                    r.attacked_dir,
                    out / name,
                    f"{r.label}, {rep.header(getattr(r, rep.axis))}, seed {r.seed}",
                )
            )
    return [p for p in written if p is not None]
