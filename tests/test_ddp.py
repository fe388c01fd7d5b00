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
* Vaccine and Antibody (alignment): likewise, with their global norms and lambda_t.
* Antibody fine-tuning: the per-sample scores are gathered, so the softmax runs over the global
  batch (``antibody_ft_shard_softmax`` shows the gap to a softmax per shard), on samples of
  different lengths and shards of different sizes.

The alignment variants use data fitted to one fixed length (``hftguard.bench.encode_fixed``);
the loop normalises every shard's loss by the global batch's token count, so uneven lengths
would give the same result.

The second half runs the CLI stages themselves (``align``, ``attack-finetune``) on two processes
and checks what process 0 writes, errors and ``--resume``.

On a CPU-only machine ``accelerate.PartialState()`` (as ``train`` calls it) ignores the launch
environment unless the state was first created with ``cpu=True``; the workers do that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hftguard.builtins.defenses.antibody_align import AntibodyAlign
from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune
from hftguard.builtins.defenses.booster import Booster
from hftguard.builtins.defenses.sft import SFTAlign
from hftguard.builtins.defenses.tvaccine import TVaccine, TVaccineConfig
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
    "antibody_ft": AntibodyFinetune,
    # the tiny model has 2 layers: one is trained, the other frozen (grad None) at every step
    "t_vaccine": lambda: TVaccine(TVaccineConfig(layers=1)),
}
#: Antibody fine-tuning trains on user samples of different lengths, 5 per global batch: shards of
#: 3 and 2 rows (then 2 and 1), so its gathered softmax and its sum_i w_i N_i denominator are
#: tested with uneven shards and uneven token counts.
USER_BATCH = 5


def _user_data(tok: Any) -> list[Any]:
    from hftguard.data.inputs import encode_all
    from hftguard.records import Example

    users = [
        Example(f"Review {i}: is it good?", " ".join(["fine"] * (1 + 2 * i)), "benign")
        if i % 3
        else Example(f"Explain how to steal {i} times", f"Sure, plan {i}.", "harmful")
        for i in range(8)
    ]
    return encode_all(users, tok, "chat", 64, refusal_view=True)


def _train(defense: Any, run_path: Path) -> Weights:
    """3 steps of ``training.train`` on tiny-random + LoRA; the final LoRA weights."""
    from peft import LoraConfig, get_peft_model

    from hftguard.bench import encode_fixed
    from hftguard.config import TrainOptions
    from hftguard.console import Reporter
    from hftguard.engine import training
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
    batch_size = GLOBAL_BATCH
    if isinstance(defense, AntibodyFinetune) or isinstance(
        getattr(defense, "inner", None), AntibodyFinetune
    ):
        main, batch_size = _user_data(tok), USER_BATCH
    opts = TrainOptions(lr=1e-2, max_steps=STEPS, batch_size=batch_size, checkpoint_every=0)
    run = open_run_dir(run_path, "align")
    try:
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
    finally:
        run.release()  # the run directory's lock (open_run_dir), as a stage's guard() does
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
def ddp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process launch that trains every variant; rank ``r`` writes under ``rank{r}/``."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def ddp(ddp_dir: Path) -> list[dict[str, Weights]]:
    """Each rank's final weights for every variant."""
    return [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("single")


@pytest.fixture(scope="module")
def single(single_dir: Path) -> dict[str, Weights]:
    """Single-process references on the same global batches."""
    out = single_dir
    return {
        "sft": _train(SFTAlign(), out / "sft"),
        "booster": _train(Booster(), out / "booster"),
        "booster_shard_averaged": _train(_ShardAveraged(Booster()), out / "shards"),
        "vaccine": _train(Vaccine(), out / "vaccine"),
        "t_vaccine": _train(TVaccine(TVaccineConfig(layers=1)), out / "t_vaccine"),
        "antibody": _train(AntibodyAlign(), out / "antibody"),
        "antibody_ft": _train(AntibodyFinetune(), out / "antibody_ft"),
        "antibody_ft_shard_softmax": _train(
            _ShardAveraged(AntibodyFinetune()), out / "antibody_ft_shards"
        ),
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
    # a softmax over each shard (what every process computed before the gather) is different
    assert _max_diff(single["antibody_ft"], single["antibody_ft_shard_softmax"]) > 10 * ATOL


def test_ddp_sft_matches_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights]
) -> None:
    assert _max_diff(ddp[0]["sft"], single["sft"]) < ATOL


def test_ddp_booster_matches_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights]
) -> None:
    assert _max_diff(ddp[0]["booster"], single["booster"]) < ATOL


@pytest.mark.parametrize("name", ["vaccine", "antibody", "t_vaccine"])
def test_ddp_vaccine_and_antibody_match_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights], name: str
) -> None:
    # Vaccine: the activation-gradient norm is all-reduced; Antibody: g_h before theta', and
    # g_a and d before lambda_t; T-Vaccine: the same layers drawn everywhere, and the frozen
    # layer's .grad stays None through the all-reduce (zeros would let AdamW decay it).
    assert _max_diff(ddp[0][name], single[name]) < ATOL


