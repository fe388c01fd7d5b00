"""The one training loop.

The loop owns batching (seeded, resumable), AdamW, gradient clipping of the *assembled* gradient,
the LR schedule, mixed precision, checkpoints with exact resume, progress, and step-time /
peak-memory accounting. A defense's ``training_step`` only writes this step's gradient into
``.grad``; the helpers it computes that gradient with are the defense kit,
``hftguard.engine.steps`` (the samplers and checkpoints are in ``checkpoints.py``). They are
re-exported here for plugins written before the kit had its own module.

Multi-process runs (``accelerate launch``): every process computes its defense step on its shard of
the global batch, then the assembled gradient is averaged across processes once per step (not once
per pass), so multi-pass defenses stay correct under data parallelism.
"""

from __future__ import annotations

import io
import json
import math
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hftguard.config import TrainOptions
from hftguard.console import Reporter
from hftguard.context import StepContext
from hftguard.data.inputs import Encoded
from hftguard.engine.checkpoints import EpochSampler, Stream, resume_from_checkpoint, trim_log
from hftguard.engine.checkpoints import save_checkpoint as _save_checkpoint  # tests patch it here
from hftguard.engine.steps import (
    Grads,
    Params,
    add_to_outputs,
    attention_modules,
    capture_outputs_grad,
    combine,
    cosine,
    decoder_layers,
    dot,
    global_norm,
    grad_cosine,
    grad_dot,
    grad_norm,
    grads_of,
    lm_loss,
    logits_nll,
    loss_and_grads,
    parameters_at,
    perturbed,
    sequence_mean_nll,
    set_grads,
    token_nll,
)
from hftguard.engine.stopping import StopOnSigterm
from hftguard.errors import HftguardError, StopRequested
from hftguard.runs import RunDir

__all__ = [
    "EpochSampler",
    "Grads",
    "Params",
    "Stream",
    "TrainResult",
    "add_to_outputs",
    "attention_modules",
    "capture_outputs_grad",
    "combine",
    "cosine",
    "decoder_layers",
    "dot",
    "global_norm",
    "grad_cosine",
    "grad_dot",
    "grad_norm",
    "grads_of",
    "lm_loss",
    "logits_nll",
    "loss_and_grads",
    "lr_lambda",
    "parameters_at",
    "perturbed",
    "sequence_mean_nll",
    "set_grads",
    "token_nll",
    "total_steps",
    "train",
]

# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    step_time_mean: float
    step_time_median: float
    peak_memory_mb: float
    final_loss: float | None
    device: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def total_steps(n_main: int, opts: TrainOptions) -> int:
    if opts.max_steps > 0:
        return opts.max_steps
    return max(1, math.ceil(opts.epochs * math.ceil(n_main / opts.batch_size)))


