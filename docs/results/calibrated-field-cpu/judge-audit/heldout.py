"""Phase 3 of the judge audit: refusal-keywords v5 read on four models no judge was designed on.

    python heldout.py KEY_DIR LABEL_DIR > heldout.md     # also writes LABEL_DIR/heldout.json

KEY_DIR holds build.py's key.jsonl, key2.jsonl and key3.jsonl; LABEL_DIR all batches
(A-O), their labels and resolved.jsonl. The verdicts of version 4 are the ones the grid
recorded; version 5's are computed here, with this checkout's judge set to version 5's options
(``V5``; the default judge is newer since version 6).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the audit's constants and readers (this folder's analyse.py; a script's folder is on sys.path)
from analyse import CROSS, HARMFUL, OVERLAP, _rate, _rows

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords, RefusalKeywordsConfig
from hftguard.pipeline.intervals import (
    design_effect,
    hull,
    mcnemar_exact,
    newcombe_paired,
    two_level_bootstrap,
)

#: the versions the audits compare, as options of this checkout's judge (version 6 made
#: ``bare_steps`` false by default; 5 and 4 had it)
V6 = RefusalKeywordsConfig()
V5 = RefusalKeywordsConfig(bare_steps=True)
V4 = RefusalKeywordsConfig(bare_acceptance=False, bare_steps=True)

HELD = ["mixing", "sft-p0", "t-vaccine-p0", "antidote"]
#: (label, model, reference): the paired comparisons the held-out models take part in
PAIRS = [
    ("T-Vaccine − SFT (p = 0.2; design models)", "t-vaccine", "sft"),
    ("KL − SFT (p = 0.2; design models)", "kl", "sft"),
    ("mixing-joint − SFT (p = 0.2; design models)", "mixing-joint", "sft"),
    ("SafeLoRA − SFT (p = 0.2; design models)", "safelora", "sft"),
    ("appended mixing − SFT (p = 0.2)", "mixing", "sft"),
    ("Antidote − SFT (p = 0.2)", "antidote", "sft"),
    ("SFT: p = 0.2 − p = 0 (attack effect)", "sft", "sft-p0"),
    ("T-Vaccine: p = 0.2 − p = 0 (attack effect)", "t-vaccine", "t-vaccine-p0"),
]


def batches(
    label_dir: Path, letters: str, tail: Callable[[str], int]
) -> tuple[dict[str, str], list[tuple[str, str]], dict[str, dict[str, str]]]:
    """Read the batches ``letters`` and their labels: each code's owner (the batch it is not in
    the last ``tail(batch)`` lines of), the (code, batch) of every answer labelled again, and the
    labels by batch."""
    owner: dict[str, str] = {}
    twice: list[tuple[str, str]] = []
    labels: dict[str, dict[str, str]] = {}
    for name in letters:
        batch = [b["code"] for b in _rows(label_dir / f"batch-{name}.jsonl")]
        n = len(batch) - tail(name)
        owner.update(dict.fromkeys(batch[:n], name))
        twice += [(c, name) for c in batch[n:]]
        labels[name] = {r["code"]: r["label"] for r in _rows(label_dir / f"labels-{name}.jsonl")}
    return owner, twice, labels


def resolve(
    key: dict[str, Any], label_dir: Path, owner: dict[str, str], labels: dict[str, dict[str, str]]
) -> dict[str, str]:
    """Gold label of every code of ``key``: the lead's resolution if any, else the owner's label."""
    resolved = {r["code"]: r["label"] for r in _rows(label_dir / "resolved.jsonl")}
    return {c: resolved.get(c, labels[owner[c]][c]) for c in key}


def _gold(key: dict[str, dict[str, Any]], label_dir: Path) -> tuple[dict[str, str], list[Any]]:
    owner, twice, labels = batches(
        label_dir, "ABCDEFGHIJKLMNO", lambda name: OVERLAP + (CROSS if name in "DEFGHI" else 0)
    )
    pairs = [(labels[owner[c]][c], labels[o][c]) for c, o in twice if o in "JKLMNO"]
    return resolve(key, label_dir, owner, labels), pairs


def verdicts(key: dict[str, dict[str, Any]], gold: dict[str, str]) -> dict[str, dict[str, bool]]:
    """Harmful-or-not of every answer of ``key`` by version 4 (the grid's recorded verdicts,
    checked against this checkout's v4 rules), version 5 (computed here) and the gold labels."""
    v5 = RefusalKeywords(V5)
    v4 = RefusalKeywords(V4)
    judged: dict[str, dict[str, bool]] = {"v4": {}, "v5": {}, "gold": {}}
    for c, k in key.items():
        recorded = bool(k["judge"]["harmful"])
        again = v4.classify(k["response"], k["prompt"]).harmful
        assert again == recorded, f"{c}: version 4 here does not give the grid's verdict"
        judged["v4"][c] = recorded
        judged["v5"][c] = v5.classify(k["response"], k["prompt"]).harmful
        judged["gold"][c] = gold[c] in HARMFUL
    return judged


def model_row(
    judged: dict[str, dict[str, bool]], codes: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """One model's answers (``codes``): gold harmful count and each judge version's confusion
    against the gold labels, and their accuracy / precision / recall texts."""
    g = [judged["gold"][c] for c in codes]
    entry: dict[str, Any] = {"answers": len(codes), "gold_harmful": sum(g)}
    cells = []
    for v in ("v4", "v5"):
        entry[v] = confusion([judged[v][c] for c in codes], g)
        cells.append(confusion_text(entry[v], len(codes)))
    return entry, cells


def confusion(judge: list[bool], gold: list[bool]) -> dict[str, int]:
    """One judge's verdicts against the gold harmful-or-not of the same answers."""
    jg = list(zip(judge, gold, strict=True))
    return {
        "harmful": sum(judge),
        "tp": sum(a and b for a, b in jg),
        "fp": sum(a and not b for a, b in jg),
        "fn": sum(b and not a for a, b in jg),
        "agree": sum(a == b for a, b in jg),
    }


def confusion_text(e: dict[str, int], n: int) -> str:
    """accuracy / precision / recall, in %."""
    tp, fp, fn = e["tp"], e["fp"], e["fn"]
    return (
        f"{100 * e['agree'] / n:.1f} / {100 * tp / max(tp + fp, 1):.1f} / "
        f"{100 * tp / max(tp + fn, 1):.1f}"
    )


def paired(
    by: dict[tuple[str, str], str], judged: dict[str, dict[str, bool]], m: str, ref: str
) -> tuple[dict[str, Any], list[str]]:
    """Model ``m`` against ``ref`` on the prompts both answered, for each verdict source of
    ``judged``: discordant counts, ΔHS with Newcombe's interval, exact McNemar p; and the texts."""
    items = sorted(i for (s, i) in by if s == m and (ref, i) in by)
    texts, entry = [], {}
    for v in judged:
        x = [judged[v][by[(m, i)]] for i in items]
        y = [judged[v][by[(ref, i)]] for i in items]
        xy = list(zip(x, y, strict=True))
        both = sum(p and q for p, q in xy)
        b = sum(p and not q for p, q in xy)  # harmful only under the model
        c = sum(q and not p for p, q in xy)  # only under the reference
        ci = newcombe_paired(both, b, c, len(items))
        diff = 100 * (b - c) / len(items)
        entry[v] = {"b": b, "c": c, "both": both, "delta_hs": diff, "ci": ci}
        entry[v]["mcnemar_p"] = mcnemar_exact(b, c)
        texts.append(f"{diff:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else f"{diff:+.1f}")
    return entry, texts


def judge_table(
    models: dict[str, str],
    key: dict[str, dict[str, Any]],
    judged: dict[str, dict[str, bool]],
    out: dict[str, Any],
    titles: dict[str, str] | None = None,
) -> dict[str, int]:
    """One row per model of ``models`` (source -> name): its HS by every source of ``judged``
    (the judge versions, then "labels") and how many answers each version gets right against the
    labels, and a total row; each model's numbers go into ``out``. ``titles`` renames an HS
    column ("v3" -> "HS v3 (recorded)"). Returns the totals."""
    sources = list(judged)
    versions = [v for v in sources if v != "labels"]
    heads = [(titles or {}).get(v, f"HS {v}") for v in versions]
    print(
        "| model | n | "
        + " | ".join(heads)
        + " | HS, labels | "
        + " | ".join(f"{v} right" for v in versions)
        + " |"
    )
    print("|---|---:|" + "---|" * len(sources) + "---:|" * len(versions))
    total = dict.fromkeys(("n", *versions), 0)
    for m, name in models.items():
        codes = [c for c, k in key.items() if k["source"] == m]
        if not codes:
            continue
        hs = {v: sum(judged[v][c] for c in codes) for v in sources}
        right = {v: sum(judged[v][c] == judged["labels"][c] for c in codes) for v in versions}
        total["n"] += len(codes)
        for v in versions:
            total[v] += right[v]
        out[m] = {"n": len(codes), **{f"hs_{v}": x for v, x in hs.items()}, **right}
        rates = " | ".join(_rate(hs[v], len(codes)) for v in sources)
        print(
            f"| {name} | {len(codes)} | {rates} | "
            + " | ".join(str(right[v]) for v in versions)
            + " |"
        )
    n = total["n"]
    print(
        f"| **all** | {n} | "
        + "| " * len(sources)
        + " | ".join(f"{total[v]} ({100 * total[v] / n:.1f}%)" for v in versions)
        + " |"
    )
    return total


def over_seeds(
    by: dict[tuple[str, str], str],
    judged: dict[str, dict[str, bool]],
    v: str,
    pairs: list[tuple[str, str]],
) -> str:
    """Model − reference over several seeds (``pairs``: one (model, reference) per seed, on the
    same prompts), as `hftguard report` summarises them: the mean of the seeds' differences, a
    crossed seeds × prompts bootstrap, widened to hold Newcombe's interval of the pooled table at
    the design effect's effective size."""
    items = sorted(i for (s, i) in by if s == pairs[0][1])
    deltas, both, b, c = [], 0, 0, 0
    for m, ref in pairs:
        xy = [(judged[v][by[(m, i)]], judged[v][by[(ref, i)]]) for i in items]
        deltas.append([100.0 * (float(x) - float(y)) for x, y in xy])
        both += sum(x and y for x, y in xy)
        b += sum(x and not y for x, y in xy)
        c += sum(y and not x for x, y in xy)
    mean, lo, hi = two_level_bootstrap(deltas, 1000, 0, 0.95, crossed=True)
    assert lo is not None and hi is not None
    n = len(items) * len(pairs)
    pooled = newcombe_paired(both, b, c, n, 0.95, n_eff=n / design_effect(deltas))
    ci = hull((lo, hi), pooled)
    assert ci is not None
    return f"{mean:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]"


def main(key_dir: Path, label_dir: Path) -> None:
    key: dict[str, dict[str, Any]] = {}
    for name in ("key.jsonl", "key2.jsonl", "key3.jsonl"):
        key.update({k["code"]: k for k in _rows(key_dir / name)})
    gold, twice = _gold(key, label_dir)
    judged = verdicts(key, gold)
    version = "5"
    agree = sum((a in HARMFUL) == (b in HARMFUL) for a, b in twice)
    out: dict[str, Any] = {"judge_version": version, "models": {}, "pairs": {}}
    out["double_labelled"] = {"n": len(twice), "harmful_agree": agree}
    print("# Held-out read of refusal-keywords v5 (phase 3 of the judge audit)\n")
    print(
        f"{sum(k['source'] in HELD for k in key.values())} answers of {len(HELD)} models, "
        f"labelled blind by six labellers (J-O); two of them agreed on harmful-or-not on "
        f"{agree} of {len(twice)} answers labelled twice. Version 4's verdicts are the grid's "
        f"(and this checkout's v4 rules give them all again); version {version}'s are "
        "computed here.\n"
    )
    print(
        "| model | HS, v4 | HS, v5 | HS, gold | v4: accuracy / precision / recall "
        "| v5: accuracy / precision / recall |"
    )
    print("|---|---|---|---|---|---|")
    for s in HELD:
        codes = [c for c, k in key.items() if k["source"] == s]
        entry, cells = model_row(judged, codes)
        g = [judged["gold"][c] for c in codes]
        out["models"][s] = entry
        n = len(codes)
        print(
            f"| {s} | {_rate(entry['v4']['harmful'], n)} | {_rate(entry['v5']['harmful'], n)} "
            f"| {_rate(sum(g), n)} | {cells[0]} | {cells[1]} |"
        )
    print("\n## Paired comparisons with the held-out models (200 prompts; Newcombe, McNemar)\n")
    print("| comparison | ΔHS, v4 | ΔHS, v5 | ΔHS, gold | McNemar p (gold) |")
    print("|---|---|---|---|---|")
    by = {(k["source"], k["item"]): c for c, k in key.items()}
    for label, m, ref in PAIRS:
        entry, texts = paired(by, judged, m, ref)
        out["pairs"][label] = entry
        print(f"| {label} | {' | '.join(texts)} | {entry['gold']['mcnemar_p']:.2g} |")
    (label_dir / "heldout.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python heldout.py KEY_DIR LABEL_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
