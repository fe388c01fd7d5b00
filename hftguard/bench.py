"""``hftguard bench``: measure what the defenses cost, in one process, on one model, side by side.

Why this exists: every defense paper states its overhead relative to SFT in forward/backward
passes (each defense's ``passes`` attribute). Whether our implementation meets that, whether our
training loop is as fast as ``transformers.Trainer``, and whether batched evaluation is as fast
(and as exact) as we claim are questions about *ratios*, and ratios are only trustworthy when both
sides run in the same process, on the same model, data, batch and LoRA settings, warmed up, with
the median of repeated steps. The functions here return plain dicts; the CLI prints them as tables
and JSON (docs/performance.md shows a run).

Design choices that keep the numbers honest and the run cheap:

* One base model for everything; LoRA is attached once and reset from saved tensors before each
  measurement (no model copies; exact restore).
* All training batches have the same shape: each example is cut or cyclically extended to exactly
  ``seq_len`` tokens (half prompt, half response), so every stream and every shard holds the same
  number of response tokens and a defense's cost ratio reflects its passes, not its data.
* The defense timing loop mirrors ``training.train`` (zero grads, ``training_step`` under the same
  autocast, ``training._clip`` of the assembled gradient, AdamW step); batches are pre-collated on
  the device, so data loading is excluded. On CUDA, steps are timed with CUDA events and the
  device is synchronised only around the timed region.
* The loop-vs-Trainer comparison runs our real loop (``training.train``, with its logging) against
  ``transformers.Trainer``, timing both from step end to step end, so each side pays for its own
  data loading and bookkeeping.
* Generation compares ``hftguard.generation.generate`` with batch size 1 (the official repos'
  one-prompt-at-a-time loop) against batch size 16 on the same prompts with greedy decoding, and
  reports every prompt whose outputs differ together with the logit margin that decided it.
"""

from __future__ import annotations

import itertools
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hftguard.console import Reporter
from hftguard.errors import ConfigError

SECTIONS = ("defenses", "trainer", "generation")
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

#: Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, most specific first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


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
    precision: str = "auto"
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
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}.")
        if self.seq_len < 4:
            raise ConfigError(
                f"seq_len must be >= 4, got {self.seq_len}.",
                hint="Half of it is prompt, half response.",
            )


# ---------------------------------------------------------------------------------------------
# Entry point


def run_bench(
    opts: BenchOptions, reporter: Reporter | None = None, registry: Any = None
) -> dict[str, Any]:
    """Run every section not in ``opts.skip``; return the results as a JSON-ready dict."""
    from hftguard import models
    from hftguard.registry import default_registry

    reporter = reporter or Reporter(quiet=True)
    reg = registry or default_registry()
    specs = select_defenses(reg, opts.defenses) if "defenses" not in opts.skip else []
    device = models.pick_device(opts.device)
    dtype = models.pick_dtype(opts.precision, device)
    reporter.info(
        f"bench: loading {opts.llama_shape or opts.model} on {device} "
        f"({str(dtype).removeprefix('torch.')})"
    )
    base, tok, model_info = build_model(opts, device, dtype)
    result: dict[str, Any] = {
        "options": asdict(opts),
        "environment": environment(device, dtype),
        "model": model_info,
        "skipped": [s for s in SECTIONS if s in opts.skip],
    }
    if "generation" not in opts.skip:  # on the base model, before LoRA is attached
        reporter.info("bench: generation, one prompt at a time vs batched")
        result["generation"] = bench_generation(base, tok, opts, reg)
    if "defenses" in opts.skip and "trainer" in opts.skip:
        return result

    from hftguard.config import LoraOptions

    lora = LoraOptions()
    model, params, init = attach_lora(base, lora, device, opts.seed)
    flops_tok = flops_per_token(base, opts.seq_len, sum(p.numel() for _, p in params))
    result["model"].update(
        trainable_parameters=sum(p.numel() for _, p in params),
        lora={"r": lora.r, "alpha": lora.alpha, "target_modules": list(lora.target_modules)},
        train_flops_per_token=flops_tok,
    )
    data = bench_data(tok, opts, reg)
    result["data"] = {name: token_counts(items[: opts.batch_size]) for name, items in data.items()}
    peak = peak_flops(device, dtype, opts.peak_tflops)
    result["environment"]["peak_tflops"] = None if peak is None else peak / 1e12
    if specs:
        result["defenses"] = bench_defenses(
            model,
            params,
            init,
            reg,
            specs,
            data,
            opts,
            device,
            dtype,
            flops_tok,
            peak,
            reporter,
            _pad_id(tok),
        )
    if "trainer" not in opts.skip:
        reporter.info("bench: our SFT loop vs transformers.Trainer")
        result["trainer"] = bench_trainer(
            model, params, init, tok, data["alignment"], opts, device, dtype, flops_tok, peak
        )
    return result


