"""``hftguard bench``: measure what the defenses cost, in one process, on one model, side by side.

Why this exists: every defense paper states its overhead relative to SFT in forward/backward
passes (each defense's ``passes`` attribute). Whether our implementation meets that, whether our
training loop is as fast as ``transformers.Trainer``, and whether batched evaluation is as fast
(and as exact) as we claim are questions about *ratios*, and ratios are only trustworthy when both
sides run in the same process, on the same model, data, batch and LoRA settings, warmed up, with
the median of repeated steps. The functions here return plain dicts; the CLI prints them as tables
and JSON (docs/performance.md shows a run).

The modules: ``options`` (``BenchOptions``, sections, model shapes), ``inputs`` (model, LoRA,
equal-shape data, defense selection), ``timing`` (clocks, step statistics, peak memory, FLOPs),
one per section (``defenses``, ``trainer``, ``generation``), ``run`` (``run_bench``) and
``report`` (``print_report``). Everything is re-exported here.

Design choices that keep the numbers honest and the run cheap:

* One base model for everything; LoRA is attached once and reset from saved tensors before each
  measurement (no model copies; exact restore).
* All training batches have the same shape: each example is cut or cyclically extended to exactly
  ``seq_len`` tokens (half prompt, half response), so every stream and every shard holds the same
  number of response tokens and a defense's cost ratio reflects its passes, not its data.
* The defense timing loop mirrors ``training.train`` (zero grads, ``training_step`` under the same
  autocast, ``training._clip`` of the assembled gradient, AdamW step); batches are pre-collated on
  the device, so data loading is excluded. On CUDA, steps are timed with CUDA events and the
  device is synchronised only around the timed region.
* The loop-vs-Trainer comparison runs our real loop (``training.train``, with its logging) against
  ``transformers.Trainer``, timing both from step end to step end, so each side pays for its own
  data loading and bookkeeping.
* Generation compares ``hftguard.engine.generation.generate`` with batch size 1 (the official repos'
  one-prompt-at-a-time loop) against batch size 16 on the same prompts with greedy decoding, and
  reports every prompt whose outputs differ together with the logit margin that decided it.
"""

from __future__ import annotations

from hftguard.bench.defenses import bench_defenses, time_defense_steps
from hftguard.bench.generation import _explain_mismatch as _explain_mismatch
from hftguard.bench.generation import bench_generation
from hftguard.bench.inputs import (
    attach_lora,
    bench_data,
    build_model,
    encode_fixed,
    fit_length,
    reset_lora,
    select_defenses,
    token_counts,
)
from hftguard.bench.options import LLAMA_SHAPES, SECTIONS, STAGE_KINDS, BenchOptions
from hftguard.bench.report import print_report
from hftguard.bench.run import environment, run_bench
from hftguard.bench.timing import (
    PEAK_BF16_TFLOPS,
    PeakMemory,
    StepTimes,
    flops_per_token,
    peak_flops,
    time_basis,
)
from hftguard.bench.trainer import bench_trainer

__all__ = [
    "LLAMA_SHAPES",
    "PEAK_BF16_TFLOPS",
    "SECTIONS",
    "STAGE_KINDS",
    "BenchOptions",
    "PeakMemory",
    "StepTimes",
    "attach_lora",
    "bench_data",
    "bench_defenses",
    "bench_generation",
    "bench_trainer",
    "build_model",
    "encode_fixed",
    "environment",
    "fit_length",
    "flops_per_token",
    "peak_flops",
    "print_report",
    "reset_lora",
    "run_bench",
    "select_defenses",
    "time_basis",
    "time_defense_steps",
    "token_counts",
]
