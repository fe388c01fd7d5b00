"""HarmBench, StrongREJECT and XSTest as dataset components (#16), read from tiny made-up copies
in their published schemas and the hub copies' layouts (tests/prompt_set_fixtures.py); the hub
itself is simulated, never contacted."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run
from prompt_set_fixtures import (
    HARMBENCH_COLUMNS,
    HARMBENCH_ROWS,
    STRONGREJECT_ROWS,
    XSTEST_COLUMNS,
    XSTEST_ROWS,
    harmbench_hub_rows,
    write_csv,
    write_harmbench,
    write_harmbench_hub,
    write_jsonl,
    write_strongreject,
    write_xstest,
)

from hftguard.builtins.datasets import hftguard_register_datasets
from hftguard.builtins.datasets.harmbench import HarmBench
from hftguard.builtins.datasets.strongreject import StrongREJECT
from hftguard.builtins.datasets.xstest import XSTest, XSTestUnsafe
from hftguard.components import Dataset
from hftguard.config import build
from hftguard.context import DataContext
from hftguard.data import hub as hubdata
from hftguard.errors import ConfigError, DataError
from hftguard.records import Example

CTX = DataContext()
SEP = "\n\n---\n\n"
#: name -> (class, role, default source, licence word)
SETS: dict[str, tuple[type[Dataset], str, str, str]] = {
    "harmbench": (HarmBench, "harmful-eval", "walledai/HarmBench", "MIT"),
    "strongreject": (StrongREJECT, "harmful-eval", "walledai/StrongREJECT", "MIT"),
    "xstest": (XSTest, "benign-eval", "walledai/XSTest", "CC BY 4.0"),
    "xstest-unsafe": (XSTestUnsafe, "harmful-eval", "walledai/XSTest", "CC BY 4.0"),
}


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    hubdata.clear_cache()
    yield
    hubdata.clear_cache()


def load(cls: type[Dataset], **options: Any) -> list[Example]:
    """Build the component as the CLI does (options coerced by type) and load its test split."""
    return list(cls(build(cls.Config, options)).load("test", CTX))


def fake_datasets(
    monkeypatch: pytest.MonkeyPatch, rows: dict[str | None, list[dict[str, Any]]]
) -> list[tuple[Any, ...]]:
    """A stand-in ``datasets`` module serving ``rows[configuration]``; returns the calls."""
    calls: list[tuple[Any, ...]] = []

    def load_dataset(path: str, name: str | None = None, **kwargs: Any) -> Any:
        calls.append((path, name, kwargs))
        return list(rows[name])

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


# ---------------------------------------------------------------------------------------------
# Registration


def test_registered_with_roles_sources_and_licences() -> None:
    registered = {cls.name: cls for cls in hftguard_register_datasets()}
    for name, (cls, role, hub_id, licence) in SETS.items():
        assert registered[name] is cls
        assert cls.role == role and cls.splits == ("test",) and cls.version == "1"
        assert cls.summary() and cls.source and cls.paper
        assert licence in (cls.license_note or ""), name
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        assert fields["source"].default == hub_id
        assert all(f.metadata.get("help") for f in fields.values())
    # the over-refusal set has the role of the built-in over-refusal set
    assert XSTest.role == registered["benign-eval"].role


def test_listed_by_hftguard_plugins(cli: Run) -> None:
    r = cli("plugins", "--json")
    assert r.code == 0, r.out + r.err
    listed = {(c["kind"], c["name"]): c for c in json.loads(r.out)}
    for name, (_cls, role, _hub, licence) in SETS.items():
        entry = listed[("dataset", name)]
        assert entry["stage"] == role and entry["distribution"] == "hftguard"
        assert licence in entry["license_note"]


# ---------------------------------------------------------------------------------------------
# HarmBench


def test_harmbench_default_is_the_standard_behaviours(tmp_path: Path) -> None:
    csv_file = write_harmbench(tmp_path)
    for source in (csv_file, tmp_path, csv_file.parent):  # the file, the repository, its folder
        got = load(HarmBench, source=str(source))
        assert [e.prompt for e in got] == [
            "Give step-by-step instructions for <harmful goal placeholder 1>",
            "Write a persuasive article about <harmful goal placeholder 3>",
        ]
        assert {(e.kind, e.response, e.input) for e in got} == {("harmful", "", "")}
        assert got[0].meta == {
            "source": str(csv_file),
            "id": "placeholder_goal_one",
            "category": "illegal",
            "functional_category": "standard",
        }
        assert got[1].meta["category"] == "misinformation_disinformation"


def test_harmbench_contextual_prompt_is_context_separator_behaviour(tmp_path: Path) -> None:
    source = str(write_harmbench(tmp_path))
    got = load(HarmBench, source=source, functional_categories="standard,contextual")
    assert [e.meta["id"] for e in got] == [  # file order, copyright left out
        "placeholder_goal_one",
        "placeholder_goal_two_context",
        "placeholder_goal_three",
        "placeholder_goal_five_context",
    ]
    assert got[1].prompt == (
        'Placeholder context, "quoted",\nover two lines'
        + SEP
        + "Using the text above, explain how to <harmful goal placeholder 2>"
    )
    assert got[1].input == "" and got[1].meta["functional_category"] == "contextual"
    assert got[3].prompt == (
        "Placeholder record for behaviour five"
        + SEP
        + "Given this record, describe how to <harmful goal placeholder 5>"
    )


def test_harmbench_context_as_input_field(tmp_path: Path) -> None:
    source = str(write_harmbench(tmp_path))
    got = load(
        HarmBench, source=source, functional_categories=["contextual"], context_format="input"
    )
    assert [(e.prompt, e.input) for e in got] == [
        (
            "Using the text above, explain how to <harmful goal placeholder 2>",
            'Placeholder context, "quoted",\nover two lines',
        ),
        (
            "Given this record, describe how to <harmful goal placeholder 5>",
            "Placeholder record for behaviour five",
        ),
    ]
    with pytest.raises(ConfigError, match="context_format"):
        build(HarmBench.Config, {"context_format": "suffix"}, "dataset_options.harmbench")


def test_harmbench_functional_category_selection(tmp_path: Path) -> None:
    source = str(write_harmbench(tmp_path))
    every = load(HarmBench, source=source, functional_categories="copyright, contextual,standard")
    assert [e.meta["id"] for e in every] == [r["BehaviorID"] for r in HARMBENCH_ROWS]
    copyright_only = load(HarmBench, source=source, functional_categories="copyright")
    assert [e.prompt for e in copyright_only] == [
        "Generate the lyrics of <copyrighted song placeholder>"
    ]
    for bad, needle in (("standard,harmful", "'harmful'"), ("", "empty")):
        with pytest.raises(ConfigError, match=needle) as info:
            HarmBench(build(HarmBench.Config, {"functional_categories": bad}))
        assert "standard, contextual, copyright" in (info.value.hint or "")


def test_harmbench_hub_layout_directory(tmp_path: Path) -> None:
    write_harmbench_hub(tmp_path)
    got = load(HarmBench, source=str(tmp_path), functional_categories="contextual,standard")
    published = load(
        HarmBench,
        source=str(write_harmbench(tmp_path / "pub")),
        functional_categories="standard,contextual",
    )
    # the hub reads configuration by configuration: standard first, then contextual
    assert [e.prompt for e in got] == [
        "Give step-by-step instructions for <harmful goal placeholder 1>",
        "Write a persuasive article about <harmful goal placeholder 3>",
        'Placeholder context, "quoted",\nover two lines'
        + SEP
        + "Using the text above, explain how to <harmful goal placeholder 2>",
        "Placeholder record for behaviour five"
        + SEP
        + "Given this record, describe how to <harmful goal placeholder 5>",
    ]
    assert sorted(e.prompt for e in got) == sorted(e.prompt for e in published)
    assert [e.meta["id"] for e in got] == [
        "harmbench-standard:0",
        "harmbench-standard:1",
        "harmbench-contextual:0",
        "harmbench-contextual:1",
    ]
    assert got[2].meta["category"] == "cybercrime_intrusion"
    assert got[2].meta["functional_category"] == "contextual"


def test_harmbench_hub_calls_one_configuration_per_category(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = {c: harmbench_hub_rows(c) for c in ("standard", "contextual", "copyright")}
    calls = fake_datasets(monkeypatch, rows)
    got = load(HarmBench, functional_categories="copyright,standard")
    assert calls == [
        ("walledai/HarmBench", "standard", {"split": "train"}),
        ("walledai/HarmBench", "copyright", {"split": "train"}),
    ]
    assert [e.meta["id"] for e in got] == [
        "harmbench-standard:0",
        "harmbench-standard:1",
        "harmbench-copyright:0",
    ]
    assert got[0].meta["source"] == "walledai/HarmBench [train]"


def test_harmbench_single_hub_schema_file_is_read_whole(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "hb_contextual.jsonl", harmbench_hub_rows("contextual"))
    got = load(HarmBench, source=str(path))  # one exported configuration: no filtering
    assert [e.meta["id"] for e in got] == ["harmbench:0", "harmbench:1"]
    assert got[0].prompt.endswith(
        SEP + "Using the text above, explain how to <harmful goal placeholder 2>"
    )
    assert got[0].meta["functional_category"] == "contextual"


def test_harmbench_schema_errors(tmp_path: Path) -> None:
    goals = tmp_path / "goals.csv"
    goals.write_text("goal,target\nDo <placeholder>,Sure\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load(HarmBench, source=str(goals))
    assert str(goals) in info.value.message and "line 2" in info.value.message
    hint = info.value.hint or ""
    assert "Behavior, FunctionalCategory, SemanticCategory" in hint and "prompt" in hint

    no_id = [{k: v for k, v in HARMBENCH_ROWS[0].items() if k != "BehaviorID"}]
    path = write_csv(tmp_path / "no_id.csv", HARMBENCH_COLUMNS[:-1], no_id)
    with pytest.raises(DataError, match="'BehaviorID'") as info:
        load(HarmBench, source=str(path))
    assert "ContextString" in (info.value.hint or "")

    no_context = [{**HARMBENCH_ROWS[1], "ContextString": ""}]
    path = write_csv(tmp_path / "no_context.csv", HARMBENCH_COLUMNS, no_context)
    with pytest.raises(DataError, match="no behaviours"):  # not chosen, so not checked
        load(HarmBench, source=str(path), functional_categories="standard,copyright")
    with pytest.raises(DataError, match="contextual behaviour without a context"):
        load(HarmBench, source=str(path), functional_categories="contextual")

    only_copyright = write_csv(tmp_path / "c.csv", HARMBENCH_COLUMNS, [HARMBENCH_ROWS[3]])
    with pytest.raises(DataError, match=r"no behaviours of the chosen functional_categories"):
        load(HarmBench, source=str(only_copyright))


# ---------------------------------------------------------------------------------------------
# StrongREJECT


def test_strongreject_published_csv(tmp_path: Path) -> None:
    csv_file = write_strongreject(tmp_path)
    for source in (tmp_path, csv_file.parent, csv_file):
        got = load(StrongREJECT, source=str(source))
        assert [e.prompt for e in got] == [r["forbidden_prompt"] for r in STRONGREJECT_ROWS]
        assert {(e.kind, e.response, e.input) for e in got} == {("harmful", "", "")}
        assert [e.meta for e in got] == [
            {
                "source": str(csv_file),
                "id": f"strongreject:{i}",
                "category": r["category"],
                "prompt_source": r["source"],
            }
            for i, r in enumerate(STRONGREJECT_ROWS)
        ]


def test_strongreject_small_file_and_hub_schema(tmp_path: Path) -> None:
    small = write_csv(
        tmp_path / "strongreject_small_dataset.csv",
        ("category", "source", "forbidden_prompt"),
        STRONGREJECT_ROWS[1:2],
    )
    got = load(StrongREJECT, source=str(small))
    assert [e.prompt for e in got] == [
        "Give step-by-step instructions for <harmful goal placeholder A>"
    ]
    hub_rows = [
        {"prompt": r["forbidden_prompt"], "category": r["category"], "source": r["source"]}
        for r in STRONGREJECT_ROWS
    ]
    mirror = tmp_path / "walledai" / "StrongREJECT"
    write_jsonl(mirror / "data" / "train-00000-of-00001.jsonl", hub_rows)
    from_hub_layout = load(StrongREJECT, source=str(mirror))
    assert [e.prompt for e in from_hub_layout] == [r["forbidden_prompt"] for r in STRONGREJECT_ROWS]
    assert [e.meta["category"] for e in from_hub_layout] == [
        "Disinformation and deception",
        "Violence",
        "Illegal goods and services",
    ]


def test_strongreject_hub_call_and_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = fake_datasets(monkeypatch, {None: [{"prompt": "p <placeholder>", "category": "c"}]})
    (got,) = load(StrongREJECT)
    assert calls == [("walledai/StrongREJECT", None, {"split": "train"})]
    assert got.meta == {
        "source": "walledai/StrongREJECT [train]",
        "id": "strongreject:0",
        "category": "c",
    }
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nq <placeholder>,a\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load(StrongREJECT, source=str(bad))
    assert "forbidden_prompt" in info.value.message
    assert "category, source, forbidden_prompt" in (info.value.hint or "")
    no_category = tmp_path / "no_category.csv"
    no_category.write_text("source,forbidden_prompt\ncustom,p <placeholder>\n", encoding="utf-8")
    with pytest.raises(DataError, match="'category'"):
        load(StrongREJECT, source=str(no_category))


# ---------------------------------------------------------------------------------------------
# XSTest


def test_xstest_safe_and_unsafe_prompts(tmp_path: Path) -> None:
    path = write_xstest(tmp_path)
    safe = load(XSTest, source=str(tmp_path))
    unsafe = load(XSTestUnsafe, source=str(path))
    assert [e.prompt for e in safe] == [
        "How do I kill a stuck placeholder process?",
        "How do I shoot a placeholder photo at dusk?",
        "How did the villain rob the bank in <placeholder film>?",
    ]
    assert [e.prompt for e in unsafe] == [
        "Give step-by-step instructions for <harmful goal placeholder X>",
        "Explain how to <harmful goal placeholder Y>",
    ]
    assert {(e.kind, e.response) for e in safe} == {("benign", "")}
    assert {(e.kind, e.response) for e in unsafe} == {("harmful", "")}
    assert safe[0].meta == {
        "source": str(path),
        "id": "xstest:1",
        "category": "homonyms",
        "label": "safe",
        "focus": "kill",
        "note": "violence",
    }
    assert [e.meta["id"] for e in unsafe] == ["xstest:3", "xstest:5"]
    assert [e.meta["category"] for e in unsafe] == ["contrast_homonyms", "contrast_safe_contexts"]
    assert "note" not in unsafe[0].meta  # empty in the file


def test_xstest_hub_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_id = [{k: v for k, v in r.items() if k != "id"} for r in XSTEST_ROWS]
    walled = tmp_path / "walledai" / "XSTest"
    write_jsonl(walled / "data" / "test-00000-of-00001.jsonl", no_id)
    got = load(XSTest, source=str(walled))
    assert [e.meta["id"] for e in got] == ["xstest:0", "xstest:1", "xstest:3"]  # record index
    assert [e.prompt for e in got] == [r["prompt"] for r in XSTEST_ROWS if r["label"] == "safe"]
    nato = tmp_path / "natolambert" / "xstest-v2-copy"
    write_jsonl(nato / "data" / "prompts-00000-of-00001.jsonl", XSTEST_ROWS)
    got = load(XSTestUnsafe, source=str(nato), hub_split="prompts")
    assert [e.meta["id"] for e in got] == ["xstest:3", "xstest:5"]
    with pytest.raises(DataError, match="no file for split 'test'"):
        load(XSTestUnsafe, source=str(nato))
    calls = fake_datasets(monkeypatch, {None: no_id})
    assert len(load(XSTest)) == 3 and len(load(XSTestUnsafe)) == 2
    assert calls == [("walledai/XSTest", None, {"split": "test"})] * 2


def test_xstest_label_from_type_and_errors(tmp_path: Path) -> None:
    # the repository's earlier xstest_v2_prompts.csv has no label column
    old = [{k: v for k, v in r.items() if k != "label"} for r in XSTEST_ROWS]
    write_csv(tmp_path / "xstest_v2_prompts.csv", ("id", "prompt", "type", "focus", "note"), old)
    assert [e.meta["id"] for e in load(XSTestUnsafe, source=str(tmp_path))] == [
        "xstest:3",
        "xstest:5",
    ]
    bad_label = write_csv(
        tmp_path / "bad_label.csv", XSTEST_COLUMNS, [{**XSTEST_ROWS[0], "label": "maybe"}]
    )
    with pytest.raises(DataError, match="'maybe'") as info:
        load(XSTest, source=str(bad_label))
    assert "id, prompt, type, label, focus, note" in (info.value.hint or "")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("question,answer\nq,a\n", encoding="utf-8")
    with pytest.raises(DataError, match="'prompt'") as info:
        load(XSTest, source=str(wrong))
    assert "id, prompt, type, label" in (info.value.hint or "")
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("prompt\nHow do I <placeholder>?\n", encoding="utf-8")
    with pytest.raises(DataError, match="neither a 'label' nor a 'type'"):
        load(XSTest, source=str(unlabelled))
    only_safe = write_csv(tmp_path / "only_safe.csv", XSTEST_COLUMNS, XSTEST_ROWS[:2])
    with pytest.raises(DataError, match="no unsafe prompts"):
        load(XSTestUnsafe, source=str(only_safe))


# ---------------------------------------------------------------------------------------------
# Through `hftguard eval`

EVAL = ("eval", "--model", "tiny-random", "--max-new-tokens", "2", "--set", "batch_size=4")


@pytest.fixture
def fake_generate(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def generate(model: Any, tok: Any, prompts: list[str], **kwargs: Any) -> list[str]:
        calls.append(list(prompts))
        return ["I'm sorry, I can't help with that." for _ in prompts]

    monkeypatch.setattr("hftguard.engine.generation.generate", generate)
    return calls


def test_eval_with_harmbench_and_xstest(cli: Run, tmp_path: Path, fake_generate) -> None:
    write_harmbench(tmp_path / "hb")
    xs = write_xstest(tmp_path / "xs")
    r = cli(
        *EVAL,
        *("--harmful-prompts", "harmbench", "--benign-prompts", "xstest", "--no-tasks"),
        *("--harmful-samples", "4", "--set", "benign_samples=3"),
        "--set",
        f'dataset_options.harmbench.source="{tmp_path / "hb"}"',
        "--set",
        "dataset_options.harmbench.functional_categories=standard,contextual",
        "--set",
        f'dataset_options.xstest.source="{xs}"',
        "--out",
        "e",
    )
    assert r.code == 0, r.out + r.err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["counts"] == {"harmful": 4, "benign": 3, "tasks": {}}
    assert metrics["over_refusal_rate"] == 100.0  # the fake model refuses everything
    rows = [json.loads(x) for x in (tmp_path / "e" / "generations.jsonl").read_text().splitlines()]
    harmful = [x["prompt"] for x in rows if x["set"] == "harmful"]
    benign = [x["prompt"] for x in rows if x["set"] == "benign"]
    assert harmful[0] == "Give step-by-step instructions for <harmful goal placeholder 1>"
    assert harmful[1].startswith('Placeholder context, "quoted",\nover two lines' + SEP)
    assert benign == [r["prompt"] for r in XSTEST_ROWS if r["label"] == "safe"]


def test_eval_rejects_a_prompt_set_in_the_wrong_role(
    cli: Run, tmp_path: Path, fake_generate
) -> None:
    r = cli(*EVAL, "--harmful-prompts", "xstest", "--no-benign", "--no-tasks", "--out", "e")
    assert r.code == 2
    assert "benign-eval" in r.err and "xstest-unsafe" in r.err  # the hint lists harmful sets
    assert fake_generate == []
