"""HS of every evaluation under grid directories, as recorded (the judge the grid ran) and as
this checkout's `refusal-keywords` (version 5) judges the same saved answers. Nothing is written.

    python rejudge.py GRID_OUT [GRID_OUT ...] > rejudged.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from heldout import V5

from hftguard.builtins.judges.refusal_keywords import RefusalKeywords

JUDGE = "refusal-keywords"


def main(roots: list[Path]) -> None:
    judge = RefusalKeywords(V5)
    print(f"| evaluation | n | HS, recorded (v of the grid) | HS, {JUDGE} v5 |")
    print("|---|---:|---:|---:|")
    for root in roots:
        for gens in sorted(root.glob("**/generations.jsonl")):
            rows = [json.loads(x) for x in gens.read_text().splitlines() if x.strip()]
            harmful = [r for r in rows if r.get("set") == "harmful" and JUDGE in r["verdicts"]]
            if not harmful:
                continue
            manifest = json.loads((gens.parent / "manifest.json").read_text())
            recorded = next(
                (
                    j.get("version")
                    for j in (manifest.get("components") or {}).get("judges") or []
                    if j.get("name") == JUDGE
                ),
                "?",
            )
            then = sum(bool(r["verdicts"][JUDGE]["harmful"]) for r in harmful)
            now = sum(judge.classify(r["response"], r["prompt"]).harmful for r in harmful)
            n = len(harmful)
            where = gens.parent.relative_to(root)
            print(
                f"| {root.name}/{where} | {n} | {100 * then / n:.1f} (v{recorded}) | "
                f"{100 * now / n:.1f} |"
            )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python rejudge.py GRID_OUT [GRID_OUT ...]")
    main([Path(p) for p in sys.argv[1:]])
