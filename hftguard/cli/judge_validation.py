"""``hftguard validate-judges``: score judges against a hand-labelled set of responses.

A judge's Harmful Score is only as good as the judge; this command measures each judge's
accuracy, precision, recall, F1 and Cohen's κ against human labels, with 95% intervals, per split
(tune on ``dev``, report ``heldout``). The computation lives in
:mod:`hftguard.pipeline.judge_validation`; nothing here imports torch unless a model judge runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

PANEL = "Inspect"


def _device(name: str, classes: list[Any]) -> str:
    """``auto``: a GPU when a model judge runs and one is present (torch is imported only then)."""
    if name != "auto":
        from hftguard.config import check_device

        check_device("--device", name)
        return name
    from hftguard.builtins.judges.model_judge import ModelJudge

    if any(issubclass(c, ModelJudge) for c in classes) or "torch" in sys.modules:
        from hftguard.engine import models

        return str(models.pick_device("auto"))
    return "cpu"


def register(app: typer.Typer) -> None:
    @app.command("validate-judges", rich_help_panel=PANEL)
    def validate_judges_cmd(
        labelled_set: Annotated[
            Path | None,
            typer.Argument(
                metavar="[SET.jsonl]",
                help="Labelled JSONL: prompt, response, label (harmful-compliance, partial, "
                "refusal, off-topic, degenerate), split (dev, heldout). Default: the set shipped "
                "as hftguard/resources/judge_validation.jsonl.",
                show_default=False,
            ),
        ] = None,
        judges: Annotated[
            list[str] | None,
            typer.Option(
                "--judge", "-j", help="Judge to score (repeatable; default: eval's default judges)."
            ),
        ] = None,
        split: Annotated[
            str,
            typer.Option(
                "--split",
                help="dev (tune on it), heldout (report it; never tune on it) or all (both and "
                "pooled).",
            ),
        ] = "dev",
        partial: Annotated[
            str,
            typer.Option(
                "--partial",
                help="How gold 'partial' counts: harmful (partial compliance is compliance) or "
                "exclude.",
            ),
        ] = "harmful",
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help="Directory for validation.json, validation.md, verdicts.jsonl."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        sets: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                "-s",
                help="Judge option: judge_options.NAME.KEY=VALUE (as on hftguard eval); "
                "repeatable.",
            ),
        ] = None,
        bootstrap: Annotated[
            int, typer.Option("--bootstrap", help="Bootstrap resamples for the F1 and κ intervals.")
        ] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
        device: Annotated[
            str, typer.Option("--device", help="Device for model judges: auto, cpu, cuda.")
        ] = "auto",
        batch_size: Annotated[
            int, typer.Option("--batch-size", help="Pairs per batch for model judges.")
        ] = 16,
    ) -> None:
        """Score judges against human labels: accuracy, precision, recall, F1, Cohen's κ (95% CI).

        Prints a table per split (and a gold × judge label table per judge); --json prints the
        report instead; --out writes validation.json, validation.md and verdicts.jsonl.
        """
        from hftguard.config import EvalConfig, parse_sets
        from hftguard.console import Reporter, print_json, print_table, stderr
        from hftguard.errors import ConfigError
        from hftguard.pipeline import judge_validation as jv
        from hftguard.registry import default_registry

        if split not in jv.SPLIT_CHOICES:
            raise ConfigError(
                f"--split {split!r} is not one of {', '.join(jv.SPLIT_CHOICES)}.",
                hint="Tune on --split dev; report --split heldout.",
            )
        if partial not in jv.PARTIAL_CHOICES:
            raise ConfigError(
                f"--partial {partial!r} is not one of {', '.join(jv.PARTIAL_CHOICES)}.",
                hint="harmful (the default: partial compliance is compliance) or exclude.",
            )
        if bootstrap < 0:
            raise ConfigError("--bootstrap must be >= 0.", hint="2000 is the default; 0 = none.")
        overrides = parse_sets(sets)
        stray = sorted(set(overrides) - {"judge_options"})
        if stray:
            raise ConfigError(
                f"--set {stray[0]}... is not a validate-judges setting.",
                hint="Only judge options: --set 'judge_options.beaverdam.model=\"/models/bd\"'.",
            )
        judge_options = overrides.get("judge_options", {})
        if not isinstance(judge_options, dict) or any(
            not isinstance(v, dict) for v in judge_options.values()
        ):
            raise ConfigError(
                "--set judge_options needs a judge name and an option: "
                "judge_options.NAME.KEY=VALUE.",
                hint="Example: --set judge_options.refusal-keywords.window=300",
            )
        names = list(judges or EvalConfig().judges)
        path = labelled_set or jv.DEFAULT_SET
        if not path.is_file():
            raise jv.missing_set_error(path)
        items = jv.load_set(path)
        wanted = jv.SPLIT_CHOICES[split]
        chosen = [it for it in items if split == "all" or it.split == split]
        if not chosen:
            raise ConfigError(
                f"{path} has no items in split '{split}'.",
                hint="Check the 'split' field of the records (dev or heldout), or use --split all.",
            )
        reg = default_registry()
        classes = [reg.get("judge", n).cls for n in names]
        reporter = Reporter(quiet=as_json)
        runs = jv.run_judges(
            chosen,
            names,
            registry=reg,
            judge_options=judge_options,
            device=_device(device, classes),
            batch_size=batch_size,
            reporter=reporter,
        )
        report = jv.validate(
            chosen,
            runs,
            splits=wanted,
            partial=partial,
            resamples=bootstrap,
            seed=seed,
            set_path=path,
        )
        if out is not None:
            written = jv.write(report, out, chosen, runs)
            stderr.print(f"Wrote {', '.join(p.name for p in written)} to {out}", highlight=False)
        if as_json:
            print_json(report)
            return
        for s in wanted:
            print_table(
                f"Judges vs human labels, split {s} (95% intervals)",
                list(jv.SUMMARY_COLUMNS),
                jv.summary_rows(report, s),
            )
            for name, entry in report["judges"].items():
                header, rows = jv.confusion_rows(entry["splits"][s])
                print_table(f"{name}, split {s}: gold label x judge label", header, rows)
