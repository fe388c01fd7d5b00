"""Antibody's and Booster's mechanism numbers in the bf16 grid (README.md here), from the logs.

    python mechanism.py GRID_OUT

For the Antibody alignment (aligned/antibody-s42/align_log.jsonl): the medians of λ (the EMA the
update uses), of its raw value and of the simulated harmful-loss change over the first and last 36
steps. For each Antibody attack (cells/antibody__antibody__*/attacked/finetune_log.jsonl): the
harmful samples' share of the weight mass divided by their share of the batch
(``harmful_weight_mass_ratio``), mean over the first and the last 40 steps. For the Booster
alignment (aligned/booster-s42/align_log.jsonl, twenty-first session): the same medians of the
simulated harmful-loss change it minimises and of the harmful loss. For the Vaccine alignment
(aligned/vaccine-s42/align_log.jsonl, twenty-second session): the same medians of its clean loss,
of the loss under the perturbation (``loss``), of the perturbation's norm, of the attention
outputs' norm and of their ratio. The calibrated-gpu README quotes the same numbers for the H100's
run.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from hftguard.pipeline.trend import read_log

EDGE_ALIGN = 36  # steps at each end of the 360-step alignment
EDGE_ATTACK = 40  # steps at each end of the 400-step attack


def _ends(rows: list[dict], key: str, edge: int, how=statistics.median) -> tuple[float, float]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return how(values[:edge]), how(values[-edge:])


def _alignment(grid: Path, name: str, keys: tuple[str, ...], width: int, fmt: str) -> None:
    """Medians of ``keys`` over the first and last EDGE_ALIGN steps of aligned/<name>-s42."""
    log = grid / "aligned" / f"{name.lower()}-s42" / "align_log.jsonl"
    if not log.is_file():
        return
    rows = read_log(log)
    print(f"{name} alignment ({len(rows)} steps; medians of the first / last {EDGE_ALIGN}):")
    for key in keys:
        first, last = _ends(rows, key, EDGE_ALIGN)
        print(f"  {key:{width}} {first:{fmt}} -> {last:{fmt}}")


def main(grid: Path) -> None:
    _alignment(
        grid,
        "Antibody",
        ("lambda", "lambda_raw", "loss_change", "loss", "harmful_loss"),
        14,
        "8.3f",
    )
    booster = ("loss_change", "harmful_loss", "harmful_loss_perturbed", "loss")
    _alignment(grid, "Booster", booster, 22, "8.3f")
    vaccine = ("loss_clean", "loss", "eps_norm", "activation_norm", "eps_ratio")
    _alignment(grid, "Vaccine", vaccine, 22, "10.4g")
    sft = grid / "aligned" / "sft-s42" / "align_log.jsonl"
    if sft.is_file():
        first, last = _ends(read_log(sft), "loss", EDGE_ALIGN)
        print(f"SFT alignment loss (same medians): {first:.3f} -> {last:.3f}")
    print(
        f"Antibody attacks: harmful_weight_mass_ratio, mean of the first / last {EDGE_ATTACK} steps"
    )
    for cell in sorted(grid.glob("cells/antibody__antibody__*")):
        log = cell / "attacked" / "finetune_log.jsonl"
        if not log.is_file():
            continue
        rows = read_log(log)
        if not any(r.get("harmful_weight_mass_ratio") is not None for r in rows):
            continue  # p = 0: no harmful samples to weigh
        first, last = _ends(rows, "harmful_weight_mass_ratio", EDGE_ATTACK, statistics.fmean)
        print(f"  {cell.name:45} {len(rows):4} steps  {first:6.3f} -> {last:6.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python mechanism.py GRID_OUT")
    main(Path(sys.argv[1]))
