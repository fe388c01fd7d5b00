"""``hftguard rejudge``: judge evaluations' saved answers again, in place, with the installed
judges (:mod:`hftguard.pipeline.rejudge`). Nothing here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hftguard.cli.stages import PANEL, JsonOpt, QuietOpt, _call, _reporter


def register(app: typer.Typer) -> None:
    @app.command("rejudge", rich_help_panel=PANEL)
    def rejudge_cmd(
        paths: Annotated[
            list[Path],
            typer.Argument(
                help="Eval run directories, or folders holding them (a grid's --out): every "
                "finished evaluation below is looked at."
            ),
        ],
        dry_run: Annotated[
            bool,
            typer.Option("--dry-run", help="List what is out of date; judge and write nothing."),
        ] = False,
        force: Annotated[
            bool,
            typer.Option("--force", help="Re-judge evaluations that are up to date as well."),
        ] = False,
        device: Annotated[
            str, typer.Option(help="Device of model judges: auto, cpu, cuda ...")
        ] = "auto",
        quiet: QuietOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Judge evaluations' saved answers again, in place, with the judges installed now.

        For evaluations made before a judge changed (refusal-keywords 4 -> 5): the answers in
        generations.jsonl are judged again with the judges and options the evaluation's config
        names, and HS, over-refusal, agreement and metrics.md are rewritten; the answers, FA and
        the likelihood margin are kept. Evaluations whose judges are already the installed
        versions are left alone. The evaluation's files as they were are kept in
        rejudged/<time>/ inside it. A grid still counts re-judged evaluations as done.
        """
        from hftguard.pipeline import rejudge

        reporter = _reporter(quiet, as_json)
        rows = _call(
            lambda: rejudge.run(
                list(paths), reporter=reporter, force=force, dry_run=dry_run, device=device
            ),
            hint="Re-run the same command: evaluations already re-judged are left alone.",
        )
        _show(rows, as_json, dry_run)


def _show(rows: list[dict[str, Any]], as_json: bool, dry_run: bool) -> None:
    from hftguard.console import print_json, print_table, stdout

    if as_json:
        print_json(rows)
        return

    def num(m: dict[str, Any] | None, key: str) -> str:
        v = (m or {}).get(key)
        return "-" if v is None else f"{v:.1f}"

    def change(row: dict[str, Any], key: str) -> str:
        if "after" not in row:
            return num(row.get("before"), key)
        return f"{num(row['before'], key)} -> {num(row['after'], key)}"

    print_table(
        "rejudge" + (" (dry run: nothing written)" if dry_run else ""),
        ["evaluation", "state", "judges", "HS %", "off-topic %", "over-refusal %"],
        [
            [
                r["path"],
                r["state"] + (f": {r['why']}" if r.get("why") else ""),
                _judges(r),
                change(r, "harmful_score"),
                change(r, "off_topic_rate"),
                change(r, "over_refusal_rate"),
            ]
            for r in rows
        ],
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    stdout.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)


def _judges(row: dict[str, Any]) -> str:
    """``name vN`` before -> after (options left out: --json has them)."""
    before, after = row.get("judges_before"), row.get("judges_after")
    if before is None or after is None:
        return ""
    b, a = [x.split(" {")[0] for x in before], [x.split(" {")[0] for x in after]
    if b == a:
        return ", ".join(a) + (" (options)" if before != after else "")
    return f"{', '.join(b) or '(none recorded)'} -> {', '.join(a)}"
