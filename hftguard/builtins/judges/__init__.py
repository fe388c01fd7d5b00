"""Built-in judges, registered through the same hook third-party plugins use."""

from __future__ import annotations

from hftguard import hookimpl


@hookimpl
def hftguard_register_judges() -> list[type]:
    from hftguard.builtins.judges.refusal_keywords import RefusalKeywords

    return [RefusalKeywords]
