"""The training log's update_norm is ||theta_{t+1} - theta_t|| over the trainable parameters."""

from __future__ import annotations

import itertools
import json

import torch
from test_training import _data, _peft

from hftguard.builtins.defenses.sft import SFTAlign
from hftguard.config import TrainOptions
from hftguard.console import Reporter
from hftguard.engine import training
from hftguard.runs import open_run_dir


def test_update_norm_is_the_global_norm_of_each_steps_parameter_change(tmp_path, tiny_tok):
    from hftguard.testing import tiny_model

    model = _peft(tiny_model(tiny_tok, seed=0))
    snapshots: list[torch.Tensor] = []

    def snap(_done: int) -> None:  # called before the first step and after every step
        snapshots.append(
            torch.cat(
                [
                    p.detach().flatten().clone()
                    for _, p in model.named_parameters()
                    if p.requires_grad
                ]
            )
        )

    run = open_run_dir(tmp_path / "r", "align")
    training.train(
        model,
        SFTAlign(),
        _data(tiny_tok),
        {},
        TrainOptions(lr=1e-2, max_steps=3, batch_size=4, scheduler="linear"),
        run,
        Reporter(quiet=True),
        seed=3,
        pad_id=tiny_tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
        after_step=snap,
    )
    rows = [json.loads(x) for x in (run.path / "train_log.jsonl").read_text().splitlines()]
    expected = [float((b - a).norm()) for a, b in itertools.pairwise(snapshots)]
    assert len(expected) == 3
    got = [r["update_norm"] for r in rows]
    for g, e in zip(got, expected, strict=True):
        assert abs(g - e) <= 1e-6 * max(1.0, e)
    # AdamW's first step moves every entry by about lr (m/sqrt(v) = sign(g)): norm ~ lr sqrt(N)
    n = snapshots[0].numel()
    assert (
        0.5 * 1e-2 * n**0.5
        < got[0]
        <= 1.01 * 1e-2 * n**0.5 + 1e-2 * 0.1 * float(snapshots[0].norm())
    )
    assert got[2] < got[0]  # linear decay to 0 over 3 steps: the last step is the smallest
