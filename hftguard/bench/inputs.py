"""What every section measures on: the model, its LoRA adapter, equal-shape data, the defenses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hftguard.bench.options import LLAMA_SHAPES, STAGE_KINDS, BenchOptions
from hftguard.errors import ConfigError


def _pad_id(tok: Any) -> int:
    from hftguard.data.inputs import pad_id

    return pad_id(tok)


def build_model(opts: BenchOptions, device: Any, dtype: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The base model in the compute dtype on ``device`` (eval mode) and its tokenizer."""
    import torch

    from hftguard.engine import models

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

    from hftguard.engine.models import attach_lora as fresh_adapter
    from hftguard.engine.models import trainable_parameters

    model = fresh_adapter(base, lora, seed)
    params = trainable_parameters(model)
    for _, p in params:
        p.data = p.data.to(device=device, dtype=torch.float32)
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
    from hftguard.data.inputs import IGNORE_INDEX, Encoded

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
    from hftguard.data.inputs import encode_all

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
    from hftguard.data.inputs import load_examples, mix_poison

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
    from hftguard.data.inputs import IGNORE_INDEX

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
    repairs = [i for i in items if i.startswith("repair:")]  # bench.repair's (timed vs SFT)
    items = [i for i in items if i not in repairs]
    if repairs and not items:
        return [("align", "sft")]  # the denominator of the repair rows
    wanted = [(stage, n) for stage in STAGE_KINDS for n in names[stage]] if not items else []
    for item in items:
        stage, _, name = item.rpartition(":")
        if stage and stage not in STAGE_KINDS:
            raise ConfigError(
                f"--defenses {item}: unknown stage '{stage}'.",
                hint="Use align:NAME, finetune:NAME, repair:NAME or just NAME.",
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
