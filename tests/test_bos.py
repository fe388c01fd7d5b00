"""The BOS token: added wherever the tokenizer adds it by default, exactly once (issue #11).

A Llama-2 tokenizer prepends ``<s>`` for ``tokenizer(text)``; the papers' code tokenises that way,
so training, scoring and generation must too, without a second BOS when a chat template already
renders one, and without a BOS (or EOS) in the middle of prompt + answer.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hftguard.data.inputs import IGNORE_INDEX, collate, encode, encode_all, format_prompt
from hftguard.records import Example

BOS, EOS = 1, 2
# Llama-2-chat style: the template renders the BOS token text itself.
BOS_TEMPLATE = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
EX = Example("Say hi", "positive", "benign", input="the movie was great")


def _llama_tok(add_bos: bool = True, add_eos: bool = False, chat_template: str | None = None):
    """A character-level Llama tokenizer (Metaspace, ``<s>``/``</s>``), built offline."""
    from tokenizer_helpers import char_llama_tokenizer

    from hftguard.data.inputs import ALPACA_NO_INPUT, ALPACA_WITH_INPUT
    from hftguard.data.refusals import refusal_for

    text = ALPACA_WITH_INPUT + ALPACA_NO_INPUT + BOS_TEMPLATE + refusal_for(0) + refusal_for(1)
    tok = char_llama_tokenizer(text, add_bos=add_bos, add_eos=add_eos, bos=BOS, eos=EOS)
    if chat_template:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def llama():
    return _llama_tok()


def _plain(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_test_tokenizer_adds_bos(llama):
    assert llama("hi")["input_ids"] == [BOS, *_plain(llama, "hi")]
    assert BOS not in _plain(llama, "hi")


# ---------------------------------------------------------------------------------------------
# (1) training encoding, Alpaca templates


@pytest.mark.parametrize("template", ["alpaca", "alpaca-no-newline"])
def test_training_encoding_starts_with_one_masked_bos(llama, template):
    enc = encode(EX, llama, template, max_length=512)
    prompt = format_prompt(EX, llama, template)
    assert enc.input_ids[0] == BOS
    assert enc.input_ids.count(BOS) == 1
    assert enc.labels[0] == IGNORE_INDEX
    # The prompt is what the papers' code feeds: tokenizer(prompt) with its default specials.
    n_prompt = len(llama(prompt)["input_ids"])
    assert enc.input_ids[:n_prompt] == llama(prompt)["input_ids"]
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer = enc.labels[n_prompt:]
    assert IGNORE_INDEX not in answer and BOS not in answer
    assert answer == [*_plain(llama, EX.response), EOS]
    assert enc.input_ids[n_prompt:] == answer


def test_left_truncation_keeps_the_bos(llama):
    long = Example("word " * 200, "positive", "benign")
    enc = encode(long, llama, "alpaca", max_length=64)
    assert len(enc.input_ids) == 64
    assert enc.input_ids[0] == BOS and enc.input_ids.count(BOS) == 1
    assert enc.input_ids[-1] == EOS


def test_tokenizer_that_also_appends_eos_gets_one_eos_at_the_end_only():
    tok = _llama_tok(add_eos=True)
    assert tok("hi")["input_ids"][-1] == EOS  # this tokenizer appends EOS by default
    enc = encode(EX, tok, "alpaca", max_length=512)
    assert enc.input_ids[0] == BOS and enc.input_ids.count(BOS) == 1
    assert enc.input_ids.count(EOS) == 1 and enc.input_ids[-1] == EOS


# ---------------------------------------------------------------------------------------------
# (2) a chat template that renders the BOS itself


def test_chat_template_with_bos_gets_no_second_bos():
    tok = _llama_tok(chat_template=BOS_TEMPLATE)
    prompt = format_prompt(EX, tok, "chat")
    assert prompt.startswith("<s>")
    enc = encode(EX, tok, "chat", max_length=512)
    assert enc.input_ids[0] == BOS
    assert enc.input_ids.count(BOS) == 1
    assert enc.input_ids[: len(_plain(tok, prompt))] == _plain(tok, prompt)


# ---------------------------------------------------------------------------------------------
# (3) generation: the left-padded batch


class _SpyModel:
    """Records the batches ``generate`` is given and answers with one EOS per row."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.generation_config = SimpleNamespace(eos_token_id=EOS)
        self.config = SimpleNamespace(num_labels=2)
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append((input_ids.clone(), attention_mask.clone()))
        end = torch.full((input_ids.shape[0], 1), EOS, dtype=torch.long)
        seq = torch.cat([input_ids, end], dim=1)
        if kwargs.get("return_dict_in_generate"):
            return SimpleNamespace(sequences=seq, logits=())
        return seq


def _check_left_padded_rows(calls, tok, prompts_in_batch):
    (ids, mask), *_ = calls
    for row in range(ids.shape[0]):
        real = ids[row][mask[row].bool()].tolist()
        pads = int((mask[row] == 0).sum())
        assert mask[row, pads:].all() and not mask[row, :pads].any()  # left padding
        assert real[0] == BOS and real.count(BOS) == 1  # the BOS comes right after the pads
        assert EOS not in real
    widths = {len(tok(p)["input_ids"]) for p in prompts_in_batch}
    assert ids.shape[1] == max(widths)


