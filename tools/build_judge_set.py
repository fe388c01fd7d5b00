"""Collect the (prompt, response) pairs of a grid's evaluations into an unlabelled judge set.

    .venv/bin/python tools/build_judge_set.py GRID_DIR OUT.jsonl [--heldout 0.33]

Every harmful and benign record of every evaluation under GRID_DIR/evals and GRID_DIR/cells/*/eval
becomes one item with ``source`` (which model and stage answered), ``set``, ``prompt``,
``response``, ``category`` and a ``split``: within each (source, set), items are ordered by a
hash of their id and the first third go to ``heldout`` (never used to tune a judge), the rest to
``dev``.
Judge verdicts are NOT copied: the labeller reads the answer, not a judge's opinion. ``label`` is
left empty for the labeller (docs/judges.md, labelling guide).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def _source(eval_dir: Path, grid: Path) -> str:
    rel = eval_dir.relative_to(grid)
    if rel.parts[0] == "cells":  # cells/<cell>/eval
        return f"attacked:{rel.parts[1]}"
    return rel.parts[-1]  # evals/base, evals/aligned-sft-s42


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--heldout", type=float, default=1 / 3)
    args = ap.parse_args()
    evals = sorted(p.parent for p in args.grid.glob("**/generations.jsonl"))
    items: dict[str, list[dict]] = {}
    for ev in evals:
        source = _source(ev, args.grid)
        for i, line in enumerate((ev / "generations.jsonl").read_text().splitlines()):
            r = json.loads(line)
            if r["set"] not in ("harmful", "benign"):
                continue
            item_id = f"{source}/{r['set']}/{r.get('id') or i}"
            items.setdefault(f"{source} {r['set']}", []).append(
                {
                    "id": item_id,
                    "source": source,
                    "set": r["set"],
                    "category": r.get("category"),
                    "prompt": r["prompt"],
                    "response": r["response"],
                    "label": "",
                }
            )
    rows = []
    for _, group in sorted(items.items()):
        group.sort(key=lambda it: hashlib.sha256(it["id"].encode()).hexdigest())
        cut = round(len(group) * args.heldout)
        for k, it in enumerate(group):
            it["split"] = "heldout" if k < cut else "dev"
        rows += group
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} items from {len(evals)} evaluations -> {args.out}")


if __name__ == "__main__":
    main()
