"""``hftguard search CONFIG --out DIR``: successive halving over a grid's attack settings.

Calls :func:`hftguard.pipeline.grid.search.search`. Nothing here imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hftguard import config as cfgmod
from hftguard.cli.stages import PANEL, RERUN_HINT, JsonOpt, QuietOpt, SetOpt, _call, _reporter


def register(app: typer.Typer) -> None:
    @app.command("search", rich_help_panel=PANEL)
    def search_cmd(
        config_file: Annotated[
            Path,
            typer.Argument(
                help="Grid TOML config whose \\[grid.attack] has max_steps (the step budgets) "
                "and at least one more swept key."
            ),
        ],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (a grid).")],
        fa_bound: Annotated[
            float | None,
            typer.Option(
                "--fa-bound",
                help="Only settings whose FA (%) is at least this count as strong attacks.",
                show_default=False,
            ),
        ] = None,
        eta: Annotated[
            int, typer.Option("--eta", help="Keep the best 1/eta of the settings per rung.")
        ] = 3,
        set_: SetOpt = None,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Search the attack settings for the strongest attack on each defense (successive halving).

        Every candidate setting of \\[grid.attack] (without max_steps) is trained with the smallest
        max_steps value; the best third (--eta 3; highest HS among those keeping FA >= --fa-bound)
        go on to the next budget, up to the largest. Every trial is a normal grid cell under
        --out, so re-running continues and `hftguard report OUT` reports every trial;
        OUT/search.json records each rung and the strongest setting per defense.
        """
        from hftguard.console import print_json, print_table
        from hftguard.pipeline import grid
        from hftguard.pipeline.grid.search import search

        g = grid.load(cfgmod.layered(config_file=config_file, sets=list(set_ or [])))
        record = _call(
            lambda: search(
                g,
                out,
                fa_bound=fa_bound,
                eta=eta,
                reporter=_reporter(quiet, as_json),
                command=sys.argv,
            ),
            RERUN_HINT,
        )
        if as_json:
            print_json(record)
            return
        rows = [
            [
                t["method"],
                f"{t['p']:g}",
                " ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in t["attack"].items()
                ),
                t["hs"],
                t["fa"],
                "yes" if t["meets_fa_bound"] else "no",
            ]
            for t in record["best"]
        ]
        bound = "" if fa_bound is None else f", FA >= {fa_bound:g}"
        print_table(
            f"hftguard search: strongest attack per defense ({record['trials']} trials{bound})",
            ["method", "p", "setting", "HS %", "FA %", "meets bound"],
            rows,
        )