def test_generation_prompts_start_with_one_bos_after_the_pads(llama):
    from hftguard.engine.generation import generate

    prompts = [
        format_prompt(Example("Say hi"), llama, "alpaca"),
        format_prompt(EX, llama, "alpaca-no-newline"),
    ]
    model = _SpyModel()
    generate(model, llama, prompts, max_new_tokens=1, batch_size=2)
    _check_left_padded_rows(model.calls, llama, prompts)


def test_generation_with_bos_in_the_chat_template_has_one_bos():
    from hftguard.engine.generation import generate

    tok = _llama_tok(chat_template=BOS_TEMPLATE)
    prompts = [format_prompt(EX, tok, "chat"), format_prompt(Example("hi"), tok, "chat")]
    model = _SpyModel()
    generate(model, tok, prompts, max_new_tokens=1, batch_size=2)
    (ids, mask), *_ = model.calls
    for row in range(ids.shape[0]):
        real = ids[row][mask[row].bool()].tolist()
        assert real[0] == BOS and real.count(BOS) == 1


def test_model_judge_generation_adds_bos_once(llama):
    from hftguard.builtins.judges.model_judge import generate_scored

    prompts = ["Is this harmful?\n\nVERDICT:", "<s>Already has one. VERDICT:"]
    model = _SpyModel()
    generate_scored(model, llama, prompts, max_new_tokens=1, batch_size=2)
    (ids, mask), *_ = model.calls
    for row in range(ids.shape[0]):
        real = ids[row][mask[row].bool()].tolist()
        assert real[0] == BOS and real.count(BOS) == 1


# ---------------------------------------------------------------------------------------------
# (4) scoring: the batches that log-likelihoods are computed on


def test_scoring_batches_start_with_one_bos(llama):
    from hftguard.engine.probes import mean_loss
    from hftguard.testing import tiny_model

    items = encode_all([EX, Example("Say hi", "hello", "harmful")], llama, "alpaca", 512, True)
    for item in [*items, *(i.refusal for i in items)]:
        assert item.input_ids[0] == BOS and item.input_ids.count(BOS) == 1
        assert item.labels[0] == IGNORE_INDEX
    batch = collate(items, llama.pad_token_id)
    assert (batch.input_ids[:, 0] == BOS).all()
    assert (batch.refusal.input_ids[:, 0] == BOS).all()

    seen: list[torch.Tensor] = []
    from hftguard.engine.steps import decoder_and_head

    model = tiny_model(llama, hidden_size=16, layers=1)
    runs = (decoder_and_head(model) or (model,))[0]  # the decoder, when the loss applies the head
    runs.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True
    )
    assert mean_loss(model, items, llama.pad_token_id, "cpu") is not None
    assert seen and all((ids[:, 0] == BOS).all() for ids in seen)
    assert all(int((ids == BOS).sum()) == ids.shape[0] for ids in seen)


# ---------------------------------------------------------------------------------------------
# (5) tokenizers that add no BOS are unchanged


@pytest.mark.parametrize("template", ["alpaca", "alpaca-no-newline", "chat"])
def test_tokenizer_without_default_bos_is_unchanged(tiny_tok, template):
    no_bos = _llama_tok(add_bos=False, chat_template=BOS_TEMPLATE.replace("{{ bos_token }}", ""))
    for tok in (no_bos, tiny_tok):  # tiny_tok has a bos_token, but does not add it
        prompt = format_prompt(EX, tok, template)
        enc = encode(EX, tok, template, max_length=512)
        assert enc.input_ids == [*_plain(tok, prompt), *_plain(tok, EX.response), tok.eos_token_id]
        assert tok.bos_token_id not in enc.input_ids


def test_generation_without_default_bos_is_unchanged(tiny_tok):
    from hftguard.engine.generation import generate

    prompts = [format_prompt(EX, tiny_tok, "chat"), format_prompt(EX, tiny_tok, "alpaca")]
    model = _SpyModel()
    model.generation_config.eos_token_id = tiny_tok.eos_token_id
    generate(model, tiny_tok, prompts, max_new_tokens=1, batch_size=2, sort_by_length=False)
    (ids, mask), *_ = model.calls
    for row, prompt in enumerate(prompts):
        assert ids[row][mask[row].bool()].tolist() == _plain(tiny_tok, prompt)


def test_cache_keys_change_only_where_a_bos_is_prepended(llama, tiny_tok):
    from hftguard.data.inputs import bos_prepended

    alpaca = [format_prompt(EX, llama, "alpaca")]
    assert bos_prepended(llama, alpaca)  # these answers were generated without it before
    with_bos = _llama_tok(chat_template=BOS_TEMPLATE)
    assert not bos_prepended(with_bos, [format_prompt(EX, with_bos, "chat")])
    assert not bos_prepended(tiny_tok, [format_prompt(EX, tiny_tok, t) for t in ("chat", "alpaca")])
    assert not bos_prepended(_llama_tok(add_bos=False), alpaca)
