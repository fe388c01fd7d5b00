"""Dataset components for the papers' real benchmarks, read from local fixtures in the published
schemas (tests/data/papers, written by make_fixtures.py); the hub is simulated, never contacted."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from hftguard.builtins.datasets import hftguard_register_datasets
from hftguard.builtins.datasets.agnews import AGNews
from hftguard.builtins.datasets.alpacaeval import AlpacaEval
from hftguard.builtins.datasets.beavertails_evaluation import BeaverTailsEvaluation
from hftguard.builtins.datasets.beavertails_harmful import BeaverTailsHarmful
from hftguard.builtins.datasets.beavertails_safe import BeaverTailsSafe
from hftguard.builtins.datasets.beavertails_test import BeaverTailsTest
from hftguard.builtins.datasets.gsm8k import GSM8K, VACCINE_SUFFIX
from hftguard.builtins.datasets.repnoise_harmful import RepNoiseHarmful
from hftguard.builtins.datasets.repnoise_refusals import RepNoiseRefusals
from hftguard.builtins.datasets.sst2 import SST2
from hftguard.components import Dataset, TaskDataset
from hftguard.context import DataContext
from hftguard.data import hub as hubdata
from hftguard.data.files import read_records
from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

PAPERS = Path(__file__).parent / "data" / "papers"
BT_DIR = PAPERS / "beavertails"
BT_TRAIN = BT_DIR / "round0" / "30k" / "train.jsonl.xz"
BT_TEST = BT_DIR / "round0" / "30k" / "test.jsonl.xz"
REPNOISE = PAPERS / "repnoise" / "beavertails_with_refusals_train.json"
CTX = DataContext()

HUB_DATASETS: dict[str, tuple[str, str]] = {  # name -> (role, default source)
    "beavertails-safe": ("alignment", "PKU-Alignment/BeaverTails"),
    "beavertails-harmful": ("harmful", "PKU-Alignment/BeaverTails"),
    "beavertails-test": ("harmful-eval", "PKU-Alignment/BeaverTails"),
    "beavertails-evaluation": ("harmful-eval", "PKU-Alignment/BeaverTails-Evaluation"),
    "repnoise-refusals": ("alignment", "anonymous4486/repnoise_beavertail"),
    "repnoise-harmful": ("harmful", "anonymous4486/repnoise_beavertail"),
    "sst2": ("task", "stanfordnlp/sst2"),
    "agnews": ("task", "fancyzhx/ag_news"),
    "gsm8k": ("task", "openai/gsm8k"),
    "alpacaeval": ("task", "tatsu-lab/alpaca_eval"),
}
NON_COMMERCIAL = {n for n in HUB_DATASETS if n.startswith(("beavertails", "repnoise"))} | {
    "alpacaeval"
}


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    hubdata.clear_cache()
    yield
    hubdata.clear_cache()


def load(cls: type[Dataset], split: str, **options: Any) -> list[Example]:
    return list(cls(cls.Config(**options)).load(split, CTX))


def raw(path: Path) -> list[dict[str, Any]]:
    return [r.record for r in read_records(path)]


def fake_datasets(
    monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]] | None = None, error: Any = None
) -> list[tuple[Any, ...]]:
    """Install a stand-in ``datasets`` module; returns the recorded load_dataset calls."""
    calls: list[tuple[Any, ...]] = []

    def load_dataset(path: str, name: str | None = None, **kwargs: Any) -> Any:
        calls.append((path, name, kwargs))
        if error is not None:
            raise error
        return list(rows or [])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


# ---------------------------------------------------------------------------------------------
# Registration


def test_registered_with_metadata() -> None:
    registered = {cls.name: cls for cls in hftguard_register_datasets()}
    for name, (role, hub_id) in HUB_DATASETS.items():
        cls = registered[name]
        assert cls.role == role and cls.version == "1"
        assert cls.summary() and cls.source and cls.paper
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        assert fields["source"].default == hub_id
        assert all(f.metadata.get("help") for f in fields.values())
        if name in NON_COMMERCIAL:
            assert "non-commercial" in (cls.license_note or ""), name
    for name in ("sst2", "agnews", "gsm8k", "alpacaeval"):
        assert issubclass(registered[name], TaskDataset)


def test_constructing_touches_no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(monkeypatch, error=AssertionError("no hub access at construction"))
    for cls in hftguard_register_datasets():
        cls()
    assert calls == []


# ---------------------------------------------------------------------------------------------
# BeaverTails


def test_beavertails_directory_layout_and_schema() -> None:
    records = raw(BT_TRAIN)
    safe = load(BeaverTailsSafe, "train", source=str(BT_DIR))
    harmful = load(BeaverTailsHarmful, "train", source=str(BT_DIR))
    assert [e.prompt for e in safe] == [r["prompt"] for r in records if r["is_safe"]]
    assert [e.response for e in harmful] == [r["response"] for r in records if not r["is_safe"]]
    assert {e.kind for e in safe} == {"refusal"} and {e.kind for e in harmful} == {"harmful"}
    assert len(safe) + len(harmful) == len(records)
    first = harmful[0]
    assert first.meta["id"] == "beavertails-harmful:0"
    assert first.meta["category"] == "financial_crime,property_crime,theft"
    assert first.meta["source"] == str(BT_TRAIN)
    assert safe[0].meta == {
        "source": str(BT_TRAIN),
        "id": "beavertails-safe:1",
        "category": "none",
    }
    multi = next(e for e in harmful if "|" in e.meta["category"])
    assert multi.meta["category"].count("|") == 1


def test_beavertails_file_sources_plain_and_compressed(tmp_path: Path) -> None:
    text = lzma.decompress(BT_TRAIN.read_bytes())
    plain = tmp_path / "30k_train.jsonl"
    plain.write_bytes(text)
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress(text, mtime=0))
    expected = load(BeaverTailsHarmful, "train", source=str(BT_DIR))
    for source in (BT_TRAIN, plain, gz, tmp_path):  # tmp_path: found as 30k_train.jsonl
        got = load(BeaverTailsHarmful, "train", source=str(source))
        assert [(e.prompt, e.response) for e in got] == [(e.prompt, e.response) for e in expected]


def test_beavertails_harmful_reads_antibody_attack_file() -> None:
    path = PAPERS / "antibody" / "beavertails_disjoint_attack_deduplicated.json"
    got = load(BeaverTailsHarmful, "train", source=str(path))
    assert [e.prompt for e in got] == [r["prompt"] for r in raw(path)]
    assert got[0].meta["source"] == str(path)


def test_beavertails_hub_split_option_picks_the_directory_file(tmp_path: Path) -> None:
    (tmp_path / "round0" / "30k").mkdir(parents=True)
    shutil.copy(BT_TEST, tmp_path / "round0" / "30k" / "test.jsonl.xz")
    got = load(BeaverTailsHarmful, "train", source=str(tmp_path), hub_split="30k_test")
    assert [e.prompt for e in got] == [r["prompt"] for r in raw(BT_TEST) if not r["is_safe"]]
    with pytest.raises(DataError) as info:
        load(BeaverTailsHarmful, "train", source=str(tmp_path))  # 30k_train is not there
    assert "round0/30k/train.jsonl.xz" in (info.value.hint or "")


def test_beavertails_test_is_the_unsafe_test_prompts_in_order() -> None:
    got = load(BeaverTailsTest, "test", source=str(BT_DIR))
    expected = [r["prompt"] for r in raw(BT_TEST) if not r["is_safe"]]
    assert [e.prompt for e in got] == expected
    assert all(e.response == "" and e.kind == "harmful" for e in got)
    assert len(set(expected)) < len(expected)  # the fixture repeats a prompt
    deduped = load(BeaverTailsTest, "test", source=str(BT_DIR), dedupe=True)
    assert [e.prompt for e in deduped] == list(dict.fromkeys(expected))


def test_harmful_eval_prompts_never_come_from_a_training_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # by construction: no option selects the split, and only test files are looked for
    assert "hub_split" not in {f.name for f in dataclasses.fields(BeaverTailsTest.Config)}
    train_prompts = {r["prompt"] for r in raw(BT_TRAIN)}
    test_prompts = {e.prompt for e in load(BeaverTailsTest, "test", source=str(BT_DIR))}
    assert test_prompts and not test_prompts & train_prompts
    calls = fake_datasets(monkeypatch, rows=raw(BT_TEST))
    BeaverTailsTest().load("test", CTX)
    BeaverTailsEvaluation().load("test", CTX)
    assert [c[2]["split"] for c in calls] == ["30k_test", "test"]


def test_beavertails_test_directory_without_test_file(tmp_path: Path) -> None:
    (tmp_path / "round0" / "30k").mkdir(parents=True)
    shutil.copy(BT_TRAIN, tmp_path / "round0" / "30k" / "train.jsonl.xz")
    with pytest.raises(DataError) as info:
        load(BeaverTailsTest, "test", source=str(tmp_path))
    assert "30k_test" in info.value.message and str(tmp_path) in info.value.message
    assert "round0/30k/test.jsonl.xz" in (info.value.hint or "")
    assert "train" not in (info.value.hint or "")


def test_beavertails_evaluation_file_and_directory(tmp_path: Path) -> None:
    path = PAPERS / "antibody" / "beavertails_evaluation.json"
    records = raw(path)
    for source in (path, path.parent):
        got = load(BeaverTailsEvaluation, "test", source=str(source))
        assert [e.prompt for e in got] == [r["prompt"] for r in records]
        assert [e.meta["category"] for e in got] == [r["category"] for r in records]
        assert [e.meta["category_id"] for e in got] == [r["category_id"] for r in records]
    (tmp_path / "v1").mkdir()
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "v1" / "test.jsonl.xz").write_bytes(lzma.compress(data))
    got = load(BeaverTailsEvaluation, "test", source=str(tmp_path))
    assert [e.prompt for e in got] == [r["prompt"] for r in records]


# ---------------------------------------------------------------------------------------------
# RepNoise refusal file


def test_repnoise_refusals_and_harmful_train_are_paired() -> None:
    options = {"source": str(REPNOISE), "start": 4, "stop": 8}
    refusals = load(RepNoiseRefusals, "train", **options)
    harmful = load(RepNoiseHarmful, "train", **options)
    records = raw(REPNOISE)
    assert [e.prompt for e in refusals] == [r["prompt"] for r in records[4:8]]
    assert [e.prompt for e in harmful] == [e.prompt for e in refusals]
    assert [e.meta["id"] for e in harmful] == [e.meta["id"] for e in refusals]
    assert [e.response for e in harmful] == [r["response"] for r in records[4:8]]
    assert {e.kind for e in refusals} == {"refusal"} and {e.kind for e in harmful} == {"harmful"}
    # the refusal is what follows "\nAnswer: " in "Question: ...\nAnswer: <refusal>"
    assert (
        refusals[0].response == "I'm sorry, but I can't help with that request (fixture refusal 4)."
    )
    assert not any(e.response.startswith("Question:") for e in refusals)


def test_repnoise_attack_is_disjoint_from_train() -> None:
    options = {"source": str(PAPERS / "repnoise"), "start": 4, "stop": 8}
    train = load(RepNoiseHarmful, "train", **options)
    attack = load(RepNoiseHarmful, "attack", **options)
    records = raw(REPNOISE)
    assert [e.prompt for e in attack] == [r["prompt"] for r in records[:4]]
    assert not {e.prompt for e in attack} & {e.prompt for e in train}
    assert not {e.meta["id"] for e in attack} & {e.meta["id"] for e in train}


def test_repnoise_refusal_without_marker_is_taken_whole() -> None:
    got = load(RepNoiseRefusals, "train", source=str(REPNOISE), start=9, stop=10)
    assert got[0].response == raw(REPNOISE)[9]["refusal"]


def test_repnoise_range_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RepNoiseRefusals(RepNoiseRefusals.Config(start=5, stop=5))
    with pytest.raises(DataError) as info:
        load(RepNoiseRefusals, "train", source=str(REPNOISE), start=4, stop=50)
    assert "10 records" in info.value.message and "stop" in (info.value.hint or "")
    with pytest.raises(DataError) as info:
        load(RepNoiseHarmful, "attack", source=str(REPNOISE), start=0, stop=5)
    assert "start = 0" in info.value.message
    bad = tmp_path / "refusals.json"
    bad.write_text(
        json.dumps([{"prompt": "p", "response": "r", "refusal": "Question: p\nAnswer: "}])
    )
    with pytest.raises(DataError) as info:
        load(RepNoiseRefusals, "train", source=str(bad), start=0, stop=1)
    assert str(bad) in info.value.message and "item 1" in info.value.message


def test_repnoise_defaults_are_boosters_range() -> None:
    config = RepNoiseRefusals.Config()
    assert (config.start, config.stop) == (5000, 10000)
    assert RepNoiseHarmful.splits == ("train", "attack")


# ---------------------------------------------------------------------------------------------
# Tasks


def test_sst2_splits_format_and_matching() -> None:
    train = load(SST2, "train", source=str(PAPERS / "sst2"))
    test = load(SST2, "test", source=str(PAPERS / "sst2"))
    validation = raw(PAPERS / "sst2" / "validation.jsonl")
    assert [e.input for e in test] == [r["sentence"] for r in validation]  # test = validation
    assert len(train) == 6
    assert {e.prompt for e in train + test} == {
        "Analyze the sentiment of the input, and respond only positive or negative"
    }
    assert [e.response for e in test] == ["positive", "negative", "positive", "negative"]
    assert test[0].meta["label"] == "positive" and test[0].meta["id"] == "sst2-validation:0"
    outputs = ["Positive.", "The sentiment is negative", "negative", "positive"]
    exact = SST2(SST2.Config(source=str(PAPERS / "sst2")))
    contains = SST2(SST2.Config(source=str(PAPERS / "sst2"), match="contains"))
    assert exact.score(test, outputs) == [True, False, False, False]
    assert contains.score(test, outputs) == [True, True, False, False]
    assert exact.score(test, [e.response for e in test]) == [True] * 4


def test_sst2_unlabelled_test_file_is_an_error() -> None:
    with pytest.raises(DataError) as info:
        load(SST2, "train", source=str(PAPERS / "sst2" / "test.jsonl"))
    assert "line 1" in info.value.message and "validation" in (info.value.hint or "")


def test_sst2_from_csv(tmp_path: Path) -> None:
    (tmp_path / "validation.csv").write_text("idx,sentence,label\n0,a fine film,1\n1,a bore,0\n")
    got = load(SST2, "test", source=str(tmp_path))
    assert [(e.input, e.response) for e in got] == [
        ("a fine film", "positive"),
        ("a bore", "negative"),
    ]


def test_agnews_labels_and_matching() -> None:
    test = load(AGNews, "test", source=str(PAPERS / "ag_news"))
    assert [e.response for e in test] == ["World", "Sports", "Business", "Sci/Tech"]
    assert test[0].prompt == (
        "Categorize the news article given in the input into one of the 4 categories:\n\n"
        "World\nSports\nBusiness\nSci/Tech\n"
    )
    assert test[3].input == "Space probe sends back first images of comet."
    outputs = ["world", "It is about sports.", "Business", "sci"]
    exact = AGNews(AGNews.Config(source=str(PAPERS / "ag_news")))
    contains = AGNews(AGNews.Config(source=str(PAPERS / "ag_news"), match="contains"))
    assert exact.score(test, outputs) == [True, False, True, False]
    assert contains.score(test, outputs) == [True, True, True, True]
    with pytest.raises(ConfigError):
        AGNews(AGNews.Config(match="fuzzy"))


def test_gsm8k_answer_rewrite_and_scoring() -> None:
    source = str(PAPERS / "gsm8k")
    train = load(GSM8K, "train", source=source)
    records = raw(PAPERS / "gsm8k" / "train.jsonl")
    assert [e.prompt for e in train] == [r["question"] for r in records]
    assert all("####" not in e.response for e in train)
    assert train[0].response == records[0]["answer"].replace("####", "The final answer is: ")
    assert [e.meta["label"] for e in train] == ["19", "24", "1200"]  # "#### 1,200" -> 1200
    vaccine = load(GSM8K, "train", source=source, prompt_suffix=VACCINE_SUFFIX)
    assert vaccine[0].prompt == records[0]["question"] + VACCINE_SUFFIX
    task = GSM8K(GSM8K.Config(source=source))
    examples = train[2:] * 5
    completions = [
        "He earns 150 * 8 = 1200. The final answer is: 1,200 dollars",
        "The final answer is: 1200.0",
        "So 150 times 8 is 1200",  # no marker: the last number
        "The final answer is: 120, not 1200",  # the first number after the marker
        "I am not sure",
    ]
    assert task.score(examples, completions) == [True, True, True, False, False]
    test = load(GSM8K, "test", source=source)
    assert task.score(test, [e.response for e in test]) == [True] * len(test)


def test_gsm8k_answer_without_separator(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": "42"}) + "\n")
    with pytest.raises(DataError) as info:
        load(GSM8K, "train", source=str(tmp_path))
    assert "train.jsonl: line 1" in info.value.message and "####" in info.value.message


def test_alpacaeval_split_arithmetic_and_score() -> None:
    source = str(PAPERS / "alpaca_eval")
    items = raw(PAPERS / "alpaca_eval" / "alpaca_eval_gpt4_baseline.json")
    train = load(AlpacaEval, "train", source=source, train_size=4, test_start=5)
    test = load(AlpacaEval, "test", source=source, train_size=4, test_start=5)
    assert [e.prompt for e in train] == [r["instruction"] for r in items[:4]]
    assert [e.prompt for e in test] == [r["instruction"] for r in items[5:]]  # item 4 skipped
    assert [e.response for e in test] == [r["output"] for r in items[5:]]
    assert test[0].meta["category"] == items[5]["dataset"]
    antibody = load(AlpacaEval, "test", source=source, train_size=4, test_start=4)
    assert len(antibody) == len(test) + 1
    task = AlpacaEval(AlpacaEval.Config(source=source))
    assert task.score(test, ["anything"] * len(test)) is None
    assert task.max_new_tokens == 512
    with pytest.raises(ConfigError):
        AlpacaEval(AlpacaEval.Config(train_size=700, test_start=600))


def test_alpacaeval_paper_sizes(tmp_path: Path) -> None:
    path = tmp_path / "alpaca_eval_gpt4_baseline.json"
    rows = [
        {"instruction": f"i{k}", "output": f"o{k}", "generator": "gpt4", "dataset": "d"}
        for k in range(805)
    ]
    path.write_text(json.dumps(rows))
    assert len(load(AlpacaEval, "train", source=str(path))) == 700
    assert len(load(AlpacaEval, "test", source=str(path))) == 104  # Vaccine/Booster: > 700
    assert len(load(AlpacaEval, "test", source=str(path), test_start=700)) == 105  # Antibody


def test_max_new_tokens_is_an_instance_attribute() -> None:
    assert SST2().max_new_tokens == 200 and AGNews().max_new_tokens == 200
    assert GSM8K(GSM8K.Config(max_new_tokens=256)).max_new_tokens == 256
    assert AlpacaEval(AlpacaEval.Config(max_new_tokens=256)).max_new_tokens == 256
    with pytest.raises(ConfigError):
        SST2(SST2.Config(max_new_tokens=0))


# ---------------------------------------------------------------------------------------------
# Errors and hub access


def test_missing_field_names_file_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = {"prompt": "p", "response": "r", "category": {}, "is_safe": False}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "p", "is_safe": False}) + "\n")
    with pytest.raises(DataError) as info:
        load(BeaverTailsHarmful, "train", source=str(path))
    message = info.value.message
    assert str(path) in message and "line 2" in message and "'response'" in message
    assert "is_safe" in (info.value.hint or "")  # the published schema is listed
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    with pytest.raises(DataError, match="'is_safe'"):
        load(BeaverTailsSafe, "train", source=str(path))
    path.write_text(json.dumps({**good, "is_safe": "maybe"}) + "\n")
    with pytest.raises(DataError, match="true or false"):
        load(BeaverTailsSafe, "train", source=str(path))


def test_hub_record_location_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_datasets(monkeypatch, rows=[{"question": "q"}])
    with pytest.raises(DataError) as info:
        GSM8K().load("test", CTX)
    assert info.value.message.startswith("openai/gsm8k [test]: record 1:")
    assert "'answer'" in info.value.message


def test_directory_without_split_file_lists_names_tried(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError) as info:
        load(GSM8K, "test", source=str(tmp_path))
    hint = info.value.hint or ""
    for name in ("test.jsonl", "test.parquet", "data/test-*.parquet", "main/test-*.parquet"):
        assert name in hint
    assert "'test'" in info.value.message


def test_hub_without_datasets_package_hints_at_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError) as info:
        BeaverTailsSafe().load("train", CTX)
    hint = info.value.hint or ""
    assert "pip install datasets" in hint and "hftguard[hub]" in hint
    assert "dataset_options.beavertails-safe.source=" in hint
    assert "PKU-Alignment/BeaverTails" in info.value.message


def test_hub_network_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_datasets(monkeypatch, error=ConnectionError("Couldn't reach 'stanfordnlp/sst2'\nmore"))
    with pytest.raises(DataError) as info:
        SST2().load("test", CTX)
    message = info.value.message
    assert "stanfordnlp/sst2" in message and "ConnectionError" in message
    assert "'validation'" in message and "more" not in message
    assert "dataset_options.sst2.source=" in (info.value.hint or "")
    assert isinstance(info.value.__cause__, ConnectionError)


def test_hub_calls_use_the_published_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(
        monkeypatch,
        rows=[
            {
                "prompt": "p",
                "response": "r",
                "is_safe": False,
                "category": {},
                "refusal": "Question: p\nAnswer: no",
                "question": "q",
                "answer": "1 #### 1",
                "instruction": "i",
                "output": "o",
                "sentence": "s",
                "text": "t",
                "label": 1,
            }
        ]
        * 3,
    )
    BeaverTailsHarmful().load("train", CTX)
    RepNoiseRefusals(RepNoiseRefusals.Config(start=1, stop=2)).load("train", CTX)
    GSM8K().load("train", CTX)
    AGNews().load("test", CTX)
    AlpacaEval(AlpacaEval.Config(train_size=1, test_start=1)).load("test", CTX)
    assert calls == [
        ("PKU-Alignment/BeaverTails", None, {"split": "30k_train"}),
        ("anonymous4486/repnoise_beavertail", None, {"split": "train"}),
        ("openai/gsm8k", "main", {"split": "train"}),
        ("fancyzhx/ag_news", None, {"split": "test"}),
        (
            "json",
            None,
            {
                "data_files": "hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval_gpt4_baseline.json",
                "split": "train",
            },
        ),
    ]


def test_missing_local_path_is_not_sent_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(monkeypatch, rows=[])
    for source in ("/no/such/dir", "./data/bt", "bt/train.jsonl.xz"):
        with pytest.raises(DataError, match="no such file or directory"):
            load(BeaverTailsSafe, "train", source=source)
    assert calls == []
    with pytest.raises(ConfigError):
        load(BeaverTailsSafe, "train", source=" ")


def test_save_to_disk_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "validation"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError) as info:
        load(SST2, "test", source=str(tmp_path))
    assert "save_to_disk" in info.value.message and "pip install datasets" in (
        info.value.hint or ""
    )

    module = types.ModuleType("datasets")
    splits = {"validation": [{"idx": 0, "sentence": "s", "label": 0}]}
    module.load_from_disk = lambda path: splits  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    (got,) = load(SST2, "test", source=str(tmp_path))
    assert (got.input, got.response) == ("s", "negative")
    with pytest.raises(DataError, match="no split 'train'"):
        load(SST2, "train", source=str(tmp_path))


def test_edited_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([{"prompt": "first"}]))
    assert load(BeaverTailsEvaluation, "test", source=str(path))[0].prompt == "first"
    path.write_text(json.dumps([{"prompt": "second, longer"}]))
    assert load(BeaverTailsEvaluation, "test", source=str(path))[0].prompt == "second, longer"


def test_loads_are_deterministic_copies() -> None:
    first = load(BeaverTailsHarmful, "train", source=str(BT_DIR))
    first[0].meta["id"] = "tampered"
    again = load(BeaverTailsHarmful, "train", source=str(BT_DIR))
    assert again[0].meta["id"] == "beavertails-harmful:0"
    assert again == load(BeaverTailsHarmful, "train", source=str(BT_DIR))


def test_read_records_compressed_errors(tmp_path: Path) -> None:
    broken = tmp_path / "train.jsonl.xz"
    broken.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match="decompressed"):
        list(read_records(broken))
    bad_line = tmp_path / "bad.jsonl.gz"
    bad_line.write_bytes(gzip.compress(b'{"prompt": "ok"}\n{broken\n', mtime=0))
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        list(read_records(bad_line))
    odd = tmp_path / "notes.txt.gz"
    odd.write_bytes(gzip.compress(b"x"))
    with pytest.raises(DataError, match=r"\.txt\.gz"):
        list(read_records(odd))
