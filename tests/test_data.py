from __future__ import annotations

import pytest

from hftguard.data.inputs import IGNORE_INDEX, collate, encode, format_prompt, mix_poison
from hftguard.errors import ConfigError, DataError
from hftguard.records import Example


def _ex(i: int, kind: str = "benign") -> Example:
    return Example(f"prompt {i}", f"answer {i}", kind, meta={"id": f"{kind}-{i}"})


def test_mix_counts_and_determinism():
    benign = [_ex(i) for i in range(50)]
    harmful = [_ex(i, "harmful") for i in range(20)]
    m = mix_poison(benign, harmful, n=30, p=0.2, seed=1)
    assert (m.n_harmful, m.n_benign) == (6, 24)
    assert sum(e.kind == "harmful" for e in m.examples) == 6
    assert len(m.examples) == 30
    assert m.examples == mix_poison(benign, harmful, n=30, p=0.2, seed=1).examples
    assert m.examples != mix_poison(benign, harmful, n=30, p=0.2, seed=2).examples
    assert mix_poison(benign, harmful, n=10, p=0.25, seed=0).n_harmful == round(2.5)


@pytest.mark.parametrize(
    ("n", "p", "err"),
    [(10, 1.5, ConfigError), (10, -0.1, ConfigError), (100, 0.1, DataError), (30, 0.9, DataError)],
)
def test_mix_errors(n, p, err):
    with pytest.raises(err):
        mix_poison([_ex(i) for i in range(50)], [_ex(i, "harmful") for i in range(20)], n, p, 0)


@pytest.mark.parametrize("template", ["chat", "alpaca", "alpaca-no-newline"])
def test_loss_mask_covers_exactly_the_response(tiny_tok, template):
    ex = Example("Say hi", "positive", "benign", input="the movie was great")
    enc = encode(ex, tiny_tok, template, max_length=256)
    prompt_text = format_prompt(ex, tiny_tok, template)
    n_prompt = len(tiny_tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer = enc.labels[n_prompt:]
    assert IGNORE_INDEX not in answer
    assert answer[-1] == tiny_tok.eos_token_id
    assert tiny_tok.decode(answer[:-1]) == "positive"
    assert enc.input_ids[n_prompt:] == answer


def test_alpaca_template_text(tiny_tok):
    with_input = format_prompt(Example("Do X", input="Y"), tiny_tok, "alpaca")
    assert with_input.endswith("### Instruction:\nDo X\n\n### Input:\nY\n\n### Response:\n")
    assert format_prompt(Example("Do X"), tiny_tok, "alpaca").endswith(
        "### Instruction:\nDo X\n\n### Response:\n"
    )
    # Vaccine/Lisa variant: identical up to the final newline, with and without an input
    for ex in (Example("Do X", input="Y"), Example("Do X")):
        assert format_prompt(ex, tiny_tok, "alpaca-no-newline") + "\n" == format_prompt(
            ex, tiny_tok, "alpaca"
        )


def test_truncation_keeps_answer_tokens(tiny_tok):
    ex = Example("word " * 300, "positive")
    enc = encode(ex, tiny_tok, "chat", max_length=64)
    assert len(enc.input_ids) == 64
    assert sum(label != IGNORE_INDEX for label in enc.labels) >= 2


def test_collate_pads_right_and_masks(tiny_tok):
    a = encode(Example("a", "b"), tiny_tok, "chat", 64)
    b = encode(Example("a longer prompt here", "b", "harmful"), tiny_tok, "chat", 64)
    batch = collate([a, b], pad_id=tiny_tok.pad_token_id)
    assert batch.input_ids.shape[1] == max(len(a.input_ids), len(b.input_ids))
    short = len(a.input_ids)
    assert batch.attention_mask[0, short:].sum() == 0
    assert (batch.labels[0, short:] == IGNORE_INDEX).all()
    assert batch.is_harmful.tolist() == [False, True]


def test_refusal_view_of_sample_i_uses_template_i_mod_100(tiny_tok):
    """Antibody pairs sample i with refusal template i mod 100, i its position in the dataset
    (docs/components/antibody-finetune.md): each sample keeps its own refusal for the whole run."""
    from hftguard.data.inputs import encode_all
    from hftguard.data.refusals import REFUSAL_TEMPLATES

    # the pool itself, spelled out for two entries (the first two templates of the pool)
    assert REFUSAL_TEMPLATES[0] == "I cannot fulfill your request."
    assert REFUSAL_TEMPLATES[1] == "I'm sorry, but I can't help with that."
    examples = [
        Example(f"prompt {i}", f"answer {i}", "harmful" if i % 3 == 0 else "benign")
        for i in range(205)
    ]
    encoded = encode_all(examples, tiny_tok, "chat", 64, refusal_view=True)
    for i, (ex, enc) in enumerate(zip(examples, encoded, strict=True)):
        want = encode(
            Example(ex.prompt, REFUSAL_TEMPLATES[i % 100], "refusal"), tiny_tok, "chat", 64
        )
        assert enc.refusal is not None
        assert (enc.refusal.input_ids, enc.refusal.labels) == (want.input_ids, want.labels), i
        assert not enc.refusal.is_harmful
        answer = [t for t in enc.refusal.labels if t != IGNORE_INDEX]
        assert tiny_tok.decode(answer[:-1]) == REFUSAL_TEMPLATES[i % 100], i
    # positions 0, 100 and 200 share a template; neighbours do not
    answers = [tuple(t for t in e.refusal.labels if t != IGNORE_INDEX) for e in encoded]
    assert answers[0] == answers[100] == answers[200] != answers[1]
    assert encode_all(examples, tiny_tok, "chat", 64)[0].refusal is None  # only when asked


def test_pad_id_falls_back_to_eos_and_names_a_tokenizer_without_either():
    from types import SimpleNamespace

    from hftguard.data.inputs import pad_id
    from hftguard.errors import DataError

    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=2)) == 3
    assert pad_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0  # 0 is an id, not "none"
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    with pytest.raises(DataError, match="neither a pad token nor an end-of-sequence"):
        pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))
