"""Section 1: every defense's training step against its stage's SFT, on the same batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hftguard.bench.inputs import reset_lora, token_counts
from hftguard.bench.options import STAGE_KINDS, BenchOptions
from hftguard.bench.timing import PeakMemory, StepTimes, _Clock, _summary, rates, time_basis
from hftguard.console import Reporter


def bench_defenses(
    model: Any,
    params: list[tuple[str, Any]],
    init: dict[str, Any],
    registry: Any,
    specs: Sequence[tuple[str, str]],
    data: dict[str, list[Any]],
    opts: BenchOptions,
    device: Any,
    dtype: Any,
    flops_tok: float,
    peak: float | None,
    reporter: Reporter,
    pad_id: int = 0,
) -> list[dict[str, Any]]:
    """Per-step time and peak memory of each ``(stage, name)``; ratios against the stage's SFT."""
    from hftguard.data.inputs import collate

    n_batches = len(data["alignment"]) // opts.batch_size
    batches = {
        name: [
            collate(items[i * opts.batch_size : (i + 1) * opts.batch_size], pad_id).to(device)
            for i in range(n_batches)
        ]
        for name, items in data.items()
    }
    main_of = {"align": "alignment", "finetune": "user"}
    times = {spec: StepTimes() for spec in specs}
    basis = time_basis(device)
    memory: dict[tuple[str, str], PeakMemory] = {}
    for r in range(opts.rounds):  # rounds interleave the defenses: machine noise hits all alike
        for stage, name in specs:
            reporter.info(f"bench: {stage}/{name} (round {r + 1}/{opts.rounds})")
            defense = registry.instantiate(STAGE_KINDS[stage], name)
            reset_lora(params, init)
            with PeakMemory(device) as mem:
                times[(stage, name)] += time_defense_steps(
                    model, params, defense, batches[main_of[stage]], batches, opts, device, dtype
                )
            prev = memory.get((stage, name))
            if prev is None or (mem.peak_mb or 0) > (prev.peak_mb or 0):
                memory[(stage, name)] = mem
    reset_lora(params, init)

    tokens = token_counts(data["alignment"][: opts.batch_size])["tokens"]
    rows = []
    sft = {stage: times[(stage, "sft")].median(basis) for stage, n in specs if n == "sft"}
    for stage, name in specs:
        cls = registry.get(STAGE_KINDS[stage], name).cls
        sft_cls = registry.get(STAGE_KINDS[stage], "sft").cls
        stats = _summary(times[(stage, name)], basis)
        ratio = stats["median_step_s"] / sft[stage]
        theory = float(cls.passes) / float(sft_cls.passes)
        mem = memory[(stage, name)]
        rows.append(
            {
                "stage": stage,
                "defense": name,
                "theoretical_passes": float(cls.passes),
                **stats,
                "ratio_to_sft": ratio,
                "theoretical_ratio": theory,
                "measured_over_theoretical": ratio / theory,
                "within_10pct": abs(ratio / theory - 1.0) <= 0.10,
                "peak_memory_mb": mem.peak_mb,
                "extra_memory_mb": mem.extra_mb,
                "memory_kind": mem.kind,
                "tokens_per_step": tokens,
                **rates(
                    float(cls.passes) * flops_tok * tokens, tokens, stats["median_step_s"], peak
                ),
            }
        )
    return rows


def time_defense_steps(
    model: Any,
    params: list[tuple[str, Any]],
    defense: Any,
    main: Sequence[Any],
    streams: dict[str, Sequence[Any]],
    opts: BenchOptions,
    device: Any,
    dtype: Any,
) -> StepTimes:
    """``warmup + steps`` steps of the training loop's body; seconds of each timed step.

    Mirrors ``training.train``: grads set to None, ``defense.training_step`` under the loop's
    autocast, ``training._clip`` of the assembled gradient, AdamW step (constant LR, so no
    scheduler work). Batches come pre-collated from ``main`` and ``streams`` in rotation.
    """
    import torch

    from hftguard.config import TrainOptions
    from hftguard.context import StepContext
    from hftguard.engine import training

    topts = TrainOptions()
    total = opts.warmup + opts.steps
    positions = dict.fromkeys(streams, 0)

    def next_batch(name: str) -> Any:
        pos = positions[name]
        positions[name] = pos + 1
        return streams[name][pos % len(streams[name])]

    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=opts.lr, weight_decay=topts.weight_decay
    )
    ctx = StepContext(
        step=0,
        total_steps=total,
        params=params,
        next_batch=next_batch,
        loss_fn=training.lm_loss,
        reporter=Reporter(quiet=True),
        output_dir=None,
        device=device,
    )
    defense.setup(ctx)
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else training._nullcontext()
    )
    clock = _Clock(device)
    stamps: list[tuple[Any, float]] = []
    for step in range(total):
        if step == opts.warmup:
            clock.sync()
        if step >= opts.warmup:
            stamps.append(clock.stamp())
        ctx.step = step
        batch = main[step % len(main)]
        for _, p in params:
            p.grad = None
        model.train()
        with autocast:
            defense.training_step(model, batch, ctx)
        training._clip(params, topts.max_grad_norm)
        optimizer.step()
    stamps.append(clock.stamp())
    return clock.durations(stamps)