def environment(device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    from hftguard.runs import library_versions

    env: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "libraries": library_versions(),
    }
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pad_id(tok: Any) -> int:
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


# ---------------------------------------------------------------------------------------------
# Model, LoRA, data


def build_model(opts: BenchOptions, device: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The base model in the compute dtype on ``device`` (eval mode) and its tokenizer."""
    import torch

    from hftguard import models

    if opts.llama_shape is not None:
        from transformers import LlamaConfig, LlamaForCausalLM

        from hftguard.testing import tiny_tokenizer

        shape = dict(LLAMA_SHAPES[opts.llama_shape])
        source = shape.pop("source")
        tok = tiny_tokenizer()  # random weights need no real vocabulary; ids < 400 fit any shape
        cfg = LlamaConfig(
            **shape,
            max_position_embeddings=max(2048, 2 * opts.seq_len),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(opts.seed)
        with torch.device(device):
            base = LlamaForCausalLM(cfg).to(dtype)
        base.generation_config.pad_token_id = tok.pad_token_id
        base.eval()
        name = f"random-init {source} shape ({opts.llama_shape})"
    else:
        recipe = models.resolve(opts.model).recipe
        base, tok = models.load_for_eval(recipe, device, dtype)
        name = opts.model
    info = {
        "name": name,
        "parameters": sum(p.numel() for p in base.parameters()),
        "layers": int(base.config.num_hidden_layers),
        "hidden_size": int(base.config.hidden_size),
        "vocab_size": int(base.config.vocab_size),
    }
    return base, tok, info


def attach_lora(
    base: Any, lora: Any, device: Any, seed: int
) -> tuple[Any, list[tuple[str, Any]], dict[str, Any]]:
    """Attach one fresh LoRA adapter as ``models.load_for_training`` does; keep its init tensors.

    Frozen weights stay in the compute dtype, trainable LoRA weights are fp32 (stable AdamW).
    Returns (peft model, trainable params in a fixed order, {name: saved initial tensor}).
    """
    import torch

    from hftguard.models import attach_lora as fresh_adapter

    model = fresh_adapter(base, lora, seed)
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.data = p.data.to(device=device, dtype=torch.float32)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    init = {n: p.detach().clone() for n, p in params}
    return model, params, init


def reset_lora(params: Sequence[tuple[str, Any]], init: dict[str, Any]) -> None:
    """Restore the adapter exactly from the saved tensors and drop any gradient."""
    import torch

    with torch.no_grad():
        for n, p in params:
            p.copy_(init[n])
            p.grad = None


def fit_length(enc: Any, seq_len: int, prompt_len: int) -> Any:
    """``enc`` cut or cyclically extended to exactly ``prompt_len`` prompt + the rest response.

    The prompt keeps its end (the assistant header), the response its start. Every example then
    has the same shape and the same number of response tokens. The refusal view, if any, gets the
    same treatment (same prompt).
    """
    from hftguard.data import IGNORE_INDEX, Encoded

    n_prompt = next((i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX), len(enc.labels))
    prompt, answer = enc.input_ids[:n_prompt] or enc.input_ids[:1], enc.input_ids[n_prompt:]
    answer = answer or prompt[-1:]
    n_answer = seq_len - prompt_len
    prompt = (prompt * math.ceil(prompt_len / len(prompt)))[-prompt_len:]
    answer = (answer * math.ceil(n_answer / len(answer)))[:n_answer]
    refusal = None if enc.refusal is None else fit_length(enc.refusal, seq_len, prompt_len)
    return Encoded(prompt + answer, [IGNORE_INDEX] * prompt_len + answer, enc.is_harmful, refusal)


def encode_fixed(
    examples: Sequence[Any],
    tok: Any,
    seq_len: int,
    refusal_view: bool = True,
    template: str | None = None,
) -> list[Any]:
    """Encode examples (with their refusal views) and fit each to exactly ``seq_len`` tokens."""
    from hftguard.data import encode_all

    template = template or ("chat" if getattr(tok, "chat_template", None) else "alpaca")
    encoded = encode_all(examples, tok, template, max(4 * seq_len, 512), refusal_view)
    return [fit_length(e, seq_len, seq_len // 2) for e in encoded]


def bench_data(tok: Any, opts: BenchOptions, registry: Any) -> dict[str, list[Any]]:
    """Equal-shape training data for every stream the built-in defenses use.

    ``alignment``: safety refusals (align-stage main batch, Lisa's stream); ``harmful``: harmful
    compliance (Booster/Antibody stream); ``user``: the fine-tuning stage's main batch, sentiment
    with 25% harmful samples (Antibody fine-tuning weighs them).
    """
    from hftguard.context import DataContext
    from hftguard.data import load_examples, mix_poison

    n = opts.batch_size * max(2, min(4, opts.warmup + opts.steps))
    ctx = DataContext(seed=opts.seed)
    align = load_examples("safety-refusals", "alignment", "train", registry, ctx)[:n]
    harmful = load_examples("harmful-compliance", "harmful", "train", registry, ctx)[:n]
    task = load_examples("sentiment", "task", "train", registry, ctx)
    attack = load_examples("harmful-compliance", "harmful", "attack", registry, ctx)
    user = mix_poison(task, attack, n, 0.25, opts.seed).examples
    return {
        name: encode_fixed(list(ex), tok, opts.seq_len)
        for name, ex in (("alignment", align), ("harmful", harmful), ("user", user))
    }


def token_counts(items: Sequence[Any]) -> dict[str, int]:
    """Examples, tokens and response (loss) tokens of one batch."""
    from hftguard.data import IGNORE_INDEX

    return {
        "examples": len(items),
        "tokens": sum(len(e.input_ids) for e in items),
        "response_tokens": sum(sum(lab != IGNORE_INDEX for lab in e.labels) for e in items),
    }


def select_defenses(registry: Any, specs: Sequence[str]) -> list[tuple[str, str]]:
    """``[(stage, name)]`` for ``specs`` (``name`` or ``stage:name``, comma lists allowed).

    No specs means every registered defense of both stages. Each stage that appears gets its SFT
    baseline (the denominator of the ratios), listed first.
    """
    from hftguard.errors import UnknownComponentError, did_you_mean

    names = {
        stage: {i.name for i in registry.components(kind)} for stage, kind in STAGE_KINDS.items()
    }
    items = [s.strip() for spec in specs for s in spec.split(",") if s.strip()]
    wanted = [(stage, n) for stage in STAGE_KINDS for n in names[stage]] if not items else []
    for item in items:
        stage, _, name = item.rpartition(":")
        if stage and stage not in STAGE_KINDS:
            raise ConfigError(
                f"--defenses {item}: unknown stage '{stage}'.",
                hint="Use align:NAME, finetune:NAME or just NAME.",
            )
        found = [(s, name) for s in ([stage] if stage else STAGE_KINDS) if name in names[s]]
        if not found:
            if stage:  # the registry's own error lists that stage's defenses
                registry.get(STAGE_KINDS[stage], name)
            known = sorted(names["align"] | names["finetune"])
            raise UnknownComponentError(
                f"Unknown defense '{name}'.{did_you_mean(name, known)}",
                hint=f"Available: {', '.join(known)}.",
            )
        wanted += found
    out: list[tuple[str, str]] = []
    for stage in STAGE_KINDS:
        names = sorted({n for s, n in wanted if s == stage})
        if names:
            out += [(stage, "sft")] + [(stage, n) for n in names if n != "sft"]
    return out


# ---------------------------------------------------------------------------------------------
# Timing helpers


def time_basis(device: Any) -> str:
    """Which clock the ratios use: CUDA-event wall time on GPUs, process CPU time on CPUs.

    On a CPU shared with other jobs, wall time mostly measures the scheduler; the process's CPU
    time (with one torch thread: the compute of the step) is the stable quantity to compare.
    """
    return "wall" if device.type == "cuda" else "cpu"


@dataclass
class StepTimes:
    """Seconds per timed step on both clocks."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def __iadd__(self, other: StepTimes) -> StepTimes:
        self.wall += other.wall
        self.cpu += other.cpu
        return self

    def median(self, basis: str) -> float:
        return statistics.median(getattr(self, basis))


class _Clock:
    """Step-boundary stamps: wall time (``perf_counter``, or CUDA events on GPU, synchronised
    only when read) and the process's CPU time."""

    def __init__(self, device: Any) -> None:
        self.cuda = device.type == "cuda"

    def stamp(self) -> tuple[Any, float]:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event, time.process_time()
        return time.perf_counter(), time.process_time()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def durations(self, stamps: Sequence[tuple[Any, float]]) -> StepTimes:
        """Seconds between consecutive stamps."""
        self.sync()
        pairs = list(itertools.pairwise(stamps))
        if self.cuda:
            wall = [a[0].elapsed_time(b[0]) / 1000.0 for a, b in pairs]
        else:
            wall = [b[0] - a[0] for a, b in pairs]
        return StepTimes(wall, [b[1] - a[1] for a, b in pairs])


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a region: ``max_memory_allocated`` on CUDA, sampled RSS on Linux CPUs.

    ``extra_mb`` is the peak minus the level at entry (weights, caches already there); on CPU the
    RSS is sampled every few milliseconds by a thread, so it is approximate.
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self.peak_mb: float | None = None
        self.extra_mb: float | None = None
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "rss_sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        rss = _rss_bytes()
        if rss is None:
            return self
        self._base = self._peak = rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            self._peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
        else:
            return
        self.peak_mb = self._peak / 2**20
        self.extra_mb = (self._peak - self._base) / 2**20


def _summary(times: StepTimes, basis: str) -> dict[str, Any]:
    """Median (the headline), mean, min, max on the ratio clock; both clocks' raw steps."""
    main = getattr(times, basis)
    return {
        "time_basis": basis,
        "median_step_s": statistics.median(main),
        "mean_step_s": statistics.fmean(main),
        "min_step_s": min(main),
        "max_step_s": max(main),
        "timed_steps": len(main),
        "wall_median_step_s": statistics.median(times.wall),
        "cpu_median_step_s": statistics.median(times.cpu),
        "step_times_s": [round(t, 6) for t in times.wall],
        "cpu_step_times_s": [round(t, 6) for t in times.cpu],
    }


def flops_per_token(base: Any, seq_len: int, lora_params: int = 0) -> float:
    """Training FLOPs per token of one LoRA forward+backward (frozen base), PaLM-style.

    Frozen matmul weights N: forward 2N, backward 2N (activation gradients only, no weight
    gradients); LoRA weights: 6 per parameter; attention scores and values: 4·L·d_attn·T forward,
    3× that with backward (no causal discount, as in PaLM's MFU). Embedding lookups are free.
    """
    import torch

    matmul = sum(
        m.weight.numel()
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )
    cfg = base.config
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    attention = 4 * int(cfg.num_hidden_layers) * heads * head_dim * seq_len
    return float(4 * matmul + 6 * lora_params + 3 * attention)


def peak_flops(device: Any, dtype: Any, override_tflops: float | None = None) -> float | None:
    """The device's dense bf16/fp16 peak in FLOP/s (None on CPU, in fp32, or when unknown)."""
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((tf * 1e12 for frag, tf in PEAK_BF16_TFLOPS if frag in name), None)


# ---------------------------------------------------------------------------------------------
# Section 1: every defense against SFT


def bench_defenses(
    model: Any,
    params: list[tuple[str, Any]],
    init: dict[str, Any],
    registry: Any,
    specs: Sequence[tuple[str, str]],
    data: dict[str, list[Any]],
    opts: BenchOptions,
    device: Any,
    dtype: Any,
    flops_tok: float,
    peak: float | None,
    reporter: Reporter,
    pad_id: int = 0,
) -> list[dict[str, Any]]:
    """Per-step time and peak memory of each ``(stage, name)``; ratios against the stage's SFT."""
    from hftguard.data import collate

    n_batches = len(data["alignment"]) // opts.batch_size
    batches = {
        name: [
            collate(items[i * opts.batch_size : (i + 1) * opts.batch_size], pad_id).to(device)
            for i in range(n_batches)
        ]
        for name, items in data.items()
    }
    main_of = {"align": "alignment", "finetune": "user"}
    times = {spec: StepTimes() for spec in specs}
    basis = time_basis(device)
    memory: dict[tuple[str, str], PeakMemory] = {}
    for r in range(opts.rounds):  # rounds interleave the defenses: machine noise hits all alike
        for stage, name in specs:
            reporter.info(f"bench: {stage}/{name} (round {r + 1}/{opts.rounds})")
            defense = registry.instantiate(STAGE_KINDS[stage], name)
            reset_lora(params, init)
            with PeakMemory(device) as mem:
                times[(stage, name)] += time_defense_steps(
                    model, params, defense, batches[main_of[stage]], batches, opts, device, dtype
                )
            prev = memory.get((stage, name))
            if prev is None or (mem.peak_mb or 0) > (prev.peak_mb or 0):
                memory[(stage, name)] = mem
    reset_lora(params, init)

    tokens = token_counts(data["alignment"][: opts.batch_size])["tokens"]
    rows = []
    sft = {stage: times[(stage, "sft")].median(basis) for stage, n in specs if n == "sft"}
    for stage, name in specs:
        cls = registry.get(STAGE_KINDS[stage], name).cls
        sft_cls = registry.get(STAGE_KINDS[stage], "sft").cls
        stats = _summary(times[(stage, name)], basis)
        ratio = stats["median_step_s"] / sft[stage]
        theory = float(cls.passes) / float(sft_cls.passes)
        mem = memory[(stage, name)]
        tflops = float(cls.passes) * flops_tok * tokens / stats["median_step_s"]
        rows.append(
            {
                "stage": stage,
                "defense": name,
                "theoretical_passes": float(cls.passes),
                **stats,
                "ratio_to_sft": ratio,
                "theoretical_ratio": theory,
                "measured_over_theoretical": ratio / theory,
                "within_10pct": abs(ratio / theory - 1.0) <= 0.10,
                "peak_memory_mb": mem.peak_mb,
                "extra_memory_mb": mem.extra_mb,
                "memory_kind": mem.kind,
                "tokens_per_step": tokens,
                "tokens_per_s": tokens / stats["median_step_s"],
                "model_tflops_per_s": tflops / 1e12,
                "mfu": None if peak is None else tflops / peak,
            }
        )
    return rows


def time_defense_steps(
    model: Any,
    params: list[tuple[str, Any]],
    defense: Any,
    main: Sequence[Any],
    streams: dict[str, Sequence[Any]],
    opts: BenchOptions,
    device: Any,
    dtype: Any,
) -> StepTimes:
    """``warmup + steps`` steps of the training loop's body; seconds of each timed step.

    Mirrors ``training.train``: grads set to None, ``defense.training_step`` under the loop's
    autocast, ``training._clip`` of the assembled gradient, AdamW step (constant LR, so no
    scheduler work). Batches come pre-collated from ``main`` and ``streams`` in rotation.
    """
    import torch

    from hftguard import training
    from hftguard.config import TrainOptions
    from hftguard.context import StepContext

    topts = TrainOptions()
    total = opts.warmup + opts.steps
    positions = dict.fromkeys(streams, 0)

    def next_batch(name: str) -> Any:
        pos = positions[name]
        positions[name] = pos + 1
        return streams[name][pos % len(streams[name])]

    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=opts.lr, weight_decay=topts.weight_decay
    )
    ctx = StepContext(
        step=0,
        total_steps=total,
        params=params,
        next_batch=next_batch,
        loss_fn=training.lm_loss,
        reporter=Reporter(quiet=True),
        output_dir=None,
        device=device,
    )
    defense.setup(ctx)
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else training._nullcontext()
    )
    clock = _Clock(device)
    stamps: list[tuple[Any, float]] = []
    for step in range(total):
        if step == opts.warmup:
            clock.sync()
        if step >= opts.warmup:
            stamps.append(clock.stamp())
        ctx.step = step
        batch = main[step % len(main)]
        for _, p in params:
            p.grad = None
        model.train()
        with autocast:
            defense.training_step(model, batch, ctx)
        training._clip(params, topts.max_grad_norm)
        optimizer.step()
    stamps.append(clock.stamp())
    return clock.durations(stamps)


