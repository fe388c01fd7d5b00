"""How much of a batch is padding: random vs length-grouped training batches, and unsorted vs
length-sorted generation batches (tokenising only, no model).

Training batches are right-padded to their longest example (``hftguard.data.inputs.collate``), so a
``[B, T]`` batch holds ``B * T`` tokens of which ``B * T - sum(lengths)`` are pads; the forward and
backward passes pay for all of them. ``train.group_by_length`` batches examples of similar length
together (``hftguard.engine.checkpoints.EpochSampler``); this measures what that saves on the
data the pipeline trains on. Generation batches are left-padded the same way, and
``hftguard.engine.generation`` sorts the prompts by length before cutting them into batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hftguard.data.inputs import Encoded


def _pad_stats(widths_and_lengths: Sequence[tuple[int, list[int]]]) -> dict[str, Any]:
    """Pad share and mean width of batches given as (width, [row lengths])."""
    total = sum(width * len(lengths) for width, lengths in widths_and_lengths)
    real = sum(sum(lengths) for _, lengths in widths_and_lengths)
    widths = [width for width, _ in widths_and_lengths]
    return {
        "batches": len(widths),
        "tokens": total,
        "pad_tokens": total - real,
        "pad_share": (total - real) / total if total else 0.0,
        "mean_width": sum(widths) / len(widths) if widths else 0.0,
    }


def training_padding(
    items: Sequence[Encoded], batch_size: int, seed: int, group_by_length: bool, epochs: int = 1
) -> dict[str, Any]:
    """Padding of the global batches the training loop draws over ``epochs`` epochs."""
    from hftguard.engine.checkpoints import EpochSampler

    sampler = EpochSampler(items, batch_size, seed, group_by_length=group_by_length)
    batches = []
    for index in range(sampler.per_epoch * epochs):
        lengths = [len(items[i].input_ids) for i in sampler.global_indices(index)]
        batches.append((max(lengths), lengths))  # collate pads every row to the longest
    return _pad_stats(batches)


def measure_padding(
    items_by_name: dict[str, list[Encoded]], batch_size: int, seed: int, epochs: int = 1
) -> dict[str, Any]:
    """Per named list of encoded examples: the pad share (pad tokens / all tokens of the collated
    ``[B, T]`` batches) and the mean batch width T, for random and for length-grouped batching,
    and ``token_ratio`` = grouped tokens / random tokens (what a step's compute scales with)."""
    out: dict[str, Any] = {}
    for name, items in items_by_name.items():
        random = training_padding(items, batch_size, seed, False, epochs)
        grouped = training_padding(items, batch_size, seed, True, epochs)
        out[name] = {
            "examples": len(items),
            "mean_length": sum(len(e.input_ids) for e in items) / len(items),
            "random": random,
            "grouped": grouped,
            "token_ratio": grouped["tokens"] / random["tokens"] if random["tokens"] else 1.0,
        }
    return out


def generation_padding(lengths: Sequence[int], batch_size: int) -> dict[str, Any]:
    """Prompt padding of left-padded generation batches, in the given order and sorted by length
    (longest first, as ``hftguard.engine.generation.generate`` orders them)."""
    out: dict[str, Any] = {"prompts": len(lengths), "batch_size": batch_size}
    unsorted = list(range(len(lengths)))
    by_length = sorted(unsorted, key=lambda i: -lengths[i])  # = generate(sort_by_length=True)
    for mode, order in (("unsorted", unsorted), ("sorted", by_length)):
        batches = []
        for start in range(0, len(order), batch_size):
            rows = [lengths[i] for i in order[start : start + batch_size]]
            batches.append((max(rows), rows))
        out[mode] = _pad_stats(batches)
    return out


def padding_section(tok: Any, opts: Any, reg: Any) -> dict[str, Any]:
    """Padding on the built-in data the pipeline trains and evaluates on, with ``tok``.

    ``opts`` is a :class:`hftguard.bench.options.BenchOptions` (its ``batch_size``, ``seed`` and
    ``gen_batch_size``); ``reg`` a registry. Training data, encoded as the pipeline does with the
    stages' default ``max_length``: ``alignment`` (safety-refusals, the align stage's main data),
    ``harmful`` (harmful-compliance, the align stage's harmful stream) and ``user`` (the attack's
    default mixture: ``samples`` sentiment + harmful examples at ``harmful_ratio``). Generation:
    the eval stage's default harmful prompts (the HS prompts). The retain set of the align stage
    (self-distilled answers) needs a model and is left out.

    Returns ``{"batch_size", "seed", "training": measure_padding(...), "generation": {...}}``.
    """
    from hftguard.config import AlignConfig, EvalConfig, FinetuneConfig
    from hftguard.context import DataContext
    from hftguard.data.inputs import (
        bos_ids,
        encode_all,
        format_prompt,
        load_examples,
        mix_poison,
        prompt_ids,
    )

    align, finetune, evaluate = AlignConfig(), FinetuneConfig(), EvalConfig()
    ctx = DataContext(seed=opts.seed)
    template = "chat" if getattr(tok, "chat_template", None) else "alpaca"

    alignment = load_examples(align.data, "alignment", "train", reg, ctx)
    harmful = load_examples(align.harmful, "harmful", "train", reg, ctx)
    task = load_examples(finetune.task, "task", "train", reg, ctx)
    attack_split = (
        "attack" if "attack" in reg.dataset(finetune.harmful, "harmful").cls.splits else "train"
    )
    attack = load_examples(finetune.harmful, "harmful", attack_split, reg, ctx)
    user = mix_poison(task, attack, finetune.samples, finetune.harmful_ratio, opts.seed).examples
    encoded = {
        "alignment": encode_all(alignment, tok, template, align.train.max_length),
        "harmful": encode_all(harmful, tok, template, align.train.max_length),
        "user": encode_all(user, tok, template, finetune.train.max_length),
    }

    prompts = load_examples(
        evaluate.harmful_prompts, "harmful-eval", "test", reg, ctx, limit=evaluate.harmful_samples
    )
    bos = bos_ids(tok)
    lengths = [len(prompt_ids(tok, format_prompt(e, tok, template), bos)) for e in prompts]
    return {
        "batch_size": opts.batch_size,
        "seed": opts.seed,
        "template": template,
        "training": measure_padding(encoded, opts.batch_size, opts.seed),
        "generation": {evaluate.harmful_prompts: generation_padding(lengths, opts.gen_batch_size)},
    }
