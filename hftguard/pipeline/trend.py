"""Did a training stage's loss go down? A check on the step log after training.

A defense whose strength does not suit the model can train the model away from its own data:
Vaccine with a perturbation radius far above the size of the attention outputs it perturbs raised
its clean alignment loss from 2.4 to 5.8 over 360 steps on SmolLM2-135M
(the calibrated grid; docs/components/vaccine.md, "Choosing rho"), and nothing said so until the
evaluation. This compares the median loss of the first and the last steps (medians: a step's loss
on a batch of 8 has spikes of 2-3x) and warns when it rose.

The loss compared is the model's own loss where the defense logs one beside its objective
(``loss_clean``: Vaccine, T-Vaccine), else the logged ``loss``. A defense that alternates between
two objectives (Lisa's ``state``) is checked per objective.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Fewer logged steps than this (per objective): no verdict.
MIN_STEPS = 50
#: The windows compared: the first and the last tenth of the steps, at least this many each.
MIN_WINDOW = 10
#: A rise counts when the last window's median exceeds the first's by more than this fraction.
TOLERANCE = 0.05


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL step log; a missing file or an unreadable line gives no rows."""
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def step_times(path: Path) -> list[float]:
    """The per-step wall times (``step_time``) of a JSONL step log; [] without one."""
    return [
        float(r["step_time"])
        for r in read_log(path)
        if isinstance(r.get("step_time"), (int, float))
    ]


def loss_trend(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per objective: ``key``, ``state`` (None without one), ``steps``, ``window``,
    ``first`` and ``last`` (window medians) and ``rose``. Objectives with fewer than
    :data:`MIN_STEPS` finite values are left out."""
    rows = list(rows)
    key = "loss_clean" if any("loss_clean" in r for r in rows) else "loss"
    groups: dict[Any, list[float]] = {}
    for r in sorted(rows, key=lambda r: r.get("step", 0)):
        value = r.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            groups.setdefault(r.get("state"), []).append(float(value))
    out = []
    for state, values in groups.items():
        if len(values) < MIN_STEPS:
            continue
        window = max(MIN_WINDOW, len(values) // 10)
        first = statistics.median(values[:window])
        last = statistics.median(values[-window:])
        out.append(
            {
                "key": key,
                "state": state,
                "steps": len(values),
                "window": window,
                "first": round(first, 6),
                "last": round(last, 6),
                "rose": last > first + TOLERANCE * abs(first),
            }
        )
    return out


def warning(stage: str, trend: list[dict[str, Any]], hint: str) -> str | None:
    """The warning for the objectives whose loss rose, or None."""
    rose = [t for t in trend if t["rose"]]
    if not rose:
        return None
    parts = []
    for t in rose:
        which = t["key"] if t["state"] is None else f"{t['key']} (state {t['state']:g})"
        parts.append(
            f"{which} rose from {t['first']:.4g} (median of the first {t['window']} steps) to "
            f"{t['last']:.4g} (the last {t['window']})"
        )
    return f"{stage}: the training loss did not go down: {'; '.join(parts)}. {hint}"


def hint_for(defense: Any) -> str:
    """What to look at: the perturbation radius of the Vaccine family (the measured case), else
    the learning rate."""
    name = getattr(defense, "name", "")
    option = {"vaccine": "rho", "t-vaccine": "rho"}.get(name)
    if option and hasattr(getattr(defense, "config", None), option):
        value = getattr(defense.config, option)
        return (
            f"The defense's strength may be too large for this model: try a smaller "
            f"{name}.{option} (now {value:g}; docs/components/{name}.md); or a smaller "
            "learning rate."
        )
    return "Try a smaller learning rate (train.lr) or look at the step log."
