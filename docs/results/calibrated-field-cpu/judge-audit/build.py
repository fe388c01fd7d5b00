"""Build the blind labelling batches of the field grid's judge audit (README.md beside this file).

For each method whose ΔHS against SFT is near zero (T-Vaccine, KL, mixing-joint, SafeLoRA; p = 0.2,
seed 42), every harmful prompt on which the default judge (`refusal-keywords` v4) split the pair
(method harmful and SFT not, or the reverse), and 10 prompts on which it did not (the 10 lowest
sha256 of "method/item id"). Both answers of each pair are labelled. The labellers see only the
prompt and the answer, in an order fixed by a hash, under an opaque code: not the model, not
the judge's verdict, not the other answer of the pair.

    python build.py GRID_OUT OUT_DIR
    # writes key.jsonl, pairs.jsonl, judged-alike.json and batch-{A,B,C}.jsonl into OUT_DIR
    python build.py GRID_OUT OUT_DIR --rest
    # phase 2: key2.jsonl and batch-{D..I}.jsonl, every other answer of the five models
    python build.py GRID_OUT OUT_DIR --heldout
    # phase 3: key3.jsonl and batch-{J..O}.jsonl, four more models (the held-out read of v5)
    python build.py GRID_OUT OUT_DIR --phase KEY_NAME LETTERS NAME=EVAL_DIR [...]
    # a later phase (RepNoise's answers, new p = 0 cells): every harmful answer of each eval
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

JUDGE = "refusal-keywords"
SFT = "cells/sft__sft__p0.2__n320__sentiment__s42/eval"
METHODS = {
    "t-vaccine": "cells/t-vaccine__sft__p0.2__n320__sentiment__s42/eval",
    "kl": "cells/sft__kl__p0.2__n320__sentiment__s42/eval",
    "mixing-joint": "cells/sft__mixing-joint__p0.2__n320__sentiment__s42/eval",
    "safelora": "cells/sft__sft__p0.2__n320__sentiment__s42/eval-safelora",
}
CONCORDANT = 10
OVERLAP = 15  # items of each batch labelled by a second labeller too
CROSS = 5  # phase-1 items in each phase-2 batch


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _harmful(root: Path, rel: str) -> dict[str, dict]:
    rows = [json.loads(x) for x in (root / rel / "generations.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows if r.get("set") == "harmful"}


def main(grid: Path, out: Path) -> None:
    sft = _harmful(grid, SFT)
    pairs = []  # (method, item id, kind)
    answers: dict[tuple[str, str], dict] = {}  # (source, item) -> row
    judged: dict[str, dict[str, int]] = {}  # method -> pairs the judge called alike
    for method, rel in METHODS.items():
        rows = _harmful(grid, rel)
        assert set(rows) == set(sft), method
        concordant = []
        for item, row in rows.items():
            m, s = row["verdicts"][JUDGE]["harmful"], sft[item]["verdicts"][JUDGE]["harmful"]
            if m != s:
                pairs.append((method, item, "method-only" if m else "sft-only"))
            else:
                concordant.append(item)
        judged[method] = {
            "both": sum(rows[i]["verdicts"][JUDGE]["harmful"] for i in concordant),
            "neither": sum(not rows[i]["verdicts"][JUDGE]["harmful"] for i in concordant),
        }
        concordant.sort(key=lambda i: _sha(f"{method}/{i}"))
        pairs += [
            (method, i, "both" if rows[i]["verdicts"][JUDGE]["harmful"] else "neither")
            for i in concordant[:CONCORDANT]
        ]
        for _, item, _ in [p for p in pairs if p[0] == method]:
            answers[(method, item)] = rows[item]
            answers[("sft", item)] = sft[item]
    key = []
    for (source, item), row in answers.items():
        code = _sha(f"audit/{source}/{item}")[:10]
        key.append(
            {
                "code": code,
                "source": source,
                "item": item,
                "prompt": row["prompt"],
                "response": row["response"],
                "judge": row["verdicts"][JUDGE],
            }
        )
    key.sort(key=lambda k: k["code"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "key.jsonl").open("w") as f:
        for k in key:
            f.write(json.dumps(k) + "\n")
    with (out / "pairs.jsonl").open("w") as f:
        for method, item, kind in pairs:
            f.write(json.dumps({"method": method, "item": item, "judge_split": kind}) + "\n")
    (out / "judged-alike.json").write_text(json.dumps(judged, indent=1) + "\n")
    names = "ABC"
    batches: dict[str, list[dict]] = {n: [] for n in names}
    for i, k in enumerate(key):
        batches[names[i % 3]].append(
            {"code": k["code"], "prompt": k["prompt"], "response": k["response"]}
        )
    for j, n in enumerate(names):  # the next batch's first OVERLAP items, labelled again by n
        extra = batches[names[(j + 1) % 3]][:OVERLAP]
        with (out / f"batch-{n}.jsonl").open("w") as f:
            for item in batches[n] + extra:
                f.write(json.dumps(item) + "\n")
    kinds: dict[str, int] = {}
    for _, _, kind in pairs:
        kinds[kind] = kinds.get(kind, 0) + 1
    print(
        f"{len(pairs)} pairs {kinds}; {len(key)} answers; batches "
        + ", ".join(f"{n}: {len(batches[n]) + OVERLAP}" for n in names)
    )


def _key_rows(grid: Path, sources: dict[str, str], skip: set[tuple[str, str]]) -> list[dict]:
    """Every harmful answer of ``sources`` (name -> eval dir under ``grid``) not in ``skip``,
    keyed by an opaque code, sorted by it."""
    key = []
    for source, rel in sources.items():
        for item, row in _harmful(grid, rel).items():
            if (source, item) in skip:
                continue
            key.append(
                {
                    "code": _sha(f"audit/{source}/{item}")[:10],
                    "source": source,
                    "item": item,
                    "prompt": row["prompt"],
                    "response": row["response"],
                    "judge": row["verdicts"][JUDGE],
                }
            )
    return sorted(key, key=lambda k: k["code"])


def _write_phase(
    out: Path, key_name: str, key: list[dict], names: str, cross: list[dict] | None = None
) -> None:
    """``key`` into ``out/key_name``, and its answers (code, prompt, response) dealt round
    ``names``' batches, each with the next batch's first OVERLAP answers and, with ``cross``,
    CROSS of those answers each, to be labelled again."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / key_name).open("w") as f:
        for k in key:
            f.write(json.dumps(k) + "\n")

    def shown(k: dict) -> dict:
        return {"code": k["code"], "prompt": k["prompt"], "response": k["response"]}

    batches: dict[str, list[dict]] = {n: [] for n in names}
    for i, k in enumerate(key):
        batches[names[i % len(names)]].append(shown(k))
    for j, n in enumerate(names):
        extra = batches[names[(j + 1) % len(names)]][:OVERLAP]
        again = [shown(k) for k in (cross or [])[j * CROSS : (j + 1) * CROSS]]
        with (out / f"batch-{n}.jsonl").open("w") as f:
            for item in batches[n] + extra + again:
                f.write(json.dumps(item) + "\n")
    print(
        f"{len(key)} answers in {key_name}; batches of {len(key) // len(names)}-"
        f"{-(-len(key) // len(names))} + {OVERLAP}" + (f" + {CROSS}" if cross else "")
    )


