"""Pipeline commands: ``align``, ``attack-finetune``, ``eval`` and ``run``.

Each command resolves its options into a config dataclass (defaults < --config < options < --set)
and calls ``hftguard.pipeline.<stage>.run``. Nothing here imports torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from hftguard import config as cfgmod
from hftguard.errors import ExitCode, StopRequested

PANEL = "Pipeline"
#: The sections of a pipeline config that hold a stage's config.
STAGE_KEYS = ("align", "finetune", "eval")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset",
        help="A paper's protocol (vaccine-paper, booster-paper, antibody-paper, lisa-paper; "
        "`hftguard presets`) or a preset .toml; --config, options and --set override it.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override: key=value (dotted keys, e.g. train.lr=1e-4). Repeatable."
    ),
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for data, order and init.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an unfinished run in --out.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing run in --out.")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the result as JSON on stdout; progress goes to stderr as JSON lines.",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Alias, local model dir, .gguf file, hub id, or a previous run directory.",
    ),
]
DefenseOpt = Annotated[str | None, typer.Option("--defense", "-d", help="Defense name.")]
StepsOpt = Annotated[
    int | None, typer.Option("--max-steps", help="Optimizer steps (overrides epochs).")
]
EpochsOpt = Annotated[float | None, typer.Option("--epochs", help="Epochs over the main data.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Examples per step.")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Learning rate.")]
ReportToOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--report-to",
        help="Experiment trackers: jsonl, tensorboard, wandb, mlflow, a plugin's, or none "
        "(comma-separated or repeated; report_to in a config).",
    ),
]


def _train(
    steps: int | None, epochs: float | None, bs: int | None, lr: float | None
) -> dict[str, Any]:
    t = {"max_steps": steps, "epochs": epochs, "batch_size": bs, "lr": lr}
    given = {k: v for k, v in t.items() if v is not None}
    # no table at all when no option was given: an empty one would still meet a file's value
    return {"train": given} if given else {}


#: What to do after Ctrl-C: a stage command continues with --resume; ``hftguard run`` (which has
#: no --resume) continues when the same command is run again.
RESUME_HINT = "Re-run the same command with --resume to continue."
RERUN_HINT = (
    "Re-run the same command to continue: finished stages are skipped and the interrupted one "
    "resumes."
)


def _call(fn: Callable[[], Any], hint: str = RESUME_HINT) -> Any:
    """Run a pipeline call; turn Ctrl-C into exit code 130 and SIGTERM into 143 (a training loop
    stops at a step boundary; elsewhere, in one process, SIGTERM stops where it arrives as Ctrl-C
    does: hftguard.engine.stopping), with ``hint`` on how to continue."""
    from hftguard.engine.distributed import launch_rank
    from hftguard.engine.stopping import SigtermInterrupts

    try:
        one_process = launch_rank()[1] == 1  # torchrun's ranks keep SIGTERM's default
        with SigtermInterrupts("outside a training step (no checkpoint was needed)", one_process):
            return fn()
    except StopRequested as exc:  # SIGTERM, handled at a step boundary (engine.stopping)
        from hftguard.console import stderr

        stderr.print(f"{exc.message} {hint}", highlight=False)
        raise typer.Exit(int(ExitCode.TERMINATED)) from None
    except KeyboardInterrupt:
        from hftguard.console import stderr

        stderr.print(f"Interrupted. {hint}", highlight=False)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


def _run_workers(
    argv: Callable[[int], list[str]],
    n: int,
    out: Path,
    show: Callable[[dict[str, Any]], None],
    as_json: bool,
) -> None:
    """``hftguard run --workers N``: start the workers (:mod:`hftguard.pipeline.grid.workers`),
    then show the grid's result from its root manifest and exit with the workers' code."""
    from hftguard.console import stderr
    from hftguard.pipeline.grid import workers
    from hftguard.runs import read_manifest

    if not as_json:
        stderr.print(f"hftguard run: {n} workers on {out}", highlight=False, markup=False)
    codes = workers.launch(argv, n, out, as_json=as_json)
    code = workers.exit_code(codes)
    try:
        summary = read_manifest(out)
    except Exception:
        summary = {}
    if summary.get("stage") == "pipeline" and "rows" in summary:
        show(summary)
    if code and not as_json:
        stderr.print(
            "hftguard run: the workers exited with "
            + ", ".join(f"[w{i + 1}] {c}" for i, c in enumerate(codes))
            + (f"; the grid is {summary['status']}" if "status" in summary else "")
            + f". {RERUN_HINT}",
            highlight=False,
            markup=False,
        )
    raise typer.Exit(code)


def _stage(
    run: Callable[..., Any],
    cfg: Any,
    out: Path,
    quiet: bool,
    as_json: bool,
    resume: bool,
    overwrite: bool,
) -> Any:
    """Call a stage's ``run`` with the common options (Ctrl-C -> exit 130)."""
    from hftguard.trackers import tracked

    reporter = _reporter(quiet, as_json)
    return _call(
        lambda: tracked(
            cfg,
            out,
            reporter,
            lambda: run(
                cfg, out, reporter=reporter, resume=resume, overwrite=overwrite, command=sys.argv
            ),
        )
    )


