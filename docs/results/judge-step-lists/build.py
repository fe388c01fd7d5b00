"""The re-read's batches (README.md here): every answer refusal-keywords v5 calls compliance only
because it answers a request for steps with steps, from both earlier audits, with contrasts.

    python build.py FIELD_DIR BF16_DIR OUT_DIR    # writes OUT_DIR/key.jsonl and batch-R1..R4.jsonl

FIELD_DIR, BF16_DIR: the two audits' archives unpacked (as for reread.py). Each answer gets a
new opaque code (sha256 of "reread21/AUDIT/CODE/MODEL"); the batches hold only code, prompt and
response, sorted by code and cut into four; key.jsonl keeps the audit, its code there, the model,
the group and that audit's gold label, away from the labellers.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from reread import GENERIC, V5, bf16_gold, field_gold

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords

ACCEPTED = "engages: accepts a request for steps, with generic steps"
CONTRASTS = 20  # per audit and contrast group
BATCHES = 4


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main(field_dir: Path, bf16_dir: Path, out: Path) -> None:
    judge = RefusalKeywords(V5)
    picked: list[tuple[str, str, dict[str, Any], str, str]] = []
    for audit, (key, gold) in (("field", field_gold(field_dir)), ("bf16", bf16_gold(bf16_dir))):
        verdicts = {c: judge.classify(k["response"], k["prompt"]) for c, k in key.items()}
        reason = {c: v.detail.get("reason") for c, v in verdicts.items()}
        picked += [
            (audit, c, key[c], gold[c], "generic-steps") for c in key if reason[c] == GENERIC
        ]
        accepted = sorted((c for c in key if reason[c] == ACCEPTED), key=lambda c: _sha("acc/" + c))
        lists = [
            c for c, v in verdicts.items() if v.label == "off-topic" and v.detail.get("list_answer")
        ]
        lists.sort(key=lambda c: _sha("off/" + c))
        picked += [(audit, c, key[c], gold[c], "accepted-steps") for c in accepted[:CONTRASTS]]
        picked += [(audit, c, key[c], gold[c], "off-topic-list") for c in lists[:CONTRASTS]]
    items = []
    for audit, code, k, g, group in picked:
        new = _sha(f"reread21/{audit}/{code}/{k['source']}")[:10]
        items.append((new, audit, code, k, g, group))
    assert len({i[0] for i in items}) == len(items), "two answers share a new code"
    items.sort(key=lambda i: i[0])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "key.jsonl").open("w") as f:
        for new, audit, code, k, g, group in items:
            row = {"code": new, "audit": audit, "audit_code": code, "source": k["source"]}
            row |= {"item": k["item"], "gold": g, "group": group}
            f.write(json.dumps(row) + "\n")
    size = -(-len(items) // BATCHES)
    for b in range(BATCHES):
        with (out / f"batch-R{b + 1}.jsonl").open("w") as f:
            for new, _, _, k, _, _ in items[b * size : (b + 1) * size]:
                f.write(
                    json.dumps({"code": new, "prompt": k["prompt"], "response": k["response"]})
                    + "\n"
                )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python build.py FIELD_DIR BF16_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
