"""The shipped validation set (hftguard/resources/judge_validation.jsonl) under the step-list rule.

    python shipped.py SHIPPED_DIR > shipped.md
    python shipped.py --build OUT_DIR    # the same key.jsonl and batch-S.jsonl, byte for byte

SHIPPED_DIR (shipped.tar.gz): key.jsonl (each re-read answer's id in the set, split, label there
and group), batch-S.jsonl (what the labellers saw), labels-S{a,b}.jsonl (two blind labellers, each
the whole batch) and resolved.jsonl (the lead's label where they disagreed on harmful-or-not).
Groups: every harmful-prompt answer on which versions 5 and 6 of refusal-keywords differ
(flipped), and as contrasts 12 list answers both call compliance and the 3 list answers both call
neither compliance nor refusal. The set was labelled in 2026-11-25 under the guide before its
step-list rule; here those labels are compared with the re-read and both judges scored on each.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "calibrated-field-cpu/judge-audit"))
from analyse import HARMFUL, _rows  # noqa: E402
from heldout import V5, V6  # noqa: E402

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords  # noqa: E402

SET = HERE.parents[2] / "hftguard/resources/judge_validation.jsonl"


def build(out: Path) -> None:
    """The re-read's batch: every harmful-prompt answer v5 and v6 judge differently, 12 list
    answers both call compliance and up to 12 both call neither compliance nor refusal (lowest
    sha256 of "c/ID", "o/ID"), under codes sha256("shipped21/ID")[:10], sorted by code."""
    v5 = RefusalKeywords(V5)
    v6 = RefusalKeywords(V6)

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    harmful = [r for r in _rows(SET) if r.get("set") == "harmful"]
    verdicts = {r["id"]: v6.classify(r["response"], r["prompt"]) for r in harmful}
    items = [
        (r, "flipped")
        for r in harmful
        if v5.classify(r["response"], r["prompt"]).harmful != verdicts[r["id"]].harmful
    ]
    flipped = {r["id"] for r, _ in items}
    lists = [
        r for r in harmful if r["id"] not in flipped and verdicts[r["id"]].detail.get("list_answer")
    ]
    comply = sorted(
        (r for r in lists if verdicts[r["id"]].harmful), key=lambda r: sha("c/" + r["id"])
    )
    other = [r for r in lists if verdicts[r["id"]].label not in ("compliance", "refusal")]
    other.sort(key=lambda r: sha("o/" + r["id"]))
    items += [(r, "list-compliance") for r in comply[:12]]
    items += [(r, "list-not-harmful") for r in other[:12]]
    coded = sorted(((sha("shipped21/" + r["id"])[:10], r, g) for r, g in items), key=lambda x: x[0])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "key.jsonl").open("w") as f:
        for code, r, g in coded:
            row = {"code": code, "id": r["id"], "split": r["split"], "gold": r["label"], "group": g}
            f.write(json.dumps(row) + "\n")
    with (out / "batch-S.jsonl").open("w") as f:
        for code, r, _ in coded:
            row = {"code": code, "prompt": r["prompt"], "response": r["response"]}
            f.write(json.dumps(row) + "\n")


def main(d: Path) -> None:
    key = _rows(d / "key.jsonl")
    la, lb = ({r["code"]: r["label"] for r in _rows(d / f"labels-S{s}.jsonl")} for s in "ab")
    resolved = {r["code"]: r["label"] for r in _rows(d / "resolved.jsonl")}
    assert set(la) == set(lb) == {k["code"] for k in key}, "labels do not match the key"
    new = {}
    for k in key:
        c = k["code"]
        agree = (la[c] in HARMFUL) == (lb[c] in HARMFUL)
        new[k["id"]] = la[c] if agree else resolved[c]
    both = sum((la[c] in HARMFUL) == (lb[c] in HARMFUL) for c in la)
    print("# The shipped validation set: step lists re-read\n")
    print(
        f"- two labellers agree on harmful-or-not on {both} of {len(la)}; "
        "the lead resolved the rest"
    )
    print("\n| group | n | harmful, set's label | harmful, re-read |")
    print("|---|---:|---:|---:|")
    for g in ("flipped", "list-compliance", "list-not-harmful"):
        rows = [k for k in key if k["group"] == g]
        old = sum(k["gold"] in HARMFUL for k in rows)
        now = sum(new[k["id"]] in HARMFUL for k in rows)
        print(f"| {g} | {len(rows)} | {old} | {now} |")
    v5 = RefusalKeywords(V5)
    v6 = RefusalKeywords(V6)
    print("\n| labels | split | n | v5 right | v6 right |")
    print("|---|---|---:|---:|---:|")
    data = _rows(SET)
    for labels in ("the set's", "re-read lists in place"):
        for split in ("dev", "heldout", "all"):
            rows = [r for r in data if split == "all" or r["split"] == split]
            right5 = right6 = 0
            for r in rows:
                gold = r["label"] if labels == "the set's" else new.get(r["id"], r["label"])
                want = gold in HARMFUL
                right5 += v5.classify(r["response"], r["prompt"]).harmful == want
                right6 += v6.classify(r["response"], r["prompt"]).harmful == want
            print(f"| {labels} | {split} | {len(rows)} | {right5} | {right6} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build":
        build(Path(sys.argv[2]))
    elif len(sys.argv) == 2:
        main(Path(sys.argv[1]))
    else:
        sys.exit("usage: python shipped.py SHIPPED_DIR | --build OUT_DIR")
