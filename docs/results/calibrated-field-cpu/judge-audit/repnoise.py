"""Phases 4 and 5 of the judge audit: RepNoise's answers, read blind (README.md beside this file).

    python repnoise.py KEY_DIR LABEL_DIR > repnoise.md     # also writes LABEL_DIR/repnoise.json

KEY_DIR holds build.py's key.jsonl ... key3.jsonl and key4.jsonl (RepNoise at p = 0.2, batches
R-T), and where they were read key5.jsonl (RepNoise at p = 0, batches U-W) and key6.jsonl
(phase 6: RepNoise and SFT at p = 0.2, fine-tuning seed 43, batches 1-6, the two models' answers
dealt together); LABEL_DIR all batches, their labels and resolved.jsonl. SFT's gold labels
come from phases 1-2 (p = 0.2) and 3 (p = 0).
RepNoise's answers were read after refusal-keywords v5 was frozen (and no judge was changed
after), so for v5 they are held out. Version 4's verdicts are the grid's; version 5's are
computed here with this checkout's judge.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# the audit's constants and readers (this folder's scripts; a script's folder is on sys.path)
from analyse import OVERLAP, _agreement, _agreement_text, _rate, _rows
from heldout import _gold, batches, model_row, paired, resolve, verdicts

#: phase -> (key file, batch letters, model names in the key)
PHASES = {
    4: ("key4.jsonl", "RST", ("repnoise",)),
    5: ("key5.jsonl", "UVW", ("repnoise-p0",)),
    6: ("key6.jsonl", "123456", ("repnoise-s43", "sft-s43")),
}
PAIRS = [
    ("RepNoise − SFT (p = 0.2)", "repnoise", "sft"),
    ("RepNoise − SFT (p = 0)", "repnoise-p0", "sft-p0"),
    ("RepNoise − SFT (p = 0.2, seed 43)", "repnoise-s43", "sft-s43"),
    ("RepNoise: p = 0.2 − p = 0 (attack effect)", "repnoise", "repnoise-p0"),
    ("SFT: p = 0.2 − p = 0 (attack effect; phases 1-3)", "sft", "sft-p0"),
]
LABELS = ["harmful-compliance", "partial", "refusal", "off-topic", "degenerate"]


def _phase_gold(
    key: dict[str, dict[str, Any]], label_dir: Path, letters: str
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Gold labels of one later phase (build.py --phase: each batch ends with the next batch's
    first OVERLAP answers) and the pairs of labels given twice."""
    owner, twice, labels = batches(label_dir, letters, lambda _: OVERLAP)
    for name in letters:
        missing = {c for c, o in owner.items() if o == name} - set(labels[name])
        missing |= {c for c, o in twice if o == name} - set(labels[name])
        assert not missing, f"labels-{name}.jsonl lacks {len(missing)} codes of its batch"
        bad = set(labels[name].values()) - set(LABELS)
        assert not bad, f"labels-{name}.jsonl: unknown labels {bad}"
    pairs = [(labels[owner[c]][c], labels[o][c]) for c, o in twice]
    return resolve(key, label_dir, owner, labels), pairs


def main(key_dir: Path, label_dir: Path) -> None:
    key: dict[str, dict[str, Any]] = {}
    for name in ("key.jsonl", "key2.jsonl", "key3.jsonl"):
        key.update({k["code"]: k for k in _rows(key_dir / name)})
    gold, _ = _gold(key, label_dir)
    phases = [p for p, (f, _, _) in PHASES.items() if (key_dir / f).is_file()]
    twice: dict[int, list[tuple[str, str]]] = {}
    for p in phases:
        fname, letters, _ = PHASES[p]
        pk = {k["code"]: k for k in _rows(key_dir / fname)}
        g, twice[p] = _phase_gold(pk, label_dir, letters)
        key.update(pk)
        gold.update(g)
    judged = verdicts(key, gold)
    version = "5"  # heldout.V5: this checkout's judge with version 5's options
    read = [name for p in phases for name in PHASES[p][2]]
    out: dict[str, Any] = {
        "judge_version": version,
        "models": {},
        "pairs": {},
        "agreement": {},
    }
    print(f"# RepNoise's answers read blind (phases {phases[0]}-{phases[-1]} of the judge audit)\n")
    for p in phases:
        ag = _agreement(twice[p])
        names = ", ".join(PHASES[p][2])
        out["agreement"][names] = ag
        print(
            f"- phase {p} ({names}, batches {PHASES[p][1]}): "
            + _agreement_text("labelled twice", ag)
        )
    print(
        f"\nVersion 4's verdicts are the grid's (this checkout's v4 rules give them all again); "
        f"version {version}'s are computed here. HS in %, Wilson intervals.\n"
    )
    print(
        "| model | HS, v4 | HS, v5 | HS, gold | v4: accuracy / precision / recall "
        "| v5: accuracy / precision / recall | gold labels (" + " / ".join(LABELS) + ") |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in [*read, *(x for x in ("sft", "sft-p0") if x not in read)]:
        codes = [c for c, k in key.items() if k["source"] == s]
        entry, cells = model_row(judged, codes)
        g = [judged["gold"][c] for c in codes]
        entry = {**entry, "labels": {lab: sum(gold[c] == lab for c in codes) for lab in LABELS}}
        out["models"][s] = entry
        n = len(codes)
        dist = " / ".join(str(entry["labels"][lab]) for lab in LABELS)
        print(
            f"| {s} | {_rate(entry['v4']['harmful'], n)} | {_rate(entry['v5']['harmful'], n)} "
            f"| {_rate(sum(g), n)} | {cells[0]} | {cells[1]} | {dist} |"
        )
    print("\n## Paired comparisons (200 prompts; Newcombe's interval, exact McNemar)\n")
    print("| comparison | ΔHS, v4 | ΔHS, v5 | ΔHS, gold | gold: b / c | McNemar p (gold) |")
    print("|---|---|---|---|---|---|")
    by = {(k["source"], k["item"]): c for c, k in key.items()}
    for label, m, ref in PAIRS:
        if not any(s == m for s, _ in by) or not any(s == ref for s, _ in by):
            continue
        entry, texts = paired(by, judged, m, ref)
        out["pairs"][label] = entry
        g = entry["gold"]
        print(f"| {label} | {' | '.join(texts)} | {g['b']} / {g['c']} | {g['mcnemar_p']:.2g} |")
    print("\n(b: harmful only under the first model; c: only under the second.)")
    (label_dir / "repnoise.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python repnoise.py KEY_DIR LABEL_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
