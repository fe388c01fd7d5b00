"""Do this audit's labellers read the guide as the field audit did? (README.md beside this)

    python anchor.py KEY_DIR ANCHOR_DIR > anchor.md

Two anchor batches, labelled under the same brief and guide as the first pass:
- X (one labeller): 80 answers of the field grid's audit, 40 of its gold harmful and 40 not (the
  lowest sha256 of "anchor/CODE" in each group); KEY_DIR/key-anchor.jsonl holds their field gold.
- Y (two labellers, each the whole batch): the answers that refusal-keywords v5 calls compliance
  only because they answer a request for steps with steps ("generic steps"), 93 of the field
  audit (every one it labelled) and 93 of this audit (the lowest sha256 of "anchor-g/CODE"),
  shuffled together; KEY_DIR/key-anchor-generic.jsonl holds each one's audit and gold label there.
  Two answers share a code (the two audits code an answer by model name and prompt, and both have
  a model named "sft"), so batch Y's labels are matched to its key by line.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "calibrated-field-cpu/judge-audit"))
from analyse import HARMFUL, _agreement, _agreement_text, _rate, _rows


def batch_x(key_dir: Path, anchor_dir: Path) -> None:
    key = _rows(key_dir / "key-anchor.jsonl")
    labels = {r["code"]: r["label"] for r in _rows(anchor_dir / "labels-X.jsonl")}
    assert set(labels) == {k["code"] for k in key}, "labels-X.jsonl does not match the key"
    pairs = [(k["field_gold"], labels[k["code"]]) for k in key]
    print("## Batch X: 80 answers of the field audit (40 harmful, 40 not by its gold)\n")
    print("- " + _agreement_text("field gold against this audit's labeller", _agreement(pairs)))
    for (gold, new), n in sorted(Counter(pairs).items()):
        print(f"  - field {gold} → here {new}: {n}")


def batch_y(key_dir: Path, anchor_dir: Path) -> None:
    key = _rows(key_dir / "key-anchor-generic.jsonl")
    one, two = (_rows(anchor_dir / f"labels-Y{i}.jsonl") for i in (1, 2))
    assert len(one) == len(two) == len(key), "a labels-Y file does not have one label per line"
    for rows in (one, two):
        assert [r["code"] for r in rows] == [k["code"] for k in key], "labels-Y out of order"
    print("\n## Batch Y: the judge's generic-steps answers, from both audits\n")
    print(
        "| answers of | n | harmful by that audit's gold | by labeller Y1 | by labeller Y2 "
        "| Y1 = gold | Y2 = gold | Y1 = Y2 |"
    )
    print("|---|---:|---|---|---|---:|---:|---:|")
    for audit, name in (("field", "the field audit (fp32)"), ("bf16", "this audit (bf16)")):
        rows = [(k, a, b) for k, a, b in zip(key, one, two, strict=True) if k["audit"] == audit]
        n = len(rows)
        g = [k["gold"] in HARMFUL for k, _, _ in rows]
        y1 = [a["label"] in HARMFUL for _, a, _ in rows]
        y2 = [b["label"] in HARMFUL for _, _, b in rows]
        same = (sum(x == y for x, y in zip(y1, g, strict=True)),)
        same += (sum(x == y for x, y in zip(y2, g, strict=True)),)
        same += (sum(x == y for x, y in zip(y1, y2, strict=True)),)
        print(
            f"| {name} | {n} | {_rate(sum(g), n)} | {_rate(sum(y1), n)} | {_rate(sum(y2), n)} "
            f"| {same[0]} | {same[1]} | {same[2]} |"
        )
    print("\n(HS in %, Wilson intervals; harmful = harmful-compliance or partial.)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python anchor.py KEY_DIR ANCHOR_DIR")
    batch_x(Path(sys.argv[1]), Path(sys.argv[2]))
    batch_y(Path(sys.argv[1]), Path(sys.argv[2]))
