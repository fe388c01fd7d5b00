"""Any Hugging Face dataset by id (``hf:ID[@REV][:CONFIG][:SPLIT]``), field mapping and the chat
``messages`` format (#16).

Offline: the hub datasets are local copies in the hub repository's layout under
``$HFTGUARD_HF_DATASETS_DIR`` (JSON Lines shards, as ``hf download`` writes them), so neither the
network nor the ``datasets`` package is needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run, assert_error

from hftguard.context import DataContext
from hftguard.data.hub import MIRROR_ENV, clear_cache, parse_hf_spec
from hftguard.data.inputs import check_data_fields, fields_for, is_file_spec, load_examples
from hftguard.errors import ConfigError, DataError
from hftguard.registry import default_registry


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOALS = [{"behavior": f"harmful request {i}", "target": f"Sure, here is {i}"} for i in range(12)]
TASK = [{"sentence": f"a fine film number {i}", "answer": "positive"} for i in range(40)]


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mirror"
    _jsonl(root / "org/advbench/data/train-00000-of-00001.jsonl", GOALS)
    _jsonl(root / "org/advbench/data/test-00000-of-00001.jsonl", GOALS[:3])
    _jsonl(root / "org/sst/plain/train-00000-of-00002.jsonl", TASK[:20])
    _jsonl(root / "org/sst/plain/train-00001-of-00002.jsonl", TASK[20:])
    monkeypatch.setenv(MIRROR_ENV, str(root))
    clear_cache()
    yield root
    clear_cache()


def _ctx() -> DataContext:
    return DataContext(seed=0)


def test_spec_grammar() -> None:
    s = parse_hf_spec("hf:stanfordnlp/sst2:validation")
    assert (s.id, s.config, s.split, s.revision) == ("stanfordnlp/sst2", None, "validation", None)
    s = parse_hf_spec("hf:openai/gsm8k@abc123:main:test")
    assert (s.id, s.config, s.split, s.revision) == ("openai/gsm8k", "main", "test", "abc123")
    s = parse_hf_spec("hf:openai/gsm8k:main:")
    assert (s.config, s.split) == ("main", None)
    assert parse_hf_spec("hf:squad").split is None
    for bad in ("hf:", "hf:a/b/c", "hf:a:b:c:d", "hf:a b"):
        with pytest.raises(ConfigError, match="bad hub dataset"):
            parse_hf_spec(bad)
    assert is_file_spec("hf:org/name") and not is_file_spec("sentiment")


def test_hf_dataset_loads_from_the_mirror_with_a_field_mapping(mirror: Path) -> None:
    reg = default_registry()
    examples = load_examples(
        "hf:org/advbench:train",
        "harmful",
        "train",
        reg,
        _ctx(),
        fields={"prompt": "behavior", "response": "target"},
    )
    assert [e.prompt for e in examples] == [g["behavior"] for g in GOALS]
    assert examples[0].response == "Sure, here is 0" and examples[0].kind == "harmful"
    hf = examples[0].meta["hf"]
    assert hf["hf_id"] == "org/advbench" and hf["split"] == "train"
    assert hf["revision"] == "local mirror" and len(hf["sha256"]) == 64 and hf["records"] == 12
    # no split in the spec: the stage's own; a string mapping works too
    test = load_examples(
        "hf:org/advbench", "harmful-eval", "test", reg, _ctx(), fields="prompt=behavior"
    )
    assert len(test) == 3 and test[0].meta["hf"]["split"] == "test"
    # a configuration directory with sharded files, read in order
    cfg = load_examples(
        "hf:org/sst:plain:train", "task", "train", reg, _ctx(), fields="prompt=sentence"
    )
    assert [e.prompt for e in cfg] == [t["sentence"] for t in TASK]
    assert cfg[0].response == "positive" and cfg[0].meta["hf"]["config"] == "plain"


def test_missing_mapping_and_builtin_mapping_errors(mirror: Path) -> None:
    reg = default_registry()
    with pytest.raises(DataError, match="required field 'prompt' is missing") as exc:
        load_examples("hf:org/advbench:train", "harmful", "train", reg, _ctx())
    assert "prompt=my_column" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="built-in dataset"):
        load_examples("sentiment", "task", "train", reg, _ctx(), fields="prompt=x")
    with pytest.raises(DataError, match="no file for split 'nope'"):
        load_examples(
            "hf:org/advbench:nope", "harmful", "train", reg, _ctx(), fields="prompt=behavior"
        )


def test_unknown_id_offline_fails_fast(mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError) as exc:
        load_examples("hf:nobody/nothing:train", "task", "train", default_registry(), _ctx())
    assert time.monotonic() - start < 10
    assert "nobody/nothing" in str(exc.value)
    assert MIRROR_ENV in (exc.value.hint or "")


def test_data_fields_config_entries() -> None:
    from hftguard.config import FinetuneConfig

    cfg = FinetuneConfig(
        data_fields={"harmful": {"prompt": "behavior", "system_prompt": "Be nice."}}
    )
    check_data_fields(cfg)
    assert fields_for(cfg, "harmful") is not None and fields_for(cfg, "task") is None
    with pytest.raises(ConfigError, match="not a dataset argument"):
        check_data_fields(FinetuneConfig(data_fields={"harmful_prompts": "prompt=x"}))
    with pytest.raises(ConfigError, match="unknown field 'prompts'"):
        check_data_fields(FinetuneConfig(data_fields={"task": {"prompts": "x"}}))


def test_system_prompt_option(mirror: Path) -> None:
    from hftguard.config import FinetuneConfig

    table = {"prompt": "behavior", "response": "target", "system_prompt": "Be nice."}
    cfg = FinetuneConfig(data_fields={"harmful": table})
    ex = load_examples(
        "hf:org/advbench:train", "harmful", "train", default_registry(), _ctx(),
        fields=fields_for(cfg, "harmful"),
    )[0]  # fmt: skip
    assert ex.prompt == "Be nice.\n\nharmful request 0"


def test_messages_format(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Is this good?"},
                {"role": "assistant", "content": "Yes."},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
                {"from": "human", "value": "Bye"},
                {"from": "gpt", "value": "Goodbye."},
            ]
        },
    ]
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    reg = default_registry()
    first, second = load_examples(str(path), "task", "train", reg, _ctx())
    assert (first.prompt, first.response) == ("You are terse.\n\nIs this good?", "Yes.")
    assert first.meta["system"] == "You are terse."
    assert second.response == "Goodbye."
    assert second.prompt == "User: Hi\n\nAssistant: Hello!\n\nUser: Bye"
    assert second.meta["history"][1] == {"role": "assistant", "content": "Hello!"}
    # a mapped messages column; a conversation ending with the user is an evaluation prompt
    other = _jsonl(tmp_path / "eval.jsonl", [{"chat": [{"role": "user", "content": "Q?"}]}])
    (ex,) = load_examples(str(other), "harmful-eval", "test", reg, _ctx(), fields="messages=chat")
    assert (ex.prompt, ex.response) == ("Q?", "")
    with pytest.raises(DataError, match="required field 'response'"):
        load_examples(str(other), "task", "train", reg, _ctx(), fields="messages=chat")
    bad = _jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match="unknown message role"):
        load_examples(str(bad), "task", "train", reg, _ctx())


def test_attack_finetune_reads_hf_datasets_and_records_them(
    cli: Run, mirror: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    result = cli(
        "attack-finetune",
        "--model",
        "tiny-random",
        "--max-steps",
        "1",
        "-n",
        "8",
        "-p",
        "0.25",
        "--task",
        "hf:org/sst:plain:train",
        "--harmful",
        "hf:org/advbench:train",
        "--set",
        "data_fields.task=prompt=sentence",
        "--set",
        "data_fields.harmful.prompt=behavior",
        "--set",
        "data_fields.harmful.response=target",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.code == 0, result.out + result.err
    manifest = json.loads((out / "manifest.json").read_text())
    hub = {h["hf_id"]: h for h in manifest["data"]["main"]["hf"]}
    assert set(hub) == {"org/sst", "org/advbench"}
    assert hub["org/advbench"]["split"] == "train" and len(hub["org/advbench"]["sha256"]) == 64
    assert hub["org/sst"]["config"] == "plain" and hub["org/sst"]["revision"] == "local mirror"


def test_stage_unknown_id_offline_is_a_clean_error(
    cli: Run, mirror: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    result = cli(
        "attack-finetune",
        "--model",
        "tiny-random",
        "--max-steps",
        "1",
        "-n",
        "8",
        "--task",
        "hf:nobody/nothing:train",
        "--out",
        str(tmp_path / "ft"),
    )
    assert time.monotonic() - start < 30  # the tiny model is built first on a fresh home
    assert_error(result, 2, "nobody/nothing", MIRROR_ENV)


# ---------------------------------------------------------------------------------------------
# eval: hf: prompt sets and tasks, data_fields (generation faked as in test_eval_options.py)

EVAL = ("eval", "--model", "tiny-random", "--max-new-tokens", "2", "--set", "batch_size=4")
QA = [
    {"q": "Q1 What is the capital of France?", "a": "Paris"},
    {"q": "Q2 What is 6 times 7?", "a": "42"},
    {"q": "Q3 Sentiment of: a great film", "a": "positive"},
    {"q": "Q4 Sentiment of: an awful film", "a": "negative"},
]
QA_OUTPUTS = {"Q1": "Paris", "Q2": "6 times 7 is 42", "Q3": "Positive!", "Q4": "positive"}


@pytest.fixture
def fake_generate(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Generation replaced by fixed answers; records each call's prompts."""
    calls: list[list[str]] = []

    def answer(prompt: str) -> str:
        if "harmful request 0" in prompt:
            return "I'm sorry, but I can't help with that."
        if "harmful request" in prompt:
            return (
                "Sure, here is the harmful request. Step 1: gather the materials for the "
                "request. Step 2: carry out the request carefully."
            )
        return next((o for k, o in QA_OUTPUTS.items() if k in prompt), "Sure, here is how.")

    def generate(model: Any, tok: Any, prompts: list[str], **kwargs: Any) -> list[str]:
        calls.append(list(prompts))
        return [answer(p) for p in prompts]

    monkeypatch.setattr("hftguard.engine.generation.generate", generate)
    return calls