# ---------------------------------------------------------------------------------------------
# Section 2: our SFT loop against transformers.Trainer


class _StepEnds(Reporter):
    """A quiet Reporter that stamps the end of every step (``train`` reports metrics then)."""

    def __init__(self, clock: _Clock, warmup: int, last: int) -> None:
        super().__init__(quiet=True)
        self.clock, self.warmup, self.last = clock, warmup, last
        self.stamps: list[tuple[Any, float]] = []

    def metrics(self, step: int, **values: Any) -> None:
        if step in (self.warmup - 1, self.last):
            self.clock.sync()  # only at the edges of the timed region
        if step >= self.warmup - 1:
            self.stamps.append(self.clock.stamp())


def bench_trainer(
    model: Any,
    params: list[tuple[str, Any]],
    init: dict[str, Any],
    tok: Any,
    items: Sequence[Any],
    opts: BenchOptions,
    device: Any,
    dtype: Any,
    flops_tok: float,
    peak: float | None,
) -> dict[str, Any]:
    """Median step time of ``training.train`` (SFT) and of ``transformers.Trainer``, same setup.

    Same LoRA model (reset to the same init), data, batch size, LR, weight decay, clipping,
    constant schedule and AdamW implementation; no evaluation, saving or reporting. Each side is
    timed between consecutive step ends, so each pays for its own data loading and logging; the
    first timed interval starts at the end of the last warm-up step (at least one).
    """
    warmup = max(1, opts.warmup)
    basis = time_basis(device)
    ours, theirs = StepTimes(), StepTimes()
    for _ in range(opts.rounds):  # alternate so machine noise hits both sides alike
        reset_lora(params, init)
        ours += _time_our_loop(model, tok, items, opts, warmup, device, dtype)
        reset_lora(params, init)
        theirs += _time_hf_trainer(model, tok, items, opts, warmup, device, dtype)
    reset_lora(params, init)
    tokens = token_counts(items[: opts.batch_size])["tokens"]
    out: dict[str, Any] = {}
    for key, times in (("hftguard", ours), ("transformers_trainer", theirs)):
        stats = _summary(times, basis)
        tflops = flops_tok * tokens / stats["median_step_s"]
        out[key] = {
            **stats,
            "tokens_per_s": tokens / stats["median_step_s"],
            "model_tflops_per_s": tflops / 1e12,
            "mfu": None if peak is None else tflops / peak,
        }
    ratio = out["hftguard"]["median_step_s"] / out["transformers_trainer"]["median_step_s"]
    out.update(
        ratio=ratio,
        not_slower=ratio <= 1.0,
        tokens_per_step=tokens,
        optimizer="torch.optim.AdamW (both)",
    )
    return out


