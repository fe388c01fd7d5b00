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
    "  hftguard run configs/demo.toml --out runs/demo\n\n"
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
    inspect.register(app)
    __import__("hftguard.cli.judge_validation", fromlist=["register"]).register(app)
    report.register(app)
    bench.register(app)
    if host is not None:
        _add_plugin_commands(app, host)
    return app


def _add_plugin_commands(app: typer.Typer, host: Any) -> None:
    """Let each plugin add commands; one that raises is recorded by name and skipped."""
    from hftguard.errors import PluginError
    from hftguard.plugins import strict

    for impl in host.pm.hook.hftguard_register_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:
            dist = host.provenance.get(impl.plugin_name, ("?", "?"))
            if strict():
                raise PluginError(
                    f"Plugin '{impl.plugin_name}' ({dist[0]} {dist[1]}) failed to add its "
                    f"commands: {type(exc).__name__}: {exc}",
                    hint="Fix the plugin, or unset HFTGUARD_STRICT_PLUGINS to skip it.",
                ) from exc
            host.record_failure(impl.plugin_name, exc, dist)


def _report(exc: HftguardError) -> int:
    from hftguard.console import print_error

    print_error(exc.message, exc.hint)
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
        app(args=argv, prog_name="hftguard", standalone_mode=True)
        code = 0
    except HftguardError as exc:
        code = _report(exc)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        _leave_process_group(code == 0)
    return code


def _leave_process_group(ok: bool) -> None:
    """Several processes (torchrun): tear the group down here, not at interpreter exit."""
    if "hftguard.distributed" not in sys.modules:
        return  # no stage joined a group (and no torch import just for this)
    from hftguard.distributed import leave

    try:
        leave(ok)
    except Exception as exc:  # a peer died meanwhile: the command's own outcome stands
        from hftguard.console import stderr

        stderr.print(f"Warning: leaving the process group failed: {type(exc).__name__}: {exc}")


def run() -> None:
    sys.exit(main())
