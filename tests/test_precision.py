"""precision = auto: bf16 only where the hardware runs it natively (detected, not guessed)."""

from __future__ import annotations

import pytest
import torch

from hftguard.engine import models

CPU = torch.device("cpu")


def _cpu(monkeypatch, *, avx512_bf16=False, amx=False, flags=()):
    monkeypatch.delenv("HFTGUARD_CPU_BF16", raising=False)  # conftest turns native bf16 off
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(models, "_cpuinfo_flags", lambda: set(flags))


@pytest.mark.parametrize(
    ("kw", "feature"),
    [
        ({"avx512_bf16": True}, "avx512_bf16"),
        ({"amx": True}, "amx_bf16"),
        ({"flags": ("fpu", "avx512_bf16")}, "avx512_bf16"),  # /proc/cpuinfo as second witness
        ({"flags": ("avx", "avx2", "avx512f")}, None),  # AVX-512 without its BF16 extension
        ({}, None),
    ],
)
def test_auto_picks_bf16_only_on_cpus_with_native_bf16(monkeypatch, kw, feature):
    _cpu(monkeypatch, **kw)
    assert models.cpu_native_bf16() == feature
    dtype, reason = models.precision_choice("auto", CPU)
    if feature is None:
        assert dtype == torch.float32 and "no native bf16" in reason
    else:
        assert dtype == torch.bfloat16 and feature in reason


def test_explicit_precision_is_obeyed_and_emulation_is_named(monkeypatch):
    _cpu(monkeypatch)
    assert models.pick_dtype("fp32", CPU) == torch.float32
    assert models.pick_dtype("fp16", CPU) == torch.float16
    dtype, reason = models.precision_choice("bf16", CPU)
    assert dtype == torch.bfloat16 and "emulated" in reason
    _cpu(monkeypatch, avx512_bf16=True)
    assert models.precision_choice("bf16", CPU) == (torch.bfloat16, "requested")
    assert models.precision_choice("fp32", CPU) == (torch.float32, "requested")


def test_record_names_request_result_and_reason(monkeypatch):
    _cpu(monkeypatch, amx=True)
    assert models.precision_record("auto", CPU) == {
        "requested": "auto",
        "dtype": "bfloat16",
        "reason": "auto: CPU has native bf16 (amx_bf16)",
    }


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_native_cpu_bf16_can_be_turned_off(monkeypatch, value):
    """HFTGUARD_CPU_BF16=0: auto keeps fp32 on a CPU with native bf16 (fp32 numbers on any CPU);
    an explicit bf16 is still obeyed, and other values leave auto as detected."""
    _cpu(monkeypatch, avx512_bf16=True)
    monkeypatch.setenv("HFTGUARD_CPU_BF16", value)
    dtype, reason = models.precision_choice("auto", CPU)
    assert dtype == torch.float32 and "HFTGUARD_CPU_BF16=0" in reason
    assert models.precision_choice("bf16", CPU) == (torch.bfloat16, "requested")
    assert models.precision_choice("auto", torch.device("meta"))[0] == torch.float32
    monkeypatch.setenv("HFTGUARD_CPU_BF16", "1")
    assert models.precision_choice("auto", CPU)[0] == torch.bfloat16


def test_this_machines_probe_agrees_with_its_cpuinfo():
    """The real probe (not monkeypatched) agrees with /proc/cpuinfo where that exists."""
    flags = models._cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    native = models.cpu_native_bf16()
    assert (native is not None) == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_emulated_bf16_training_warns(monkeypatch, tmp_path):
    """precision=bf16 on a CPU without it runs (a user may want it) but says it is slow."""
    from hftguard.config import AlignConfig, LoraOptions, TrainOptions
    from hftguard.console import Reporter
    from hftguard.pipeline import align

    _cpu(monkeypatch)
    warnings: list[str] = []
    reporter = Reporter(quiet=True)
    monkeypatch.setattr(reporter, "warn", warnings.append)
    cfg = AlignConfig(
        model="tiny-random",
        samples=4,
        retain="",
        train=TrainOptions(max_steps=1, batch_size=2, max_length=32, precision="bf16"),
        lora=LoraOptions(r=2, alpha=4.0),
    )
    m = align.run(cfg, tmp_path / "a", reporter=reporter, registry=None)
    assert m["status"] == "completed"
    assert m["precision"]["dtype"] == "bfloat16" and "emulated" in m["precision"]["reason"]
    assert any("native bf16" in w for w in warnings)
