"""Every built-in passes the same contract checks a third-party plugin runs (hftguard.testing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from prompt_set_fixtures import FIXTURE_DATASETS, fixture_options

from hftguard.components import Dataset, Defense, Judge
from hftguard.plugins import get_plugin_host
from hftguard.registry import Registry
from hftguard.testing import tiny_judge_config
from hftguard.testing.contracts import (
    check_component,
    check_dataset_loads,
    check_defense_trains,
    check_judge,
)

BUILTINS = Registry(get_plugin_host(load_entry_points=False)).all_components()
PAPERS = Path(__file__).parent / "data" / "papers"
#: Options that point the hub-backed datasets at the local fixtures (no network in tests).
DATASET_OPTIONS: dict[str, dict[str, Any]] = {
    "beavertails-safe": {"source": str(PAPERS / "beavertails")},
    "beavertails-harmful": {"source": str(PAPERS / "beavertails")},
    "beavertails-test": {"source": str(PAPERS / "beavertails")},
    "beavertails-evaluation": {"source": str(PAPERS / "antibody")},
    "repnoise-refusals": {"source": str(PAPERS / "repnoise"), "start": 4, "stop": 8},
    "repnoise-harmful": {"source": str(PAPERS / "repnoise"), "start": 4, "stop": 8},
    "sst2": {"source": str(PAPERS / "sst2")},
    "agnews": {"source": str(PAPERS / "ag_news")},
    "gsm8k": {"source": str(PAPERS / "gsm8k")},
    "alpacaeval": {"source": str(PAPERS / "alpaca_eval"), "train_size": 4, "test_start": 5},
}


def test_every_hub_dataset_has_fixture_options():
    for info in BUILTINS:
        if issubclass(info.cls, Dataset) and "source" in {
            f.name for f in dataclasses.fields(info.cls.Config)
        }:
            assert info.name in DATASET_OPTIONS or info.name in FIXTURE_DATASETS, (
                f"{info.name}: add fixture options"
            )


@pytest.mark.parametrize("info", BUILTINS, ids=lambda i: f"{i.kind}:{i.name}")
def test_builtin_contract(info, tmp_path):
    check_component(info.cls)
    if issubclass(info.cls, Dataset):
        # the standard prompt sets' fixtures are written per test (tests/prompt_set_fixtures.py)
        options = DATASET_OPTIONS.get(info.name) or fixture_options(info.name, tmp_path)
        check_dataset_loads(info.cls, info.cls.Config(**options) if options else None)
    if issubclass(info.cls, Judge):
        # model judges run on a tiny stand-in model saved under tmp_path (no download)
        check_judge(info.cls, tiny_judge_config(info.cls, tmp_path))
    if issubclass(info.cls, Defense):
        check_defense_trains(info.cls, tmp_path)
