"""Shared by the repair-defense tests (SafeLoRA, Antidote): a tiny aligned-then-attacked model and
a reader of LoRA factors that does not go through hftguard.engine.repair."""

from __future__ import annotations

from pathlib import Path

from hftguard.config import AlignConfig, FinetuneConfig, LoraOptions, TrainOptions
from hftguard.pipeline import align, attack_finetune

TINY_LORA = LoraOptions(r=4, alpha=8.0)


def train_options() -> TrainOptions:
    return TrainOptions(max_steps=3, batch_size=4, max_length=64, lr=5e-2)


def aligned_and_attacked(root: Path) -> tuple[Path, Path]:
    """A tiny-random model aligned with SFT, then attacked (p = 0.5) with a new LoRA adapter on
    the merged aligned model (lora_mode merge): the kind of run a repair works on."""
    from hftguard.console import Reporter

    quiet = Reporter(quiet=True)
    aligned = root / "aligned"
    align.run(
        AlignConfig(
            model="tiny-random", samples=8, retain="", train=train_options(), lora=TINY_LORA
        ),
        aligned,
        reporter=quiet,
    )
    out = root / "attacked"
    attack_finetune.run(
        FinetuneConfig(
            model=str(aligned),
            samples=8,
            harmful_ratio=0.5,
            lora_mode="merge",
            train=train_options(),
            lora=TINY_LORA,
            seed=7,
        ),
        out,
        reporter=quiet,
    )
    return aligned, out


def lora_factors(adapter: str | Path) -> dict[str, tuple]:
    """``{module: (A, B)}`` read straight from the adapter's safetensors file."""
    from safetensors.torch import load_file

    t = load_file(f"{adapter}/adapter_model.safetensors")
    pre = "base_model.model."
    return {
        k[len(pre) : -len(".lora_A.weight")]: (t[k], t[k.replace("lora_A", "lora_B")])
        for k in t
        if k.endswith(".lora_A.weight")
    }