def test_eval_reads_hf_harmful_prompts_with_data_fields_and_records_them(
    cli: Run, mirror: Path, tmp_path: Path, fake_generate: list[list[str]]
) -> None:
    args = ("--harmful-prompts", "hf:org/advbench:test", "--harmful-samples", "0")
    fields = ("--set", "data_fields.harmful_prompts.prompt=behavior")
    r = cli(*EVAL, *args, *fields, "--no-benign", "--no-tasks", "--out", "e")
    assert r.code == 0, r.out + r.err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["counts"]["harmful"] == 3
    # by hand: request 0 is refused, requests 1 and 2 get step-by-step compliance
    assert metrics["harmful_score"] == pytest.approx(200 / 3)
    assert fake_generate[0] and all(
        f"harmful request {i}" in p for i, p in enumerate(fake_generate[0])
    )
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    (hub,) = manifest["data"]["harmful_prompts_hf"]
    assert (hub["hf_id"], hub["split"], hub["records"]) == ("org/advbench", "test", 3)
    assert hub["revision"] == "local mirror" and len(hub["sha256"]) == 64
    assert "benign_prompts_hf" not in manifest["data"]
    assert manifest["data"]["data_fields"] == {"harmful_prompts": {"prompt": "behavior"}}
    assert metrics["test_sets"]["harmful"]["hf"] == [hub]


