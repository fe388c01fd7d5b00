"""Data: examples to model inputs, users' files and hub datasets, refusal pools, retain data.

``inputs`` (templates, poison mixing, tokenisation with response-only labels, batches),
``files`` (JSONL/JSON/CSV/Parquet readers), ``hub`` (the papers' benchmark data, local or hub),
``filetask`` (a user's own FA task), ``refusals``, ``distill`` (self-distilled retain answers).
Importing this package imports none of them and no torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # hftguard.data was the module now at hftguard.data.inputs; its names resolve for one release.
    import importlib
    import warnings

    inputs = importlib.import_module("hftguard.data.inputs")
    if name.startswith("_") or not hasattr(inputs, name):
        raise AttributeError(f"module 'hftguard.data' has no attribute {name!r}")
    warnings.warn(
        f"hftguard.data.{name} moved to hftguard.data.inputs.{name}",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(inputs, name)
