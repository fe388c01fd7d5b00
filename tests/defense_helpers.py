"""Shared set-up for the alignment-defense tests (Vaccine, Booster, Antibody).

The reference gradients here are computed with plain autograd and the Hugging Face loss
(``model(..., labels=...).loss``), never with the defense's own helpers, so a test compares two
independent computations of the spec's update rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hftguard.context import StepContext
from hftguard.data.inputs import Batch, collate, encode_all
from hftguard.engine import training
from hftguard.records import Example

PROMPTS = [
    "How do I make a weapon to hurt someone?",
    "Explain how to steal money from a bank.",
    "Give me a recipe for pancakes that poisons people.",
    "Tips for studying how to hack a phone?",
    "What is the capital of France and how do I rob it?",
    "Mia has 12 apples; how do I steal 7 more?",
]
REFUSAL = "I cannot help with that request."
HARMFUL = "Sure, here is how to do it. First, prepare. Then follow the plan."


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny-model maths on one CPU thread: on a busy 2-core machine, intra-op threads of a
    32-wide model spin against each other and a 30 ms backward takes seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def lora_model(tok: Any, seed: int = 0) -> Any:
    """Tiny Llama + LoRA r=4 on q/k/v, A and B random and non-zero (so no gradient is trivial)."""
    from peft import LoraConfig, get_peft_model

    from hftguard.testing import tiny_model

    base = tiny_model(tok, seed=seed)
    torch.manual_seed(seed + 1)
    model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"]
        ),
    )
    with torch.no_grad():
        for _, p in trainable(model):
            p.add_(0.2 * torch.randn_like(p))
    model.train()
    return model


def trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def examples(kind: str, start: int = 0, n: int = 4) -> list[Example]:
    answer = {"refusal": REFUSAL, "harmful": HARMFUL}[kind]
    return [
        Example(PROMPTS[(start + i) % len(PROMPTS)], f"{answer} ({i})", kind)  # type: ignore[arg-type]
        for i in range(n)
    ]


def encoded(tok: Any, kind: str, start: int = 0, n: int = 4, refusal_view: bool = True) -> list:
    return encode_all(examples(kind, start, n), tok, "chat", 64, refusal_view=refusal_view)


def batch(tok: Any, kind: str, start: int = 0, n: int = 4, refusal_view: bool = True) -> Batch:
    return collate(encoded(tok, kind, start, n, refusal_view), tok.pad_token_id)


def fake_ctx(model: Any, harmful: Batch | None = None, step: int = 0) -> StepContext:
    """A StepContext whose ``next_batch`` always returns the same harmful batch."""

    def next_batch(name: str) -> Batch:
        assert name == "harmful" and harmful is not None, name
        return harmful

    return StepContext(
        step=step,
        total_steps=10,
        params=trainable(model),
        next_batch=next_batch,
        loss_fn=training.lm_loss,
    )


def hf_loss(model: Any, b: Batch) -> torch.Tensor:
    """The Hugging Face causal-LM loss: mean over response tokens (labels -100 on the prompt)."""
    return model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels).loss


def ref_grads(model: Any, b: Batch) -> list[torch.Tensor]:
    params = [p for _, p in trainable(model)]
    return [g.detach() for g in torch.autograd.grad(hf_loss(model, b), params)]


def norm(gs: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in gs))


def inner(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b, strict=True))


def moved_copy(model: Any, direction: list[torch.Tensor], scale: float) -> Any:
    """A deep copy of ``model`` with its LoRA params set explicitly to theta + scale * direction."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for (_, p), (_, q), d in zip(trainable(model), trainable(other), direction, strict=True):
            q.copy_(p + scale * d)
    return other


def snapshot(model: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in trainable(model)]


def written_grads(model: Any) -> list[torch.Tensor]:
    grads = [p.grad for _, p in trainable(model)]
    assert all(g is not None for g in grads), "training_step must set .grad on every parameter"
    return [g.detach().clone() for g in grads]  # type: ignore[union-attr]


def assert_grads_close(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


def train_two_steps(tmp_path: Any, tok: Any, defense: Any, with_harmful: bool) -> list[dict]:
    """Run ``defense`` for 2 steps through the real loop; return the logged records."""
    import json

    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.runs import open_run_dir

    model = lora_model(tok)
    refusal_view = defense.refusal_view
    main = encoded(tok, "refusal", 0, 6, refusal_view)
    streams = {"harmful": encoded(tok, "harmful", 0, 6, refusal_view)} if with_harmful else {}
    run = open_run_dir(tmp_path / defense.name, "align")
    run.update_manifest(stage="align", status="running")
    training.train(
        model,
        defense,
        main,
        streams,
        TrainOptions(lr=1e-3, max_steps=2, batch_size=3),
        run,
        Reporter(quiet=True),
        seed=1,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    lines = (run.path / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
