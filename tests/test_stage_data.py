"""Which dataset split feeds which stream of each training stage ("Expected data" on each
docs/components page).

- align: the main data is the alignment set (``safety-refusals``); Booster and Antibody get a
  ``harmful`` stream on the *same* prompts, in the same order (``harmful-compliance`` train), and
  Antibody's harmful stream carries refusal views (sample i: refusal template i mod 100).
- attack-finetune: the user data is the benign task plus harmful samples from the *attack* split,
  whose prompts share none with the alignment stage's; Lisa gets the alignment set as its
  ``alignment`` stream; Antibody's user samples carry refusal views (template i mod 100, i the
  position in the user dataset).

The stages run for real up to the training loop: ``train_stage`` is spied on (the Example-level
inputs) and ``training.train`` is replaced by a stub that records the encoded main data and
streams, then stops the run. The expected prompts come straight from the dataset components.
"""

from __future__ import annotations

from typing import Any

import pytest

from hftguard.config import AlignConfig, FinetuneConfig, LoraOptions, TrainOptions
from hftguard.context import DataContext
from hftguard.data.refusals import REFUSAL_TEMPLATES

TINY_LORA = LoraOptions(r=4, alpha=8.0)
TRAIN = TrainOptions(max_steps=2, batch_size=4, max_length=64)
N_ALIGN = 24


class _Stop(Exception):
    """Raised by the training stub: the inputs are recorded, nothing is trained."""


def _split(name: str, split: str) -> list[Any]:
    from hftguard.builtins.datasets.harmful_compliance import HarmfulCompliance
    from hftguard.builtins.datasets.safety_refusals import SafetyRefusals
    from hftguard.builtins.datasets.sentiment import Sentiment

    cls = {"safety-refusals": SafetyRefusals, "harmful-compliance": HarmfulCompliance}.get(
        name, Sentiment
    )
    return list(cls().load(split, DataContext()))


def _run_stage(monkeypatch, tmp_path, module: Any, cfg: Any) -> dict[str, Any]:
    """Run ``module.run(cfg)`` up to the loop; return the stage inputs and the loop's arguments."""
    from hftguard.console import Reporter
    from hftguard.engine import training

    seen: dict[str, Any] = {}
    real_train_stage = module.train_stage

    def spy_train_stage(**kwargs: Any) -> Any:
        seen["inputs"] = kwargs["inputs"]
        return real_train_stage(**kwargs)

    def stub_train(model, defense, main, streams, opts, run, reporter, **kwargs):
        seen.update(defense=defense, main=main, streams=streams)
        raise _Stop

    monkeypatch.setattr(module, "train_stage", spy_train_stage)
    monkeypatch.setattr(training, "train", stub_train)
    with pytest.raises(_Stop):
        module.run(cfg, tmp_path / "run", reporter=Reporter(quiet=True))
    return seen


def _prompts(examples: list[Any]) -> list[str]:
    return [e.prompt for e in examples]


def _assert_refusal_views(tok: Any, examples: list[Any], encoded: list[Any], template: str) -> None:
    """Encoded sample i carries the refusal view (same prompt, refusal template i mod 100)."""
    from hftguard.data.inputs import encode
    from hftguard.records import Example

    assert len(encoded) == len(examples)
    for i, (ex, enc) in enumerate(zip(examples, encoded, strict=True)):
        want = encode(
            Example(ex.prompt, REFUSAL_TEMPLATES[i % 100], "refusal", input=ex.input),
            tok,
            template,
            TRAIN.max_length,
        )
        assert enc.refusal is not None, i
        assert (enc.refusal.input_ids, enc.refusal.labels) == (want.input_ids, want.labels), i


@pytest.fixture(scope="module")
def tiny_random_tok():
    """The tokenizer of the ``tiny-random`` model the stages load."""
    from hftguard.engine import models

    return models.load_tokenizer(models.resolve("tiny-random").recipe.base)


# ---- align ------------------------------------------------------------------------------------


