"""Batched generation for evaluation: left padding, KV cache, greedy by default, length-sorted.

The official repos generate one prompt at a time; batching prompts of similar length (sorted, then
restored to the caller's order) gives the same greedy outputs at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hftguard.console import Reporter
from hftguard.data.inputs import bos_ids, prompt_ids
from hftguard.data.inputs import pad_id as padding_id


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    reporter: Reporter | None = None,
    description: str = "generate",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sort_by_length: bool = True,
) -> list[str]:
    """Complete each prompt (already formatted) and return the decoded continuations, in order.

    Prompts are tokenised by :func:`hftguard.data.inputs.prompt_ids` (with the tokenizer's BOS
    when it adds one, exactly once), as in training, and left-padded so the BOS follows the pads."""
    device = next(model.parameters()).device
    bos = bos_ids(tokenizer)
    encoded = [prompt_ids(tokenizer, p, bos) for p in prompts]
    order = (
        sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        if sort_by_length
        else list(range(len(prompts)))
    )
    pad_id = padding_id(tokenizer)
    stop_ids = _stop_ids(tokenizer, model)
    out: list[str] = [""] * len(prompts)
    model.eval()
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
        "eos_token_id": stop_ids,
        "use_cache": True,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    ctx = reporter.task(description, total=len(prompts)) if reporter else None
    handle = ctx.__enter__() if ctx else None
    try:
        for idx in batches:
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                seq = encoded[i]
                ids[row, width - len(seq) :] = torch.tensor(seq)
                mask[row, width - len(seq) :] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
            for row, i in enumerate(idx):
                out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
            if handle:
                handle.advance(len(idx))
    finally:
        if ctx:
            ctx.__exit__(None, None, None)
    return out


def _stop_ids(tokenizer: Any, model: Any) -> list[int]:
    ids = set()
    for tok_id in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(tok_id, int):
            ids.add(tok_id)
        elif isinstance(tok_id, list):
            ids.update(tok_id)
    return sorted(ids)