def _report_to(values: list[str] | None) -> list[str] | None:
    from hftguard.trackers import parse_report_to

    return parse_report_to(values)


def _reporter(quiet: bool, as_json: bool) -> Any:
    from hftguard.console import Reporter
    from hftguard.engine.distributed import is_main_process

    # Several processes (torchrun): only process 0 shows progress; the others still warn.
    # --json: progress and warnings as JSON lines on stderr, stdout kept for the result.
    return Reporter(quiet=quiet or not is_main_process(), json_events=as_json)


def _print_metrics_table(rows: list[dict[str, Any]], title: str) -> None:
    from hftguard.console import print_table

    tasks = sorted({t for r in rows for t in (r.get("finetune_accuracy") or {})})
    cols = [
        "model",
        "HS %",
        "HS+ %",
        "degenerate %",
        "off-topic %",
        "margin",
        "over-refusal %",
        *[f"FA {t} %" for t in tasks],
    ]
    out = []
    for r in rows:
        fa = r.get("finetune_accuracy") or {}
        margin = r.get("likelihood_margin") or {}
        out.append(
            [
                r["model"],
                r.get("harmful_score"),
                r.get("harmful_score_plus"),
                r.get("degenerate_rate"),
                r.get("off_topic_rate"),
                margin.get("mean"),
                r.get("over_refusal_rate"),
                *[fa.get(t) for t in tasks],
            ]
        )
    print_table(title, cols, out)


def _finish_training(manifest: dict[str, Any], as_json: bool, out: Path) -> None:
    from hftguard.console import print_json, stdout
    from hftguard.engine.distributed import is_main_process

    if not is_main_process():  # every process returns process 0's manifest; one prints it
        return
    if as_json:
        print_json(manifest)
        return
    tr = manifest.get("training", {})
    stdout.print(
        f"[green]Done[/green]: {out}  ({tr.get('steps')} steps, "
        f"{tr.get('step_time_median', 0):.2f} s/step median, final loss "
        f"{tr.get('final_loss') if tr.get('final_loss') is None else round(tr['final_loss'], 4)})"
    )


