"""A character-level Llama-style tokenizer built offline, the same on every supported transformers.

``LlamaTokenizer(vocab=..., merges=...)`` only exists from transformers 5 on (before, it is the
SentencePiece tokenizer and needs a model file), so tests build the tokenizer from the `tokenizers`
library's parts instead: Metaspace pre-tokenisation (``▁`` for spaces, one before the first word),
a character vocabulary, and a post-processor that prepends ``<s>`` (and appends ``</s>``) when
asked, as Llama-2's does.
"""

from __future__ import annotations

from typing import Any


def char_llama_tokenizer(
    text: str, *, add_bos: bool = True, add_eos: bool = False, bos: int = 1, eos: int = 2
) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": bos, "</s>": eos, "▁": 3}
    for ch in sorted(set(text + "abcdefghijklmnopqrstuvwxyz0123456789 .,'?!")):
        vocab.setdefault("▁" if ch == " " else ch, len(vocab))
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    single = " ".join([*(["<s>"] if add_bos else []), "$A", *(["</s>"] if add_eos else [])])
    pair = single + " " + single.replace("$A", "$B")
    special = [("<s>", bos), ("</s>", eos)]
    tk.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=special
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.pad_token = tok.unk_token
    return tok
