"""``hftguard export RUN_DIR --out DIR``: a stage's model as a plain transformers (or PEFT) model.

Calls :func:`hftguard.pipeline.export.export`. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hftguard.cli.stages import JsonOpt, QuietOpt, _call, _reporter

PANEL = "Pipeline"


def register(app: typer.Typer) -> None:
    @app.command("export", rich_help_panel=PANEL)
    def export_cmd(
        run_dir: Annotated[
            Path,
            typer.Argument(
                help="A finished align, attack-finetune or repair run directory (in a grid: "
                "GRID/aligned/NAME or GRID/cells/CELL/attacked)."
            ),
        ],
        out: Annotated[
            Path,
            typer.Option("--out", "-o", help="Directory to write; must not exist or be empty."),
        ],
        merge: Annotated[
            bool,
            typer.Option(
                "--merge/--no-merge",
                help="--merge: one model with every adapter merged (loads with plain "
                "transformers). --no-merge: the last LoRA adapter in DIR/adapter, on a base "
                "(DIR/base: earlier stages merged) that its adapter_config.json names.",
            ),
        ] = True,
        dtype: Annotated[
            str, typer.Option("--dtype", help="Weights dtype: fp32, bf16 or fp16.")
        ] = "fp32",
        push_to_hub: Annotated[
            str | None,
            typer.Option(
                "--push-to-hub",
                metavar="REPO",
                help="Also upload DIR to this Hugging Face Hub repository (ORG/NAME); checked "
                "before exporting.",
            ),
        ] = None,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a stage's model, loadable without hftguard, with a model card.

        Writes the model exactly as eval loads it (base + every stage's adapter merged),
        its tokenizer and chat template, generation_config.json and a README.md model card
        naming the base model, each stage's defense, data, p and seed, and an eval of it if
        one is found beside the run. Built in a temporary directory and renamed into place.
        """
        from hftguard.pipeline.export import export

        summary = _call(
            lambda: export(
                run_dir,
                out,
                merge=merge,
                dtype=dtype,
                push_to_hub=push_to_hub,
                reporter=_reporter(quiet, as_json),
            ),
            hint="Nothing was written; run the command again.",
        )
        from hftguard.console import print_json, stdout

        if as_json:
            print_json(summary)
            return
        how = "merged" if merge else "adapter + base"
        stdout.print(f"Exported {run_dir} to {out} ({how}, {dtype}):", highlight=False)
        for name in summary["files"]:
            stdout.print(f"  {out / name}", highlight=False)
        if not merge:
            stdout.print(f"  adapter base: {summary['adapter_base']}", highlight=False)
        if summary.get("pushed_to"):
            stdout.print(f"Pushed to {summary['pushed_to']}", highlight=False)