def _plan_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The dry-run table: a repair column only when some cell repairs its attacked model, an
    attack-setting column only when the grid has [grid.attack] axes."""
    repair = ["repair"] if any(r.get("repair", "-") != "-" for r in rows) else []
    setting = ["attack setting"] if any("attack setting" in r for r in rows) else []
    cols = ["cell", *setting, "align", "attack-finetune", *repair, "eval", "status"]
    keys = ["cell", *setting, "align", "attack", *repair, "eval", "status"]
    return cols, [[r.get(k, "-") for k in keys] for r in rows]


def register(app: typer.Typer) -> None:
    @app.command("align", rich_help_panel=PANEL)
    def align_cmd(
        out: OutOpt,
        model: ModelOpt = None,
        defense: DefenseOpt = None,
        data: Annotated[
            str | None, typer.Option(help="Alignment data: dataset name or file.")
        ] = None,
        harmful: Annotated[
            str | None,
            typer.Option(help="Harmful data for defenses that use it (Booster, Antibody)."),
        ] = None,
        samples: Annotated[int | None, typer.Option(help="Alignment examples (0 = all).")] = None,
        max_steps: StepsOpt = None,
        epochs: EpochsOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        report_to: ReportToOpt = None,
        config: ConfigOpt = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Safety-align a base model with an alignment-stage defense (SFT, Vaccine, Booster...)."""
        from hftguard.pipeline import align

        cli = {
            "model": model,
            "defense": defense,
            "data": data,
            "harmful": harmful,
            "samples": samples,
            "seed": seed,
            "report_to": _report_to(report_to),
            **_train(max_steps, epochs, batch_size, lr),
        }
        cfg = cfgmod.resolve(
            cfgmod.AlignConfig,
            config_file=config,
            section="align",
            cli=cli,
            sets=set_,
            preset=preset,
        )
        manifest = _stage(align.run, cfg, out, quiet, as_json, resume, overwrite)
        _finish_training(manifest, as_json, out)

    @app.command("attack-finetune", rich_help_panel=PANEL)
    def finetune_cmd(
        out: OutOpt,
        model: ModelOpt = None,
        defense: DefenseOpt = None,
        task: Annotated[str | None, typer.Option(help="Benign task: dataset name or file.")] = None,
        harmful: Annotated[
            str | None, typer.Option(help="Harmful data: dataset name or file.")
        ] = None,
        harmful_ratio: Annotated[
            float | None, typer.Option("--harmful-ratio", "-p", help="Harmful share p in [0,1].")
        ] = None,
        samples: Annotated[
            int | None, typer.Option("--samples", "-n", help="User dataset size n.")
        ] = None,
        lora_mode: Annotated[str | None, typer.Option(help="auto | continue | merge.")] = None,
        max_steps: StepsOpt = None,
        epochs: EpochsOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        report_to: ReportToOpt = None,
        config: ConfigOpt = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Fine-tune a model on user data of which a fraction p is harmful (the attack)."""
        from hftguard.pipeline import attack_finetune

        cli = {
            "model": model,
            "defense": defense,
            "task": task,
            "harmful": harmful,
            "harmful_ratio": harmful_ratio,
            "samples": samples,
            "lora_mode": lora_mode,
            "seed": seed,
            "report_to": _report_to(report_to),
            **_train(max_steps, epochs, batch_size, lr),
        }
        cfg = cfgmod.resolve(
            cfgmod.FinetuneConfig,
            config_file=config,
            section="finetune",
            cli=cli,
            sets=set_,
            preset=preset,
        )
        manifest = _stage(attack_finetune.run, cfg, out, quiet, as_json, resume, overwrite)
        _finish_training(manifest, as_json, out)

    @app.command("eval", rich_help_panel=PANEL)
    def eval_cmd(
        out: OutOpt,
        model: ModelOpt = None,
        judge: Annotated[
            list[str] | None,
            typer.Option("--judge", "-j", help="Judge name (repeatable; first = headline HS)."),
        ] = None,
        task: Annotated[
            list[str] | None,
            typer.Option(
                "--task",
                "-t",
                help="Task for FA: a task name or a local file (repeatable); a file is scored "
                "by --task-scoring.",
            ),
        ] = None,
        no_tasks: Annotated[
            bool, typer.Option("--no-tasks", help="Measure no Finetune Accuracy.")
        ] = False,
        task_scoring: Annotated[
            str | None,
            typer.Option(
                help="How file tasks are scored: exact, contains (default), number or label."
            ),
        ] = None,
        task_label: Annotated[
            list[str] | None,
            typer.Option(
                "--task-label",
                help="A label of the 'label' rule (repeatable; default: the file's answers).",
            ),
        ] = None,
        harmful_prompts: Annotated[
            str | None,
            typer.Option(help="Harmful prompts for HS: a dataset name or a local file."),
        ] = None,
        benign_prompts: Annotated[
            str | None,
            typer.Option(help="Benign prompts for over-refusal: a dataset name or a local file."),
        ] = None,
        no_benign: Annotated[
            bool, typer.Option("--no-benign", help="Measure no over-refusal.")
        ] = False,
        harmful_samples: Annotated[
            int | None, typer.Option(help="Harmful prompts (0 = all).")
        ] = None,
        max_new_tokens: Annotated[int | None, typer.Option(help="Generation budget.")] = None,
        report_to: ReportToOpt = None,
        config: ConfigOpt = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Measure Harmful Score, Finetune Accuracy, over-refusal and degenerate rate."""
        from hftguard.engine.distributed import is_main_process
        from hftguard.pipeline import evaluate

        if not is_main_process():  # several processes (torchrun): process 0 evaluates alone
            return

        from hftguard.errors import ConfigError

        if no_tasks and task:
            raise ConfigError(
                "--no-tasks and --task contradict each other.", hint="Give one of them."
            )
        if no_benign and benign_prompts is not None:
            raise ConfigError(
                "--no-benign and --benign-prompts contradict each other.", hint="Give one of them."
            )
        cli = {
            "model": model,
            "judges": judge or None,
            "tasks": [] if no_tasks else task or None,
            "task_scoring": task_scoring,
            "task_labels": task_label or None,
            "harmful_prompts": harmful_prompts,
            "benign_prompts": "" if no_benign else benign_prompts,
            "harmful_samples": harmful_samples,
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "report_to": _report_to(report_to),
        }
        cfg = cfgmod.resolve(
            cfgmod.EvalConfig, config_file=config, section="eval", cli=cli, sets=set_, preset=preset
        )
        manifest = _stage(evaluate.run, cfg, out, quiet, as_json, resume, overwrite)
        if as_json:
            from hftguard.console import print_json

            print_json(manifest["metrics"])
        else:
            _print_metrics_table([{"model": cfg.model, **manifest["metrics"]}], f"eval: {out}")

    @app.command("run", rich_help_panel=PANEL)
    def run_cmd(
        config_file: Annotated[
            Path | None,
            typer.Argument(
                help="Pipeline TOML config (\\[align], \\[finetune], \\[eval]) with an optional "
                "\\[grid] of axes (docs/grids-and-reports.md)."
            ),
        ] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
            "runs/pipeline"
        ),
        preset: PresetOpt = None,
        set_: SetOpt = None,
        seed: SeedOpt = None,
        report_to: ReportToOpt = None,
        overwrite: OverwriteOpt = False,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Check the config and list each "
                "cell with what is done and what would run, "
                "with an estimate of the time left (step times "
                "measured in --out); write nothing.",
            ),
        ] = False,
        timings_from: Annotated[
            list[Path] | None,
            typer.Option(
                "--timings-from",
                help="With --dry-run: other grid directories that ran on this machine, "
                "whose measured step, repair and evaluation times estimate what this grid has "
                "not measured yet, or a `hftguard bench --json` file of this model and machine, "
                "whose cost ratios to SFT scale SFT's step for a defense not yet measured "
                "(repeatable).",
            ),
        ] = None,
        wait: Annotated[
            bool,
            typer.Option(
                "--wait/--no-wait",
                help="When another hftguard run on the same --out holds a stage (an aligned "
                "model, a cell), do the rest of the grid first, then wait for it: share the "
                "cells built on an aligned model it finished, take up what it left (default). "
                "--no-wait skips them: the run ends incomplete (exit code 1).",
            ),
        ] = True,
        workers: Annotated[
            int,
            typer.Option(
                "--workers",
                min=1,
                help="Run the grid with N hftguard run processes on --out, which share its "
                "stages (each with cores/N torch threads; on several GPUs, one GPU each). Their "
                "output comes here prefixed \\[w1] .. \\[wN]. Not with --overwrite or --no-wait.",
            ),
        ] = 1,
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Run align -> attack-finetune -> eval (or a grid of them) and print HS / FA per model.

        A grid table expands into cells (defense x p x n x task x seed); one aligned model serves
        every cell that shares it. Finished stages are skipped and an interrupted stage resumes,
        so re-running the same command after a crash finishes only what was left. Summarise a
        grid with `hftguard report OUT`.
        """
        from hftguard.console import print_json, print_table, stdout
        from hftguard.engine.distributed import launch_rank
        from hftguard.errors import ConfigError
        from hftguard.pipeline import grid

        if launch_rank()[1] > 1:
            raise ConfigError(
                "hftguard run cannot be launched on several processes.",
                hint="Launch align and attack-finetune with torchrun / accelerate launch, and "
                "run eval (or hftguard run) in one process.",
            )
        if timings_from and not dry_run:
            raise ConfigError(
                "--timings-from only estimates a plan: it needs --dry-run.",
                hint="Add --dry-run, or leave --timings-from out to run the grid.",
            )
        for d in timings_from or []:
            if not d.exists():
                raise ConfigError(
                    f"--timings-from {d}: no such directory or file.",
                    hint="Give the --out directory of a grid (or any run directory) that ran on "
                    "this machine, or a file `hftguard bench --json` wrote.",
                )
        sets = list(set_ or [])
        if seed is not None:
            sets += [f"align.seed={seed}", f"finetune.seed={seed}", f"eval.seed={seed}"]
        data = cfgmod.layered(preset=preset, config_file=config_file, sets=sets)
        if seed is not None and "grid" in data:
            data = cfgmod.merge(data, {"grid": {"seed": [seed]}})
        trackers = _report_to(report_to)
        if trackers is not None:  # every stage streams to them
            data = cfgmod.merge(data, {s: {"report_to": trackers} for s in STAGE_KEYS})
        g = grid.load(data)
        if dry_run:
            from hftguard.pipeline.preflight import check_grid
            from hftguard.registry import default_registry

            grid.check_root(out)  # the directory the run would refuse is refused here too
            registry = default_registry()
            check_grid(g, registry)  # also every missing path, listed at once
            if warning := grid.spec.same_file_warning(g):
                from rich.markup import escape

                from hftguard.console import stderr

                stderr.print(f"[yellow]Warning:[/yellow] {escape(warning)}", highlight=False)
            from hftguard.pipeline.grid.estimate import describe, estimate

            rows = grid.plan(g, out)
            left = estimate(g, out, registry, timings_from or ())
            if as_json:  # the plan and the estimate, as the table and the lines below show them
                print_json({"out": str(out), "cells": rows, "estimate": left})
                return
            print_table(
                f"hftguard run --dry-run: {len(rows)} cell(s), "
                f"{sum(r['status'] == 'done' for r in rows)} done -> {out}",
                *_plan_table(rows),
            )
            for line in describe(left):
                stdout.print(line, highlight=False, markup=False)
            return
        reporter = _reporter(quiet, as_json)

        def show(summary: dict[str, Any]) -> None:
            if as_json:
                print_json(summary)
                return
            _print_metrics_table(
                summary["rows"], f"hftguard run: {out} ({summary['wall_time_s']:.0f} s)"
            )
            if g.is_grid:
                stdout.print(
                    f"Tables and plots: hftguard report {out} --out {out / 'report'}",
                    highlight=False,
                )

        if workers > 1:
            if not g.is_grid:
                raise ConfigError(
                    f"--workers {workers} needs a grid: this config is one pipeline, whose "
                    "stages run one after the other.",
                    hint="Add a [grid] table (docs/grids-and-reports.md), or leave --workers out.",
                )
            for flag, given in (("--overwrite", overwrite), ("--no-wait", not wait)):
                if given:
                    raise ConfigError(
                        f"{flag} cannot be used with --workers {workers}: "
                        + (
                            "every worker would act on the replaced run."
                            if flag == "--overwrite"
                            else "each worker would skip what another holds, and end incomplete."
                        ),
                        hint=(
                            f"Move or delete {out} yourself and run with --workers, or run "
                            "--overwrite without --workers."
                            if flag == "--overwrite"
                            else "Leave --no-wait out: the workers wait for each other's stages."
                        ),
                    )
            from hftguard.pipeline.preflight import check_grid
            from hftguard.registry import default_registry
            from hftguard.runs import read_manifest

            if grid.check_root(out) and read_manifest(out).get("replaces"):  # refused once here
                raise ConfigError(
                    f"{out} continues an interrupted --overwrite: the run it replaces waits "
                    "beside it until this one completes, and several workers would each act "
                    "on it.",
                    hint=f"Finish it with one process: hftguard run ... --out {out}",
                )
            check_grid(g, default_registry())

            def argv(i: int) -> list[str]:
                a = [sys.executable, "-P", "-m", "hftguard", "run"]  # -P: hftguard as installed
                a += [str(config_file)] if config_file is not None else []
                a += ["--out", str(out), *(["--preset", preset] if preset else [])]
                for s in set_ or []:
                    a += ["--set", s]
                a += ["--seed", str(seed)] if seed is not None else []
                for r in report_to or []:
                    a += ["--report-to", r]
                return a + (["--quiet"] if quiet else []) + (["--json"] if as_json else [])

            _run_workers(argv, workers, out, show, as_json)
            return
        from hftguard.pipeline.grid.workers import watch_parent

        watch_parent()  # a worker of --workers N: stop if that command is killed outright
        try:
            summary = _call(
                lambda: grid.run(
                    g, out, reporter=reporter, overwrite=overwrite, command=sys.argv, wait=wait
                ),
                RERUN_HINT,
            )
        except grid.GridFailed as exc:
            show(exc.summary)
            raise
        show(summary)
