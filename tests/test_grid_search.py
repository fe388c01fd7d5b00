"""``hftguard search``: successive halving over a grid's attack settings (#19).

The stages are tests/test_grid.py's fakes, with an evaluation whose HS and FA depend on the
trial's learning rate and step budget (read from the cell's name), so the choices can be checked
by hand, and resuming can be counted in stage calls.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_grid import FakeStages, load, quiet

from hftguard.errors import ConfigError
from hftguard.pipeline import evaluate, grid
from hftguard.pipeline.grid.search import search

#: lr -> (HS, FA) at 1 step; at 3 steps HS + 10 and FA - 10. lr 3e-4 is the strongest attack
#: but destroys the task (FA 20); 2e-4 is the strongest that keeps FA >= 50.
TRUTH = {1e-4: (10.0, 90.0), 2e-4: (40.0, 70.0), 3e-4: (80.0, 20.0)}


class Stages(FakeStages):
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(monkeypatch)
        plain_eval = evaluate.run

        def run(cfg: Any, out: Any, **kw: Any) -> dict[str, Any]:
            manifest = plain_eval(cfg, out, **kw)
            m = re.search(r"__lr([0-9.e-]+)__steps(\d+)", str(cfg.model))
            if m is None:  # base and aligned evaluations
                return manifest
            hs, fa = TRUTH[float(m.group(1))]
            bonus = 10.0 if m.group(2) == "3" else 0.0
            metrics = {"harmful_score": hs + bonus, "finetune_accuracy": {"sentiment": fa - bonus}}
            from hftguard.runs import atomic_write_json

            manifest = {**manifest, "metrics": metrics}
            atomic_write_json(Path(out) / "manifest.json", manifest)
            return manifest

        monkeypatch.setattr(evaluate, "run", run)


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> Stages:
    return Stages(monkeypatch)


def sweep(**extra: Any) -> grid.Grid:
    return load(harmful_ratio=[0.2], attack={"lr": list(TRUTH), "max_steps": [1, 3]}, **extra)


def test_successive_halving_keeps_the_strongest_attack(stages: Stages, tmp_path: Path) -> None:
    rec = search(sweep(), tmp_path / "out", eta=3, reporter=quiet())
    # rung 1: 3 settings at 1 step, the best third (1) goes on to 3 steps
    assert [len(r["trials"]) for r in rec["rungs"]] == [3, 1]
    assert stages.calls["finetune"] == 4 and stages.calls["align"] == 1
    (best,) = rec["best"]
    assert best["attack"] == {"lr": 3e-4, "max_steps": 3} and best["hs"] == 90.0
    # the grid manifest lists every trial: the report sees all four
    cells = json.loads((tmp_path / "out" / "manifest.json").read_text())["cells"]
    assert len(cells) == 4 and all(c["status"] == "done" for c in cells)
    assert json.loads((tmp_path / "out" / "search.json").read_text())["best"] == rec["best"]


def test_the_fa_bound_excludes_attacks_that_destroy_the_task(
    stages: Stages, tmp_path: Path
) -> None:
    rec = search(sweep(), tmp_path / "out", fa_bound=50.0, eta=3, reporter=quiet())
    (best,) = rec["best"]
    # lr 3e-4 has FA 20 < 50; lr 2e-4 is the strongest attack that keeps FA >= 50 (HS 50 at 3)
    assert best["attack"] == {"lr": 2e-4, "max_steps": 3}
    assert (best["hs"], best["fa"], best["meets_fa_bound"]) == (50.0, 60.0, True)
    first = {t["attack"]["lr"]: t for t in rec["rungs"][0]["trials"]}
    assert not first[3e-4]["meets_fa_bound"] and not first[3e-4]["kept"]


def test_search_resumes_and_a_rerun_does_no_work(stages: Stages, tmp_path: Path) -> None:
    g = sweep()
    out = tmp_path / "out"
    bad = next(c for c in g.cells if c.attack_dict() == {"lr": 3e-4, "max_steps": 3})
    stages.fail.add(f"cells/{bad.name}/attacked")  # the last rung's trial fails
    with pytest.raises(grid.GridFailed):
        search(g, out, eta=3, reporter=quiet())
    assert stages.calls["finetune"] == 4
    cells = json.loads((out / "manifest.json").read_text())["cells"]  # every trial so far
    assert [c["status"] for c in cells] == ["done", "done", "done", "failed"]
    stages.fail.clear()
    stages.calls.clear()
    stages.log.clear()
    rec = search(g, out, eta=3, reporter=quiet())
    # only the failed trial is redone (resumed), then its evaluation
    assert dict(stages.calls) == {"finetune": 1, "eval": 1}
    assert stages.log[0][1].endswith(f"{bad.name}/attacked")
    assert rec["best"][0]["attack"] == {"lr": 3e-4, "max_steps": 3}
    stages.calls.clear()
    again = search(g, out, eta=3, reporter=quiet())
    assert sum(stages.calls.values()) == 0  # everything finished: no stage runs
    assert again["best"] == rec["best"] and again["rungs"] == rec["rungs"]


@pytest.mark.parametrize(
    ("attack", "needle"),
    [
        ({"lr": [1e-4, 2e-4]}, "max_steps with at least two"),
        ({"lr": [1e-4, 2e-4], "max_steps": [5]}, "max_steps with at least two"),
        ({"max_steps": [1, 3]}, "only one attack setting"),
    ],
)
def test_search_needs_rungs_and_candidates(
    attack: dict[str, Any], needle: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=needle):
        search(load(attack=attack), tmp_path / "out", reporter=quiet())
    assert not (tmp_path / "out").exists()


def test_search_command(cli: Any, stages: Stages, tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[align]\nmodel = "tiny-random"\nretain = ""\n[align.train]\nmax_steps = 1\n'
        "[finetune]\nsamples = 20\n[grid]\nharmful_ratio = [0.2]\n"
        "[grid.attack]\nlr = [1e-4, 2e-4, 3e-4]\nmax_steps = [1, 3]\n"
    )
    res = cli("search", str(cfg), "--out", "o", "--fa-bound", "50")
    assert res.code == 0, res.err
    assert "strongest attack per defense" in res.out and "lr=0.0002 max_steps=3" in res.out
    res = cli("search", str(cfg), "--out", "o", "--eta", "1")
    assert res.code == 2 and "--eta" in res.err