def test_ddp_antibody_finetune_matches_single_process_global_batch(
    ddp: list[dict[str, Weights]], single: dict[str, Weights]
) -> None:
    # the per-sample scores are gathered: one softmax over the global batch, and the weighted
    # loss normalised by the global batch's sum_i w_i N_i
    assert _max_diff(ddp[0]["antibody_ft"], single["antibody_ft"]) < ATOL


def test_ddp_antibody_finetune_logs_the_global_batch_once(
    ddp: list[dict[str, Weights]], ddp_dir: Path, single_dir: Path
) -> None:
    def rows(run: Path) -> list[dict[str, Any]]:
        text = (run / "antibody_weights.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    one, two = rows(single_dir / "antibody_ft"), rows(ddp_dir / "rank0" / "antibody_ft")
    assert len(one) == len(two) == 5 + 3 + 5
    for a, b in zip(one, two, strict=True):
        assert (a["step"], a["index"], a["is_harmful"]) == (b["step"], b["index"], b["is_harmful"])
        for key in ("score", "weight", "task_nll", "refusal_nll"):
            assert abs(a[key] - b[key]) < 1e-5, (key, a, b)
    assert sorted(p.name for p in (ddp_dir / "rank1" / "antibody_ft").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The CLI stages on two processes, as `torchrun --nproc_per_node 2 -m hftguard align ...` starts
# them: each process gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and runs the
# whole command; process 0 alone writes the run directory (hftguard.engine.distributed).

ALIGN_ARGS = [
    "align",
    "--model",
    "tiny-random",
    "--defense",
    "sft",
    "--max-steps",
    "4",
    "--batch-size",
    "4",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "retain=''",  # tiny-random's self-distilled answers are all dropped: no retain set
]
FINETUNE_ARGS = ["attack-finetune", "--defense", "antibody", "--max-steps", "2"]
FINETUNE_ARGS += ["--batch-size", "5"]  # shards of 3 and 2 samples
CLI_TIMEOUT = 300

#: Runs the CLI; with STOP_AFTER_CHECKPOINT set, process 0 is interrupted (Ctrl-C) right after it
#: saves a checkpoint, which leaves an unfinished run to resume.
STOPPING_CLI = """
import os, sys
if os.environ.get("STOP_AFTER_CHECKPOINT"):
    from hftguard.engine import training
    save = training._save_checkpoint
    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt
    training._save_checkpoint = save_then_stop
from hftguard.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def _launch(
    args: list[str], world: int, logs: Path, env: dict[str, str] | None = None
) -> list[Ran]:
    """Run the CLI in ``world`` processes with the launch environment; wait for all of them."""
    import subprocess
    import sys

    logs.mkdir(parents=True, exist_ok=True)
    runner = logs / "cli.py"
    runner.write_text(STOPPING_CLI)
    launch_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
    base = {k: v for k, v in os.environ.items() if k not in (*launch_keys, "MASTER_PORT")}
    base.update(OMP_NUM_THREADS="1", HFTGUARD_DIST_TIMEOUT="120", **(env or {}))
    port = _free_port()
    procs = []
    for rank in range(world):
        penv = dict(base)
        if world > 1:
            penv.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                WORLD_SIZE=str(world),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(world),
            )
        out, err = logs / f"rank{rank}.out", logs / f"rank{rank}.err"
        with out.open("w") as o, err.open("w") as e:  # files, not pipes: no full-pipe deadlock
            procs.append(
                subprocess.Popen([sys.executable, str(runner), *args], env=penv, stdout=o, stderr=e)
            )
    try:
        for p in procs:
            p.wait(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[0]} on {world} processes did not finish in {CLI_TIMEOUT} s (hang)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [
        Ran(p.returncode, (logs / f"rank{r}.out").read_text(), (logs / f"rank{r}.err").read_text())
        for r, p in enumerate(procs)
    ]


def _adapter(run: Path) -> Weights:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _manifest(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())


def _ok(ran: list[Ran]) -> None:
    for rank, r in enumerate(ran):
        assert r.returncode == 0, f"process {rank} failed:\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """align and attack-finetune in one process and in two, same global batch."""
    root = tmp_path_factory.mktemp("cli")
    runs, logs = root / "runs", root / "logs"
    runs.mkdir()
    out: dict[str, Any] = {"runs": runs}
    _ok(_launch([*ALIGN_ARGS, "--out", str(runs / "align1")], 1, logs / "align1"))
    out["align2"] = _launch([*ALIGN_ARGS, "--out", str(runs / "align2")], 2, logs / "align2")
    model = ["--model", str(runs / "align1")]  # both fine-tunings start from the same model
    ft = [*FINETUNE_ARGS, *model]
    _ok(_launch([*ft, "--out", str(runs / "ft1")], 1, logs / "ft1"))
    out["ft2"] = _launch([*ft, "--out", str(runs / "ft2")], 2, logs / "ft2")
    return out


def test_cli_align_on_two_processes_writes_one_run_directory(cli_runs: dict[str, Any]) -> None:
    ran, run = cli_runs["align2"], cli_runs["runs"] / "align2"
    _ok(ran)
    assert {p.name for p in run.iterdir()} == {"adapter", "align_log.jsonl", "manifest.json"}
    manifest = _manifest(run)
    assert manifest["status"] == "completed"
    assert manifest["processes"] == 2
    assert manifest["training"]["steps"] == 4
    assert "processes" not in _manifest(cli_runs["runs"] / "align1")
    # process 0 reports; process 1 prints no result and no progress
    assert "Done" in ran[0].stdout
    assert ran[1].stdout == ""
    assert "align: loading" in ran[0].stderr and "align: loading" not in ran[1].stderr


def test_cli_align_on_two_processes_matches_one_process(cli_runs: dict[str, Any]) -> None:
    one, two = _adapter(cli_runs["runs"] / "align1"), _adapter(cli_runs["runs"] / "align2")
    assert max(float(t.abs().max()) for t in one.values()) > 1e-4  # training moved the weights
    assert _max_diff(one, two) < ATOL
    # the log too: the loss is averaged over the processes (the global batch's loss)
    logs = [
        [json.loads(line) for line in (cli_runs["runs"] / run / "align_log.jsonl").open()]
        for run in ("align1", "align2")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [0, 1, 2, 3]
    for a, b in zip(*logs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    final = [_manifest(cli_runs["runs"] / r)["training"] for r in ("align1", "align2")]
    assert final[1]["final_loss"] == pytest.approx(final[0]["final_loss"], rel=1e-5)


def test_cli_attack_finetune_on_two_processes_matches_one_process(
    cli_runs: dict[str, Any],
) -> None:
    _ok(cli_runs["ft2"])
    run = cli_runs["runs"] / "ft2"
    assert _manifest(run)["status"] == "completed"
    files = {"adapter", "finetune_log.jsonl", "manifest.json", "antibody_weights.jsonl"}
    assert {p.name for p in run.iterdir()} == files
    assert _max_diff(_adapter(cli_runs["runs"] / "ft1"), _adapter(run)) < ATOL


def test_cli_error_on_process_0_stops_every_process(
    cli_runs: dict[str, Any], tmp_path: Path
) -> None:
    # align2 exists: process 0 refuses to write into it; process 1 must not wait for it
    out = cli_runs["runs"] / "align2"
    before = (out / "manifest.json").read_text()
    ran = _launch([*ALIGN_ARGS, "--out", str(out)], 2, tmp_path)
    assert [r.returncode for r in ran] == [2, 2]
    assert "already exists" in ran[0].stderr
    assert "process 0 failed" in ran[1].stderr and "already exists" in ran[1].stderr
    assert (out / "manifest.json").read_text() == before


def test_cli_resume_on_two_processes_after_an_interruption(
    cli_runs: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = [*ALIGN_ARGS, "--out", str(out)]
    ran = _launch(args, 2, tmp_path / "first", env={"STOP_AFTER_CHECKPOINT": "1"})
    # process 0 is interrupted after the step-2 checkpoint; process 1, waiting in the next
    # step's all-reduce, fails too instead of hanging
    assert ran[0].returncode == 130
    assert ran[1].returncode != 0
    assert _manifest(out)["status"] == "interrupted"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    _ok(_launch([*args, "--resume"], 2, tmp_path / "resumed"))
    assert _manifest(out)["status"] == "completed"
    assert not (out / "checkpoints").exists()
    steps = [
        json.loads(line)["step"] for line in (out / "align_log.jsonl").read_text().splitlines()
    ]
    assert steps == [0, 1, 2, 3]
    assert _max_diff(_adapter(cli_runs["runs"] / "align1"), _adapter(out)) < ATOL


def test_cli_eval_on_two_processes_runs_on_process_0(
    cli_runs: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    args = ["eval", "--model", str(cli_runs["runs"] / "align1"), "--out", str(out)]
    ran = _launch([*args, "--harmful-samples", "2", "--max-new-tokens", "4"], 2, tmp_path / "l")
    _ok(ran)
    assert _manifest(out)["status"] == "completed" and (out / "metrics.json").is_file()
    assert "HS" in ran[0].stdout and ran[1].stdout == ""


def test_cli_run_refuses_several_processes(tmp_path: Path) -> None:
    ran = _launch(["run", "--out", str(tmp_path / "grid")], 2, tmp_path / "l")
    assert [r.returncode for r in ran] == [2, 2]
    assert all("cannot be launched on several processes" in r.stderr for r in ran)
    assert not (tmp_path / "grid").exists()
