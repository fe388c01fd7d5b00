"""Built-in defenses, registered through the same hooks a third-party plugin uses."""

from __future__ import annotations

from typing import Any

from hftguard import hookimpl


@hookimpl
def hftguard_register_alignment_defenses() -> list[Any]:
    from hftguard.builtins.defenses.sft import SFTAlign

    return [SFTAlign]


@hookimpl
def hftguard_register_finetune_defenses() -> list[Any]:
    from hftguard.builtins.defenses.sft import SFTFinetune

    return [SFTFinetune]
