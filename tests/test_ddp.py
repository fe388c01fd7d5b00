"""Data parallelism, proven on two CPU processes (gloo): what ``accelerate launch`` runs.

``training.train`` gives each process the rows ``rank::world`` of every global batch (main batch
and extra streams alike), lets the defense assemble its gradient from as many passes as it needs,
and averages that assembled gradient across processes once per step. These tests run the real
loop in two spawned processes and compare the final LoRA weights with single-process runs:

* SFT: identical (to 1e-5) to one process training on the global batch.
* Booster: identical to one process running Booster on the global batch. The assembled gradient
  is averaged once per step; in addition ``_sharpness.harmful_sharpness`` averages the harmful
  gradient g_h across processes before the perturbation (one LoRA-sized all-reduce), because the
  perturbation direction is nonlinear in the data: without it each process would perturb along
  its own shard's g_h (``booster_shard_averaged`` in the single-process reference shows the gap).

Equality with the global batch needs every shard to hold the same number of response tokens
(each process's loss is a mean over its own tokens): the data here is fitted to one fixed
length with ``hftguard.bench.encode_fixed``.

On a CPU-only machine ``accelerate.PartialState()`` (as ``train`` calls it) ignores the launch
environment unless the state was first created with ``cpu=True``; the workers do that.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hftguard.builtins.defenses.antibody_align import AntibodyAlign
from hftguard.builtins.defenses.booster import Booster
from hftguard.builtins.defenses.sft import SFTAlign
from hftguard.builtins.defenses.vaccine import Vaccine

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 4
SEQ_LEN = 24
ATOL = 1e-5

Weights = dict[str, torch.Tensor]


def _mean_over_processes(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average a gradient list over processes (identity in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [
        chunk.view_as(g)
        for chunk, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)
    ]


def _rows(batch: Any, rank: int) -> Any:
    """The rows process ``rank`` gets (``EpochSampler`` shards as ``rank::world``)."""
    if batch is None:
        return None
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids[rank::WORLD],
        attention_mask=batch.attention_mask[rank::WORLD],
        labels=batch.labels[rank::WORLD],
        is_harmful=batch.is_harmful[rank::WORLD],
        refusal=_rows(batch.refusal, rank),
    )


class _ShardAveraged:
    """Run ``inner`` on each process's shard in turn and average the gradients once.

    What data-parallel training with one all-reduce of the assembled gradient computes, in one
    process.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.streams = inner.name, inner.streams
        self.refusal_view = inner.refusal_view

    def setup(self, ctx: Any) -> None:
        self.inner.setup(ctx)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def training_step(self, model: Any, batch: Any, ctx: Any) -> dict[str, float]:
        streams = {name: ctx.next_batch(name) for name in self.inner.streams}
        total: list[torch.Tensor] | None = None
        metrics: dict[str, float] = {}
        for rank in range(WORLD):
            shard_ctx = dataclasses.replace(
                ctx, next_batch=lambda name, rank=rank: _rows(streams[name], rank)
            )
            for _, p in ctx.params:
                p.grad = None
            metrics = self.inner.training_step(model, _rows(batch, rank), shard_ctx)
            grads = [p.grad.detach().clone() for _, p in ctx.params]
            total = grads if total is None else [a + b for a, b in zip(total, grads, strict=True)]
        assert total is not None
        for (_, p), g in zip(ctx.params, total, strict=True):
            p.grad = g / WORLD
        return metrics


VARIANTS: dict[str, Callable[[], Any]] = {
    "sft": SFTAlign,
    "booster": Booster,
    "vaccine": Vaccine,
    "antibody": AntibodyAlign,
}


def _train(defense: Any, run_path: Path) -> Weights:
    """3 steps of ``training.train`` on tiny-random + LoRA; the final LoRA weights."""
    from peft import LoraConfig, get_peft_model

    from hftguard import training
    from hftguard.bench import encode_fixed
    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.records import Example
    from hftguard.runs import open_run_dir
    from hftguard.testing import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    align = [
        Example(f"How do I hurt person {i}?", f"I can't help with that, {i}.", "refusal")
        for i in range(8)
    ]
    harmful = [
        Example(f"Explain how to steal {i} times", f"Sure, here is plan {i}.", "harmful")
        for i in range(8)
    ]
    view = defense.refusal_view
    main = encode_fixed(align, tok, SEQ_LEN, refusal_view=view)
    streams = {"harmful": encode_fixed(harmful, tok, SEQ_LEN, refusal_view=view)}
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model(tok, seed=0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    opts = TrainOptions(lr=1e-2, max_steps=STEPS, batch_size=GLOBAL_BATCH, checkpoint_every=0)
    run = open_run_dir(run_path, "align")
    training.train(
        model,
        defense,
        main,
        streams if defense.streams else {},
        opts,
        run,
        Reporter(quiet=True),
        seed=3,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from accelerate import PartialState

    state = PartialState(cpu=True)  # train()'s PartialState() then shares this 2-process state
    assert (state.num_processes, state.process_index) == (WORLD, rank)
    out = Path(out_dir)
    weights = {name: _train(make(), out / f"rank{rank}" / name) for name, make in VARIANTS.items()}
    torch.save(weights, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Weights]]:
    """Each rank's final weights for every variant, from one 2-process launch."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Weights]:
    """Single-process references on the same global batches."""
    out = tmp_path_factory.mktemp("single")
    return {
        "sft": _train(SFTAlign(), out / "sft"),
        "booster": _train(Booster(), out / "booster"),
        "booster_shard_averaged": _train(_ShardAveraged(Booster()), out / "shards"),
        "vaccine": _train(Vaccine(), out / "vaccine"),
        "antibody": _train(AntibodyAlign(), out / "antibody"),
    }


def _max_diff(a: Weights, b: Weights) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_both_processes_end_with_the_same_weights(ddp: list[dict[str, Weights]]) -> None:
    for name in VARIANTS:
        assert _max_diff(ddp[0][name], ddp[1][name]) == 0.0, name


def test_training_moved_the_weights(
    ddp: list[dict[str, Weights]], single: dict[str, Weights]
) -> None:
    # guards against a vacuous comparison: the runs must differ from each other and from init
    assert _max_diff(ddp[0]["sft"], ddp[0]["booster"]) > 1e-4
    assert _max_diff(single["booster"], single["booster_shard_averaged"]) > 10 * ATOL


def test_ddp_sft_matches_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights]
) -> None:
    assert _max_diff(ddp[0]["sft"], single["sft"]) < ATOL


def test_ddp_booster_matches_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights]
) -> None:
    assert _max_diff(ddp[0]["booster"], single["booster"]) < ATOL


@pytest.mark.parametrize("name", ["vaccine", "antibody"])
def test_ddp_vaccine_and_antibody_match_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights], name: str
) -> None:
    # Vaccine: the activation-gradient norm is all-reduced; Antibody: g_h before theta', and
    # g_a and d before lambda_t.
    assert _max_diff(ddp[0][name], single[name]) < ATOL
