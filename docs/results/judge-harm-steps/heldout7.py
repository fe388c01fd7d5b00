"""The held-out test of the harm_steps rule (README.md here): answers that did not exist when the
rule and its criterion were committed.

    python heldout7.py LABEL_DIR BF16_DIR REREAD_DIR > heldout7.md
    # (also writes LABEL_DIR/heldout7.json)

LABEL_DIR: key11.jsonl ... (the field audit's build.py, ``--phase``, on the bf16 grid's --out:
``--phase key11.jsonl NO
bf16-antibody-p0-s42=cells/antibody__antibody__p0__n320__sentiment__s42/eval``, ``--phase
key12.jsonl PQ bf16-vaccine-s44=...``, ``--phase key13.jsonl RS bf16-vaccine-s42=...``,
``--phase key14.jsonl TU bf16-vaccine-s43=...``: the cells in the order they finished),
batch-*.jsonl, labels-*.jsonl (one blind labeller per batch; each batch
ends with the next one's first 15 answers, within its phase) and resolved.jsonl (the lead's label
where two labellers disagreed on harmful-or-not).
BF16_DIR and REREAD_DIR (as for ../judge-step-lists/reread.py) give SFT's and Antibody's answers
on the same prompts, labelled by the bf16 audit with the step-list re-read in place, for the
paired differences.

The criterion, fixed before these answers existed: version 7 (the ``harm_steps`` rule on) replaces
version 6 if it agrees with the labels on harmful-or-not on strictly more of these answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "calibrated-field-cpu/judge-audit"))
sys.path.insert(0, str(HERE.parent / "judge-step-lists"))
from analyse import HARMFUL, _agreement, _agreement_text, _rows  # noqa: E402
from heldout import V5, V6, judge_table, over_seeds, paired  # noqa: E402
from repnoise import _phase_gold  # noqa: E402
from reread import bf16_gold_reread  # noqa: E402

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords  # noqa: E402


class V7(RefusalKeywords):
    """Version 6 with the harm-specific-step rule switched on (the candidate version 7)."""

    harm_steps = True


PHASES = [
    ("key11.jsonl", "NO"),
    ("key12.jsonl", "PQ"),
    ("key13.jsonl", "RS"),
    ("key14.jsonl", "TU"),
]
MODELS = {
    "bf16-antibody-p0-s42": "Antibody (both stages), p = 0, s42",
    "bf16-vaccine-s42": "Vaccine ρ = 2, p = 0.2, s42",
    "bf16-vaccine-s43": "Vaccine ρ = 2, p = 0.2, s43",
    "bf16-vaccine-s44": "Vaccine ρ = 2, p = 0.2, s44",
}
SOURCES = ("v5", "v6", "v7", "labels")
#: the bf16 audit's names of the reference models
SFT = {"42": "sft", "43": "sft-s43", "44": "sft-s44"}


def read(
    label_dir: Path, phases: list[tuple[str, str]], judges: dict[str, RefusalKeywords]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, bool]], list[tuple[str, str]]]:
    """The phases' answers, each judge's and the labels' harmful-or-not, the double reads."""
    key: dict[str, dict[str, Any]] = {}
    gold: dict[str, str] = {}
    twice: list[tuple[str, str]] = []
    for name, letters in phases:
        if not (label_dir / name).is_file():
            continue
        phase = {k["code"]: k for k in _rows(label_dir / name)}
        g, t = _phase_gold(phase, label_dir, letters)
        key.update(phase)
        gold.update(g)
        twice += t
    judged: dict[str, dict[str, bool]] = {v: {} for v in SOURCES}
    for c, k in key.items():
        five = judges["v5"].classify(k["response"], k["prompt"])
        assert five.label == k["judge"]["label"], f"{c}: v5 here is not the grid's verdict"
        for v, j in judges.items():
            judged[v][c] = j.classify(k["response"], k["prompt"]).harmful
        judged["labels"][c] = gold[c] in HARMFUL
    return key, judged, twice


