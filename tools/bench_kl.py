"""Side by side, one process, one thread: a KL-to-aligned fine-tuning step as it is now against the
same step from an earlier commit (default: before the KL term was computed at the non-padding rows
only, from the log-sum-exp), with plain SFT's step as the yardstick.

Usage: python tools/bench_kl.py [--old-rev 6a63746] [--rounds 3]
(the embedded SmolLM2-135M-Instruct, the calibrated protocol's attack batches: batch 8, at most
160 tokens, LoRA r 32 on q/k/v; CPU time per step; a few minutes)

Both steps run on the same model (moved off θ₀ first, so the KL is not 0), the same batches, in
interleaved rounds, so machine load falls on both alike. The gradients of the two are compared
too: they must agree to rounding.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hftguard.builtins.defenses.kl import KL, KLOptions
from hftguard.config import LoraOptions
from hftguard.context import DataContext, StepContext
from hftguard.data.inputs import collate, encode_all, load_examples
from hftguard.engine import models
from hftguard.engine import steps as gradients
from hftguard.registry import default_registry

ROOT = Path(__file__).resolve().parents[1]


def old_kl_class(rev: str) -> type:
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:hftguard/builtins/defenses/kl.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "kl_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("kl_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kl_old"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.KL


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old-rev", default="6a63746")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()

    torch.set_num_threads(1)
    reg = default_registry()
    ctx = DataContext(seed=0)
    sent = load_examples("sentiment", "task", "train", reg, ctx)[:256]
    harm = load_examples("harmful-compliance", "harmful", "attack", reg, ctx)[:64]
    rec = models.resolve("smollm2-135m-instruct").recipe
    tok = models.load_tokenizer(rec.base)
    model = models.attach_lora(
        models.load_base(rec.base),
        LoraOptions(r=32, alpha=32.0, target_modules=["q_proj", "k_proj", "v_proj"]),
        seed=0,
    )
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rng = random.Random(0)
    batches = [
        collate(
            encode_all(rng.sample(sent, 6) + rng.sample(harm, 2), tok, "chat", 160),
            tok.pad_token_id,
        )
        for _ in range(args.batches)
    ]

    def step_ctx() -> StepContext:
        return StepContext(
            step=1,
            total_steps=10,
            params=params,
            next_batch=lambda name: None,
            loss_fn=gradients.lm_loss,
            output_dir=None,
            device=torch.device("cpu"),
        )

    new, old = KL(KLOptions()), old_kl_class(args.old_rev)(KLOptions())
    new.setup(step_ctx())
    old.theta0 = {n: t.clone() for n, t in new.theta0.items()}
    with torch.no_grad():  # off θ₀, so that the KL and its gradient are not 0
        gen = torch.Generator().manual_seed(0)
        for _, p in params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)

    def sft(b):  # the yardstick
        gradients.lm_loss(model, b).backward()

    runs = {"SFT": sft, "KL (old)": lambda b: old.training_step(model, b, step_ctx())}
    runs["KL (new)"] = lambda b: new.training_step(model, b, step_ctx())
    times: dict[str, list[float]] = {k: [] for k in runs}
    grads: dict[str, list[torch.Tensor]] = {}
    for r in range(args.rounds):
        for name, fn in runs.items():
            for i, b in enumerate(batches):
                model.zero_grad(set_to_none=True)
                c0 = time.process_time()
                fn(b)
                times[name].append(time.process_time() - c0)
                if r == 0 and i == 0:
                    grads[name] = [p.grad.detach().clone() for _, p in params]
    for a, b in zip(grads["KL (old)"], grads["KL (new)"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    toks = sum(int(b.attention_mask.sum()) for b in batches)
    cells = sum(b.attention_mask.numel() for b in batches)
    sft_s = statistics.median(times["SFT"])
    print(
        f"machine: {sys.platform}, torch {torch.__version__}, 1 thread; non-pad tokens {toks}/{cells}"
    )
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name}: median {med:.3f} CPU s/step over {len(t)} steps, {med / sft_s:.2f}x SFT")
    ratio = statistics.median(times["KL (old)"]) / statistics.median(times["KL (new)"])
    print(f"KL old / new: {ratio:.2f}x; gradients agree (rtol 1e-4)")


if __name__ == "__main__":
    main()
