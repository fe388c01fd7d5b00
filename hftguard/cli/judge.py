"""``hftguard judge``: judge (prompt, response) records made elsewhere, or re-judge ours.

Builds a :class:`~hftguard.pipeline.judging.JudgeConfig` (defaults < --config < options < --set)
and calls :func:`hftguard.pipeline.judging.run`. Nothing here imports torch.
"""

from __future__ import annotations

import json
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
    @app.command("judge", rich_help_panel=PANEL)
    def judge_cmd(
        file: Annotated[
            Path,
            typer.Argument(
                help="(prompt, response) records: .jsonl, .json, .csv or .parquet (eval's "
                "generations.jsonl as it is: only its set = harmful records are judged)."
            ),
        ],
        out: OutOpt,
        judge: Annotated[
            list[str] | None,
            typer.Option("--judge", "-j", help="Judge name (repeatable; first = headline HS)."),
        ] = None,
        field: Annotated[
            list[str] | None,
            typer.Option(
                "--field",
                "-f",
                help="Map a field to the file's column: OURS=COLUMN, ours one of prompt, "
                "response, input, category, id, set (repeatable).",
            ),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", help="Judge batch size (model judges).")
        ] = None,
        device: Annotated[
            str | None, typer.Option(help="Device of model judges: auto, cpu, cuda ...")
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Judge (prompt, response) pairs from a file: HS, HS+, agreement, like eval.

        Scores answers generated elsewhere (a vLLM server, another toolkit), or re-scores an
        eval's generations.jsonl with another judge, without a model to evaluate. Judge options
        as in eval: --set judge_options.NAME.option=value. Verdicts are cached like eval's.
        """
        from hftguard.pipeline import judging

        fields = judging.parse_field_map(field)
        cli = {
            "input": str(file),
            "judges": judge or None,
            "fields": fields or None,
            "batch_size": batch_size,
            "device": device,
        }
        cfg = cfgmod.resolve(judging.JudgeConfig, config_file=config, cli=cli, sets=set_)
        reporter = _reporter(quiet, as_json)
        _call(
            lambda: judging.run(
                cfg,
                out,
                reporter=reporter,
                resume=resume,
                overwrite=overwrite,
                command=sys.argv,
            )
        )
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        _show(metrics, out, as_json)


def _show(metrics: dict[str, Any], out: Path, as_json: bool) -> None:
    from hftguard.console import print_json, print_table, stdout
    from hftguard.pipeline.judging import table_rows

    if as_json:
        print_json(metrics)
        return
    skipped = metrics.get("counts", {}).get("skipped") or {}
    note = f", skipped {sum(skipped.values())} non-harmful" if skipped else ""
    print_table(
        f"judge: {out} ({metrics.get('counts', {}).get('harmful')} pairs{note})",
        ["judge", "HS %", "HS+ %", "degenerate %", "unparsed", "n"],
        table_rows(metrics),
    )
    pairs = metrics.get("agreement") or []
    if pairs:
        print_table(
            "judge agreement",
            ["judges", "Cohen's kappa", "agreement %", "disagreements"],
            [
                [" vs ".join(p["judges"]), p["kappa"], p["agreement"], p["disagreements"]]
                for p in pairs
            ],
        )
    stdout.print(f"Verdicts: {out / 'verdicts.jsonl'}", highlight=False)