def lr_lambda(kind: str, warmup: int, total: int) -> Any:
    """HF semantics: ``constant`` ignores warm-up (docs/configuration.md, "Stage options")."""

    def f(step: int) -> float:
        if kind == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(
    model: Any,
    defense: Any,
    main: Sequence[Encoded],
    streams: dict[str, Sequence[Encoded]],
    opts: TrainOptions,
    run: RunDir,
    reporter: Reporter,
    *,
    seed: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
    label: str = "train",
    after_step: Callable[[int], None] | None = None,
    keep_checkpoints: bool = False,
    stop_on_sigterm: bool = True,
) -> TrainResult:
    """Run ``defense.training_step`` for the configured number of steps; return timing figures.

    ``after_step(done)`` (analysis probes) is called once before the first step with the number of
    steps already done (0, or where a resumed run restarts) and after every step, before any
    checkpoint is saved; its time is not counted in the step times.

    The checkpoints are removed when the loop ends, unless ``keep_checkpoints``: then (with
    ``checkpoint_every`` > 0) one is also saved at the last step, and the caller removes them once
    its final save is durable (``pipeline.common.train_stage``), so that a crash or a full disk
    during that save resumes at the end of training instead of losing it.

    With ``stop_on_sigterm`` (single process only), SIGTERM stops the loop at the end of the step
    in progress with a checkpoint of it (:mod:`hftguard.engine.stopping`).
    """
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")  # else a CPU-only host ignores the launch env
    shard = (state.process_index, state.num_processes)
    writes = shard[0] == 0  # process 0 alone writes the log and the checkpoints
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise HftguardError(
            "The model has no trainable parameters.", hint="Check the LoRA options."
        )
    steps = total_steps(len(main), opts)
    grouped = opts.group_by_length
    main_sampler = EpochSampler(main, opts.batch_size, seed, shard=shard, group_by_length=grouped)
    stream_objs = {
        name: Stream(
            EpochSampler(
                items,
                opts.batch_size,
                seed + 7919 * (i + 1),
                shard=shard,
                group_by_length=grouped,
            ),
            pad_id,
        )
        for i, (name, items) in enumerate(sorted(streams.items()))
    }
    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=opts.lr, weight_decay=opts.weight_decay
    )
    warmup = math.ceil(opts.warmup_ratio * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(opts.scheduler, warmup, steps)
    )

    start_step = 0
    last_loss: float | None = None
    times: list[float] = []  # step times; a resumed run's earlier steps from its log
    log_path = run.path / f"{label}_log.jsonl"
    resumed = (
        resume_from_checkpoint(
            run, params, optimizer, scheduler, defense, stream_objs, reporter.warn
        )
        if run.resumed
        else None
    )
    if resumed is not None:
        start_step, ckpt = resumed
        reporter.info(f"Resuming {label} from step {start_step} ({ckpt.name}).")
        if writes and log_path.exists():  # keep only the log lines the checkpoint covers
            kept = trim_log(log_path, lambda r: r.get("step", 0) < start_step, reporter.warn)
            last_loss = next((r["loss"] for r in reversed(kept) if "loss" in r), None)
            times = [r["step_time"] for r in kept if isinstance(r.get("step_time"), float)]
    elif writes and log_path.exists():
        log_path.unlink()

    # SIGTERM (a scheduler's preemption) stops at the end of the step in progress, with a
    # checkpoint, or inside a step at a defense's stop_point; single process only
    # (hftguard.engine.stopping)
    sigterm = StopOnSigterm(enabled=stop_on_sigterm and shard[1] == 1)

    # What stop_point says; it holds no reference to the loop's objects (a cycle through ctx or
    # the run would keep the run directory's lock alive after the stop, until a gc pass).
    stage, ckpts, at = f"{label}: {defense.name}", str(run.checkpoints), [start_step]

    def stop_point(what: str) -> None:
        if sigterm.requested:
            raise StopRequested(
                f"Stopped by SIGTERM during {what} in step {at[0] + 1} of {steps} ({stage}), "
                "before the step ended; re-running resumes from the last checkpoint in "
                f"{ckpts}, or from the beginning where there is none."
            )

    ctx = StepContext(
        step=start_step,
        total_steps=steps,
        params=params,
        next_batch=lambda name: stream_objs[name].next().to(device),
        loss_fn=lm_loss,
        reporter=reporter,
        output_dir=run.path,
        device=device,
        world_size=shard[1],
        all_reduce_mean=_mean_over_processes if shard[1] > 1 else _same,
        rank=shard[0],
        all_gather_rows=_gather_rows if shard[1] > 1 else _same,
        stop_point=stop_point,
    )
    defense.setup(ctx)
    autocast = (
        torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else _nullcontext()
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_run = time.perf_counter()
    log_file = log_path.open("a") if writes else _nowhere()
    with (
        reporter.task(f"{label}: {defense.name}", total=steps) as task,
        log_file as log,
        sigterm,
    ):
        task.skip(start_step)
        if after_step is not None:
            after_step(start_step)
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            ctx.step = at[0] = step
            batch = main_sampler.batch(step, pad_id).to(device)
            for _, p in params:
                p.grad = None
            model.train()
            with autocast:
                metrics = defense.training_step(model, batch, ctx)
            if shard[1] > 1:
                _all_reduce_grads(params)
            total_norm = _clip(params, opts.max_grad_norm)
            before = [p.detach().clone() for _, p in params]
            optimizer.step()
            scheduler.step()
            # The one host synchronisation of the step: every metric to a Python number at once,
            # with the updated parameters' norm (finite unless the update broke them) and the
            # global norm of the update ||theta_{t+1} - theta_t|| (the step size a defense's
            # perturbation radius is compared with, docs/results/calibrated).
            now = [p.detach() for _, p in params]
            weights = torch.stack(torch._foreach_norm(now)).sum()
            update = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(torch._foreach_sub(now, before)))
            )
            del before
            values = _step_metrics(
                {"grad_norm": total_norm, "_weights": weights, "_update": update, **metrics},
                device,
                shard[1],
            )
            grad_norm, weight_norm = values.pop("grad_norm"), values.pop("_weights")
            update_norm = values.pop("_update")
            _check_finite(step, defense.name, grad_norm, weight_norm, values.get("loss"))
            dt = time.perf_counter() - t0
            times.append(dt)
            last_loss = values.get("loss", last_loss)
            record = {
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "update_norm": update_norm,
                "step_time": dt,
                **values,
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            reporter.metrics(step, **{k: v for k, v in record.items() if k != "step"})
            task.advance(
                1, loss=last_loss if last_loss is not None else float("nan"), **{"s/step": dt}
            )
            done = step + 1
            if after_step is not None:
                after_step(done)
            every = opts.checkpoint_every
            last = done == steps  # saved only if the caller removes them after its final save
            saved = writes and every and (keep_checkpoints if last else done % every == 0)
            if saved:
                _save_checkpoint(run, done, params, optimizer, scheduler, defense, stream_objs)
            if sigterm.requested:
                # at the last step a checkpoint is saved even with checkpointing off: it holds
                # the finished training (the caller removes it after its final save)
                keep = bool(every) or last
                if writes and keep and not saved:
                    _save_checkpoint(run, done, params, optimizer, scheduler, defense, stream_objs)
                raise StopRequested(
                    f"Stopped by SIGTERM after step {done} of {steps} ({label}: {defense.name}); "
                    + (
                        f"a checkpoint of step {done} is saved in {run.checkpoints}."
                        if keep
                        else "checkpointing is off (train.checkpoint_every = 0), so the "
                        "stage starts again from the beginning."
                    )
                )
    if writes and not keep_checkpoints:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    ordered = sorted(times)
    return TrainResult(
        steps=steps,
        resumed_from=start_step,
        seconds=time.perf_counter() - t_run,
        step_time_mean=sum(times) / len(times) if times else 0.0,
        step_time_median=ordered[len(ordered) // 2] if ordered else 0.0,
        peak_memory_mb=_peak_memory_mb(device),
        final_loss=last_loss,
        device=str(device),
    )


class _nowhere(io.StringIO):
    """The training log of a process that does not write one."""

    def write(self, text: str) -> int:
        return len(text)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _check_finite(step: int, defense: str, grad_norm: float, weight_norm: float, loss: Any) -> None:
    """Stop the run (as failed: the caller's manifest says so) when a step produced non-finite
    numbers; the update just made is not saved. A run whose weights hold inf/nan must never end
    as completed: its evaluation would report a meaningless HS (0 % for a model that emits
    nothing)."""
    broken = [
        f"{what} {value}"
        for what, value in (("the gradient norm is", grad_norm), ("the loss is", loss))
        if isinstance(value, float) and not math.isfinite(value)
    ]
    if not math.isfinite(weight_norm):
        broken.append(f"the trainable weights hold inf/nan (norm {weight_norm})")
    if broken:
        raise HftguardError(
            f"Training diverged at step {step} ({defense}): {'; '.join(broken)}.",
            hint="Lower train.lr (and check train.max_grad_norm > 0), or use precision=fp32.",
        )


def _clip(params: Params, max_norm: float) -> torch.Tensor:
    """Clip the assembled gradient in place; its global norm before clipping (a 0-d tensor)."""
    grads = [p.grad for _, p in params if p.grad is not None]
    if not grads:
        raise HftguardError(
            "The defense wrote no gradient into the trainable parameters.",
            hint="A training_step must set .grad (see docs/plugins/hooks.md, or "
            "`hftguard docs plugins/hooks`).",
        )
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm)
    return grad_norm(list(grads))


def _step_metrics(values: dict[str, Any], device: torch.device, world: int) -> dict[str, Any]:
    """A step's metrics as Python numbers, with one host synchronisation.

    A defense may return 0-d tensors (no synchronisation inside its step) or numbers; the tensors
    are stacked and copied to the host together. With several processes ``loss`` is averaged over
    them (every built-in loss is normalised so that this is the global batch's loss); the other
    metrics are this process's.
    """
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    column = []
    for k in keys:
        v = values[k].detach()
        if v.numel() != 1:
            raise HftguardError(
                f"The metric {k!r} is a tensor of shape {tuple(v.shape)}, not a number.",
                hint="training_step returns numbers or 0-d tensors.",
            )
        column.append(v.reshape(()).to(device=device, dtype=torch.float64))
    if world > 1:
        import torch.distributed as dist

        loss_and_count = torch.zeros(2, dtype=torch.float64, device=device)
        if "loss" in values:
            loss_and_count[0] = values["loss"]
            loss_and_count[1] = 1.0
        dist.all_reduce(loss_and_count)
        column.extend(loss_and_count.unbind())
    numbers = torch.stack(column).tolist() if column else []
    out = dict(values)
    out.update(zip(keys, numbers, strict=False))
    if world > 1 and "loss" in out and numbers[-1] > 0:
        out["loss"] = numbers[-2] / numbers[-1]
    return out


def _same(tensors: Grads) -> Grads:
    return tensors


def _mean_over_processes(tensors: Grads) -> Grads:
    """Average tensors over processes with one flat all-reduce; returns views of one buffer."""
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    sizes = [t.numel() for t in tensors]
    return [c.view_as(t) for c, t in zip(flat.split(sizes), tensors, strict=True)]


def _gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """This process's rows of a batch -> the global batch's rows, in its order, everywhere.

    Process ``k`` holds rows ``k::world`` (``EpochSampler``), so shards differ in size by at most
    one row; each is padded to the largest for the all-gather, then interleaved back.
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = torch.cat(counts).tolist()
    most = max(sizes)
    padded = rows.new_zeros((most, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = rows.new_empty((sum(sizes), *rows.shape[1:]))
    for k, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        out[k::world] = part[:size]
    return out


def _all_reduce_grads(params: Params) -> None:
    """Average the assembled gradient over processes: one collective per step, not per pass.

    A parameter that has no gradient on any process (a defense froze it for this step, e.g. the
    layers T-Vaccine did not select) keeps ``.grad = None``, so AdamW leaves it untouched (no
    momentum, no weight decay), as in one process; one with a gradient on some process counts as
    zeros on the others. The flags ride in the same collective; reading them is one host sync."""
    live = [p.grad is not None for _, p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in params]
    flags = torch.tensor(live, dtype=grads[0].dtype, device=grads[0].device)
    *avg, seen = _mean_over_processes([*grads, flags])
    for (_, p), g, s in zip(params, avg, seen.tolist(), strict=True):
        p.grad = g if s > 0 else None
