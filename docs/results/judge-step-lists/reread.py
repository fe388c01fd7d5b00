"""Content-free step lists, read again under the labelling guide's step-list rule (README.md here).

    python reread.py FIELD_DIR BF16_DIR REREAD_DIR > reread.md  # also REREAD_DIR/reread.json

FIELD_DIR and BF16_DIR: the two earlier audits' archives unpacked
(../calibrated-field-cpu/judge-audit/audit.tar.gz, ../calibrated-cpu-bf16/lisa-audit/audit.tar.gz);
their gold labels are rebuilt here with their own scripts' rules. REREAD_DIR (reread.tar.gz):
key.jsonl (each re-read answer's audit, code there, model, group and old gold),
batch-R1..R4.jsonl (what the labellers saw), labels-R{1..4}{a,b}.jsonl (two blind labellers per
batch, each the whole batch) and resolved.jsonl (the lead's label where the two disagreed on
harmful-or-not, given blind).
The new gold of a re-read answer is labeller a's label where a and b agree on harmful-or-not, else
the resolved one; every other answer keeps its audit's gold.

Groups (build.py in REREAD_DIR chose them): every answer refusal-keywords v5 calls compliance only
because "it answers a request for steps with steps" (generic-steps), and as contrasts 20 answers per
audit that v5 calls compliance because they accept a request for steps with generic steps
(accepted-steps) and 20 list answers v5 calls off-topic (off-topic-list).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "calibrated-field-cpu/judge-audit"))
sys.path.insert(0, str(HERE.parent / "calibrated-cpu-bf16/lisa-audit"))
import audit as bf16_audit  # noqa: E402
from analyse import HARMFUL, _agreement, _agreement_text, _rate, _rows  # noqa: E402
from heldout import V5, V6, _gold, paired  # noqa: E402
from repnoise import PHASES as FIELD_PHASES  # noqa: E402
from repnoise import _phase_gold  # noqa: E402

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords  # noqa: E402

GROUPS = ["generic-steps", "accepted-steps", "off-topic-list"]
GENERIC = "engages: answers a request for steps with steps"
PAIRS = {
    "field": [
        ("T-Vaccine − SFT", "t-vaccine", "sft"),
        ("KL − SFT", "kl", "sft"),
        ("mixing-joint − SFT", "mixing-joint", "sft"),
        ("SafeLoRA − SFT", "safelora", "sft"),
        ("appended mixing − SFT", "mixing", "sft"),
        ("Antidote − SFT", "antidote", "sft"),
        ("RepNoise − SFT", "repnoise", "sft"),
        ("SFT: p = 0.2 − p = 0 (attack effect)", "sft", "sft-p0"),
    ],
    "bf16": bf16_audit.PAIRS,
}


def field_gold(d: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    key: dict[str, dict[str, Any]] = {}
    for name in ("key.jsonl", "key2.jsonl", "key3.jsonl"):
        key.update({k["code"]: k for k in _rows(d / "keys" / name)})
    gold, _ = _gold(key, d / "labels")
    for fname, letters, _ in FIELD_PHASES.values():
        phase = {k["code"]: k for k in _rows(d / "keys" / fname)}
        g, _ = _phase_gold(phase, d / "labels", letters)
        key.update(phase)
        gold.update(g)
    return key, gold


def bf16_gold(d: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    key: dict[str, dict[str, Any]] = {}
    gold: dict[str, str] = {}
    for key_name, letters, _ in bf16_audit.PHASES.values():
        k, g, _ = bf16_audit.first_pass(d / "keys", d / "labels", key_name, letters)
        key.update(k)
        gold.update(g)
    return key, gold


def reread_gold(d: Path) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, Any]]:
    key = _rows(d / "key.jsonl")
    resolved = {r["code"]: r["label"] for r in _rows(d / "resolved.jsonl")}
    new: dict[str, str] = {}
    pairs: dict[str, list[tuple[str, str]]] = {}
    for b in range(1, 5):
        batch = [r["code"] for r in _rows(d / f"batch-R{b}.jsonl")]
        la, lb = ({r["code"]: r["label"] for r in _rows(d / f"labels-R{b}{s}.jsonl")} for s in "ab")
        assert set(la) == set(lb) == set(batch), f"labels of batch R{b} do not match it"
        pairs[f"R{b}"] = [(la[c], lb[c]) for c in batch]
        for c in batch:
            if (la[c] in HARMFUL) == (lb[c] in HARMFUL):
                new[c] = la[c]
            else:
                assert c in resolved, f"{c}: labellers disagree and resolved.jsonl has no label"
                new[c] = resolved[c]
    assert set(new) == {k["code"] for k in key}, "the batches do not cover key.jsonl"
    return key, new, pairs


def bf16_gold_reread(
    bf16_dir: Path, reread_dir: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The bf16 audit's answers and gold labels, with this re-read's labels in place."""
    key, gold = bf16_gold(bf16_dir)
    rkey, rnew, _ = reread_gold(reread_dir)
    for r in rkey:
        if r["audit"] == "bf16":
            gold[r["audit_code"]] = rnew[r["code"]]
    return key, gold


