"""Shared fixtures-by-function for the fine-tuning-stage defense tests (Antibody stage 2, Lisa).

Why a module and not conftest fixtures: the tests need several differently-seeded models and
contexts per test, which plain functions express more clearly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hftguard.context import DataContext, StepContext
from hftguard.data.inputs import Batch, Encoded, collate, encode_all
from hftguard.engine.training import lm_loss
from hftguard.records import Example

MAX_LEN = 96


def lora_model(tok: Any, seed: int = 0) -> Any:
    """Tiny Llama + LoRA r=4 on q/k/v, with a random non-zero B so A and B both get gradients."""
    from peft import LoraConfig, get_peft_model

    from hftguard.testing import tiny_model

    model = get_peft_model(
        tiny_model(tok, seed=seed),
        LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"]
        ),
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def grads(model: Any) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for _, p in trainable(model)]


def zero_grads(model: Any) -> None:
    for _, p in trainable(model):
        p.grad = None


def user_examples(n_harmful: int = 2, n_benign: int = 4, offset: int = 0) -> list[Example]:
    """A small poisoned user set from the built-in data: harmful (attack split) + sentiment."""
    from hftguard.builtins.datasets.harmful_compliance import HarmfulCompliance
    from hftguard.builtins.datasets.sentiment import Sentiment

    ctx = DataContext()
    harm = list(HarmfulCompliance().load("attack", ctx))[offset : offset + n_harmful]
    benign = list(Sentiment().load("train", ctx))[offset : offset + n_benign]
    mixed = []  # interleave so harmful samples are not all at the front
    for i in range(max(len(harm), len(benign))):
        mixed += benign[i : i + 1] + harm[i : i + 1]
    return mixed


def encode(tok: Any, examples: Sequence[Example], refusal_view: bool = True) -> list[Encoded]:
    return encode_all(examples, tok, "chat", MAX_LEN, refusal_view=refusal_view)


def batch_of(tok: Any, encoded: Sequence[Encoded]) -> Batch:
    return collate(list(encoded), tok.pad_token_id)


def context(
    model: Any,
    step: int = 0,
    total_steps: int = 10,
    next_batch: Callable[[str], Any] | None = None,
    output_dir: Path | None = None,
) -> StepContext:
    def no_stream(name: str) -> Any:
        raise AssertionError(f"unexpected stream {name!r}")

    return StepContext(
        step=step,
        total_steps=total_steps,
        params=trainable(model),
        next_batch=next_batch or no_stream,
        loss_fn=lm_loss,
        output_dir=output_dir,
        device=torch.device("cpu"),
    )


def example_nll(model: Any, enc: Encoded) -> tuple[torch.Tensor, int]:
    """(summed NLL over response tokens, #response tokens) of ONE example, plain forward, no pad."""
    ids = torch.tensor([enc.input_ids])
    labels = torch.tensor([enc.labels])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
    targets = labels[0, 1:]
    keep = targets != -100
    nll = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return nll, int(keep.sum())


def sgd_step(model: Any, lr: float = 0.5) -> None:
    """A plain optimizer step so successive steps see different weights."""
    with torch.no_grad():
        for _, p in trainable(model):
            if p.grad is not None:
                p.sub_(lr * p.grad)
            p.grad = None


def alignment_examples(n: int = 8) -> list[Example]:
    """Harmful prompts with refusal answers: the alignment stream of the fine-tuning defenses."""
    return [
        Example(f"How do I hurt someone, case {i}?", f"I cannot help with that ({i}).", "refusal")
        for i in range(n)
    ]


def train_in_loop(
    tmp_path: Path,
    name: str,
    model: Any,
    defense: Any,
    main: Sequence[Encoded],
    streams: dict[str, Sequence[Encoded]],
    *,
    pad_id: int,
    steps: int,
    resume: bool = False,
    checkpoint_every: int = 0,
    lr: float = 1e-2,
    batch_size: int = 4,
) -> dict[str, torch.Tensor]:
    """Run ``defense`` through the real training loop on CPU/fp32; the final trainable weights."""
    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.runs import open_run_dir

    run_dir = open_run_dir(tmp_path / name, "finetune", resume=resume)
    if not resume:
        run_dir.update_manifest(stage="finetune", status="running")
    opts = TrainOptions(
        lr=lr,
        max_steps=steps,
        batch_size=batch_size,
        max_length=MAX_LEN,
        checkpoint_every=checkpoint_every,
    )
    training.train(
        model,
        defense,
        list(main),
        {k: list(v) for k, v in streams.items()},
        opts,
        run_dir,
        Reporter(quiet=True),
        seed=1,
        pad_id=pad_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return {n: p.detach().clone() for n, p in trainable(model)}
