"""Per cell of an attack sweep: the fine-tuning step's size against Booster's alpha, and what the
screening filter dropped (#19).

Reads every ``cells/*/attacked/finetune_log.jsonl`` (``update_norm`` = the L2 norm of one
optimizer step over all trainable LoRA parameters) and the attacked manifest's screening record.
Prints a markdown table: median step norm, that divided by Booster's alpha = 0.1 (the radius its
simulated harmful step is normalised to), the first and last logged loss.

    python docs/results/attack-sweep-small/step_norms.py GRID_OUT
"""

import json
import statistics
import sys
from pathlib import Path

ALPHA = 0.1  # Booster's perturbation radius (docs/components/booster.md)


def main(out: Path) -> None:
    print("| cell | steps | median step norm | ÷ α | first loss | last loss |")
    print("|---|---|---|---|---|---|")
    for log in sorted(out.glob("cells/*/attacked/finetune_log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "update_norm" in r]
        if not steps:
            continue
        norm = statistics.median(r["update_norm"] for r in steps)
        losses = [r["loss"] for r in steps if "loss" in r]
        cell = log.parent.parent.name
        print(
            f"| {cell} | {len(steps)} | {norm:.3f} | {norm / ALPHA:.1f} | "
            f"{losses[0]:.2f} | {losses[-1]:.2f} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
