"""Built-in report sinks."""

from __future__ import annotations

from typing import Any

from hftguard import hookimpl


@hookimpl
def hftguard_register_report_sinks() -> list[Any]:
    from hftguard.builtins.sinks.markdown import MarkdownSink

    return [MarkdownSink]
