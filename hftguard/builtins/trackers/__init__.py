"""Built-in experiment trackers (``--report-to``)."""

from __future__ import annotations

from typing import Any

from hftguard import hookimpl


@hookimpl
def hftguard_register_trackers() -> list[Any]:
    from hftguard.builtins.trackers.builtin import (
        JsonlTracker,
        MlflowTracker,
        TensorBoardTracker,
        WandbTracker,
    )

    return [JsonlTracker, TensorBoardTracker, WandbTracker, MlflowTracker]
