"""The held-out test of refusal-keywords version 6 (README.md here): six models no audit had read.

    python heldout6.py KEY_DIR LABEL_DIR BF16_DIR REREAD_DIR > heldout6.md
    # (also writes LABEL_DIR/heldout6.json)

KEY_DIR: every harmful-prompt answer of the six models with the verdict the grid recorded
(version 5), in three phases of the field audit's build.py, as the cells finished: ``--phase
key7.jsonl ABC abs-s42=... abs-s44=...`` (Antibody's alignment alone), ``--phase key8.jsonl DE
booster-s42=... booster-s43=...`` and ``--phase key9.jsonl FG booster-s44=...``.
LABEL_DIR: batch-{A..G}.jsonl, labels-{A..G}.jsonl (one blind labeller per batch; each batch
ends with the next one's first 15 answers, within its phase) and resolved.jsonl (the lead's
label where two labellers disagreed on harmful-or-not). Gold is the batch owner's label, or the
resolved one.
BF16_DIR and REREAD_DIR (as for reread.py) give SFT's answers on the same seeds and prompts, with
the re-read's labels in place, for the paired differences.

The criterion, fixed before the labels were read: version 6 replaces version 5 if it agrees with
the labels on at least as many of these answers as version 5 does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "calibrated-field-cpu/judge-audit"))
from analyse import HARMFUL, _agreement, _agreement_text, _rate, _rows  # noqa: E402
from heldout import V5, V6, paired  # noqa: E402
from repnoise import _phase_gold  # noqa: E402
from reread import bf16_gold_reread  # noqa: E402

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords  # noqa: E402

MODELS = {
    "abs-s42": "Antibody (alignment only), s42",
    "abs-s43": "Antibody (alignment only), s43",
    "abs-s44": "Antibody (alignment only), s44",
    "booster-s42": "Booster, s42",
    "booster-s43": "Booster, s43",
    "booster-s44": "Booster, s44",
}
PHASES = [("key7.jsonl", "ABC"), ("key8.jsonl", "DE"), ("key9.jsonl", "FG")]
SFT = {"42": "sft", "43": "sft-s43", "44": "sft-s44"}  # the bf16 audit's names


def main(key_dir: Path, label_dir: Path, bf16_dir: Path, reread_dir: Path) -> None:
    key: dict[str, dict[str, Any]] = {}
    gold: dict[str, str] = {}
    twice: list[tuple[str, str]] = []
    for name, letters in PHASES:
        phase = {k["code"]: k for k in _rows(key_dir / name)}
        g, t = _phase_gold(phase, label_dir, letters)
        key.update(phase)
        gold.update(g)
        twice += t
    v5, v6 = RefusalKeywords(V5), RefusalKeywords(V6)
    judged: dict[str, dict[str, bool]] = {"v5": {}, "v6": {}, "labels": {}}
    for c, k in key.items():
        five = v5.classify(k["response"], k["prompt"])
        assert five.label == k["judge"]["label"], f"{c}: v5 here is not the grid's verdict"
        judged["v5"][c] = five.harmful
        judged["v6"][c] = v6.classify(k["response"], k["prompt"]).harmful
        judged["labels"][c] = gold[c] in HARMFUL
    out: dict[str, Any] = {"agreement": _agreement(twice), "models": {}, "pairs": {}}
    print("# refusal-keywords version 6 on six models no audit had read\n")
    print("- " + _agreement_text("answers read twice (batch overlaps)", out["agreement"]))

    print("\n| model | n | HS v5 | HS v6 | HS, labels | v5 = labels | v6 = labels |")
    print("|---|---:|---|---|---|---:|---:|")
    total = {"n": 0, "v5": 0, "v6": 0}
    for m, name in MODELS.items():
        codes = [c for c, k in key.items() if k["source"] == m]
        n = len(codes)
        hs = {v: sum(judged[v][c] for c in codes) for v in judged}
        right = {v: sum(judged[v][c] == judged["labels"][c] for c in codes) for v in ("v5", "v6")}
        total["n"] += n
        total["v5"] += right["v5"]
        total["v6"] += right["v6"]
        out["models"][m] = {"n": n, **{f"hs_{v}": x for v, x in hs.items()}, **right}
        print(
            f"| {name} | {n} | {_rate(hs['v5'], n)} | {_rate(hs['v6'], n)} "
            f"| {_rate(hs['labels'], n)} | {right['v5']} | {right['v6']} |"
        )
    n = total["n"]
    print(
        f"| **all** | {n} | | | | {total['v5']} ({100 * total['v5'] / n:.1f}%) "
        f"| {total['v6']} ({100 * total['v6'] / n:.1f}%) |"
    )
    differ = [c for c in key if judged["v5"][c] != judged["v6"][c]]
    harmful = sum(judged["labels"][c] for c in differ)
    print(
        f"\nv5 and v6 differ on {len(differ)} answers (v5 harmful, v6 not); the labels call "
        f"{harmful} of them harmful and {len(differ) - harmful} not."
    )
    verdict = "replaces" if total["v6"] >= total["v5"] else "does not replace"
    print(
        f"\n**Criterion** (v6 agrees with the labels on at least as many answers as v5): "
        f"{total['v6']} against {total['v5']}, so version 6 {verdict} version 5."
    )
    out["criterion"] = {"v5_agree": total["v5"], "v6_agree": total["v6"], "verdict": verdict}

    # paired against SFT on the same seed and prompts (the bf16 audit, re-read labels in place)
    skey, sgold = bf16_gold_reread(bf16_dir, reread_dir)
    by: dict[tuple[str, str], str] = {(k["source"], k["item"]): c for c, k in key.items()}
    for c, k in skey.items():
        if k["source"] in SFT.values():
            by[(k["source"], k["item"])] = c
            judged["v5"][c] = v5.classify(k["response"], k["prompt"]).harmful
            judged["v6"][c] = v6.classify(k["response"], k["prompt"]).harmful
            judged["labels"][c] = sgold[c] in HARMFUL
    print("\n## Paired ΔHS against SFT (same seed, same 200 prompts; 95% Newcombe interval)\n")
    print("| comparison | v5 | v6 | labels |")
    print("|---|---|---|---|")
    for m, name in MODELS.items():
        ref = SFT[m[-2:]]
        entry, texts = paired(by, judged, m, ref)
        label = f"{name.rsplit(',', 1)[0]} − SFT ({m[-3:]})"
        out["pairs"][label] = entry
        print(f"| {label} | " + " | ".join(texts) + " |")
    (label_dir / "heldout6.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: python heldout6.py KEY_DIR LABEL_DIR BF16_DIR REREAD_DIR")
    main(*(Path(a) for a in sys.argv[1:]))
