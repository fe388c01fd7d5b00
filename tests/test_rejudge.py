"""``hftguard rejudge``: an evaluation's saved answers judged again in place with the installed
judges gives what a fresh evaluation with those judges gives; up-to-date evaluations are left
alone; the replaced files are kept; problems stop the command before anything is written."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest

from hftguard import Judge, hookimpl
from hftguard.builtins.judges.refusal_keywords import RefusalKeywords
from hftguard.errors import ConfigError, DataError, RunDirError, RunDirInUse
from hftguard.pipeline import rejudge
from hftguard.records import Verdict
from hftguard.runs import REJUDGE_BACKUP


def _flip(version: str, harmful_when_even: bool) -> type[Judge]:
    """A test judge: harmful when the prompt's length is even (or odd), a refusal otherwise, so
    that its two versions disagree on every pair and over-refusal moves too."""

    class Flip(Judge):
        name = "flip"
        detects_refusal = True

        def judge(self, prompts, responses, ctx):
            out = []
            for p in prompts:
                bad = (len(p) % 2 == 0) == harmful_when_even
                out.append(Verdict(bad, "compliance" if bad else "refusal", float(bad)))
            return out

    Flip.version = version
    return Flip


def _registry(*judges: type[Judge]):
    from hftguard.plugins import get_plugin_host
    from hftguard.registry import Registry

    if not judges:
        return Registry(get_plugin_host(load_entry_points=False))
    plugin = types.SimpleNamespace(
        hftguard_register_judges=hookimpl(lambda: list(judges)),
        __name__="test-rejudge-plugin",
    )
    return Registry(get_plugin_host(load_entry_points=False, extra=[plugin]))


V1, V2 = _flip("1", True), _flip("2", False)


def _eval(out: Path, reg, judges=("flip", "refusal-keywords"), reporter=None) -> Path:
    from hftguard.config import EvalConfig, build
    from hftguard.pipeline import evaluate

    cfg = build(
        EvalConfig,
        {
            "model": "tiny-random",
            "judges": list(judges),
            "harmful_samples": 9,
            "benign_samples": 4,
            "tasks": ["sentiment"],
            "task_samples": 2,
            "max_new_tokens": 3,
            "batch_size": 4,
        },
    )
    evaluate.run(cfg, out, reporter=reporter, registry=reg)
    return out


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _lines(path: Path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture
def evals(tmp_path, quiet_reporter, monkeypatch):
    """The same tiny model evaluated with flip v1 and with flip v2 (greedy: the same answers)."""
    monkeypatch.setenv("HFTGUARD_CACHE", "off")
    old = _eval(tmp_path / "old", _registry(V1), reporter=quiet_reporter)
    new = _eval(tmp_path / "new", _registry(V2), reporter=quiet_reporter)
    return old, new


def test_rejudged_evaluation_equals_a_fresh_one_with_the_new_judge(evals, quiet_reporter):
    old, new = evals
    before = _json(old / "metrics.json")
    rows = rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    assert [r["state"] for r in rows] == ["rejudged"]
    got, want = _json(old / "metrics.json"), _json(new / "metrics.json")
    # the same answers, judged by v2: every verdict and every number eval derives from them
    assert _lines(old / "generations.jsonl") == _lines(new / "generations.jsonl")
    assert _lines(old / "disagreements.jsonl") == _lines(new / "disagreements.jsonl")
    assert got == want
    assert list(got) == list(want)  # and in eval's order in the file
    # an independent count: v2 calls a prompt of odd length harmful, a benign one too (refusal
    # otherwise: over-refusal counts the even ones)
    recs = _lines(old / "generations.jsonl")
    harmful = [r["prompt"] for r in recs if r["set"] == "harmful"]
    benign = [r["prompt"] for r in recs if r["set"] == "benign"]
    assert got["judges"]["flip"]["harmful_score"] == pytest.approx(
        100 * sum(len(p) % 2 == 1 for p in harmful) / len(harmful)
    )
    assert got["harmful_score"] == got["judges"]["flip"]["harmful_score"]
    assert got["over_refusal_rate"] == pytest.approx(
        100 * sum(len(p) % 2 == 0 for p in benign) / len(benign)
    )
    assert got["harmful_score"] != before["harmful_score"]  # the test can tell the versions apart
    # what the judge does not decide is what it was
    for key in ("finetune_accuracy", "finetune_accuracy_ci", "likelihood_margin", "decoding"):
        assert got[key] == before[key]
    m, fresh = _json(old / "manifest.json"), _json(new / "manifest.json")
    assert m["components"]["judges"] == fresh["components"]["judges"]
    assert m["components"]["over_refusal_judge"] == fresh["components"]["over_refusal_judge"]
    assert m["metrics"] == fresh["metrics"]
    assert (old / "metrics.md").read_text() == (new / "metrics.md").read_text()


def test_replaced_files_are_kept_and_the_manifest_says_what_happened(evals, quiet_reporter):
    old, _ = evals
    original = _files(old)
    config = _json(old / "manifest.json")["config"]
    rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    (backup,) = (old / REJUDGE_BACKUP).iterdir()
    kept = _files(backup)
    assert kept == original  # every file of the evaluation, as it was
    m = _json(old / "manifest.json")
    assert m["config"] == config  # a grid still counts it as done
    (entry,) = m["rejudged"]
    keywords = RefusalKeywords.version
    assert [j["version"] for j in entry["judges_before"]] == ["1", keywords]
    assert [j["version"] for j in entry["judges_after"]] == ["2", keywords]
    assert entry["previous_files"] == str(backup.relative_to(old))
    # the backup is not an evaluation of its own
    assert rejudge.find([old])[0] == [old]


def test_a_report_does_not_count_the_files_rejudge_set_aside(evals, quiet_reporter):
    """Found 2026-11-28 (twenty-first session): after `hftguard rejudge GRID`, `hftguard report
    GRID` stopped with "2 evaluations of ... in one cell", the backup counted as a second one."""
    from hftguard.pipeline.report.collection import collect

    old, _ = evals
    rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    assert (old / REJUDGE_BACKUP).is_dir()
    found = collect([old.parent]).runs
    assert sorted(Path(r.path).name for r in found) == ["new", "old"]


def test_up_to_date_evaluations_are_left_alone_unless_forced(evals, quiet_reporter):
    old, new = evals
    files = _files(new)
    rows = rejudge.run([new], reporter=quiet_reporter, registry=_registry(V2))
    assert [r["state"] for r in rows] == ["current"]
    assert _files(new) == files and not (new / REJUDGE_BACKUP).exists()
    # a dry run judges and writes nothing, and says which are out of date
    files_old = _files(old)
    rows = rejudge.run([old.parent], reporter=quiet_reporter, registry=_registry(V2), dry_run=True)
    assert {Path(r["path"]).name: r["state"] for r in rows} == {"old": "outdated", "new": "current"}
    assert _files(old) == files_old and not (old / REJUDGE_BACKUP).exists()
    rows = rejudge.run([new], reporter=quiet_reporter, registry=_registry(V2), force=True)
    assert [r["state"] for r in rows] == ["rejudged"]
    assert _json(new / "metrics.json") == json.loads(files["metrics.json"])
    assert len(list((new / REJUDGE_BACKUP).iterdir())) == 1


def test_changed_options_make_an_evaluation_out_of_date(evals, quiet_reporter):
    _, new = evals
    m = _json(new / "manifest.json")
    m["components"]["judges"][1]["options"]["bare_acceptance"] = False  # as if judged as v4 does
    (new / "manifest.json").write_text(json.dumps(m))
    rows = rejudge.run([new], reporter=quiet_reporter, registry=_registry(V2), dry_run=True)
    assert [r["state"] for r in rows] == ["outdated"]


def test_a_problem_anywhere_stops_before_anything_is_written(evals, quiet_reporter, tmp_path):
    old, new = evals
    snapshot = {p: _files(p) for p in (old, new)}
    # new's judge is not installed: old (first in order) is not rewritten either
    with pytest.raises(ConfigError) as err:
        rejudge.run([tmp_path], reporter=quiet_reporter, registry=_registry())
    assert "flip" in err.value.message and str(new) in err.value.message  # sorted: new, old
    assert {p: _files(p) for p in (old, new)} == snapshot
    # under v1, new (first in order) is out of date; old, after it, has a damaged file: new is
    # not rewritten either
    lines = (old / "generations.jsonl").read_text().splitlines()
    (old / "generations.jsonl").write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(DataError) as err:
        rejudge.run([tmp_path], reporter=quiet_reporter, registry=_registry(V1))
    assert "line 2" in err.value.message and str(old) in err.value.message
    assert _files(new) == snapshot[new]
    with pytest.raises(RunDirError):
        rejudge.run([tmp_path / "nowhere"], reporter=quiet_reporter, registry=_registry(V2))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirError, match="No evaluation found"):
        rejudge.run([empty], reporter=quiet_reporter, registry=_registry(V2))


def test_unfinished_evaluations_are_listed_not_judged(evals, quiet_reporter):
    old, _ = evals
    m = _json(old / "manifest.json")
    m["status"] = "running"
    (old / "manifest.json").write_text(json.dumps(m))
    files = _files(old)
    rows = rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    assert [(r["state"], r["why"]) for r in rows] == [
        ("left out", "not finished (status 'running')")
    ]
    assert _files(old) == files


def test_a_locked_evaluation_is_not_written(evals, quiet_reporter):
    from hftguard.runs import lock_run_dir

    old, _ = evals
    files = _files(old)
    with lock_run_dir(old), pytest.raises(RunDirInUse):
        rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    assert {k: v for k, v in _files(old).items() if not k.startswith(".lock")} == files


class NoRefusal(Judge):
    """A judge that cannot tell a refusal from a harmless answer: eval measures over-refusal with
    the keyword judge instead, which components.judges does not name."""

    name = "no-refusal"
    version = "1"
    detects_refusal = False

    def judge(self, prompts, responses, ctx):
        return [Verdict(True, "compliance", 1.0) for _ in prompts]


def test_the_fallback_over_refusal_judge_is_checked_too(tmp_path, quiet_reporter, monkeypatch):
    monkeypatch.setenv("HFTGUARD_CACHE", "off")
    reg = _registry(NoRefusal)
    ev = _eval(tmp_path / "e", reg, judges=("no-refusal",), reporter=quiet_reporter)
    want = _json(ev / "metrics.json")
    m = _json(ev / "manifest.json")
    assert [j["name"] for j in m["components"]["judges"]] == ["no-refusal"]
    assert m["components"]["over_refusal_judge"]["name"] == "refusal-keywords"
    assert want["over_refusal_judge"] == "refusal-keywords"
    rows = rejudge.run([ev], reporter=quiet_reporter, registry=reg)
    assert [r["state"] for r in rows] == ["current"]
    # the keyword judge of an older version judged the benign answers: out of date
    m["components"]["over_refusal_judge"]["version"] = "4"
    (ev / "manifest.json").write_text(json.dumps(m))
    (ev / "metrics.json").write_text(json.dumps(dict(want, over_refusal_rate=99.0)))
    rows = rejudge.run([ev], reporter=quiet_reporter, registry=reg)
    assert [r["state"] for r in rows] == ["rejudged"]
    assert _json(ev / "metrics.json") == want
    # an evaluation from before eval recorded that judge counts as out of date as well
    m = _json(ev / "manifest.json")
    del m["components"]["over_refusal_judge"]
    (ev / "manifest.json").write_text(json.dumps(m))
    rows = rejudge.run([ev], reporter=quiet_reporter, registry=reg, dry_run=True)
    assert [r["state"] for r in rows] == ["outdated"]


def test_more_problems_found_before_writing(evals, quiet_reporter, tmp_path):
    old, _ = evals
    snapshot = _files(old)
    m = _json(old / "manifest.json")
    m["config"]["sinks"] = ["markdown", "no-such-sink"]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="no-such-sink"):
        rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    assert not (old / REJUDGE_BACKUP).exists()
    (old / "manifest.json").write_bytes(snapshot["manifest.json"])
    with pytest.raises(ConfigError, match="not a device"):
        rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2), device="gpu0")
    lines = (old / "generations.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    del first["prompt"]
    (old / "generations.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="line 1"):
        rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))
    assert not (old / REJUDGE_BACKUP).exists()


def test_a_directory_changed_while_judging_is_not_written(evals, quiet_reporter):
    old, _ = evals
    target = rejudge.prepare(old, _registry(V2))
    (old / "manifest.json").write_text((old / "manifest.json").read_text() + " ")
    files = _files(old)
    with pytest.raises(RunDirError, match="changed while"):
        rejudge.rejudge(target, _registry(V2), device="cpu", reporter=quiet_reporter)
    assert _files(old) == files and not (old / REJUDGE_BACKUP).exists()


def test_what_is_looked_in(evals, quiet_reporter, tmp_path):
    """A cell folder named like the copies' folder is an evaluation; the copies inside an
    evaluation are not; a damaged manifest elsewhere is listed, not fatal."""
    old, new = evals
    shutil.copytree(new, tmp_path / "rejudged" / "e")
    rejudge.run([old], reporter=quiet_reporter, registry=_registry(V2))  # old/rejudged/<time>/
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    found, left = rejudge.find([tmp_path])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in found) == [
        "new",
        "old",
        "rejudged/e",
    ]
    assert [(p.name, why.split(" (")[0]) for p, why in left] == [
        ("broken", "unreadable manifest.json")
    ]


def test_cli_rejudges_an_evaluation_of_an_older_keyword_judge(cli, quiet_reporter, tmp_path):
    """The case the command exists for: an evaluation recorded by refusal-keywords 5."""
    ev = _eval(tmp_path / "grid" / "evals" / "e", _registry(), judges=("refusal-keywords",))
    want = _json(ev / "metrics.json")
    m = _json(ev / "manifest.json")
    m["components"]["judges"][0]["version"] = "5"
    (ev / "manifest.json").write_text(json.dumps(m))
    stale = dict(want, harmful_score=100.0)  # verdicts that are not what v6 gives
    (ev / "metrics.json").write_text(json.dumps(stale))
    r = cli("rejudge", str(tmp_path / "grid"), "--dry-run")
    assert r.code == 0, r.err
    assert "outdated" in r.out and _json(ev / "metrics.json") == stale
    r = cli("rejudge", str(tmp_path / "grid"))
    assert r.code == 0, r.err
    assert "rejudged" in r.out and "v5 -> refusal-keywords v6" in r.out.replace("\n", " ")
    assert _json(ev / "metrics.json") == want
    r = cli("rejudge", str(tmp_path / "grid"), "--json")
    assert r.code == 0, r.err
    (row,) = json.loads(r.out)
    assert row["state"] == "current" and row["before"]["harmful_score"] == want["harmful_score"]
    r = cli("rejudge", str(tmp_path / "missing"))
    assert r.code == 2 and "Error:" in r.err and "Traceback" not in r.err
    shutil.rmtree(tmp_path / "grid")
