"""The embedded model's special tokens are set at conversion and checked on reuse: transformers'
GGUF reader has read them differently across versions (5.17: EOS <|im_start|>, no pad), and EOS
ends every training answer and stops generation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from hftguard.engine import models
from hftguard.errors import ModelError


def _entry(root: Path, **tokens: Any) -> Path:
    d = root / "models" / "smollm2-135m-instruct"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "tokenizer_config.json").write_text(json.dumps(tokens))
    return d


def test_a_converted_entry_with_the_wrong_eos_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path))
    d = _entry(
        tmp_path,
        bos_token="<|im_start|>",
        eos_token="<|im_start|>",  # what transformers 5.17 writes
        unk_token="<|endoftext|>",
    )
    with pytest.raises(ModelError, match="wrong special tokens") as err:
        models._smollm2_dir()
    assert "eos_token '<|im_start|>' (expected '<|im_end|>')" in str(err.value)
    assert "pad_token" not in str(err.value)  # not saved: not judged
    assert f"Delete {d}" in (err.value.hint or "")


def test_a_right_entry_passes_in_either_saved_form(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path))
    tokens: dict[str, Any] = dict(models.SMOLLM2_SPECIAL_TOKENS)
    tokens["eos_token"] = {"content": "<|im_end|>", "special": True}  # an AddedToken dict
    d = _entry(tmp_path, **tokens)
    assert models._smollm2_dir() == d


def test_older_saved_forms_are_read_and_missing_tokens_not_judged(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HFTGUARD_HOME", str(tmp_path))
    d = _entry(tmp_path)  # tokenizer_config.json without special tokens (older transformers)
    assert models._smollm2_dir() == d
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    with pytest.raises(ModelError, match=re.escape("eos_token '<|endoftext|>'")):
        models._smollm2_dir()


def test_set_special_tokens(tiny_tok: Any) -> None:
    import copy

    tiny_tok = copy.deepcopy(tiny_tok)  # the fixture is shared with other tests
    vocab = tiny_tok.get_vocab()
    some = next(t for t in vocab if t not in (tiny_tok.eos_token, tiny_tok.unk_token))
    models.set_special_tokens(tiny_tok, {"eos_token": some, "pad_token": some})
    assert tiny_tok.eos_token == some and tiny_tok.eos_token_id == vocab[some]
    assert tiny_tok.pad_token_id == vocab[some]
    with pytest.raises(ModelError, match="no token"):
        models.set_special_tokens(tiny_tok, {"eos_token": "<|not-in-the-vocabulary|>"})
