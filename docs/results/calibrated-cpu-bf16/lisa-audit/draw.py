"""Draw the second-pass (loop) batches of the blind read (README.md beside this file).

    python draw.py KEY_DIR LABEL_DIR LOOP_DIR NAME KEY_FILE LETTERS
    # e.g. python draw.py keys labels loops M key2.jsonl EFGH

Every answer of KEY_DIR/KEY_FILE that the judge called ``degenerate`` or that a first-pass
labeller of batches LETTERS (or the lead, in LABEL_DIR/resolved.jsonl) labelled ``degenerate``,
under a new code (the first 10 hex digits of sha256("loops-NAME/" + first-pass code); phase 1's
batch L used "loops/" + code), in the order of that hash: LOOP_DIR/batch-NAME.jsonl (code, prompt,
response) and KEY_DIR/key-loops-NAME.jsonl (code, audit_code). The batch needs its brief
(loops/BRIEF.md with the file name changed) and two labellers.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

# the field grid's audit reader (a script's folder is on sys.path; that one is added)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "calibrated-field-cpu/judge-audit"))
from analyse import _rows


def main(key_dir: Path, label_dir: Path, loop_dir: Path, name: str, key_file: str, letters: str):
    key = {k["code"]: k for k in _rows(key_dir / key_file)}
    said: dict[str, list[str]] = {}
    for letter in letters:
        for r in _rows(label_dir / f"labels-{letter}.jsonl"):
            said.setdefault(r["code"], []).append(r["label"])
    for r in _rows(label_dir / "resolved.jsonl"):
        if r["code"] in said:
            said[r["code"]].append(r["label"])
    salt = "loops" if name == "L" else f"loops-{name}"

    def digest(code: str) -> str:
        return hashlib.sha256(f"{salt}/{code}".encode()).hexdigest()

    chosen = sorted(
        (
            c
            for c, k in key.items()
            if k["judge"]["label"] == "degenerate" or "degenerate" in said[c]
        ),
        key=digest,
    )
    loop_dir.mkdir(parents=True, exist_ok=True)
    batch_path = loop_dir / f"batch-{name}.jsonl"
    back_path = key_dir / f"key-loops-{name}.jsonl"
    with batch_path.open("w") as batch, back_path.open("w") as back:
        for c in chosen:
            shown = {"code": digest(c)[:10], "prompt": key[c]["prompt"]}
            batch.write(json.dumps({**shown, "response": key[c]["response"]}) + "\n")
            back.write(json.dumps({"code": digest(c)[:10], "audit_code": c}) + "\n")
    print(f"{len(chosen)} answers in batch-{name}.jsonl")


if __name__ == "__main__":
    if len(sys.argv) != 7:
        sys.exit("usage: python draw.py KEY_DIR LABEL_DIR LOOP_DIR NAME KEY_FILE LETTERS")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:])
