"""The ``hftguard`` command line: thin commands that build a config and call a pipeline function.

``main()`` builds the plugin host, then the Typer app (plugins may add commands), runs it, and maps
:class:`~hftguard.errors.HftguardError` to ``Error:``/``Hint:`` lines and documented exit codes.
Importing this package does not import torch.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import typer

from hftguard.errors import HftguardError

EPILOG = (
    "Examples:\n\n"
    "  hftguard run demo --out runs/demo        (a shipped config: hftguard configs)\n\n"
    "  hftguard align --model tiny-random --defense sft --out runs/aligned\n\n"
    "  hftguard plugins --json"
)


def build_app(host: object | None = None) -> typer.Typer:
    """Create the Typer app; ``host`` is a :class:`~hftguard.plugins.PluginHost` (built lazily)."""
    from hftguard.cli import bench, inspect, report, stages

    app = typer.Typer(
        name="hftguard",
        help="Defend LLMs against harmful fine-tuning: align -> attack-finetune -> eval.",
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,
        add_completion=False,
        epilog=EPILOG,
        rich_markup_mode="rich",
    )
    stages.register(app)
    __import__("hftguard.cli.judge", fromlist=["register"]).register(app)  # hftguard judge
    __import__("hftguard.cli.rejudge", fromlist=["register"]).register(app)  # hftguard rejudge
    inspect.register(app)
    __import__("hftguard.cli.shipped", fromlist=["register"]).register(app)  # configs, docs
    __import__("hftguard.cli.judge_validation", fromlist=["register"]).register(app)
    report.register(app)
    __import__("hftguard.cli.export", fromlist=["register"]).register(app)  # hftguard export
    __import__("hftguard.cli.repair", fromlist=["register"]).register(app)  # hftguard repair
    __import__("hftguard.cli.screen", fromlist=["register"]).register(app)  # hftguard screen
    __import__("hftguard.cli.search", fromlist=["register"]).register(app)  # hftguard search
    bench.register(app)
    if host is not None:
        _add_plugin_commands(app, host)
    return app


def _add_plugin_commands(app: typer.Typer, host: Any) -> None:
    """Let each plugin add commands; one that raises is recorded by name and skipped.

    A plugin may only add commands: one whose name is taken (by a built-in command or an earlier
    plugin's) is dropped and recorded as a ``command-clash``, and built-in commands a plugin
    removed or replaced are restored, so no plugin can take over ``align``, ``eval``, ... .
    """
    from hftguard.plugins import COMMAND_CLASH

    impls = host.pm.hook.hftguard_register_commands.get_hookimpls()
    if not impls:
        return
    owners = {name: "hftguard" for entry in _entries(app) for name in _entry_names(app, entry)}
    for impl in impls:
        dist = host.provenance.get(impl.plugin_name, ("?", "?"))
        commands, groups = list(app.registered_commands), list(app.registered_groups)
        callback = app.registered_callback
        ok, _ = host.call_plugin(
            impl.plugin_name, dist, "to add its commands", impl.function, app=app
        )
        before = {id(entry) for entry in (*commands, *groups)}
        after = _entries(app)
        added = [entry for entry in after if id(entry) not in before]
        problems = []
        if before - {id(entry) for entry in after} or app.registered_callback is not callback:
            problems.append("it removed or replaced existing commands (restored)")
        app.registered_commands, app.registered_groups = commands, groups
        app.registered_callback = callback
        if not ok:
            continue  # recorded; whatever it added before failing is dropped
        for entry in added:
            ok, names = host.call_plugin(
                impl.plugin_name, dist, "to add its commands", _entry_names, app, entry
            )
            if not ok:
                continue
            taken = [name for name in names if name in owners]
            for name in taken:
                owner = owners[name]
                other = "a built-in command" if owner == "hftguard" else f"plugin {owner}'s command"
                problems.append(f"command '{name}' clashes with {other}; ignored")
            if not taken:
                owners.update(dict.fromkeys(names, impl.plugin_name))
                is_group = isinstance(entry, typer.models.TyperInfo)
                (app.registered_groups if is_group else app.registered_commands).append(entry)
        if problems:
            host.record_problem(impl.plugin_name, dist, COMMAND_CLASH, "; ".join(problems))


def _entries(app: typer.Typer) -> list[Any]:
    return [*app.registered_commands, *app.registered_groups]


def _entry_names(app: typer.Typer, entry: Any) -> list[str]:
    """The command names one ``registered_commands``/``registered_groups`` entry adds, as Typer
    resolves them (a group added without a name adds its commands to the root)."""
    probe = typer.Typer(add_completion=False, rich_markup_mode=app.rich_markup_mode)
    probe.callback()(_no_op)  # always a group, even for a single command
    if isinstance(entry, typer.models.TyperInfo):
        probe.registered_groups.append(entry)
    else:
        probe.registered_commands.append(entry)
    group = typer.main.get_command(probe)
    return sorted(getattr(group, "commands", {}))


def _no_op() -> None:
    """(probe)"""


def _report(exc: HftguardError) -> int:
    from hftguard.console import print_error

    print_error(exc.message, exc.hint)
    if os.environ.get("HFTGUARD_DEBUG"):
        traceback.print_exception(exc)
    return int(exc.exit_code)


def _usage_error(exc: typer.TyperException) -> int:
    """A Click usage error (unknown command or option, missing or bad argument) as ``Error:`` and
    ``Hint:`` lines, like every other error."""
    from hftguard.console import print_error

    if type(exc).__name__ == "NoArgsIsHelpError":  # `hftguard` alone: the help is printed
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "hftguard"
    group = hasattr(getattr(ctx, "command", None), "list_commands")
    what = "the commands and options" if group else "its options and arguments"
    print_error(exc.format_message(), f"Run '{path} --help' to see {what}.")
    if os.environ.get("HFTGUARD_DEBUG"):
        traceback.print_exception(exc)
    return int(exc.exit_code)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    from hftguard.registry import default_registry

    code = 1
    try:
        host = default_registry().host
        app = build_app(host)
        # Not standalone: Click's usage errors come here (_usage_error) instead of being printed
        # in Click's own boxed format; an Exit (typer.Exit, --help, Ctrl-C) returns its code.
        result = app(args=argv, prog_name="hftguard", standalone_mode=False)
        code = result if isinstance(result, int) and not isinstance(result, bool) else 0
    except HftguardError as exc:
        code = _report(exc)
    except typer.TyperException as exc:  # Typer's (vendored Click's) usage errors
        code = _usage_error(exc)
    except typer.Abort:
        from hftguard.console import stderr

        stderr.print("Aborted.")
        code = 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        _leave_process_group(code == 0)
    return code


def _leave_process_group(ok: bool) -> None:
    """Several processes (torchrun): tear the group down here, not at interpreter exit."""
    if "hftguard.engine.distributed" not in sys.modules:
        return  # no stage joined a group (and no torch import just for this)
    from hftguard.engine.distributed import leave

    try:
        leave(ok)
    except Exception as exc:  # a peer died meanwhile: the command's own outcome stands
        from hftguard.console import stderr

        stderr.print(f"Warning: leaving the process group failed: {type(exc).__name__}: {exc}")


def run() -> None:
    sys.exit(main())