def main(label_dir: Path, bf16_dir: Path, reread_dir: Path) -> None:
    judges = {"v5": RefusalKeywords(V5), "v6": RefusalKeywords(V6), "v7": V7(V6)}
    key, judged, twice = read(label_dir, PHASES, judges)
    out: dict[str, Any] = {"agreement": _agreement(twice), "models": {}, "pairs": {}}
    print("# The harm_steps rule (version 7) on answers that did not exist when it was fixed\n")
    print("- " + _agreement_text("answers read twice (batch overlaps)", out["agreement"]))
    print(
        "- HS in % [Wilson 95%]; v5 is the grid's recorded judge; "
        "'right': harmful-or-not as the labels\n"
    )
    total = judge_table(MODELS, key, judged, out["models"])
    differ = [c for c in key if judged["v6"][c] != judged["v7"][c]]
    harmful = sum(judged["labels"][c] for c in differ)
    print(
        f"\nv6 and v7 differ on {len(differ)} answers (v7 harmful, v6 not); the labels call "
        f"{harmful} of them harmful and {len(differ) - harmful} not."
    )
    verdict = "replaces" if total["v7"] > total["v6"] else "does not replace"
    print(
        f"\n**Criterion** (v7 agrees with the labels on strictly more answers than v6): "
        f"{total['v7']} against {total['v6']}, so version 7 {verdict} version 6."
    )
    out["criterion"] = {"v6_agree": total["v6"], "v7_agree": total["v7"], "verdict": verdict}

    # the references: the bf16 audit's SFT (p = 0.2, p = 0) and Antibody (p = 0.2) answers, with
    # the step-list re-read's labels in place
    skey, sgold = bf16_gold_reread(bf16_dir, reread_dir)
    by: dict[tuple[str, str], str] = {(k["source"], k["item"]): c for c, k in key.items()}
    wanted = {*SFT.values(), "sft-p0", "antibody-s42", "antibody-s43", "antibody-s44"}
    for c, k in skey.items():
        if k["source"] in wanted:
            by[(k["source"], k["item"])] = c
            for v, j in judges.items():
                judged[v][c] = j.classify(k["response"], k["prompt"]).harmful
            judged["labels"][c] = sgold[c] in HARMFUL
    print("\n## Paired differences (same seed, same 200 prompts)\n")
    print(
        "Per seed: Newcombe's 95% score interval for paired proportions. Over seeds: as "
        "`hftguard report` does (mean of the seeds' differences; seeds × prompts bootstrap "
        "widened to hold the pooled table's interval at the design effect's size).\n"
    )
    print("| comparison | " + " | ".join(SOURCES) + " |")
    print("|---|---|---|---|---|")
    rows: list[tuple[str, str, str]] = []
    for s, ref in SFT.items():
        rows.append((f"Vaccine − SFT, p = 0.2, s{s}", f"bf16-vaccine-s{s}", ref))
    for s, ref in SFT.items():
        rows.append((f"Antibody − SFT, p = 0.2, s{s}", f"antibody-s{s}", ref))
    rows.append(("Antibody − SFT, p = 0, s42", "bf16-antibody-p0-s42", "sft-p0"))
    rows.append(
        ("Antibody: p = 0.2 − p = 0, s42 (attack effect)", "antibody-s42", "bf16-antibody-p0-s42")
    )
    rows.append(("SFT: p = 0.2 − p = 0, s42 (attack effect)", "sft", "sft-p0"))
    for label, m, ref in rows:
        if not any(s == m for s, _ in by) or not any(s == ref for s, _ in by):
            continue
        entry, texts = paired(by, judged, m, ref)
        out["pairs"][label] = entry
        print(f"| {label} | " + " | ".join(texts) + " |")
    for what, model in (("Vaccine", "bf16-vaccine-s{}"), ("Antibody", "antibody-s{}")):
        pairs = [(model.format(s), ref) for s, ref in SFT.items()]
        if all(any(x == m for x, _ in by) for m, _ in pairs):
            seeds = {v: over_seeds(by, judged, v, pairs) for v in SOURCES}
            out["pairs"][f"{what} − SFT, p = 0.2, seeds 42-44"] = seeds
            print(
                f"| **{what} − SFT, p = 0.2, seeds 42–44** | "
                + " | ".join(seeds[v] for v in SOURCES)
                + " |"
            )
    if any((label_dir / name).is_file() for name, _ in CONFIRM):
        confirm(label_dir, judges, judged, by, out)
    (label_dir / "heldout7.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


#: labelled after the decision, as its confirmation (README: the p = 0.1 cells, seed 42; the
#: twenty-third session's seeds 43 and 44, key18-key23, in the order their evaluations finished,
#: then its p = 0 cells of Vaccine and Booster, key24 and key25, and Vaccine at p = 0.1 on seeds 42
#: and 43, key26 and key27)
CONFIRM = [
    ("key15.jsonl", "VW"),
    ("key16.jsonl", "XY"),
    ("key17.jsonl", "ab"),
    ("key18.jsonl", "cd"),
    ("key19.jsonl", "ef"),
    ("key20.jsonl", "gh"),
    ("key21.jsonl", "ij"),
    ("key22.jsonl", "kl"),
    ("key23.jsonl", "mn"),
    ("key24.jsonl", "op"),
    ("key25.jsonl", "qr"),
    ("key26.jsonl", "st"),
    ("key27.jsonl", "uv"),
]
P01 = {"sft": "SFT", "antibody": "Antibody (both stages)", "lisa0.1": "Lisa ρ = 0.1"}
CONFIRM_MODELS = {
    f"bf16-{m}-p0.1-s{s}": f"{name}, p = 0.1, s{s}"
    for s in ("42", "43", "44")
    for m, name in P01.items()
} | {
    "bf16-vaccine-p0-s42": "Vaccine ρ = 2, p = 0, s42",
    "bf16-booster-p0-s42": "Booster, p = 0, s42",
    "bf16-vaccine-p0.1-s42": "Vaccine ρ = 2, p = 0.1, s42",
    "bf16-vaccine-p0.1-s43": "Vaccine ρ = 2, p = 0.1, s43",
}


def confirm(
    label_dir: Path,
    judges: dict[str, RefusalKeywords],
    judged: dict[str, dict[str, bool]],
    by: dict[tuple[str, str], str],
    out: dict[str, Any],
) -> None:
    """The confirmation set: the same tables for the p = 0.1 cells, and their comparisons."""
    key, more, twice = read(label_dir, CONFIRM, judges)
    for v in SOURCES:
        judged[v].update(more[v])
    by.update({(k["source"], k["item"]): c for c, k in key.items()})
    out["confirmation"] = {"agreement": _agreement(twice), "models": {}, "pairs": {}}
    print(
        "\n## Confirmation: cells labelled after the decision (p = 0.1; Vaccine's and Booster's "
        "p = 0)\n"
    )
    print("- " + _agreement_text("answers read twice", out["confirmation"]["agreement"]) + "\n")
    total = judge_table(CONFIRM_MODELS, key, judged, out["confirmation"]["models"])
    differ = [c for c in key if more["v6"][c] != more["v7"][c]]
    harmful = sum(more["labels"][c] for c in differ)
    print(
        f"\nv6 and v7 differ on {len(differ)} of these answers; the labels call {harmful} of "
        f"them harmful. Right: v6 {total['v6']}, v7 {total['v7']} of {total['n']}.\n"
    )
    print("| comparison | " + " | ".join(SOURCES) + " |")
    print("|---|---|---|---|---|")
    rows = [
        (f"{P01[m]} − SFT, p = 0.1, s{s}", f"bf16-{m}-p0.1-s{s}", f"bf16-sft-p0.1-s{s}")
        for s in ("42", "43", "44")
        for m in ("antibody", "lisa0.1")
    ]
    rows += [
        ("SFT: p = 0.1 − p = 0, s42", "bf16-sft-p0.1-s42", "sft-p0"),
        ("Antibody: p = 0.1 − p = 0, s42", "bf16-antibody-p0.1-s42", "bf16-antibody-p0-s42"),
        # the p = 0 cells of Vaccine and Booster (twenty-third session, seed 42)
        ("Vaccine − SFT, p = 0, s42", "bf16-vaccine-p0-s42", "sft-p0"),
        ("Booster − SFT, p = 0, s42", "bf16-booster-p0-s42", "sft-p0"),
        (
            "Vaccine: p = 0.2 − p = 0, s42 (attack effect)",
            "bf16-vaccine-s42",
            "bf16-vaccine-p0-s42",
        ),
    ]
    rows += [
        (f"Vaccine − SFT, p = 0.1, s{s}", f"bf16-vaccine-p0.1-s{s}", f"bf16-sft-p0.1-s{s}")
        for s in ("42", "43")
    ]
    for label, m, ref in rows:
        if not any(s == m for s, _ in by) or not any(s == ref for s, _ in by):
            continue
        entry, texts = paired(by, judged, m, ref)
        out["confirmation"]["pairs"][label] = entry
        print(f"| {label} | " + " | ".join(texts) + " |")
    for m, name, ss in (
        ("antibody", P01["antibody"], ("42", "43", "44")),
        ("lisa0.1", P01["lisa0.1"], ("42", "43", "44")),
        ("vaccine", "Vaccine ρ = 2", ("42", "43")),
    ):
        pairs = [(f"bf16-{m}-p0.1-s{s}", f"bf16-sft-p0.1-s{s}") for s in ss]
        if all(any(x == a for x, _ in by) and any(x == r for x, _ in by) for a, r in pairs):
            seeds = {v: over_seeds(by, judged, v, pairs) for v in SOURCES}
            out["confirmation"]["pairs"][f"{name} − SFT, p = 0.1, seeds {ss[0]}-{ss[-1]}"] = seeds
            print(
                f"| **{name} − SFT, p = 0.1, seeds {ss[0]}–{ss[-1]}** | "
                + " | ".join(seeds[v] for v in SOURCES)
                + " |"
            )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python heldout7.py LABEL_DIR BF16_DIR REREAD_DIR")
    main(*(Path(a) for a in sys.argv[1:]))
