"""Test set-up: an isolated HFTGUARD_HOME, built-ins-only registries, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _hftguard_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Share the converted embedded model with the developer's cache when there is one (it takes
    # ~30 s to convert); everything else goes to a per-session directory.
    if "HFTGUARD_HOME" not in os.environ:
        os.environ["HFTGUARD_HOME"] = str(tmp_path_factory.mktemp("hftguard-home"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # precision = "auto" is bf16 on a CPU with native bf16 (AVX-512 BF16, AMX) and fp32 on an AVX2
    # one; the tests' tolerances are fp32's, and machines of one kind here differ in it (two
    # processes against one, batching invariance of model judges and the KL term failed on an
    # AVX-512 BF16 CPU). Keep auto at fp32 everywhere, subprocesses included; the bf16 paths are
    # tested by asking for bf16 (test_defense_bf16.py) and test_precision.py unsets this.
    os.environ["HFTGUARD_CPU_BF16"] = "0"


@pytest.fixture
def registry():
    from hftguard.plugins import get_plugin_host
    from hftguard.registry import Registry

    return Registry(get_plugin_host(load_entry_points=False))


@pytest.fixture(scope="session")
def tiny_tok():
    from hftguard.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def tiny_lm(tiny_tok):
    from hftguard.testing import tiny_model

    return tiny_model(tiny_tok, seed=0)


@pytest.fixture
def quiet_reporter():
    from hftguard.console import Reporter

    return Reporter(quiet=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Tiny models are dominated by threading overhead; one thread is ~10x faster on 2 cores and
    # keeps the suite fast when several test processes share a machine.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli(monkeypatch, tmp_path, capsys):
    """``cli("align", "--out", "x")`` runs ``hftguard`` in-process (tests/cli_helpers.py)."""
    from cli_helpers import cli_runner

    yield from cli_runner(monkeypatch, tmp_path, capsys)
