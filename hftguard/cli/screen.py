"""``hftguard screen DATA --judge NAME --out DIR``: screen a fine-tuning upload with a judge.

Calls :func:`hftguard.pipeline.screening.run`. Nothing here imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hftguard import config as cfgmod
from hftguard.cli.stages import (
    PANEL,
    ConfigOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    ResumeOpt,
    SetOpt,
    _call,
    _reporter,
)


def register(app: typer.Typer) -> None:
    @app.command("screen", rich_help_panel=PANEL)
    def screen_cmd(
        file: Annotated[
            Path,
            typer.Argument(
                help="The user's fine-tuning data: .jsonl, .json, .csv or .parquet records with a "
                "prompt and a response, and optionally a kind (harmful | benign) to score the "
                "filter against."
            ),
        ],
        out: OutOpt,
        judge: Annotated[
            str | None, typer.Option("--judge", "-j", help="The judge used as the filter.")
        ] = None,
        field: Annotated[
            list[str] | None,
            typer.Option(
                "--field",
                "-f",
                help="Map a field to the file's column: OURS=COLUMN, ours one of prompt, "
                "response, input, kind, id (repeatable).",
            ),
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Screen fine-tuning data with a judge: flagged share, and leak-through with labels.

        What a provider's moderation filter would drop from an upload. With a kind per record
        (harmful | benign) it also reports what leaked through, what was wrongly dropped,
        precision and recall (95% Wilson intervals). Per-sample verdicts in DIR/verdicts.jsonl.
        """
        from hftguard.data.files import parse_fields
        from hftguard.pipeline import screening

        syntax = "write --field OURS=COLUMN, e.g. --field prompt=instruction --field kind=label"
        fields: dict[str, str] = {}
        for item in field or []:
            fields.update(parse_fields(item, screening.ALIASES, syntax=syntax))
        cli = {"input": str(file), "judge": judge, "fields": fields or None}
        cfg = cfgmod.resolve(screening.ScreenConfig, config_file=config, cli=cli, sets=set_)
        reporter = _reporter(quiet, as_json)
        manifest = _call(
            lambda: screening.run(
                cfg, out, reporter=reporter, resume=resume, overwrite=overwrite, command=sys.argv
            )
        )
        _show(manifest["metrics"], out, as_json)


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{value:.1f}"


def _show(m: dict[str, Any], out: Path, as_json: bool) -> None:
    from hftguard.console import print_json, print_table, stdout

    if as_json:
        print_json(m)
        return
    rows = [["flagged", f"{m['flagged']} / {m['n']}", _ci(m["flagged_rate"], m["flagged_rate_ci"])]]
    if "harmful" in m:
        rows += [
            ["harmful leaked through", f"{m['harmful_leaked']} / {m['harmful']}",
             _ci(m["leak_through_rate"], m["leak_through_rate_ci"])],
            ["benign wrongly dropped", f"{m['benign_dropped']} / {m['benign']}",
             _ci(m["benign_dropped_rate"], m["benign_dropped_rate_ci"])],
            ["precision", f"{m['harmful_caught']} / {m['flagged']}",
             _ci(m["precision"], m["precision_ci"])],
            ["recall", f"{m['harmful_caught']} / {m['harmful']}", _ci(m["recall"], m["recall_ci"])],
        ]  # fmt: skip
    print_table(f"screen ({m['judge']}): {out}", ["", "count", "% [95% CI]"], rows)
    if "harmful" not in m:
        stdout.print("No kind per record: give kind = harmful | benign to measure leak-through.")
    stdout.print(f"Verdicts: {out / 'verdicts.jsonl'}", highlight=False)
