"""Old import paths of modules that moved in the re-layout, kept for one release.

``import hftguard.training`` still works and gives the very module object now at
``hftguard.engine.training`` (so monkeypatching either name patches both), with a
``DeprecationWarning`` naming the new path. Nothing inside hftguard imports an old name; a
test enforces it. Remove this module one release after the one that ships the re-layout.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

#: old module name -> new module name (CHANGELOG, "Changed": the re-layout of #17).
MOVED: dict[str, str] = {
    "hftguard.training": "hftguard.engine.training",
    "hftguard.gradients": "hftguard.engine.steps",
    "hftguard.checkpoints": "hftguard.engine.checkpoints",
    "hftguard.models": "hftguard.engine.models",
    "hftguard.generation": "hftguard.engine.generation",
    "hftguard.distributed": "hftguard.engine.distributed",
    "hftguard.analysis": "hftguard.engine.probes",
    "hftguard.margin": "hftguard.engine.margin",
    "hftguard.datafiles": "hftguard.data.files",
    "hftguard.hubdata": "hftguard.data.hub",
    "hftguard.filetask": "hftguard.data.filetask",
    "hftguard.refusals": "hftguard.data.refusals",
    "hftguard.distill": "hftguard.data.distill",
    "hftguard.plots": "hftguard.pipeline.report.plots",
    "hftguard.stats": "hftguard.pipeline.intervals",
    "hftguard.judge_validation": "hftguard.pipeline.judge_validation",
    "hftguard.export": "hftguard.pipeline.export",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there (the old name goes in the "
            "next release)",
            DeprecationWarning,
            stacklevel=3,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
