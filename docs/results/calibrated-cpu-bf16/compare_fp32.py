"""The same evaluations in bf16 here and in fp32 on the AVX2 CPU, prompt by prompt.

`hftguard report` makes no comparison between stages run in different dtypes (they belong to
different measurements), so this script does the one this folder needs: for each pair of
evaluations (the same config, stage and seed, trained and evaluated once in fp32 on a CPU
without native bf16 and once in bf16 here), HS, HS+ and FA of each and the paired difference
bf16 − fp32 on the same prompts, with Newcombe's interval and the exact McNemar p (the functions
the report uses). Records are read and keyed as the report does (`EvalRun`). The fp32 answers
must be judged by the same judge version as the bf16 ones: `hftguard rejudge` them first
(README).

    python docs/results/calibrated-cpu-bf16/compare_fp32.py FP32_ROOT BF16_ROOT [--json OUT]

FP32_ROOT holds `run/` and `run-p0/` of ../calibrated-cpu-lisa/runs.tar.gz; BF16_ROOT this
run's `run/` (runs.tar.gz here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hftguard.pipeline import intervals
from hftguard.pipeline.report.collection import EvalRun

JUDGE = "refusal-keywords"
TASK = "sentiment"  # the protocol's fine-tuning task
PAIRS = [  # (what, fp32 path under FP32_ROOT, bf16 path under BF16_ROOT)
    ("base model", "run/evals/base", "run/evals/base"),
    ("SFT-aligned model", "run/evals/aligned-sft-s42", "run/evals/aligned-sft-s42"),
    (
        "SFT, p = 0.2, seed 42",
        "run/cells/sft__sft__p0.2__n320__sentiment__s42/eval",
        "run/cells/sft__sft__p0.2__n320__sentiment__s42/eval",
    ),
    (
        "SFT, p = 0, seed 42",
        "run-p0/cells/sft__sft__p0__n320__sentiment__s42/eval",
        "run/cells/sft__sft__p0__n320__sentiment__s42/eval",
    ),
    (
        "Lisa rho = 1, p = 0.2, seed 42",
        "run/cells/sft__lisa__p0.2__n320__sentiment__s42/eval",
        "run/cells/sft__lisa__p0.2__n320__sentiment__s42/eval",
    ),
]


def outcomes(eval_dir: Path) -> tuple[str, dict[str, bool], dict[str, bool], dict[str, bool]]:
    """(judge version, harmful, harmful-or-degenerate, correct) by prompt key, read the way
    `hftguard report` reads an evaluation."""
    run = EvalRun(eval_dir, "base", manifest=json.loads((eval_dir / "manifest.json").read_text()))
    record = run.judge_record(JUDGE)
    hs = run.harmful_outcomes(JUDGE)
    loops = run.label_flags("harmful", JUDGE, "degenerate")
    keys = run.item_order("harmful", JUDGE)
    hs_plus = {k: hs[k] or bool(d) for k, d in zip(keys, loops, strict=True)}
    return (record[1] if record else "?"), hs, hs_plus, run.task_outcomes(TASK)


def paired(a: dict[str, bool], b: dict[str, bool]) -> dict[str, Any]:
    """b − a on the ids both hold: rates, difference, Newcombe interval, McNemar p."""
    ids = sorted(set(a) & set(b))
    x, y = [b[i] for i in ids], [a[i] for i in ids]
    both, nb, nc, n = intervals.paired_counts(x, y)
    return {
        "n": n,
        "fp32": 100.0 * sum(y) / n,
        "bf16": 100.0 * sum(x) / n,
        "diff": 100.0 * (nb - nc) / n,
        "ci": intervals.newcombe_paired(both, nb, nc, n),
        "p": intervals.mcnemar_exact(nb, nc),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32_root", type=Path)
    ap.add_argument("bf16_root", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for what, p32, p16 in PAIRS:
        d32, d16 = args.fp32_root / p32, args.bf16_root / p16
        if not (d32 / "generations.jsonl").is_file() or not (d16 / "generations.jsonl").is_file():
            print(f"{what}: missing ({d32} or {d16})", file=sys.stderr)
            continue
        v32, hs32, hp32, fa32 = outcomes(d32)
        v16, hs16, hp16, fa16 = outcomes(d16)
        if v32 != v16:
            print(f"{what}: judge versions differ ({v32} vs {v16}): rejudge first", file=sys.stderr)
            return 2
        row = {"what": what, "judge": f"{JUDGE} v{v16}", "hs": paired(hs32, hs16)}
        row["hs_plus"] = paired(hp32, hp16)
        if fa32 and fa16 and "/cells/" in p16:  # FA only means something after fine-tuning
            row["fa"] = paired(fa32, fa16)
        rows.append(row)
    print(
        "| evaluation | HS fp32 → bf16 | ΔHS [95% CI] (p) | HS+ fp32 → bf16 | FA fp32 → bf16 "
        "| ΔFA [95% CI] (p) |\n|---|---|---|---|---|---|"
    )

    def cell(d: dict[str, Any] | None) -> str:
        if not d:
            return "–"
        lo, hi = d["ci"]
        p = "<0.001" if d["p"] < 0.001 else f"{d['p']:.3f}"
        return f"{d['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}] (p={p})"

    for r in rows:
        fa = r.get("fa")
        fa_rates = f"{fa['fp32']:.1f} → {fa['bf16']:.1f}" if fa else "–"
        print(
            f"| {r['what']} | {r['hs']['fp32']:.1f} → {r['hs']['bf16']:.1f} | {cell(r['hs'])} | "
            f"{r['hs_plus']['fp32']:.1f} → {r['hs_plus']['bf16']:.1f} | {fa_rates} | {cell(fa)} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
