"""``hftguard report``: tables (markdown, CSV, LaTeX) and figures from grid or eval run dirs.

Why a command of its own: a grid takes hours and its summary is wanted many times — by another
column axis, with another headline judge, after more seeds finish — so summarising reads the run
directories and never trains or generates. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PANEL = "Pipeline"


def register(app: typer.Typer) -> None:
    @app.command("report", rich_help_panel=PANEL)
    def report_cmd(
        run_dirs: Annotated[
            list[Path],
            typer.Argument(
                help="Grid --out directories, pipeline directories or eval run directories."
            ),
        ],
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="Directory for report.md/.csv/.tex/.json and the figures "
                "(default: RUN_DIR/report).",
            ),
        ] = None,
        columns: Annotated[
            str,
            typer.Option(
                "--columns",
                help="Column axis: p | n | task | attack (the \\[grid.attack] settings).",
            ),
        ] = "p",
        formats: Annotated[
            str, typer.Option("--format", help="Comma-separated: md, csv, tex, json.")
        ] = "md,csv,tex,json",
        judge: Annotated[
            str | None,
            typer.Option(
                "--judge", "-j", help="Judge for HS (default: the first judge of each eval)."
            ),
        ] = None,
        bootstrap: Annotated[
            int,
            typer.Option(
                "--bootstrap",
                help="Bootstrap resamples for the paired and across-seed 95% intervals "
                "(0 = none; single-run Wilson intervals and McNemar p-values need none).",
            ),
        ] = 1000,
        baseline: Annotated[
            str | None,
            typer.Option(
                "--baseline",
                help="Method (align/finetune, or its label) the paired comparisons are made "
                "against (default: sft/sft).",
                show_default=False,
            ),
        ] = None,
        as_json: Annotated[
            bool,
            typer.Option(
                "--json", help="Print report.json on stdout instead of the markdown (and write it)."
            ),
        ] = False,
        plots: Annotated[
            bool,
            typer.Option("--plots/--no-plots", help="Write the figures (needs matplotlib)."),
        ] = True,
        plot_formats: Annotated[
            str,
            typer.Option(
                "--plot-format",
                help="Comma-separated figure formats: png, svg, pdf (each figure in each).",
            ),
        ] = "png,svg,pdf",
        fa_bound: Annotated[
            float | None,
            typer.Option(
                "--fa-bound",
                help="With attack settings (\\[grid.attack]): also give each defense's worst HS "
                "among the settings whose FA (%) is at least this (the capability-bounded worst "
                "case).",
                show_default=False,
            ),
        ] = None,
        strict: Annotated[
            bool,
            typer.Option(
                "--strict",
                help="Exit with code 1, writing nothing, when a run directory is damaged (its "
                "manifest unreadable) or an evaluation a grid lists is missing or unfinished.",
            ),
        ] = False,
    ) -> None:
        """Summarise runs like the papers: methods x p (or n, tasks), cells "HS / FA".

        Writes report.md, report.csv (one row per cell, with 95% intervals), report.tex and
        report.json (every statistic: per-cell intervals, paired comparisons vs the baseline with
        McNemar p-values, attack effects, HS per harm category), plus figures, and prints the
        markdown to stdout. A damaged run directory or a missing evaluation of a grid is named in
        a warning and left out (--strict: an error).
        """
        from rich.markup import escape

        from hftguard.console import print_json, stderr, stdout
        from hftguard.errors import ConfigError, HftguardError
        from hftguard.pipeline import report
        from hftguard.pipeline.report import plots as plotmod

        if columns not in report.AXES:
            raise ConfigError(
                f"--columns {columns!r} is not one of {', '.join(report.AXES)}.",
                hint="Use --columns p, n, task or attack.",
            )
        fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
        bad = [f for f in fmts if f not in report.FORMATS]
        if bad or not fmts:
            raise ConfigError(
                f"--format {formats!r}: unknown format(s) {', '.join(bad) or '-'}.",
                hint="Use a comma-separated subset of md, csv, tex, json.",
            )
        pfmts = [f.strip().lower().lstrip(".") for f in plot_formats.split(",") if f.strip()]
        bad = [f for f in pfmts if f not in plotmod.FORMATS]
        if bad or not pfmts:
            raise ConfigError(
                f"--plot-format {plot_formats!r}: unknown format(s) {', '.join(bad) or '-'}.",
                hint="Use a comma-separated subset of png, svg, pdf.",
            )
        if bootstrap < 0:
            raise ConfigError("--bootstrap must be >= 0.", hint="1000 is the default.")
        from hftguard.pipeline.report.worst import check_fa_bound

        check_fa_bound(fa_bound)
        if as_json and "json" not in fmts:
            fmts.append("json")
        target = out or (run_dirs[0] / "report")
        collection = report.collect(run_dirs)
        for bad in collection.damaged:
            stderr.print(
                f"[yellow]Warning:[/yellow] {escape(str(bad.path))} is damaged and left out: "
                f"{escape(bad.reason)}.",
                highlight=False,
            )
        for gap in collection.missing[:10]:
            stderr.print(
                f"[yellow]Warning:[/yellow] no finished evaluation in {escape(str(gap.path))} "
                f"({escape(gap.reason)}); left out.",
                highlight=False,
            )
        if len(collection.missing) > 10:
            stderr.print(
                f"[yellow]Warning:[/yellow] {len(collection.missing) - 10} more evaluations of the "
                "grid are missing or unfinished.",
                highlight=False,
            )
        if strict and (collection.damaged or collection.missing):
            n_bad, n_gap = len(collection.damaged), len(collection.missing)
            raise HftguardError(
                f"--strict: {n_bad} damaged run director{'y' if n_bad == 1 else 'ies'} and "
                f"{n_gap} missing or unfinished evaluation{'' if n_gap == 1 else 's'} "
                f"(warnings above); no report written.",
                hint="Re-run the grid (hftguard run CONFIG --out DIR redoes what is left; a "
                "damaged stage directory must be deleted first), or leave out --strict to report "
                "what is there.",
            )
        if not collection.runs:
            raise ConfigError(
                f"No finished evaluations under {', '.join(map(str, run_dirs))}.",
                hint="Pass a grid's --out directory (hftguard run ... --out DIR) "
                "or eval run directories whose status is completed.",
            )
        if judge is not None:
            missing = [r for r in collection.runs if judge not in r.judges]
            if len(missing) == len(collection.runs):
                raise ConfigError(
                    f"No evaluation used the judge '{judge}'.",
                    hint="Re-run the grid with the judge added to eval.judges; "
                    "cached generations are re-judged, not regenerated.",
                )
            if missing:
                stderr.print(
                    f"[yellow]Warning:[/yellow] {len(missing)} evaluation(s) lack the "
                    f"judge '{judge}'; their HS is shown as –.",
                    highlight=False,
                )
        published, preset_lines = report.published_from_presets(collection)
        for line in preset_lines:
            stderr.print(f"Published numbers beside ours: {line}", highlight=False)
        base_method = "sft/sft" if baseline is None else baseline
        if baseline is not None and report.paired.resolve_baseline(collection, baseline) is None:
            methods = sorted({r.method for r in collection.runs if r.kind == "attacked"})
            raise ConfigError(
                f"--baseline {baseline!r} is not a method of these evaluations.",
                hint=f"Use one of: {', '.join(methods) or '(no fine-tuned evaluations)'} "
                "(or its label).",
            )
        rep = report.build(
            collection,
            columns=columns,
            judge=judge,
            n_boot=bootstrap,
            published=published,
            baseline=base_method,
            fa_bound=fa_bound,
        )
        if fa_bound is not None and not rep.worst:
            stderr.print(
                "[yellow]Warning:[/yellow] --fa-bound: these evaluations have no attack axes "
                "(\\[grid.attack]), so there is no worst case over attack settings to bound.",
                highlight=False,
            )
        if rep.baseline is None and baseline is None and rep.rows:
            stderr.print(
                "No sft/sft evaluations: no comparisons vs a baseline (name one with --baseline).",
                highlight=False,
            )
        for skip in rep.skipped[:10]:
            stderr.print(f"[yellow]Warning:[/yellow] not paired: {skip.text()}", highlight=False)
        if len(rep.skipped) > 10:
            stderr.print(
                f"[yellow]Warning:[/yellow] {len(rep.skipped) - 10} more pairs not compared "
                "(see report.md, 'Not paired').",
                highlight=False,
            )
        written = report.write(rep, target, fmts)
        if plots:
            if plotmod.available():
                written += plotmod.write_all(rep, target, pfmts)
            else:
                stderr.print(
                    "[yellow]Warning:[/yellow] matplotlib is not installed; tables "
                    "written, figures skipped (pip install 'hftguard\\[plots]').",  # \[: not markup
                    highlight=False,
                )
        if as_json:
            print_json(report.report_dict(rep))
        else:
            stdout.print(report.to_markdown(rep), markup=False, highlight=False)
        stderr.print(
            f"Wrote {len(written)} file(s) to {target}: " + ", ".join(p.name for p in written),
            highlight=False,
        )
