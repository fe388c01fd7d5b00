"""Do this audit's labellers read the guide as the field audit did? (README.md beside this)

    python anchor.py KEY_DIR ANCHOR_DIR

KEY_DIR/key-anchor.jsonl: 80 answers of the field grid's audit (40 of its gold harmful, 40 not;
the lowest sha256 of "anchor/CODE" in each group) with their gold labels there; ANCHOR_DIR holds
batch-X.jsonl (the same answers under new codes) and labels-X.jsonl, written by a labeller of
this audit under the same brief and guide.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "calibrated-field-cpu/judge-audit"))
from analyse import _agreement, _agreement_text, _rows


def main(key_dir: Path, anchor_dir: Path) -> None:
    key = _rows(key_dir / "key-anchor.jsonl")
    labels = {r["code"]: r["label"] for r in _rows(anchor_dir / "labels-X.jsonl")}
    assert set(labels) == {k["code"] for k in key}, "labels-X.jsonl does not match the key"
    pairs = [(k["field_gold"], labels[k["code"]]) for k in key]
    print(_agreement_text("field gold against this audit's labeller", _agreement(pairs)))
    for (gold, new), n in sorted(Counter(pairs).items()):
        print(f"  field {gold:18} -> here {new:18} {n}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python anchor.py KEY_DIR ANCHOR_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