@pytest.mark.parametrize("defense", ["booster", "antibody", "vaccine", "sft"])
def test_align_stage_streams_come_from_the_paired_train_splits(
    defense, monkeypatch, tmp_path, tiny_random_tok
):
    from hftguard.pipeline import align

    cfg = AlignConfig(
        model="tiny-random",
        defense=defense,
        samples=N_ALIGN,
        retain="",
        train=TRAIN,
        lora=TINY_LORA,
    )
    seen = _run_stage(monkeypatch, tmp_path, align, cfg)
    inputs, d = seen["inputs"], seen["defense"]
    refusals = _split("safety-refusals", "train")[:N_ALIGN]

    # main data: the alignment set, first `samples` records, in order, with their refusals
    assert [(e.prompt, e.response, e.kind) for e in inputs.main] == [
        (e.prompt, e.response, "refusal") for e in refusals
    ]
    assert len(seen["main"]) == N_ALIGN
    assert all((enc.refusal is not None) == d.refusal_view for enc in seen["main"])

    if defense in ("booster", "antibody"):
        harmful = inputs.streams["harmful"]
        # the harmful stream is harmful-compliance *train*: the alignment prompts, same order
        assert _prompts(harmful) == _prompts(refusals)
        assert [e.response for e in harmful] == [
            e.response for e in _split("harmful-compliance", "train")[:N_ALIGN]
        ]
        assert all(e.kind == "harmful" for e in harmful)
        attack = set(_prompts(_split("harmful-compliance", "attack")))
        assert not attack & set(_prompts(harmful))
        assert set(seen["streams"]) == {"harmful"}
        assert len(seen["streams"]["harmful"]) == N_ALIGN
        if defense == "antibody":  # refusal view of the harmful stream
            _assert_refusal_views(
                tiny_random_tok, harmful, seen["streams"]["harmful"], cfg.template
            )
        else:
            assert all(enc.refusal is None for enc in seen["streams"]["harmful"])
    else:  # Vaccine and SFT need no harmful data: none is loaded, none reaches the loop
        assert inputs.streams == {} and seen["streams"] == {}


# ---- attack-finetune ----------------------------------------------------------------------------


@pytest.mark.parametrize("defense", ["sft", "lisa", "antibody"])
def test_attack_stage_uses_the_disjoint_attack_split(
    defense, monkeypatch, tmp_path, tiny_random_tok
):
    from hftguard.pipeline import attack_finetune

    cfg = FinetuneConfig(
        model="tiny-random",
        defense=defense,
        # Lisa: a schedule that fits the 2-step run (nothing is trained: the loop is stubbed)
        defense_options={"k_align": 1, "k_finetune": 1} if defense == "lisa" else {},
        samples=40,
        harmful_ratio=0.25,
        train=TRAIN,
        lora=TINY_LORA,
    )
    seen = _run_stage(monkeypatch, tmp_path, attack_finetune, cfg)
    inputs, d = seen["inputs"], seen["defense"]
    user = inputs.main
    harm = [e for e in user if e.kind == "harmful"]
    benign = [e for e in user if e.kind != "harmful"]
    assert (len(user), len(harm), len(benign)) == (40, 10, 30)

    # harmful user samples: from harmful-compliance *attack* (answers included) ...
    attack = {(e.prompt, e.response) for e in _split("harmful-compliance", "attack")}
    assert {(e.prompt, e.response) for e in harm} <= attack
    # ... sharing no prompt with anything the alignment stage trains on
    align_prompts = set(_prompts(_split("harmful-compliance", "train"))) | set(
        _prompts(_split("safety-refusals", "train"))
    )
    assert not set(_prompts(harm)) & align_prompts
    # benign user samples: the task's train split
    task = {(e.prompt, e.input, e.response) for e in _split("sentiment", "train")}
    assert {(e.prompt, e.input, e.response) for e in benign} <= task
    assert len(seen["main"]) == 40
    assert [enc.is_harmful for enc in seen["main"]] == [e.kind == "harmful" for e in user]

    if defense == "lisa":  # the alignment stream is the whole alignment set
        refusals = _split("safety-refusals", "train")
        assert [(e.prompt, e.response) for e in inputs.streams["alignment"]] == [
            (e.prompt, e.response) for e in refusals
        ]
        assert set(seen["streams"]) == {"alignment"}
        assert len(seen["streams"]["alignment"]) == len(refusals)
    else:
        assert seen["streams"] == {}
    if defense == "antibody":  # refusal view i = template i mod 100, i = position in user data
        assert d.refusal_view
        _assert_refusal_views(tiny_random_tok, user, seen["main"], cfg.template)
    else:
        assert all(enc.refusal is None for enc in seen["main"])
