"""``hftguard repair --model RUN_DIR --defense NAME --out DIR``: repair a fine-tuned model.

Calls :func:`hftguard.pipeline.repair.run`. Nothing here imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from hftguard.cli.stages import (
    ConfigOpt,
    DefenseOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    _call,
    _reporter,
)

PANEL = "Pipeline"


def register(app: typer.Typer) -> None:
    @app.command("repair", rich_help_panel=PANEL)
    def repair_cmd(
        out: OutOpt,
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                "-m",
                help="The attack-finetune run directory to repair (in a grid: "
                "GRID/cells/CELL/attacked).",
            ),
        ] = None,
        defense: DefenseOpt = None,
        harmful: Annotated[
            str | None,
            typer.Option(
                help="Harmful data for defenses that use it (Antidote's calibration set; "
                "train split): dataset name, file or hf:ID."
            ),
        ] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Repair a fine-tuned model after the user's fine-tuning (SafeLoRA, Antidote).

        Writes a run directory whose model is the attacked one with its fine-tuning adapter
        repaired: evaluate it with `hftguard eval --model DIR`.
        """
        from hftguard import config as cfgmod
        from hftguard.pipeline import repair

        cli = {"model": model, "defense": defense, "harmful": harmful, "seed": seed}
        cfg = cfgmod.resolve(cfgmod.RepairConfig, config_file=config, cli=cli, sets=set_)
        reporter = _reporter(quiet, as_json)
        manifest = _call(
            lambda: repair.run(
                cfg, out, reporter=reporter, resume=resume, overwrite=overwrite, command=sys.argv
            )
        )
        _finish(manifest, as_json, out)


def _finish(manifest: dict[str, Any], as_json: bool, out: Path) -> None:
    from hftguard.console import print_json, stdout

    if as_json:
        print_json(manifest)
        return
    counts = manifest.get("repair") or {}
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if isinstance(v, int))
    stdout.print(f"[green]Done[/green]: {out}" + (f"  ({summary})" if summary else ""))
