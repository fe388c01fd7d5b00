"""Evaluations of one method that rest on aligned models trained differently.

A report may be given grids from several machines or runs, each of which trained its own aligned
model for the same method and seed: two GPU leases that each retrained SFT's alignment, a CPU
grid beside a GPU one. Their cells are then rows of one method, and the attack effect (p against
p = 0, same method and seed) would pair a cell of one with a cell of the other. That is only
right when the two aligned models were trained the same way. "The same way" is what the aligned
models' manifests record: the stage config (less what does not change the model: trackers,
checkpoint interval, the seed), the training data's content hashes (``data.*.sha256``; the alignment
data's covers the self-distilled retain answers, which depend on the machine and the judge) and
the dtype training ran in. Two runs trained the same way can still differ in their weights
(a GPU's nondeterminism); that is a second measurement of one protocol, and pairs across them
stand.

:func:`fingerprint` reads that record; :func:`mixed` lists the methods whose evaluations rest on
more than one; :mod:`.paired` leaves out pairs across two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.pipeline.report.collection import EvalRun, shown
from hftguard.runs import read_manifest

#: config keys that do not tell two ways of training apart (``train.*`` keys are written
#: ``train.KEY``): trackers, checkpoints, the device, the preset's name (its values are in the
#: config), and the seed (the aligned models of several seeds are replicates of one protocol)
_IGNORED = frozenset({"report_to", "train.checkpoint_every", "train.device", "preset", "seed"})


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key in ("train", "lora"):
            out.update(_flat(value, f"{name}."))
        elif name not in _IGNORED:
            out[name] = value
    return out


def fingerprint(aligned_dir: Path | None, cache: dict[Path, Any] | None = None) -> Any:
    """How the aligned model in ``aligned_dir`` was trained: ``{"config": {...}, "data":
    {stream: sha256}, "dtype": ...}``, or None when its manifest cannot be read."""
    if aligned_dir is None:
        return None
    if cache is not None and aligned_dir in cache:
        return cache[aligned_dir]
    try:
        m = read_manifest(aligned_dir)
    except Exception:  # a report is made from what can be read
        result = None
    else:
        data = m.get("data") if isinstance(m.get("data"), dict) else {}
        result = {
            "config": _flat(m.get("config") or {}),
            "data": {k: v.get("sha256") for k, v in sorted(data.items()) if isinstance(v, dict)},
            "dtype": m.get("dtype"),
        }
    if cache is not None:
        cache[aligned_dir] = result
    return result


def differences(a: Any, b: Any) -> list[str]:
    """What two fingerprints differ in, in words: ``config (train.max_steps)``, ``data``,
    ``dtype``; [] when they agree (or one is unknown)."""
    if a is None or b is None:
        return []
    out = []
    keys = sorted(set(a["config"]) | set(b["config"]))
    changed = [k for k in keys if _same(a["config"].get(k)) != _same(b["config"].get(k))]
    if changed:
        out.append(f"config ({', '.join(changed)})")
    if a["data"] != b["data"]:
        out.append("data")
    if a["dtype"] != b["dtype"]:
        out.append("dtype")
    return out


def _same(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))  # 4e-5 from a TOML float and from --set agree
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class MixedAlignment:
    """One method (and variant) whose attacked evaluations rest on aligned models trained
    differently: ``groups`` holds the evaluations per way of training, ``differ`` what differs
    between the first two."""

    method: str
    label: str
    groups: list[tuple[Any, list[EvalRun]]]
    differ: list[str]

    def text(self) -> str:
        parts = []
        for _, runs in self.groups:
            dirs = sorted({shown(r.aligned_dir) for r in runs if r.aligned_dir is not None})
            cells = ", ".join(f"p={r.p} s{r.seed}" for r in runs)
            parts.append(f"{' and '.join(dirs)} ({cells})")
        return (
            f"{self.label}: {len(self.groups)} aligned models trained differently "
            f"(they differ in {', '.join(self.differ) or 'what was recorded'}): " + "; ".join(parts)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "label": self.label,
            "differ": self.differ,
            "groups": [
                {
                    "aligned": sorted(
                        {shown(r.aligned_dir) for r in runs if r.aligned_dir is not None}
                    ),
                    "evaluations": [shown(r.path) for r in runs],
                }
                for _, runs in self.groups
            ],
        }


def mixed(runs: list[EvalRun], cache: dict[Path, Any] | None = None) -> list[MixedAlignment]:
    """The methods (per variant) whose attacked evaluations rest on more than one way of
    training their aligned model, in the order the methods first appear."""
    cache = {} if cache is None else cache
    by_method: dict[tuple[str, Any], list[EvalRun]] = {}
    for r in runs:
        if r.kind == "attacked" and r.aligned_dir is not None:
            by_method.setdefault((r.attacked_method, r.attacked_variant_key), []).append(r)
    out = []
    for (method, _), rs in by_method.items():
        groups: list[tuple[Any, list[EvalRun]]] = []
        for r in rs:
            fp = fingerprint(r.aligned_dir, cache)
            if fp is None:
                continue
            for known, members in groups:
                if not differences(known, fp):
                    members.append(r)
                    break
            else:
                groups.append((fp, [r]))
        if len(groups) > 1:
            plain = next((r for r in rs if not r.repair and r.label), None)
            label = plain.label if plain is not None else method
            variant = " ".join(f"{k}={v}" for k, v in rs[0].attacked_variant_key)
            label += f" ({variant})" if variant else ""
            out.append(
                MixedAlignment(method, label, groups, differences(groups[0][0], groups[1][0]))
            )
    return out
