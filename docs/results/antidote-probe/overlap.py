"""Do Antidote's masks depend on the calibration data being harmful? (docs/results/antidote-probe)

Computes the Wanda masks of the attacked model's fine-tuning adapter twice, with the same code as
the `antidote` repair defense (hftguard.builtins.defenses.antidote): once on harmful calibration
data (the default, `harmful-compliance` train) and once on benign data (the `sentiment` task's
train examples with their label answers: the user's own task). Prints the share of the
harmful-data mask that the benign-data mask also selects (two unrelated masks with the same
per-row count would share about the ratio: 10% of A's entries, 12.5% of B's at 0.1) and writes
overlap.json. Usage:

    python docs/results/antidote-probe/overlap.py ATTACKED_RUN [--samples 256] [--ratio 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from hftguard.builtins.defenses.antidote import (
    input_energy,
    lora_factors,
    prune_mask,
    wanda_scores,
)
from hftguard.config import RepairConfig
from hftguard.context import DataContext
from hftguard.data.inputs import collate, encode_all, load_examples
from hftguard.engine import models
from hftguard.engine.repair import read_lora
from hftguard.pipeline.repair import _attacked_model
from hftguard.registry import default_registry


def masks_on(model, tok, factors, examples, ratio, batch_size=8, max_length=256):
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    enc = encode_all(examples, tok, "chat", max_length)
    batches = [collate(enc[i : i + batch_size], pad) for i in range(0, len(enc), batch_size)]
    energy, nll = input_energy(model, batches, factors)
    return {
        k: prune_mask(wanda_scores(m.weight.detach().cpu(), energy[k]), ratio)
        for k, m in factors.items()
    }, nll


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("attacked")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--out", default=str(Path(__file__).with_name("overlap.json")))
    args = ap.parse_args()
    torch.manual_seed(0)
    recipe = models.resolve(args.attacked).recipe
    model, tok = _attacked_model(RepairConfig(model=args.attacked, device="cpu"), recipe)
    lora = read_lora(recipe.adapters[-1])
    factors = lora_factors(model, list(lora.modules))
    reg, ctx = default_registry(), DataContext(seed=0)
    harmful = load_examples("harmful-compliance", "harmful", "train", reg, ctx)[: args.samples]
    benign = load_examples("sentiment", "task", "train", reg, ctx)[: args.samples]
    m_h, nll_h = masks_on(model, tok, factors, harmful, args.ratio)
    m_b, nll_b = masks_on(model, tok, factors, benign, args.ratio)
    shared = {k: float((m_h[k] & m_b[k]).sum()) / max(float(m_h[k].sum()), 1.0) for k in m_h}
    # what two independent random masks of the same per-row count would share: the ratio itself
    out = {
        "attacked": args.attacked,
        "samples": args.samples,
        "ratio": args.ratio,
        "nll_harmful": nll_h,
        "nll_benign": nll_b,
        "shared_A_median": statistics.median(v for k, v in shared.items() if k.endswith("lora_A")),
        "shared_B_median": statistics.median(v for k, v in shared.items() if k.endswith("lora_B")),
        "shared_all": sum(float((m_h[k] & m_b[k]).sum()) for k in m_h)
        / sum(float(m_h[k].sum()) for k in m_h),
        "shared_per_factor": shared,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print({k: v for k, v in out.items() if k != "shared_per_factor"}, file=sys.stdout)


if __name__ == "__main__":
    main()
