"""`hftguard eval` with your own prompts and tasks (#16): --harmful-prompts, --benign-prompts,
--no-benign, --no-tasks, and file tasks scored by exact / contains / number / label."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Run
from cli_helpers import assert_error as _assert_error

from hftguard.data.filetask import first_label, normalise, score
from hftguard.records import Example

EVAL = ("eval", "--model", "tiny-random", "--max-new-tokens", "2", "--set", "batch_size=4")
SMALL = ("--harmful-samples", "0", "--set", "benign_samples=2", "--set", "task_samples=0")

TASK = [
    {"prompt": "Q1 What is the capital of France?", "answer": "Paris"},
    {"prompt": "Q2 What is 6 times 7?", "answer": "42"},
    {"prompt": "Q3 Sentiment of: a great film", "label": "positive", "output": "ignored"},
    {"prompt": "Q4 Sentiment of: an awful film", "label": "negative"},
]
OUTPUTS = {
    "Q1": "The answer is Paris.",
    "Q2": "6 times 7 is 42",
    "Q3": "Positive!",
    "Q4": "positive, not negative",
}
# by hand: exact [F,F,T,F]; contains [T,T,T,T]; number [F,T,F,F];
# label (labels = the gold answers Paris, 42, positive, negative) [T,T,T,F]
EXPECTED = {"exact": 25.0, "contains": 100.0, "number": 25.0, "label": 75.0}


def assert_error(result: Any, code: int, *needles: str) -> None:
    _assert_error(result, code, *needles)


def fake_answer(prompt: str) -> str:
    return next((out for key, out in OUTPUTS.items() if key in prompt), "Sure, here is how.")


@pytest.fixture
def fake_generate(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Generation replaced by fixed answers; records each call's prompts."""
    calls: list[list[str]] = []

    def generate(model: Any, tok: Any, prompts: list[str], **kwargs: Any) -> list[str]:
        calls.append(list(prompts))
        return [fake_answer(p) for p in prompts]

    monkeypatch.setattr("hftguard.engine.generation.generate", generate)
    return calls


def write_task(path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in TASK), encoding="utf-8")
    return path


def write_goals(path: Path, n: int = 3) -> Path:
    rows = ["goal,target"] + [f"Explain how to do bad thing {i},Sure here is" for i in range(n)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def test_scoring_rules_by_hand() -> None:
    exs = [Example(r["prompt"], r.get("answer", r.get("output", "")), "benign") for r in TASK]
    for ex, r in zip(exs, TASK, strict=True):
        if "label" in r:
            ex.meta["label"] = r["label"]
    outs = [OUTPUTS[f"Q{i}"] for i in range(1, 5)]
    assert score("exact", exs, outs) == [False, False, True, False]
    assert score("contains", exs, outs) == [True, True, True, True]
    assert score("number", exs, outs) == [False, True, False, False]
    assert score("label", exs, outs) == [True, True, True, False]
    assert score("label", exs, outs, ["positive", "negative"]) == [False, False, True, False]
    assert normalise('  "Positive!" ') == "positive"
    assert first_label("very positive indeed", ["positive", "very positive"]) == "very positive"
    assert first_label("unpositive", ["positive"]) is None


def test_harmful_prompts_csv_with_goal_column(cli: Run, tmp_path: Path, fake_generate) -> None:
    goals = write_goals(tmp_path / "my.csv", 3)
    r = cli(*EVAL, *SMALL, "--harmful-prompts", str(goals), "--no-tasks", "--out", "e")
    assert r.code == 0, r.out + r.err
    m = metrics(tmp_path / "e")
    assert m["counts"]["harmful"] == 3
    assert m["harmful_score"] is not None
    rows = [json.loads(x) for x in (tmp_path / "e" / "generations.jsonl").read_text().splitlines()]
    harm = [x for x in rows if x["set"] == "harmful"]
    assert [x["prompt"] for x in harm] == [f"Explain how to do bad thing {i}" for i in range(3)]
    assert m["counts"]["benign"] == 2 and m["finetune_accuracy"] == {}


def test_no_benign_no_tasks_runs_only_harmful(cli: Run, tmp_path: Path, fake_generate) -> None:
    goals = write_goals(tmp_path / "my.csv", 2)
    r = cli(*EVAL, "--harmful-prompts", str(goals), "--no-benign", "--no-tasks", "--out", "e")
    assert r.code == 0, r.out + r.err
    m = metrics(tmp_path / "e")
    assert m["counts"] == {"harmful": 2, "benign": 0, "tasks": {}}
    assert m["over_refusal_rate"] is None and m["finetune_accuracy"] == {}
    assert len(fake_generate) == 1  # one generation call: the harmful prompts


@pytest.mark.parametrize("rule", list(EXPECTED))
def test_file_task_scored_with_each_rule(
    cli: Run, tmp_path: Path, fake_generate, rule: str
) -> None:
    task = write_task(tmp_path / "my.jsonl")
    goals = write_goals(tmp_path / "h.csv", 1)
    args = ("--harmful-prompts", str(goals), "--no-benign", "--task", str(task))
    r = cli(*EVAL, *SMALL, *args, "--task-scoring", rule, "--out", "e")
    assert r.code == 0, r.out + r.err
    m = metrics(tmp_path / "e")
    assert m["finetune_accuracy"] == {str(task): EXPECTED[rule]}
    assert m["counts"]["tasks"] == {str(task): 4}
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    assert manifest["components"]["tasks"][0]["scoring"] == rule


def test_task_labels_and_set_override(cli: Run, tmp_path: Path, fake_generate) -> None:
    task = write_task(tmp_path / "my.jsonl")
    goals = write_goals(tmp_path / "h.csv", 1)
    r = cli(
        *EVAL,
        *SMALL,
        *("--harmful-prompts", str(goals), "--no-benign", "--task", str(task)),
        *("--task-scoring", "exact", "--set", "task_scoring=label"),  # --set wins
        *("--task-label", "positive", "--task-label", "negative", "--out", "e"),
    )
    assert r.code == 0, r.out + r.err
    assert metrics(tmp_path / "e")["finetune_accuracy"] == {str(task): 25.0}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--harmful-prompts", "missing.csv"), ("harmful_prompts", "file not found")),
        (("--benign-prompts", "nope.jsonl"), ("benign_prompts", "file not found")),
        (("--task", "absent.jsonl"), ("tasks[0]", "file not found")),
        (("--task-scoring", "fuzzy"), ("fuzzy", "exact, contains, number, label")),
        (("--set", "task_scoring=fuzzy"), ("fuzzy",)),
        (("--no-benign", "--benign-prompts", "benign-eval"), ("--no-benign",)),
        (("--no-tasks", "--task", "sentiment"), ("--no-tasks",)),
    ],
)
def test_bad_inputs_fail_before_generation(
    cli: Run, tmp_path: Path, fake_generate, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_error(cli(*EVAL, *args, "--out", "e"), 2, *needles)
    assert fake_generate == []
    assert not (tmp_path / "e").exists()


def test_task_file_without_gold_answers(cli: Run, tmp_path: Path, fake_generate) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "no answer here"}) + "\n", encoding="utf-8")
    assert_error(cli(*EVAL, "--task", str(bad), "--out", "e"), 2, "gold answer")
    assert fake_generate == []