def rest(grid: Path, out: Path) -> None:
    """Phase 2: every other harmful answer of SFT and the four methods (so that each method's
    whole 2 x 2 table against SFT is read), in six more batches D-I, with the same overlap, and
    CROSS answers of phase 1 each (30 in all), labelled again: do the phase-2 labellers read the
    guide as the phase-1 ones did?"""
    first = [json.loads(x) for x in (out / "key.jsonl").open()]
    done = {(k["source"], k["item"]) for k in first}
    key = _key_rows(grid, {"sft": SFT, **METHODS}, done)
    cross = sorted(first, key=lambda k: _sha(k["code"]))
    _write_phase(out, "key2.jsonl", key, "DEFGHI", cross)


#: Phase 3: four models no judge was designed on, for the held-out read of refusal-keywords v5.
HELDOUT = {
    "mixing": "cells/sft__mixing__p0.2__n320__sentiment__s42/eval",
    "sft-p0": "cells/sft__sft__p0__n320__sentiment__s42/eval",
    "t-vaccine-p0": "cells/t-vaccine__sft__p0__n320__sentiment__s42/eval",
    "antidote": "cells/sft__sft__p0.2__n320__sentiment__s42/eval-antidote",
}


def heldout(grid: Path, out: Path) -> None:
    """Phase 3: every harmful answer of the HELDOUT models, in six batches J-O with the same
    overlap; the key holds the verdicts of the judge the grid ran (v4)."""
    _write_phase(out, "key3.jsonl", _key_rows(grid, HELDOUT, set()), "JKLMNO")


if __name__ == "__main__":
    if len(sys.argv) >= 7 and sys.argv[3] == "--phase":
        # a later phase: --phase KEY_NAME LETTERS NAME=EVAL_DIR [NAME=EVAL_DIR ...], e.g.
        # --phase key4.jsonl PQRS repnoise=cells/repnoise__sft__p0.2__n320__sentiment__s42/eval
        sources = dict(x.split("=", 1) for x in sys.argv[6:])
        _write_phase(
            Path(sys.argv[2]),
            sys.argv[4],
            _key_rows(Path(sys.argv[1]), sources, set()),
            sys.argv[5],
        )
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[3] == "--heldout":
        heldout(Path(sys.argv[1]), Path(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[3] == "--rest":
        rest(Path(sys.argv[1]), Path(sys.argv[2]))
    elif len(sys.argv) == 3:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
    else:
        sys.exit("usage: python build.py GRID_OUT OUT_DIR [--rest | --heldout]")
