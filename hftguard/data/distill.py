"""Self-distilled retain data: the base model's own answers to benign requests.

Used by ``hftguard align`` so that safety alignment does not turn into refusing everything: benign
requests answered by the *unaligned* model are mixed into the alignment data. Answers that the
refusal-keywords judge calls refusals or degenerate are dropped. The answers (all of them) are
cached under ``$HFTGUARD_HOME/distill`` by (model weights, prompts, template, decoding), so a grid
pays once; the judge filters them on every call, so a new judge version decides anew.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hftguard.console import Reporter
from hftguard.records import Example
from hftguard.runs import atomic_write_text, sha256_text


def distill(
    examples: Sequence[Example],
    recipe: Any,
    template: str,
    max_new_tokens: int,
    reporter: Reporter,
    batch_size: int = 16,
    judge: Any = None,
) -> list[Example]:
    """Return the examples with the model's greedy answers, keeping only helpful ones.

    ``judge`` (a :class:`~hftguard.components.Judge`) decides which answers are helpful: those it
    does not call a refusal or degenerate. The pipeline passes the registry's ``refusal-keywords``;
    None takes that one from the default registry."""
    from hftguard.context import JudgeContext
    from hftguard.data.inputs import bos_prepended, format_prompt
    from hftguard.engine import models
    from hftguard.engine.generation import generate

    tok = models.load_tokenizer(recipe.base)
    prompts = [format_prompt(e, tok, template) for e in examples]
    device = models.pick_device("auto")
    dtype = models.pick_dtype("auto", device)
    key = sha256_text(
        [
            models.model_fingerprint(recipe),
            template,
            str(max_new_tokens),
            *(f"{e.prompt}\x1f{e.input}" for e in examples),
            # prompts that get the tokenizer's BOS (inputs.prompt_ids) get a key of their own
            *(["prompt-bos"] if bos_prepended(tok, prompts) else []),
            # answers generated in another dtype than fp32 get a key of their own (fp32 keys
            # are those of earlier versions)
            *([f"dtype={dtype}"] if str(dtype) != "torch.float32" else []),
            # every answer, in request order, not the ones a judge kept: before 2026-11-27 the
            # cache held one judge version's selection, and a later version reused it unchanged
            "answers-unfiltered",
        ]
    )
    cache = models.hftguard_home() / "distill" / f"{key[:32]}.jsonl"
    answers: list[str] | None = None
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines() if line]
        if [r.get("prompt") for r in rows] == [e.prompt for e in examples]:
            answers = [r["response"] for r in rows]
            reporter.info(f"retain set: {len(rows)} self-distilled answers from cache")
    if answers is None:
        model, tok = models.load_for_eval(recipe, device, dtype)
        answers = generate(
            model,
            tok,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            reporter=reporter,
            description="align: distilling retain answers",
        )
        atomic_write_text(
            cache,
            "".join(
                json.dumps({"prompt": e.prompt, "input": e.input, "response": a}) + "\n"
                for e, a in zip(examples, answers, strict=True)
            ),
        )
    if judge is None:
        from hftguard.registry import default_registry

        judge = default_registry().instantiate("judge", "refusal-keywords")
    verdicts = judge.judge([e.prompt for e in examples], answers, JudgeContext())
    kept = [
        Example(e.prompt, a, "benign", e.input, {**e.meta, "distilled": True})
        for e, a, v in zip(examples, answers, verdicts, strict=True)
        if v.label not in ("refusal", "degenerate") and a.strip()  # off-topic is kept too
    ]
    reporter.info(f"retain set: kept {len(kept)}/{len(examples)} self-distilled answers")
    return kept
