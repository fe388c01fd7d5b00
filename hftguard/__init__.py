"""hftguard: defend LLMs against harmful fine-tuning (align -> attack-finetune -> eval).

This module is the public API for plugin authors. Importing it loads no plugin and no torch.
"""

from __future__ import annotations

import pluggy

from hftguard import _moved
from hftguard.components import (
    AlignmentDefense,
    Component,
    Dataset,
    Defense,
    FinetuneDefense,
    Judge,
    NoOptions,
    RepairDefense,
    ReportSink,
    TaskDataset,
    Tracker,
)
from hftguard.context import DataContext, JudgeContext, PlanContext, RepairContext, StepContext
from hftguard.errors import ConfigError, DataError, HftguardError
from hftguard.options import opt
from hftguard.records import Example, Verdict

__version__ = "0.1.0"

_moved.install()  # old module paths (hftguard.training, ...) for one release

hookimpl = pluggy.HookimplMarker("hftguard")

__all__ = [
    "AlignmentDefense",
    "Component",
    "ConfigError",
    "DataContext",
    "DataError",
    "Dataset",
    "Defense",
    "Example",
    "FinetuneDefense",
    "HftguardError",
    "Judge",
    "JudgeContext",
    "NoOptions",
    "PlanContext",
    "RepairContext",
    "RepairDefense",
    "ReportSink",
    "StepContext",
    "TaskDataset",
    "Tracker",
    "Verdict",
    "__version__",
    "hookimpl",
    "opt",
]
