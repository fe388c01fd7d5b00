"""The training loop driven directly on a tiny LoRA model, for the resume, crash and stop tests
(tests/test_crash_safety.py, tests/test_length_grouping.py, tests/test_sigterm.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def train_tiny(
    tmp_path: Path,
    tok: Any,
    name: str,
    defense: Any,
    data: Sequence[Any],
    *,
    resume: bool = False,
    target_modules: Sequence[str] = ("q_proj",),
    **train: Any,
) -> tuple[dict[str, torch.Tensor], Any]:
    """Train ``defense`` on ``data`` in run directory ``tmp_path/name`` (``resume``: continue it);
    ``train`` overrides TrainOptions (lr 1e-2, 6 steps, batch 4, a checkpoint every 2 steps).
    Returns the trainable weights after training and the loop's TrainResult."""
    from peft import LoraConfig, get_peft_model

    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
    from hftguard.runs import open_run_dir
    from hftguard.testing import tiny_model

    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model(tok, seed=0),
        LoraConfig(r=4, lora_alpha=8.0, target_modules=list(target_modules)),
    )
    run = open_run_dir(tmp_path / name, "align", resume=resume)
    if not resume:
        run.update_manifest(stage="align", status="running")
    opts = TrainOptions(
        **{"lr": 1e-2, "max_steps": 6, "batch_size": 4, "checkpoint_every": 2, **train}
    )
    result = training.train(
        model,
        defense,
        list(data),
        {},
        opts,
        run,
        Reporter(quiet=True),
        seed=3,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return weights, result
