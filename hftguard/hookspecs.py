"""The plugin contract: every hook hftguard calls, with its full documentation.

Hooks are called with keyword arguments only. Each ``hftguard_register_*`` hook is called once, when
the registry is built, and returns a component class, a list of classes, or ``None``. The host
attributes each returned class to the plugin (and distribution) that returned it, so
``hftguard plugins`` can show provenance and two providers of one name are reported by name.

The documentation in ``docs/plugins/hooks.md`` lists every hook below with its exact signature; a
test fails when they drift apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer

    from hftguard.components import (
        AlignmentDefense,
        Dataset,
        FinetuneDefense,
        Judge,
        RepairDefense,
        ReportSink,
        Tracker,
    )

hookspec = pluggy.HookspecMarker("hftguard")

ClassOrList = (
    Any  # type[T] | list[type[T]] | None; kept loose so pluggy's introspection stays simple
)


@hookspec
def hftguard_register_alignment_defenses() -> (
    type[AlignmentDefense] | list[type[AlignmentDefense]] | None
):
    """Register alignment-stage defenses (subclasses of :class:`hftguard.AlignmentDefense`).

    Called once per process when the registry is first needed. Return a class, a list of classes,
    or ``None``. Names must be unique across all plugins; a clash is reported naming both providers.

    Example::

        @hftguard.hookimpl
        def hftguard_register_alignment_defenses():
            return [MyDefense]
    """


@hookspec
def hftguard_register_finetune_defenses() -> (
    type[FinetuneDefense] | list[type[FinetuneDefense]] | None
):
    """Register fine-tuning-stage defenses (subclasses of :class:`hftguard.FinetuneDefense`).

    Called once per process when the registry is first needed. Return a class, a list of classes,
    or ``None``.
    """


@hookspec
def hftguard_register_repair_defenses() -> type[RepairDefense] | list[type[RepairDefense]] | None:
    """Register post-fine-tuning repair defenses (subclasses of :class:`hftguard.RepairDefense`).

    Used by ``hftguard repair --defense NAME``. Called once per process when the registry is first
    needed. Return a class, a list of classes, or ``None``.
    """


@hookspec
def hftguard_register_datasets() -> type[Dataset] | list[type[Dataset]] | None:
    """Register datasets (subclasses of :class:`hftguard.Dataset` or :class:`hftguard.TaskDataset`).

    A dataset's ``role`` (alignment, harmful, task, harmful-eval, benign-eval) says where it can be
    used. Called once per process when the registry is first needed.
    """


@hookspec
def hftguard_register_judges() -> type[Judge] | list[type[Judge]] | None:
    """Register judges (subclasses of :class:`hftguard.Judge`) that score responses for HS.

    Called once per process when the registry is first needed.
    """


@hookspec
def hftguard_register_report_sinks() -> type[ReportSink] | list[type[ReportSink]] | None:
    """Register report sinks (subclasses of :class:`hftguard.ReportSink`) that export eval results.

    Called once per process when the registry is first needed.
    """


@hookspec
def hftguard_register_trackers() -> type[Tracker] | list[type[Tracker]] | None:
    """Register experiment trackers (subclasses of :class:`hftguard.Tracker`) for ``--report-to``.

    Called once per process when the registry is first needed.
    """


@hookspec
def hftguard_register_commands(app: typer.Typer) -> None:
    """Add commands to the ``hftguard`` CLI.

    Called once when the CLI is built, with the root ``typer.Typer`` application. Use
    ``app.command()`` or ``app.add_typer(sub, name=...)``; give your commands
    ``rich_help_panel="Plugin commands"`` so ``--help`` groups them. Return nothing. A command
    whose name is taken (a built-in command, or an earlier plugin's) is ignored and reported as a
    ``command-clash`` by ``hftguard plugins``.

    :param app: the root ``typer.Typer`` application.
    """
