"""The package layout of the re-layout (#17): the root holds the contract and the torch-free host,
torch lives in ``hftguard/engine/``, and the old module paths are deprecated aliases that nothing
inside hftguard uses."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hftguard import _moved

PKG = Path(__file__).resolve().parents[1] / "hftguard"

#: The contract (what a plugin author imports) and the torch-free host (config, plugins, runs).
ROOT_MODULES = {
    "__init__", "__main__", "_moved",
    "hookspecs", "components", "context", "records", "errors", "names", "network",
    "options", "config", "presets", "plugins", "registry", "console", "runs", "shipped", "trackers",
}  # fmt: skip


def test_the_root_holds_the_contract_and_the_host_only():
    assert {p.stem for p in PKG.glob("*.py")} == ROOT_MODULES


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_nothing_inside_hftguard_imports_an_old_module_path():
    old = set(_moved.MOVED)
    bad = [
        f"{p.relative_to(PKG.parent)}:{line}: {name}"
        for p in sorted(PKG.rglob("*.py"))
        for line, name in _imported_modules(p)
        if name in old or (name.startswith("hftguard.data.") and name.count(".") == 2
                           and name.split(".")[2][0].isupper())
    ]  # fmt: skip
    assert not bad, "import these from their new place:\n" + "\n".join(bad)


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_module_path_is_the_new_module_with_a_deprecation_warning(old):
    import importlib

    new = importlib.import_module(_moved.MOVED[old])
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=_moved.MOVED[old].replace(".", r"\.")):
        assert importlib.import_module(old) is new


def test_the_old_hftguard_data_names_resolve_with_a_warning():
    import hftguard.data
    from hftguard.data.inputs import Batch

    with pytest.warns(DeprecationWarning, match=r"hftguard\.data\.inputs\.Batch"):
        assert hftguard.data.Batch is Batch
    with pytest.raises(AttributeError), warnings.catch_warnings():
        warnings.simplefilter("error")
        hftguard.data.no_such_name  # noqa: B018


def test_importing_the_root_and_the_host_loads_no_torch():
    code = (
        "import sys, hftguard, hftguard.config, hftguard.registry, hftguard.runs, hftguard.data, "
        "hftguard.engine, hftguard.pipeline.report; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