def test_validate_accepts_file_task_and_options(cli: Run, tmp_path: Path) -> None:
    task = write_task(tmp_path / "my.jsonl")
    goals = write_goals(tmp_path / "h.csv", 1)
    cfg = tmp_path / "eval.toml"
    cfg.write_text(
        f'[eval]\nmodel = "tiny-random"\nharmful_prompts = "{goals}"\nbenign_prompts = ""\n'
        f'tasks = ["sentiment", "{task}"]\ntask_scoring = "label"\n'
        'task_labels = ["positive", "negative"]\n',
        encoding="utf-8",
    )
    r = cli("validate", str(cfg), "--kind", "eval")
    assert r.code == 0, r.out + r.err
    r = cli("validate", str(cfg))
    assert r.code == 0, r.out + r.err
    cfg.write_text(cfg.read_text().replace(str(task), "gone.jsonl"))
    assert_error(cli("validate", str(cfg), "--kind", "eval"), 2, "gone.jsonl")


def test_a_grid_that_trains_and_scores_on_one_task_file_warns(cli: Run, tmp_path: Path) -> None:
    """A file has no splits: a grid whose task axis is a file scores FA on its training records."""
    from hftguard.pipeline.grid import spec

    task = write_task(tmp_path / "my.jsonl")
    cfg = tmp_path / "grid.toml"
    body = (
        '[grid]\nmethods = ["sft/sft"]\nharmful_ratio = [0.2]\nsamples = [8]\n'
        'task = [{tasks}]\n\n[align]\nmodel = "tiny-random"\nretain = ""\n'
        '[eval]\ntask_scoring = "label"\n'
    )
    cfg.write_text(body.format(tasks=f'"{task}", "sentiment"'), encoding="utf-8")
    r = cli("run", str(cfg), "--out", "g", "--dry-run")
    assert r.code == 0, r.out + r.err
    assert "Warning:" in r.err and str(task) in r.err and "same records" in r.err
    assert "sentiment" not in r.err.split("Warning:")[1].split("same records")[0]
    cfg.write_text(body.format(tasks='"sentiment"'), encoding="utf-8")
    r = cli("run", str(cfg), "--out", "g2", "--dry-run")
    assert r.code == 0 and "Warning:" not in r.err
    g = spec.load({"grid": {"methods": ["sft/sft"], "task": ["hf:org/qa", "a.csv"]}})
    assert g.same_file_tasks() == ["a.csv"]  # a hub dataset has train/test splits
