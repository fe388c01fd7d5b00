"""tools/mutants.py's deliberate bugs stay applicable: each snippet occurs exactly once in its file.

The eighth session changed a line of the report's pairing and left the repair-effect mutant
matching nothing, so `make mutants` stopped before running any; this catches that in the suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_mutant_snippet_occurs_once() -> None:
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "tools" / "mutants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules["mutants"]
    assert mod.check_mutants(mod.MUTANTS) == []
