"""Section 3: batched vs one-at-a-time generation, timed, with every differing output explained."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hftguard.bench.inputs import _pad_id
from hftguard.bench.options import BenchOptions
from hftguard.bench.timing import StepTimes, _Clock, time_basis


def bench_generation(model: Any, tok: Any, opts: BenchOptions, registry: Any) -> dict[str, Any]:
    """Time ``generate`` at batch 1 and at ``gen_batch_size`` on the same prompts, greedy.

    Returns the speed-up and whether all completions are identical; each mismatch is listed with
    the smallest top-1/top-2 logit margin of the one-at-a-time decode (a near-tie there means
    padding-dependent rounding decided the token, not a bug).
    """
    from hftguard.context import DataContext
    from hftguard.data.inputs import bos_ids, format_prompt, load_examples, prompt_ids
    from hftguard.engine.generation import generate

    examples = load_examples(
        "harmful-eval", "harmful-eval", "test", registry, DataContext(seed=opts.seed)
    )
    examples = examples[: opts.gen_prompts]
    template = "chat" if getattr(tok, "chat_template", None) else "alpaca"
    prompts = [format_prompt(ex, tok, template) for ex in examples]
    kw: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens}
    device = next(model.parameters()).device
    clock, basis = _Clock(device), time_basis(device)
    generate(model, tok, prompts[:2], batch_size=2, **{**kw, "max_new_tokens": 2})  # warm-up

    def timed(fn: Callable[[], list[str]]) -> tuple[list[str], StepTimes]:
        clock.sync()
        start = (time.perf_counter(), time.process_time())
        out = fn()
        clock.sync()
        return out, StepTimes([time.perf_counter() - start[0]], [time.process_time() - start[1]])

    single, t_single = timed(
        lambda: generate(model, tok, prompts, batch_size=1, sort_by_length=False, **kw)
    )
    batched, t_batched = timed(
        lambda: generate(model, tok, prompts, batch_size=opts.gen_batch_size, **kw)
    )
    new_tokens = sum(len(tok(s, add_special_tokens=False)["input_ids"]) for s in single)
    mismatches = [i for i, (a, b) in enumerate(zip(single, batched, strict=True)) if a != b]
    bos = bos_ids(tok)
    lengths = [len(prompt_ids(tok, p, bos)) for p in prompts]
    return {
        "prompts": len(prompts),
        "batch_size": opts.gen_batch_size,
        "max_new_tokens": opts.max_new_tokens,
        "decoding": "greedy",
        "prompt_tokens": [min(lengths), max(lengths)],
        "time_basis": basis,
        "one_at_a_time_s": t_single.median(basis),
        "batched_s": t_batched.median(basis),
        "speedup": t_single.median(basis) / t_batched.median(basis),
        "wall_one_at_a_time_s": t_single.wall[0],
        "wall_batched_s": t_batched.wall[0],
        "wall_speedup": t_single.wall[0] / t_batched.wall[0],
        "output_tokens_approx": new_tokens,
        "batched_outputs": batched,  # for comparing precisions (run.compare_precisions)
        "identical": not mismatches,
        "mismatch_count": len(mismatches),
        "mismatches": [
            _explain_mismatch(model, tok, prompts[i], single[i], batched[i], i, opts.max_new_tokens)
            for i in mismatches[:8]
        ],
    }


def _explain_mismatch(
    model: Any, tok: Any, prompt: str, single: str, batched: str, index: int, max_new_tokens: int
) -> dict[str, Any]:
    """Where two completions part and how close the greedy choice was in the unpadded decode."""
    import torch

    from hftguard.data.inputs import prompt_ids

    ids = torch.tensor([prompt_ids(tok, prompt)], device=next(model.parameters()).device)
    pad_id = _pad_id(tok)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            output_logits=True,
            return_dict_in_generate=True,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    margins = []
    for logits in out.logits:
        top2 = torch.topk(logits[0].float(), 2).values
        margins.append(float(top2[0] - top2[1]))
    char = next(
        (k for k, (a, b) in enumerate(zip(single, batched, strict=False)) if a != b),
        min(len(single), len(batched)),
    )
    step = min(range(len(margins)), key=margins.__getitem__) if margins else None
    return {
        "index": index,
        "first_difference_at_char": char,
        "min_top2_logit_margin": min(margins) if margins else None,
        "min_margin_at_step": step,
        "one_at_a_time": single[:120],
        "batched": batched[:120],
    }
