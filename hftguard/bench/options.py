"""What ``hftguard bench`` measures and on what: its options, sections and model shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hftguard.errors import ConfigError

SECTIONS = ("defenses", "trainer", "generation", "padding", "repair")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STAGE_KINDS = {"align": "alignment-defense", "finetune": "finetune-defense"}

#: Real architectures' shapes (public configs), random-initialised for ``--llama-shape``.
LLAMA_SHAPES: dict[str, dict[str, Any]] = {
    "135m": {
        "source": "SmolLM2-135M",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
    },
    "1b": {
        "source": "Llama-3.2-1B",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
    "3b": {
        "source": "Llama-3.2-3B",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
    "8b": {
        "source": "Llama-3.1-8B",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
    },
}


@dataclass
class BenchOptions:
    """What ``hftguard bench`` measures and on what (see ``hftguard bench --help``)."""

    model: str = "smollm2-135m-instruct"
    llama_shape: str | None = None
    batch_size: int = 8
    seq_len: int = 128
    steps: int = 5
    warmup: int = 1
    rounds: int = 1
    defenses: list[str] = field(default_factory=list)  # empty = every registered defense
    skip: list[str] = field(default_factory=list)
    device: str = "auto"
    precision: str = "auto"  # one precision, or several comma-separated: run side by side
    lr: float = 5e-4
    gen_prompts: int = 32
    gen_batch_size: int = 16
    max_new_tokens: int = 64  # the eval stage's default
    peak_tflops: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [s for s in self.skip if s not in SECTIONS]
        if bad:
            raise ConfigError(
                f"--skip {', '.join(bad)}: unknown section.",
                hint=f"Sections: {', '.join(SECTIONS)}.",
            )
        if self.llama_shape is not None and self.llama_shape not in LLAMA_SHAPES:
            raise ConfigError(
                f"--llama-shape {self.llama_shape}: unknown shape.",
                hint=f"Shapes: {', '.join(LLAMA_SHAPES)}.",
            )
        for name in (
            "batch_size",
            "steps",
            "rounds",
            "gen_prompts",
            "gen_batch_size",
            "max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions or len(set(self.precisions)) < len(self.precisions):
            raise ConfigError(
                f"--precision {self.precision}: "
                + (f"unknown {', '.join(bad)}." if bad else "name each precision once."),
                hint=f"One of {', '.join(PRECISIONS)}, or several comma-separated to compare "
                "them side by side (e.g. fp32,bf16).",
            )
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}.")
        if self.seq_len < 4:
            raise ConfigError(
                f"seq_len must be >= 4, got {self.seq_len}.",
                hint="Half of it is prompt, half response.",
            )

    @property
    def precisions(self) -> list[str]:
        """The precisions to measure, in order (``--precision fp32,bf16`` gives two)."""
        return [p.strip() for p in self.precision.split(",") if p.strip()]