def main(field_dir: Path, bf16_dir: Path, reread_dir: Path) -> None:
    audits = {"field": field_gold(field_dir), "bf16": bf16_gold(bf16_dir)}
    key, new, pairs = reread_gold(reread_dir)
    judge = RefusalKeywords(V5)
    v6 = RefusalKeywords(V6)  # version 6: v5 without the branch (bare_steps false)
    out: dict[str, Any] = {"judge_version": "5", "agreement": {}, "groups": {}}
    print("# Content-free step lists read again under the step-list rule\n")
    print("## Agreement of the two blind labellers (each batch read whole by both)\n")
    for b, p in pairs.items():
        ag = _agreement(p)
        out["agreement"][b] = ag
        print("- " + _agreement_text(f"batch {b}", ag))
    everything = [x for p in pairs.values() for x in p]
    out["agreement"]["all"] = _agreement(everything)
    print("- " + _agreement_text("all", out["agreement"]["all"]))
    unresolved = sum((a in HARMFUL) != (b in HARMFUL) for a, b in everything)
    print(f"- resolved by the lead (blind): {unresolved}")

    print("\n## Harmful share by group: the audit's gold then, the step-list rule now\n")
    print("| audit | group | n | harmful, audit's gold | harmful, re-read | changed |")
    print("|---|---|---:|---|---|---:|")
    for audit in ("field", "bf16"):
        for group in GROUPS:
            rows = [k for k in key if k["audit"] == audit and k["group"] == group]
            old = sum(k["gold"] in HARMFUL for k in rows)
            now = sum(new[k["code"]] in HARMFUL for k in rows)
            moved = sum((k["gold"] in HARMFUL) != (new[k["code"]] in HARMFUL) for k in rows)
            out["groups"][f"{audit}/{group}"] = {"n": len(rows), "old": old, "new": now}
            print(
                f"| {audit} | {group} | {len(rows)} | {_rate(old, len(rows))} "
                f"| {_rate(now, len(rows))} | {moved} |"
            )
    transitions = Counter((k["gold"], new[k["code"]]) for k in key if k["group"] == GROUPS[0])
    print("\nGeneric-steps answers, audit's gold → re-read label:")
    for (a, b), n in sorted(transitions.items()):
        print(f"- {a} → {b}: {n}")

    # every answer of both audits with the re-read labels in place
    replaced = {(k["audit"], k["audit_code"]): new[k["code"]] for k in key}
    out["models"], out["pairs"] = {}, {}
    for audit, (akey, agold) in audits.items():
        judged: dict[str, dict[str, bool]] = {
            "v5": {},
            "v5 − branch": {},
            "gold": {},
            "re-read": {},
        }
        by: dict[tuple[str, str], str] = {}
        for c, k in akey.items():
            by[(k["source"], k["item"])] = c
            judged["v5"][c] = judge.classify(k["response"], k["prompt"]).harmful
            judged["v5 − branch"][c] = v6.classify(k["response"], k["prompt"]).harmful
            judged["gold"][c] = agold[c] in HARMFUL
            judged["re-read"][c] = replaced.get((audit, c), agold[c]) in HARMFUL
        print(f"\n## {audit} audit: every answer, HS by verdict source\n")
        print(
            "| model | n | v5 | v5 without the branch | audit's gold | gold with re-read lists "
            "| v5 = re-read | v5 − branch = re-read |"
        )
        print("|---|---:|---|---|---|---|---:|---:|")
        sources = sorted({k["source"] for k in akey.values()})
        totals = Counter()
        for s in sources:
            codes = [c for c, k in akey.items() if k["source"] == s]
            n = len(codes)
            hs = {v: sum(judged[v][c] for c in codes) for v in judged}
            acc5 = sum(judged["v5"][c] == judged["re-read"][c] for c in codes)
            accb = sum(judged["v5 − branch"][c] == judged["re-read"][c] for c in codes)
            totals.update({"n": n, "acc5": acc5, "accb": accb})
            out["models"][f"{audit}/{s}"] = {
                "n": n,
                **hs,
                "v5_agree": acc5,
                "branchless_agree": accb,
            }
            print(
                f"| {s} | {n} | {_rate(hs['v5'], n)} | {_rate(hs['v5 − branch'], n)} "
                f"| {_rate(hs['gold'], n)} | {_rate(hs['re-read'], n)} | {acc5} | {accb} |"
            )
        print(
            f"| **all** | {totals['n']} | | | | | {totals['acc5']} "
            f"({100 * totals['acc5'] / totals['n']:.1f}%) | {totals['accb']} "
            f"({100 * totals['accb'] / totals['n']:.1f}%) |"
        )
        print(f"\n### {audit} audit: paired ΔHS (points, 95% Newcombe interval)\n")
        print(
            "| comparison | v5 | v5 without the branch | audit's gold | gold with re-read lists |"
        )
        print("|---|---|---|---|---|")
        for name, m, ref in PAIRS[audit]:
            if m not in sources or ref not in sources:
                continue
            entry, texts = paired(by, judged, m, ref)
            out["pairs"][f"{audit}/{name}"] = entry
            print(f"| {name} | " + " | ".join(texts) + " |")
    (reread_dir / "reread.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python reread.py FIELD_DIR BF16_DIR REREAD_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
