"""Reading and writing LoRA adapters, and weight differences between models: what post-fine-tuning
repair defenses (``hftguard repair``) work with.

An adapter directory is PEFT's layout: ``adapter_config.json`` and ``adapter_model.safetensors``
whose keys are ``base_model.model.<module>.lora_A.weight`` ([r, d_in]) and ``...lora_B.weight``
([d_out, r]); the update of ``<module>`` is ``(lora_alpha / r) · B A``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hftguard.errors import ModelError

PREFIX = "base_model.model."
WEIGHTS = "adapter_model.safetensors"


@dataclass
class Lora:
    """One LoRA adapter: ``modules[name] = (A, B)`` in the adapter's order, and its scale."""

    path: Path
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scale: float
    config: dict[str, object]


def read_lora(adapter: str | Path) -> Lora:
    """The (A, B) pairs of a PEFT LoRA adapter directory, by module name."""
    from safetensors.torch import load_file

    path = Path(adapter)
    config_file, weights = path / "adapter_config.json", path / WEIGHTS
    if not (config_file.is_file() and weights.is_file()):
        raise ModelError(
            f"{path} is not a LoRA adapter directory (no adapter_config.json and {WEIGHTS}).",
            hint="Repair works on a model fine-tuned with a LoRA adapter (attack-finetune).",
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise ModelError(f"{path} is a {config.get('peft_type')} adapter, not plain LoRA.")
    tensors = load_file(str(weights))
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in sorted(tensors, key=_layer_order):
        if not key.endswith(".lora_A.weight"):
            continue
        name = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        b_key = key.replace(".lora_A.weight", ".lora_B.weight")
        if b_key not in tensors:
            raise ModelError(f"{weights}: {key} has no matching lora_B weight.")
        modules[name] = (tensors[key], tensors[b_key])
    if not modules:
        raise ModelError(f"{weights} holds no LoRA weights.")
    r = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", r))
    scale = alpha / (r**0.5) if config.get("use_rslora") else alpha / r
    return Lora(path, modules, scale, config)


def _layer_order(key: str) -> tuple[int, str]:
    """Sort keys by layer index numerically (layers.10 after layers.9), then by name."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1]), key
    return -1, key


def linear_weights(base: str, adapters: list[str], names: list[str]) -> dict[str, torch.Tensor]:
    """The fp32 weights of the named linear modules of ``base`` with ``adapters`` merged."""
    from hftguard.engine import models

    model = models._merge_adapters(models.load_base(base, torch.float32), list(adapters))
    found = dict(model.named_modules())
    missing = [n for n in names if n not in found or not hasattr(found[n], "weight")]
    if missing:
        raise ModelError(
            f"The model {base} has no linear module {missing[0]}, which the adapter trains.",
            hint="Repair the model with the base model it was fine-tuned from.",
        )
    return {n: found[n].weight.detach().to(torch.float32).clone() for n in names}


def weight_differences(base: str, adapters: list[str], names: list[str]) -> dict[str, torch.Tensor]:
    """``W(base + adapters) − W(base)`` for each named module: what ``adapters`` changed."""
    with_adapters = linear_weights(base, adapters, names)
    if not adapters:
        return {n: torch.zeros_like(w) for n, w in with_adapters.items()}
    plain = linear_weights(base, [], names)
    return {n: with_adapters[n] - plain[n] for n in names}


def write_lora(
    source: Path,
    target: Path,
    new_b: dict[str, torch.Tensor],
    *,
    new_a: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A copy of the adapter ``source`` at ``target`` with the B matrices of ``new_b`` (and the A
    matrices of ``new_a``) replaced, written atomically (temp directory, fsync, rename)."""
    from safetensors.torch import load_file, save_file

    from hftguard.engine.checkpoints import atomic_directory

    tensors = load_file(str(Path(source) / WEIGHTS))
    for factor, new in (("lora_B", new_b), ("lora_A", new_a or {})):
        for name, w in new.items():
            key = f"{PREFIX}{name}.{factor}.weight"
            if key not in tensors or tensors[key].shape != w.shape:
                raise ModelError(
                    f"write_lora: {key} is not a {factor} matrix of shape {tuple(w.shape)}."
                )
            tensors[key] = w.to(tensors[key].dtype).contiguous()
    with atomic_directory(target) as tmp:
        for f in Path(source).iterdir():
            if f.is_file() and f.name != WEIGHTS:
                shutil.copy2(f, tmp / f.name)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    return target
