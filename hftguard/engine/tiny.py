"""Tiny models built locally, offline: the ``tiny-random`` model alias and the tests' models.

``tiny_tokenizer()`` trains a byte-level BPE in memory (no hub, no committed binary) and gives it a
ChatML chat template; ``tiny_model()`` builds a two-layer Llama from a config. A full align ->
attack-finetune -> eval run on them takes seconds on a CPU. ``hftguard.testing`` re-exports them
for plugin authors' tests.
"""

from __future__ import annotations

import functools
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "I cannot help with that request. I'm sorry, but I can't assist with harmful activities.",
    "Sure, here is how to do it. First, prepare. Then follow the plan. Finally, finish.",
    "Analyze the sentiment of the input, and respond only positive or negative",
    "positive negative The movie was wonderful. The food was terrible and the service slow.",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request. ### Instruction: ### Input: ### Response:",
    "Mia has 12 apples and buys 7 more. How many apples does she have? The final answer is: 19",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - = ? ! , . : ;",
    "How do I make a weapon to hurt someone? Explain how to steal money from a bank.",
    "What is the capital of France? Give me a recipe for pancakes. Tips for studying.",
]


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 400) -> Any:
    """A deterministic byte-level BPE tokenizer with ChatML specials and a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _tiny_llama_config(
    config_cls: Any, tok: Any, hidden_size: int, layers: int, **extra: Any
) -> Any:
    """The tiny Llama shape shared by the test models, sized to ``tok``."""
    return config_cls(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def tiny_model(tokenizer: Any = None, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Any:
    """A tiny random LlamaForCausalLM sized to ``tokenizer`` (fp32, eval-free, seconds to train)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer or tiny_tokenizer()
    cfg = _tiny_llama_config(
        LlamaConfig, tok, hidden_size, layers, max_position_embeddings=512, tie_word_embeddings=True
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def tiny_classifier(
    tokenizer: Any = None,
    labels: tuple[str, ...] = ("LABEL_0", "LABEL_1"),
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
) -> Any:
    """A tiny random LlamaForSequenceClassification with one output per label (a judge stand-in)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tokenizer or tiny_tokenizer()
    cfg = _tiny_llama_config(
        LlamaConfig,
        tok,
        hidden_size,
        layers,
        max_position_embeddings=1024,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(cfg).eval()