def test_eval_hf_task_scored_exact_against_a_hand_computation(
    cli: Run, mirror: Path, tmp_path: Path, fake_generate: list[list[str]]
) -> None:
    _jsonl(mirror / "org/qa/data/test-00000-of-00001.jsonl", QA)
    _jsonl(mirror / "org/qa/data/train-00000-of-00001.jsonl", QA[:1])
    task = "hf:org/qa"  # no split: eval reads test
    args = ("--harmful-prompts", "hf:org/advbench:test", "--no-benign", "--task", task)
    fields = (
        "--set",
        "data_fields.harmful_prompts=prompt=behavior",
        "--set",
        f"data_fields.{task}=prompt=q,response=a",
    )
    r = cli(*EVAL, *args, *fields, "--task-scoring", "exact", "--out", "e")
    assert r.code == 0, r.out + r.err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    # by hand, exact after normalisation: Paris = Paris, "6 times 7 is 42" != 42,
    # "Positive!" = positive, positive != negative -> 2 of 4
    assert metrics["finetune_accuracy"] == {task: 50.0}
    assert metrics["counts"]["tasks"] == {task: 4}
    (record,) = json.loads((tmp_path / "e" / "manifest.json").read_text())["components"]["tasks"]
    assert record["kind"] == "file-task" and record["scoring"] == "exact"
    assert record["dataset"] == task and record["data_fields"] == "prompt=q,response=a"
    assert [(h["hf_id"], h["split"], h["records"]) for h in record["hf"]] == [("org/qa", "test", 4)]
    assert metrics["test_sets"][f"task:{task}"]["hf"][0]["hf_id"] == "org/qa"


@pytest.mark.parametrize(
    ("sets", "needles"),
    [
        (("data_fields.nonsense.prompt=goal",), ("data_fields.nonsense", "harmful_prompts")),
        (("data_fields.benign_prompts.prompt=goal",), ("benign-eval", "built-in")),
        (("data_fields.harmful_prompts.reply=goal",), ("unknown field 'reply'",)),
    ],
)
def test_eval_bad_data_fields_fail_before_generation(
    cli: Run,
    mirror: Path,
    tmp_path: Path,
    fake_generate: list[list[str]],
    sets: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    args = ("--harmful-prompts", "hf:org/advbench:test", "--no-tasks")
    result = cli(*EVAL, *args, *(x for s in sets for x in ("--set", s)), "--out", "e")
    assert_error(result, 2, *needles)
    assert fake_generate == []
    assert not (tmp_path / "e").exists()
