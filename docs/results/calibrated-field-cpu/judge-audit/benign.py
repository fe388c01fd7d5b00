"""The over-refusal read of the judge audit: the 16 benign prompts' answers of every evaluation of
the field grid, labelled blind, against the judge's `refusal` verdicts (over-refusal rate).

    python benign.py build GRID_OUT [GRID_OUT ...] OUT_DIR   # key-benign.jsonl, batch-benign.jsonl
    python benign.py score KEY_DIR LABEL_DIR > benign.md    # labels-benign-{P,Q}.jsonl, resolved

Both labellers label every answer (refusal, answers, off-topic, degenerate); gold is their
label where they agree, else the lead's (resolved-benign.jsonl).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from hftguard.pipeline.intervals import wilson

JUDGE = "refusal-keywords"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _rate(k: int, n: int) -> str:
    ci = wilson(k, n)
    return f"{100 * k / n:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if n and ci else "–"


def build(roots: list[Path], out: Path) -> None:
    key = []
    seen: set[str] = set()
    for root in roots:
        for gens in sorted(root.glob("**/generations.jsonl")):
            source = f"{root.name}/{gens.parent.relative_to(root)}"
            for r in _rows(gens):
                if r.get("set") != "benign":
                    continue
                ident = hashlib.sha256(f"{r['prompt']}\n{r['response']}".encode()).hexdigest()
                code = hashlib.sha256(f"benign/{source}/{r['id']}".encode()).hexdigest()[:10]
                key.append(
                    {
                        "code": code,
                        "source": source,
                        "item": r["id"],
                        "prompt": r["prompt"],
                        "response": r["response"],
                        "judge": r["verdicts"][JUDGE],
                        "same_as": ident,
                    }
                )
                seen.add(ident)
    key.sort(key=lambda k: k["code"])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "key-benign.jsonl").open("w") as f:
        for k in key:
            f.write(json.dumps(k) + "\n")
    # each distinct (prompt, answer) once: copies of one evaluation are labelled once
    shown: dict[str, dict] = {}
    for k in key:
        shown.setdefault(
            k["same_as"],
            {"code": k["same_as"][:10], "prompt": k["prompt"], "response": k["response"]},
        )
    with (out / "batch-benign.jsonl").open("w") as f:
        for item in sorted(shown.values(), key=lambda i: i["code"]):
            f.write(json.dumps(item) + "\n")
    print(f"{len(key)} benign answers, {len(shown)} distinct")


def score(key_dir: Path, label_dir: Path) -> None:
    key = _rows(key_dir / "key-benign.jsonl")
    p = {r["code"]: r["label"] for r in _rows(label_dir / "labels-benign-P.jsonl")}
    q = {r["code"]: r["label"] for r in _rows(label_dir / "labels-benign-Q.jsonl")}
    path = label_dir / "resolved-benign.jsonl"
    resolved = {r["code"]: r["label"] for r in _rows(path)} if path.exists() else {}
    both = sorted(set(p) & set(q))
    agree = sum(p[c] == q[c] for c in both)
    agree_ref = sum((p[c] == "refusal") == (q[c] == "refusal") for c in both)
    split = [c for c in both if (p[c] == "refusal") != (q[c] == "refusal")]
    gold = {c: resolved.get(c, p[c]) for c in both}
    unresolved = [c for c in split if c not in resolved]
    print("# Over-refusal read (benign prompts)\n")
    print(
        f"{len(both)} distinct answers, each labelled by two labellers: refusal-or-not agreement "
        f"{agree_ref}/{len(both)}, exact label {agree}/{len(both)}; {len(split)} refusal "
        f"disagreements, {len(split) - len(unresolved)} resolved by the lead.\n"
    )
    print(
        "| evaluation | over-refusal, judge | over-refusal, gold | judge refusal, gold not "
        "| gold refusal, judge not |"
    )
    print("|---|---|---|---:|---:|")
    sources = sorted({k["source"] for k in key})
    out = {}
    for s in sources:
        ks = [k for k in key if k["source"] == s]
        j = [k["judge"]["label"] == "refusal" for k in ks]
        g = [gold[k["same_as"][:10]] == "refusal" for k in ks]
        n = len(ks)

        fp = sum(a and not b for a, b in zip(j, g, strict=True))
        fn = sum(b and not a for a, b in zip(j, g, strict=True))
        out[s] = {"n": n, "judge": sum(j), "gold": sum(g), "judge_only": fp, "gold_only": fn}
        print(f"| {s} | {_rate(sum(j), n)} | {_rate(sum(g), n)} | {fp} | {fn} |")
    (label_dir / "benign.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "build":
        build([Path(x) for x in sys.argv[2:-1]], Path(sys.argv[-1]))
    elif len(sys.argv) == 4 and sys.argv[1] == "score":
        score(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
