"""Every built-in passes the same contract checks a third-party plugin runs (hftguard.testing)."""

from __future__ import annotations

import pytest

from hftguard.components import Dataset, Defense, Judge
from hftguard.plugins import get_plugin_host
from hftguard.registry import Registry
from hftguard.testing.contracts import (
    check_component,
    check_dataset_loads,
    check_defense_trains,
    check_judge,
)

BUILTINS = Registry(get_plugin_host(load_entry_points=False)).all_components()


@pytest.mark.parametrize("info", BUILTINS, ids=lambda i: f"{i.kind}:{i.name}")
def test_builtin_contract(info, tmp_path):
    check_component(info.cls)
    if issubclass(info.cls, Dataset):
        check_dataset_loads(info.cls)
    if issubclass(info.cls, Judge):
        check_judge(info.cls)
    if issubclass(info.cls, Defense):
        check_defense_trains(info.cls, tmp_path)
