"""``hftguard configs`` and ``hftguard docs``: the example configs and docs shipped in the package.

A user who installed the wheel has no checkout: these commands list and copy the example configs
(``hftguard run NAME`` also takes a shipped config's name) and print the documentation pages that
error hints point at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

PANEL = "Inspect"


def register(app: typer.Typer) -> None:
    @app.command("configs", rich_help_panel=PANEL)
    def configs_cmd(
        name: Annotated[
            str | None,
            typer.Argument(help="A shipped config's name (see the list); none: list them."),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option("--out", "-o", help="Copy the config to this file (default: print it)."),
        ] = None,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace an existing --out file.")
        ] = False,
    ) -> None:
        """List the example configs that ship with hftguard, print one, or copy it out to edit.

        `hftguard run NAME --out DIR` runs a shipped config by name; copy it with
        `hftguard configs NAME --out my.toml` to change it.
        """
        from hftguard import shipped
        from hftguard.console import print_table, stdout
        from hftguard.errors import ConfigError
        from hftguard.runs import atomic_write_text

        items = shipped.configs()
        if name is None:
            print_table(
                "shipped configs (hftguard run NAME --out DIR; hftguard configs NAME --out FILE)",
                ["name", "what it runs"],
                [[c.name, c.summary] for c in items],
            )
            return
        path = shipped.config_path(name)
        if path is None:
            raise ConfigError(
                f"No shipped config is called {name!r}.",
                hint="Shipped configs: " + ", ".join(c.name for c in items) + ".",
            )
        text = path.read_text(encoding="utf-8")
        if out is None:
            stdout.print(text, highlight=False, markup=False, end="")
            return
        if out.is_dir():
            raise ConfigError(
                f"--out {out} is a directory.", hint="Give a file name, e.g. my.toml."
            )
        if out.exists() and not overwrite:
            raise ConfigError(
                f"--out {out} already exists; nothing was written.",
                hint="Choose another file name, or pass --overwrite to replace it.",
            )
        if not out.parent.is_dir():
            raise ConfigError(
                f"--out {out}: the folder {out.parent} does not exist.",
                hint="Create the folder first, or give another path.",
            )
        atomic_write_text(out, text)
        stdout.print(f"wrote {out} (from the shipped config {path.stem!r})", highlight=False)

    @app.command("docs", rich_help_panel=PANEL)
    def docs_cmd(
        topic: Annotated[
            str | None,
            typer.Argument(help="A page, e.g. datasets or components/booster; none: list them."),
        ] = None,
        path_only: Annotated[
            bool, typer.Option("--path", help="Print the page's file path instead of its text.")
        ] = False,
    ) -> None:
        """Show the documentation that ships with hftguard (the pages error hints point at)."""
        from hftguard import shipped
        from hftguard.console import stdout
        from hftguard.errors import ConfigError

        topics = shipped.doc_topics()
        if topic is None:
            stdout.print("Documentation pages (hftguard docs TOPIC):", highlight=False)
            for t in topics:
                stdout.print(f"  {t}", highlight=False, markup=False)
            return
        page = shipped.doc_path(topic)
        if page is None:
            raise ConfigError(
                f"No documentation page is called {topic!r}.",
                hint="Pages: " + ", ".join(topics) + ".",
            )
        if path_only:
            stdout.print(str(page), highlight=False, markup=False)
            return
        stdout.print(page.read_text(encoding="utf-8"), highlight=False, markup=False, end="")