def _time_our_loop(
    model: Any,
    tok: Any,
    items: Sequence[Any],
    opts: BenchOptions,
    warmup: int,
    device: Any,
    dtype: Any,
) -> StepTimes:
    from hftguard import training
    from hftguard.builtins.defenses.sft import SFTAlign
    from hftguard.config import TrainOptions
    from hftguard.runs import open_run_dir

    total = warmup + opts.steps
    clock = _Clock(device)
    reporter = _StepEnds(clock, warmup, total - 1)
    topts = TrainOptions(
        lr=opts.lr,
        max_steps=total,
        batch_size=opts.batch_size,
        checkpoint_every=0,
        max_length=opts.seq_len,
    )
    pad_id = _pad_id(tok)
    with tempfile.TemporaryDirectory(prefix="hftguard-bench-") as tmp:
        run = open_run_dir(Path(tmp) / "run", "bench")
        training.train(
            model,
            SFTAlign(),
            list(items),
            {},
            topts,
            run,
            reporter,
            seed=opts.seed,
            pad_id=pad_id,
            device=device,
            dtype=dtype,
            label="bench",
        )
    return clock.durations(reporter.stamps)


def _time_hf_trainer(
    model: Any,
    tok: Any,
    items: Sequence[Any],
    opts: BenchOptions,
    warmup: int,
    device: Any,
    dtype: Any,
) -> StepTimes:
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from hftguard.config import TrainOptions

    topts = TrainOptions()
    total = warmup + opts.steps
    clock = _Clock(device)
    stamps: list[tuple[Any, float]] = []
    pad_id = _pad_id(tok)

    class StepEnds(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step - 1  # 0-based index of the step that just ended
            if step in (warmup - 1, total - 1):
                clock.sync()
            if step >= warmup - 1:
                stamps.append(clock.stamp())

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in items]
    patched_forward = "forward" in model.__dict__
    with tempfile.TemporaryDirectory(prefix="hftguard-bench-hf-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=opts.batch_size,
            max_steps=total,
            learning_rate=opts.lr,
            weight_decay=topts.weight_decay,
            max_grad_norm=topts.max_grad_norm,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            use_cpu=device.type == "cpu",
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            seed=opts.seed,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collate,
            callbacks=[StepEnds()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics to stdout
        try:
            trainer.train()
        finally:
            # accelerate's mixed precision wraps model.forward in place; undo it for later runs
            if not patched_forward and "forward" in model.__dict__:
                del model.__dict__["forward"]
            del trainer
    return clock.durations(stamps)


# ---------------------------------------------------------------------------------------------
# Section 3: batched vs one-at-a-time generation


def bench_generation(model: Any, tok: Any, opts: BenchOptions, registry: Any) -> dict[str, Any]:
    """Time ``generate`` at batch 1 and at ``gen_batch_size`` on the same prompts, greedy.

    Returns the speed-up and whether all completions are identical; each mismatch is listed with
    the smallest top-1/top-2 logit margin of the one-at-a-time decode (a near-tie there means
    padding-dependent rounding decided the token, not a bug).
    """
    from hftguard.context import DataContext
    from hftguard.data import format_prompt, load_examples
    from hftguard.generation import generate

    examples = load_examples(
        "harmful-eval", "harmful-eval", "test", registry, DataContext(seed=opts.seed)
    )
    examples = examples[: opts.gen_prompts]
    template = "chat" if getattr(tok, "chat_template", None) else "alpaca"
    prompts = [format_prompt(ex, tok, template) for ex in examples]
    kw: dict[str, Any] = {"max_new_tokens": opts.max_new_tokens}
    device = next(model.parameters()).device
    clock, basis = _Clock(device), time_basis(device)
    generate(model, tok, prompts[:2], batch_size=2, **{**kw, "max_new_tokens": 2})  # warm-up

    def timed(fn: Callable[[], list[str]]) -> tuple[list[str], StepTimes]:
        clock.sync()
        start = (time.perf_counter(), time.process_time())
        out = fn()
        clock.sync()
        return out, StepTimes([time.perf_counter() - start[0]], [time.process_time() - start[1]])

    single, t_single = timed(
        lambda: generate(model, tok, prompts, batch_size=1, sort_by_length=False, **kw)
    )
    batched, t_batched = timed(
        lambda: generate(model, tok, prompts, batch_size=opts.gen_batch_size, **kw)
    )
    new_tokens = sum(len(tok(s, add_special_tokens=False)["input_ids"]) for s in single)
    mismatches = [i for i, (a, b) in enumerate(zip(single, batched, strict=True)) if a != b]
    return {
        "prompts": len(prompts),
        "batch_size": opts.gen_batch_size,
        "max_new_tokens": opts.max_new_tokens,
        "decoding": "greedy",
        "prompt_tokens": [
            min(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts),
            max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts),
        ],
        "time_basis": basis,
        "one_at_a_time_s": t_single.median(basis),
        "batched_s": t_batched.median(basis),
        "speedup": t_single.median(basis) / t_batched.median(basis),
        "wall_one_at_a_time_s": t_single.wall[0],
        "wall_batched_s": t_batched.wall[0],
        "wall_speedup": t_single.wall[0] / t_batched.wall[0],
        "output_tokens_approx": new_tokens,
        "identical": not mismatches,
        "mismatch_count": len(mismatches),
        "mismatches": [
            _explain_mismatch(model, tok, prompts[i], single[i], batched[i], i, opts.max_new_tokens)
            for i in mismatches[:8]
        ],
    }


def _explain_mismatch(
    model: Any, tok: Any, prompt: str, single: str, batched: str, index: int, max_new_tokens: int
) -> dict[str, Any]:
    """Where two completions part and how close the greedy choice was in the unpadded decode."""
    import torch

    ids = torch.tensor(
        [tok(prompt, add_special_tokens=False)["input_ids"]], device=next(model.parameters()).device
    )
    pad_id = _pad_id(tok)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            output_logits=True,
            return_dict_in_generate=True,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    margins = []
    for logits in out.logits:
        top2 = torch.topk(logits[0].float(), 2).values
        margins.append(float(top2[0] - top2[1]))
    char = next(
        (k for k, (a, b) in enumerate(zip(single, batched, strict=False)) if a != b),
        min(len(single), len(batched)),
    )
    step = min(range(len(margins)), key=margins.__getitem__) if margins else None
    return {
        "index": index,
        "first_difference_at_char": char,
        "min_top2_logit_margin": min(margins) if margins else None,
        "min_margin_at_step": step,
        "one_at_a_time": single[:120],
        "batched": batched[:120],
    }


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_report(result: dict[str, Any]) -> None:
    """The results as rich tables on stdout (``--json`` prints ``result`` instead).

    Ratios use the CPU-time clock on CPUs and the wall clock (CUDA events) on GPUs; on CPUs both
    clocks are shown so contention from other jobs is visible.
    """
    from hftguard.console import print_table, stdout

    env = result["environment"]
    cuda = env["device"].startswith("cuda")
    stdout.print(
        f"[bold]hftguard bench[/bold]: {result['model']['name']} on {env['device']} "
        f"({env['device_name']}, {env['dtype']}, {env['torch_threads']} torch threads)",
        highlight=False,
    )

    def mfu(row: dict[str, Any]) -> str:
        return "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}"

    if "defenses" in result:
        opts = result["options"]
        rows = []
        for r in result["defenses"]:
            check = _fmt(r["measured_over_theoretical"]) + ("" if r["within_10pct"] else " !")
            head = [f"{r['stage']}/{r['defense']}", _fmt(r["theoretical_passes"], 2)]
            if cuda:
                rows.append(
                    [
                        *head,
                        _fmt(r["median_step_s"]),
                        _fmt(r["ratio_to_sft"]),
                        check,
                        _fmt(r["peak_memory_mb"], 4),
                        _fmt(r["tokens_per_s"]),
                        mfu(r),
                    ]
                )
            else:
                rows.append(
                    [
                        *head,
                        _fmt(r["cpu_median_step_s"]),
                        _fmt(r["wall_median_step_s"]),
                        _fmt(r["ratio_to_sft"]),
                        check,
                        _fmt(r["extra_memory_mb"], 3),
                    ]
                )
        cols = (
            ["defense", "passes", "s/step", "x SFT", "/passes", "peak MB", "tok/s", "MFU%"]
            if cuda
            else ["defense", "passes", "cpu s", "wall s", "x SFT", "/passes", "RSS+ MB"]
        )
        print_table(
            f"Defenses: median of {opts['steps'] * opts['rounds']} steps, batch "
            f"{opts['batch_size']} x {opts['seq_len']} tokens; x SFT on "
            f"{'wall' if cuda else 'CPU'} time; ! = off by > 10%",
            cols,
            rows,
        )
    if "trainer" in result:
        tr = result["trainer"]
        rows = []
        for name, key in (
            ("hftguard train()", "hftguard"),
            ("transformers.Trainer", "transformers_trainer"),
        ):
            t = tr[key]
            rows.append(
                [name, _fmt(t["median_step_s"]), _fmt(t["tokens_per_s"]), mfu(t)]
                if cuda
                else [name, _fmt(t["cpu_median_step_s"]), _fmt(t["wall_median_step_s"])]
            )
        print_table(
            f"SFT step: ours / Trainer = {tr['ratio']:.3f} "
            f"({'not slower' if tr['not_slower'] else 'SLOWER'})",
            ["loop", "s/step", "tok/s", "MFU%"] if cuda else ["loop", "cpu s/step", "wall s/step"],
            rows,
        )
    if "generation" in result:
        g = result["generation"]
        rows = [
            ["one at a time", _fmt(g["one_at_a_time_s"]), _fmt(g["wall_one_at_a_time_s"]), "1"],
            [
                f"batched ({g['batch_size']})",
                _fmt(g["batched_s"]),
                _fmt(g["wall_batched_s"]),
                _fmt(g["speedup"]),
            ],
        ]
        print_table(
            f"Generation: {g['prompts']} prompts, greedy, {g['max_new_tokens']} new "
            f"tokens; identical outputs: {_fmt(g['identical'])} "
            f"({g['mismatch_count']} differ)",
            ["mode", f"{g['time_basis']} s", "wall s", "speed-up"],
            rows,
        )
