"""Antibody fine-tuning: the task score from the training forward vs its own no-grad pass.

Times fine-tuning SFT, Antibody fine-tuning with ``score_pass = "reuse"`` (the default) and with
``score_pass = "separate"`` (the official scheme) in one process, on the same model, LoRA init
and batches as ``hftguard bench`` (its helpers), interleaved over rounds; medians of the
process's CPU time. Usage (docs/performance.md):

    python tools/bench_antibody_ft.py --threads 1 --batch-size 4 --seq-len 128 --steps 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics

from hftguard.bench import attach_lora, bench_data, build_model, reset_lora, time_defense_steps
from hftguard.bench.inputs import _pad_id
from hftguard.bench.options import BenchOptions
from hftguard.bench.timing import StepTimes
from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune, AntibodyFinetuneOptions
from hftguard.builtins.defenses.sft import SFTFinetune
from hftguard.config import LoraOptions
from hftguard.data.inputs import collate
from hftguard.registry import default_registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    import torch  # after argument parsing (--help without torch)

    torch.set_num_threads(a.threads)
    opts = BenchOptions(
        model=a.model,
        batch_size=a.batch_size,
        seq_len=a.seq_len,
        steps=a.steps,
        warmup=a.warmup,
        rounds=a.rounds,
        precision="fp32",
    )
    device = torch.device("cpu")
    base, tok, _ = build_model(opts, device, torch.float32)
    model, params, init = attach_lora(base, LoraOptions(), device, opts.seed)
    data = bench_data(tok, opts, default_registry())
    pad = _pad_id(tok)
    n = len(data["user"]) // opts.batch_size
    user = [
        collate(data["user"][i * opts.batch_size : (i + 1) * opts.batch_size], pad)
        for i in range(n)
    ]
    variants = {
        "sft": SFTFinetune,
        "antibody (reuse)": lambda: AntibodyFinetune(
            AntibodyFinetuneOptions(score_pass="reuse", log_samples=False)
        ),
        "antibody (separate)": lambda: AntibodyFinetune(
            AntibodyFinetuneOptions(score_pass="separate", log_samples=False)
        ),
    }
    times = {k: StepTimes() for k in variants}
    for r in range(opts.rounds):
        for name, make in variants.items():
            reset_lora(params, init)
            times[name] += time_defense_steps(
                model, params, make(), user, {}, opts, device, torch.float32
            )
            print(f"round {r + 1}: {name} done", flush=True)
    sft = statistics.median(times["sft"].cpu)
    rows = {
        name: {
            "cpu_median_step_s": statistics.median(t.cpu),
            "wall_median_step_s": statistics.median(t.wall),
            "ratio_to_sft": statistics.median(t.cpu) / sft,
            "cpu_step_times_s": t.cpu,
        }
        for name, t in times.items()
    }
    for name, row in rows.items():
        print(
            f"{name:22s} cpu {row['cpu_median_step_s']:.3f} s  wall "
            f"{row['wall_median_step_s']:.3f} s  x SFT {row['ratio_to_sft']:.3f}"
        )
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"options": vars(a), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
