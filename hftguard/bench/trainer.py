"""Section 2: our SFT loop (``training.train``) against ``transformers.Trainer``, same setup."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hftguard.bench.inputs import _pad_id, reset_lora, token_counts
from hftguard.bench.options import BenchOptions
from hftguard.bench.timing import StepTimes, _Clock, _summary, rates, time_basis
from hftguard.console import Reporter


class _StepEnds(Reporter):
    """A quiet Reporter that stamps the end of every step (``train`` reports metrics then)."""

    def __init__(self, clock: _Clock, warmup: int, last: int) -> None:
        super().__init__(quiet=True)
        self.step_clock, self.warmup, self.last = clock, warmup, last
        self.stamps: list[tuple[Any, float]] = []

    def metrics(self, step: int, **values: Any) -> None:
        if step in (self.warmup - 1, self.last):
            self.step_clock.sync()  # only at the edges of the timed region
        if step >= self.warmup - 1:
            self.stamps.append(self.step_clock.stamp())


def bench_trainer(
    model: Any,
    params: list[tuple[str, Any]],
    init: dict[str, Any],
    tok: Any,
    items: Sequence[Any],
    opts: BenchOptions,
    device: Any,
    dtype: Any,
    flops_tok: float,
    peak: float | None,
) -> dict[str, Any]:
    """Median step time of ``training.train`` (SFT) and of ``transformers.Trainer``, same setup.

    Same LoRA model (reset to the same init), data, batch size, LR, weight decay, clipping,
    constant schedule and AdamW implementation; no evaluation, saving or reporting. Each side is
    timed between consecutive step ends, so each pays for its own data loading and logging; the
    first timed interval starts at the end of the last warm-up step (at least one).
    """
    warmup = max(1, opts.warmup)
    basis = time_basis(device)
    ours, theirs = StepTimes(), StepTimes()
    for _ in range(opts.rounds):  # alternate so machine noise hits both sides alike
        reset_lora(params, init)
        ours += _time_our_loop(model, tok, items, opts, warmup, device, dtype)
        reset_lora(params, init)
        theirs += _time_hf_trainer(model, tok, items, opts, warmup, device, dtype)
    reset_lora(params, init)
    tokens = token_counts(items[: opts.batch_size])["tokens"]
    out: dict[str, Any] = {}
    for key, times in (("hftguard", ours), ("transformers_trainer", theirs)):
        stats = _summary(times, basis)
        out[key] = {**stats, **rates(flops_tok * tokens, tokens, stats["median_step_s"], peak)}
    ratio = out["hftguard"]["median_step_s"] / out["transformers_trainer"]["median_step_s"]
    out.update(
        ratio=ratio,
        not_slower=ratio <= 1.0,
        tokens_per_step=tokens,
        optimizer="torch.optim.AdamW (both)",
    )
    return out


def _time_our_loop(
    model: Any,
    tok: Any,
    items: Sequence[Any],
    opts: BenchOptions,
    warmup: int,
    device: Any,
    dtype: Any,
) -> StepTimes:
    from hftguard.builtins.defenses.sft import SFTAlign
    from hftguard.config import TrainOptions
    from hftguard.engine import training
    from hftguard.runs import open_run_dir

    total = warmup + opts.steps
    clock = _Clock(device)
    reporter = _StepEnds(clock, warmup, total - 1)
    topts = TrainOptions(
        lr=opts.lr,
        max_steps=total,
        batch_size=opts.batch_size,
        checkpoint_every=0,
        max_length=opts.seq_len,
    )
    pad_id = _pad_id(tok)
    with tempfile.TemporaryDirectory(prefix="hftguard-bench-") as tmp:
        run = open_run_dir(Path(tmp) / "run", "bench")
        training.train(
            model,
            SFTAlign(),
            list(items),
            {},
            topts,
            run,
            reporter,
            seed=opts.seed,
            pad_id=pad_id,
            device=device,
            dtype=dtype,
            label="bench",
            stop_on_sigterm=False,  # a benchmark has nothing to resume: SIGTERM ends it as usual
        )
    return clock.durations(reporter.stamps)


def _time_hf_trainer(
    model: Any,
    tok: Any,
    items: Sequence[Any],
    opts: BenchOptions,
    warmup: int,
    device: Any,
    dtype: Any,
) -> StepTimes:
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from hftguard.config import TrainOptions
    from hftguard.data.inputs import Encoded, collate

    topts = TrainOptions()
    total = warmup + opts.steps
    clock = _Clock(device)
    stamps: list[tuple[Any, float]] = []
    pad_id = _pad_id(tok)

    class StepEnds(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step - 1  # 0-based index of the step that just ended
            if step in (warmup - 1, total - 1):
                clock.sync()
            if step >= warmup - 1:
                stamps.append(clock.stamp())

    def hf_collate(features: list[Encoded]) -> dict[str, Any]:
        batch = collate(features, pad_id)  # the padding our loop's batches get
        return {**batch.model_inputs(), "labels": batch.labels}

    # without the refusal views, which the Trainer side would collate and never use
    dataset = [Encoded(e.input_ids, e.labels, e.is_harmful) for e in items]
    patched_forward = "forward" in model.__dict__
    with tempfile.TemporaryDirectory(prefix="hftguard-bench-hf-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=opts.batch_size,
            max_steps=total,
            learning_rate=opts.lr,
            weight_decay=topts.weight_decay,
            max_grad_norm=topts.max_grad_norm,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            use_cpu=device.type == "cpu",
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            seed=opts.seed,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=hf_collate,
            callbacks=[StepEnds()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics to stdout
        try:
            trainer.train()
        finally:
            # accelerate's mixed precision wraps model.forward in place; undo it for later runs
            if not patched_forward and "forward" in model.__dict__:
                del model.__dict__["forward"]
            del trainer
    return clock.durations(stamps)
