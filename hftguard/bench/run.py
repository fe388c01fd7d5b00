"""The entry point: run every section not skipped, on one model, and return a JSON-ready dict."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, replace
from typing import Any

from hftguard.bench.defenses import bench_defenses
from hftguard.bench.generation import bench_generation
from hftguard.bench.inputs import (
    _pad_id,
    attach_lora,
    bench_data,
    build_model,
    select_defenses,
    token_counts,
)
from hftguard.bench.options import SECTIONS, BenchOptions
from hftguard.bench.timing import flops_per_token, peak_flops
from hftguard.bench.trainer import bench_trainer
from hftguard.console import Reporter


def run_bench(
    opts: BenchOptions, reporter: Reporter | None = None, registry: Any = None
) -> dict[str, Any]:
    """Run every section not in ``opts.skip``; return the results as a JSON-ready dict.

    With several precisions (``precision="fp32,bf16"``) every section runs once per precision,
    one after the other in the same process, on the same data; the result holds each run under
    ``runs`` and a ``precision_comparison`` of step times and generation outputs against the
    first precision.
    """
    from hftguard.registry import default_registry

    reporter = reporter or Reporter(quiet=True)
    reg = registry or default_registry()
    precisions = opts.precisions
    if len(precisions) == 1:
        return _run_one(opts, reporter, reg)
    runs = {p: _run_one(replace(opts, precision=p), reporter, reg) for p in precisions}
    first = runs[precisions[0]]
    return {
        "options": asdict(opts),
        "environment": {k: v for k, v in first["environment"].items() if k != "dtype"},
        "model": first["model"],
        "skipped": first["skipped"],
        "runs": runs,
        "precision_comparison": compare_precisions(runs),
    }


def compare_precisions(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each precision against the first: step-time speed-ups and greedy outputs that differ."""
    names = list(runs)
    base = runs[names[0]]
    out: dict[str, Any] = {"baseline": names[0], "dtypes": {}, "defenses": [], "generation": {}}
    for name in names:
        out["dtypes"][name] = runs[name]["environment"]["dtype"]
    if "defenses" in base:
        for i, row in enumerate(base["defenses"]):
            entry: dict[str, Any] = {"stage": row["stage"], "defense": row["defense"]}
            for name in names:
                other = runs[name]["defenses"][i]
                entry[f"{name}_step_s"] = other["median_step_s"]
                entry[f"{name}_ratio_to_sft"] = other["ratio_to_sft"]
                entry[f"{name}_speedup"] = row["median_step_s"] / other["median_step_s"]
            out["defenses"].append(entry)
    if "trainer" in base:
        out["trainer"] = {
            name: {
                "hftguard_step_s": runs[name]["trainer"]["hftguard"]["median_step_s"],
                "speedup": base["trainer"]["hftguard"]["median_step_s"]
                / runs[name]["trainer"]["hftguard"]["median_step_s"],
            }
            for name in names
        }
    if "generation" in base:
        ref = base["generation"]["batched_outputs"]
        for name in names:
            gen = runs[name]["generation"]
            differ = [
                i
                for i, (a, b) in enumerate(zip(ref, gen["batched_outputs"], strict=True))
                if a != b
            ]
            out["generation"][name] = {
                "batched_s": gen["batched_s"],
                "speedup": base["generation"]["batched_s"] / gen["batched_s"],
                "outputs_differing_from_baseline": len(differ),
                "differing_indices": differ,
                "prompts": gen["prompts"],
            }
    return out


def _run_one(opts: BenchOptions, reporter: Reporter, reg: Any) -> dict[str, Any]:
    from hftguard.engine import models

    specs = select_defenses(reg, opts.defenses) if "defenses" not in opts.skip else []
    device = models.pick_device(opts.device)
    dtype, precision = models.setup_precision(opts.precision, device, reporter.warn)
    reason = precision["reason"]
    reporter.info(
        f"bench: loading {opts.llama_shape or opts.model} on {device} "
        f"({str(dtype).removeprefix('torch.')}: {reason})"
    )
    base, tok, model_info = build_model(opts, device, dtype)
    result: dict[str, Any] = {
        "options": asdict(opts),
        "environment": {**environment(device, dtype), "precision_reason": reason},
        "model": model_info,
        "skipped": [s for s in SECTIONS if s in opts.skip],
    }
    if "generation" not in opts.skip:  # on the base model, before LoRA is attached
        reporter.info("bench: generation, one prompt at a time vs batched")
        result["generation"] = bench_generation(base, tok, opts, reg)
    if "padding" not in opts.skip:  # tokenising only: the pad share of real batches
        from hftguard.bench.padding import padding_section

        result["padding"] = padding_section(tok, opts, reg)
    if "defenses" in opts.skip and "trainer" in opts.skip and "repair" in opts.skip:
        return result

    from hftguard.config import LoraOptions

    lora = LoraOptions()
    model, params, init = attach_lora(base, lora, device, opts.seed)
    flops_tok = flops_per_token(base, opts.seq_len, sum(p.numel() for _, p in params))
    result["model"].update(
        trainable_parameters=sum(p.numel() for _, p in params),
        lora={"r": lora.r, "alpha": lora.alpha, "target_modules": list(lora.target_modules)},
        train_flops_per_token=flops_tok,
    )
    data = bench_data(tok, opts, reg)
    result["data"] = {name: token_counts(items[: opts.batch_size]) for name, items in data.items()}
    peak = peak_flops(device, dtype, opts.peak_tflops)
    result["environment"]["peak_tflops"] = None if peak is None else peak / 1e12
    if specs:
        result["defenses"] = bench_defenses(
            model,
            params,
            init,
            reg,
            specs,
            data,
            opts,
            device,
            dtype,
            flops_tok,
            peak,
            reporter,
            _pad_id(tok),
        )
    if "trainer" not in opts.skip:
        reporter.info("bench: our SFT loop vs transformers.Trainer")
        result["trainer"] = bench_trainer(
            model, params, init, tok, data["alignment"], opts, device, dtype, flops_tok, peak
        )
    if "repair" not in opts.skip:
        result["repair"] = _repair_section(opts, reg, reporter, data, result, device, tok)
    return result


def _repair_section(
    opts: BenchOptions,
    reg: Any,
    reporter: Reporter,
    data: dict[str, list[Any]],
    result: dict[str, Any],
    device: Any,
    tok: Any,
) -> dict[str, Any]:
    """Section 5 (bench.repair): each repair defense once, against the SFT step measured above."""
    from hftguard.bench.repair import bench_repairs, select_repairs
    from hftguard.data.inputs import collate

    if opts.llama_shape is not None:
        return {"skipped": "a repair needs the model's weights on disk; --llama-shape is random"}
    names = select_repairs(reg, opts.defenses)
    items = data["harmful"]
    batches = [
        collate(items[i : i + opts.batch_size], _pad_id(tok)).to(device)
        for i in range(0, len(items) - opts.batch_size + 1, opts.batch_size)
    ]
    sft = [r for r in result.get("defenses", []) if r["stage"] == "align" and r["defense"] == "sft"]
    # wall time on both sides: a repair is timed on the wall clock
    step = (sft[0].get("wall_median_step_s") or sft[0]["median_step_s"]) if sft else None
    rows = bench_repairs(opts, reg, names, batches, step, reporter)
    return {"sft_step_wall_s": step, "calibration_batches": len(batches), "rows": rows}


def environment(device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    from hftguard.runs import library_versions

    env: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": _native_bf16(),
        "libraries": library_versions(),
    }
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _native_bf16() -> str | None:
    from hftguard.engine import models

    return models.cpu_native_bf16()
