"""Inspect commands: ``plugins`` (components and broken plugins) and ``validate`` (a config)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

PANEL = "Inspect"

#: How each kind's options are set, after the listing of ``hftguard plugins -v``.
OPTION_NOTES = {
    "alignment-defense": "on `hftguard align --defense NAME`; under `hftguard run`: "
    "--set align.defense_options.OPTION=VALUE, or [align.defense_options] in the config file.",
    "finetune-defense": "on `hftguard attack-finetune --defense NAME`; under `hftguard run`: "
    "--set finetune.defense_options.OPTION=VALUE, or [finetune.defense_options].",
    "repair-defense": "on `hftguard repair --defense NAME`: --set defense_options.OPTION=VALUE, "
    "or defense_options in its --config file; in a grid: [grid.repair_options.NAME].",
    "dataset": "on any stage command and on `hftguard run` (there for every stage), or "
    "[dataset_options.NAME] in the config file.",
    "judge": "on `hftguard eval` / `hftguard judge --judge NAME`; under "
    "`hftguard run`: --set eval.judge_options.NAME.OPTION=VALUE, or [eval.judge_options.NAME].",
}


def set_key(kind: str, name: str, option: str) -> str | None:
    """The ``--set`` key of a component's option on its stage command (None: not settable).

    Defenses take ``defense_options.OPTION``; judges and datasets are keyed by their name,
    ``judge_options.NAME.OPTION`` and ``dataset_options.NAME.OPTION``. Report sinks are built
    with their defaults.
    """
    if kind in ("alignment-defense", "finetune-defense", "repair-defense"):
        return f"defense_options.{option}"
    if kind == "judge":
        return f"judge_options.{name}.{option}"
    if kind == "dataset":
        return f"dataset_options.{name}.{option}"
    return None


def plugin_rows(verbose: bool = False) -> list[dict[str, Any]]:
    from hftguard.config import field_docs
    from hftguard.registry import default_registry

    reg = default_registry()
    rows = [info.as_dict() for info in reg.all_components()]
    if verbose:
        by_key = {(i.kind, i.name): i for i in reg.all_components()}
        for row in rows:
            cls = by_key[(row["kind"], row["name"])].cls
            row["options"] = [
                {
                    "name": n,
                    "type": t,
                    "default": d,
                    "help": h,
                    "set": set_key(row["kind"], row["name"], n),
                }
                for n, t, d, h in field_docs(cls.Config)
            ]
    for (kind, name), infos in reg.conflicts().items():
        rows.append(
            {
                "name": name,
                "kind": kind,
                "stage": None,
                "version": None,
                "distribution": " + ".join(i.distribution for i in infos),
                "summary": "",
                "error": "duplicate name provided by: "
                + ", ".join(f"{i.distribution} ({i.plugin})" for i in infos),
            }
        )
    for f in reg.host.failures:
        rows.append(
            {
                "name": f.name,
                "kind": f.kind,
                "stage": None,
                "version": f.version,
                "distribution": f.distribution,
                "summary": "",
                "error": f.error,
            }
        )
    return rows


def register(app: typer.Typer) -> None:
    @app.command("plugins", rich_help_panel=PANEL)
    def plugins_cmd(
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
        verbose: Annotated[
            bool,
            typer.Option(
                "--verbose",
                "-v",
                help="Show each component's options, as the --set key that sets them.",
            ),
        ] = False,
    ) -> None:
        """List every component by kind (with provenance) and every plugin that failed to load."""
        from hftguard.console import print_json, print_listing, stdout
        from hftguard.registry import KIND_LABELS

        rows = plugin_rows(verbose)
        if as_json:
            print_json(rows)
            return
        for kind, label in KIND_LABELS.items():
            listing = []
            same_kind = [r for r in rows if r["kind"] == kind and "error" not in r]
            for r in same_kind:
                note = f" ({r['license_note']})" if r.get("license_note") else ""
                listing.append(
                    [
                        r["name"],
                        r["stage"] or "",
                        r["version"],
                        r["distribution"],
                        r["summary"] + note,
                    ]
                )
                for opt in r.get("options", []):
                    key = opt["set"]
                    listing.append(
                        [
                            f"  --set {key}=VALUE" if key else f"  {opt['name']} (not settable)",
                            opt["type"],
                            "",
                            repr(opt["default"]),
                            opt["help"],
                        ]
                    )
            if listing:
                print_listing(
                    f"{label}s",
                    ["name", "stage/role", "version", "distribution", "summary"],
                    listing,
                )
                if kind in OPTION_NOTES and any(
                    r.get("options") for r in rows if r["kind"] == kind
                ):
                    stdout.print(f"Options: {OPTION_NOTES[kind]}", highlight=False, markup=False)
        broken = [r for r in rows if "error" in r]
        if broken:
            stdout.print("[bold red]Broken or conflicting plugins:[/bold red]")
            for r in broken:
                stdout.print(
                    f"  {r['name']} ({r['distribution']}): {r['error']}",
                    highlight=False,
                    markup=False,
                )

    @app.command("presets", rich_help_panel=PANEL)
    def presets_cmd(
        name: Annotated[
            str | None, typer.Argument(help="Show one preset in full (its TOML and numbers).")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """List the paper presets, or show one (`--preset NAME` on align/attack-finetune/eval/run).

        A preset pins a paper's protocol: data and counts, template, decoding, test-set sizes,
        match rules, hyperparameters, n and p, and the paper's published numbers.
        """
        from hftguard import presets
        from hftguard.console import print_json, print_listing, stdout

        if name is None:
            items = [presets.load(n) for n in presets.names()]
            if as_json:
                print_json(
                    [
                        {"name": p.name, "paper": p.paper, "description": p.description}
                        for p in items
                    ]
                )
                return
            print_listing(
                "Paper presets (hftguard presets NAME shows one)",
                ["name", "description"],
                [[p.name, p.description] for p in items],
            )
            return
        p = presets.load(name)
        if as_json:
            print_json(
                {
                    "name": p.name,
                    "paper": p.paper,
                    "description": p.description,
                    "notes": p.notes,
                    "config": p.config,
                    "published": p.published,
                }
            )
            return
        stdout.print(f"[bold]{p.name}[/bold]: {p.paper}", highlight=False)
        stdout.print(p.description, highlight=False)
        for note in p.notes:
            stdout.print(f"  - {note}", highlight=False)
        if p.path is not None:
            stdout.print(f"\nFile: {p.path}\n", highlight=False)
            stdout.print(p.path.read_text(encoding="utf-8"), highlight=False, markup=False)

    @app.command("validate", rich_help_panel=PANEL)
    def validate_cmd(
        config_file: Annotated[Path, typer.Argument(help="TOML config to check.")],
        kind: Annotated[str, typer.Option(help="pipeline | align | finetune | eval")] = "pipeline",
    ) -> None:
        """Check a config file (keys, types, ranges, names, paths) without loading a model.

        Every path it names must exist (the model, data files, judge models, datasets' local
        sources); all missing ones are listed in one error.
        """
        from hftguard import config as c
        from hftguard.console import stdout
        from hftguard.errors import ConfigError
        from hftguard.pipeline.common import check_components
        from hftguard.registry import default_registry

        classes = {
            "pipeline": c.PipelineConfig,
            "align": c.AlignConfig,
            "finetune": c.FinetuneConfig,
            "eval": c.EvalConfig,
        }
        if kind not in classes:
            raise ConfigError(f"Unknown --kind '{kind}'.", hint=f"Use one of {', '.join(classes)}.")
        if kind == "pipeline":  # a pipeline config, or a grid of them
            from hftguard.pipeline import grid

            g = grid.load(c.layered(config_file=config_file))
            from hftguard.pipeline.preflight import check_grid

            check_grid(g, default_registry())  # every missing path is listed at once
            cells = f" ({len(g.cells)} cells)" if g.is_grid else ""
            stdout.print(f"[green]OK[/green]: {config_file} is a valid pipeline config{cells}.")
            return
        # the stage as `hftguard KIND --config FILE` resolves it (a pipeline file's section too)
        from hftguard.pipeline.preflight import check_with_paths, stage_problems

        cfg = c.resolve(classes[kind], config_file=config_file)
        reg = default_registry()

        def checks() -> None:
            c.validate_stage(cfg)
            check_components(cfg, reg)

        check_with_paths(checks, stage_problems(cfg, reg))  # every missing path at once
        stdout.print(f"[green]OK[/green]: {config_file} is a valid {kind} config.")
