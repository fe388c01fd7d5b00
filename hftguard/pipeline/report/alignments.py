"""Evaluations of one method that rest on aligned models trained differently.

A report may be given grids from several machines or runs, each of which trained its own aligned
model for the same method and seed: two GPU leases that each retrained SFT's alignment, a CPU
grid beside a GPU one. Their cells are then rows of one method, and the attack effect (p against
p = 0, same method and seed) would pair a cell of one with a cell of the other. That is only
right when the two aligned models were trained the same way.

"The same way" is read from the aligned models' manifests, comparing only what both record
(a manifest from an older hftguard lacks some fields: those are not compared):

- the training settings: the defense, its options, the base model's name, the sample count,
  whether a retain set was used and its share, the template, ``train.*`` (less checkpoints,
  device and the requested precision; ``epochs`` only where no ``max_steps`` fixes the length)
  and ``lora.*``. Numbers compare by value (2 and 2.0 agree, as in the report's variants).
  Dataset names and paths are not compared: the content hashes below stand for them;
- the dtype training ran in (``dtype``: a CPU's fp32 against a GPU's bf16);
- the defense component's version;
- the base model's weights (``input_model.base_key``, a content hash of its weight and config
  files recorded since 2026-11-27): one base name that held other weights on another machine
  (a re-exported local model, another hub revision, another conversion of a GGUF file). Where
  both record it, it stands for the base's name: one model named by its alias in one grid and
  by its path in the other is the same base;
- between aligned models of the same seed only: the training data's content hashes
  (``data.*.sha256``). The alignment data's covers the self-distilled retain answers, which
  depend on the machine and the judge; which examples are drawn depends on the seed, so
  models of two seeds always differ in it and are not compared on it.

Two models trained the same way can still differ in their weights (a GPU's nondeterminism):
that is a second measurement of one protocol, and pairs across them stand. A manifest written
before base weights were hashed compares on the base model's name only.

:func:`fingerprint` reads that record; :func:`differences` compares two; :func:`mixed` lists the
methods whose evaluations rest on aligned models that differ; :mod:`.paired` leaves out the
attack effects across two. Across methods, only the base weights (:func:`other_bases`) and the
dtypes the stages ran in (:func:`run_apart`) are compared: no comparison is made between
evaluations on different bases or whose alignment, attack or generation ran in different dtypes,
and an attack of the base model itself (no aligned model) is compared by the base it read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.pipeline.report.collection import EvalRun, comparable, shown
from hftguard.runs import read_manifest

#: top-level config keys compared (``train.*`` and ``lora.*`` are compared whole, less _NOT_TRAIN)
_CONFIG_KEYS = ("defense", "defense_options", "samples", "retain_ratio", "template")
_NOT_TRAIN = frozenset({"checkpoint_every", "device", "precision"})


def _settings(config: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: comparable(config[k]) for k in _CONFIG_KEYS if k in config}
    base = (manifest.get("input_model") or {}).get("base_spec")
    if isinstance(base, str):
        out["model"] = base
    if "retain" in config:
        out["retain"] = bool(config["retain"])  # whether one was used: its content is hashed
    for section in ("train", "lora"):
        values = config.get(section)
        if isinstance(values, dict):
            out.update(
                {f"{section}.{k}": comparable(v) for k, v in values.items() if k not in _NOT_TRAIN}
            )
    steps = out.get("train.max_steps")
    if isinstance(steps, float) and steps > 0:
        out.pop("train.epochs", None)  # the step count fixes the length
    return out


def fingerprint(aligned_dir: Path | None, cache: dict[Path, Any] | None = None) -> Any:
    """How the aligned model in ``aligned_dir`` was trained (``settings``, ``seed``, ``data``:
    stream -> sha256, ``dtype``, ``version``, ``base_key``), or None when its manifest cannot
    be read."""
    if aligned_dir is None:
        return None
    if cache is not None and aligned_dir in cache:
        return cache[aligned_dir]
    result: dict[str, Any] | None = None
    try:
        m = read_manifest(aligned_dir)
        config = m.get("config")
        if isinstance(config, dict):
            data = m.get("data") if isinstance(m.get("data"), dict) else {}
            component = (m.get("components") or {}).get("defense") or {}
            result = {
                "settings": _settings(config, m),
                "seed": config.get("seed"),
                "data": {
                    k: v["sha256"]
                    for k, v in data.items()
                    if isinstance(v, dict) and isinstance(v.get("sha256"), str)
                },
                "dtype": m.get("dtype"),
                "version": component.get("version") if isinstance(component, dict) else None,
                "base_key": (m.get("input_model") or {}).get("base_key"),
            }
    except Exception:  # a report is made from what can be read
        result = None
    if cache is not None:
        cache[aligned_dir] = result
    return result


def differences(a: Any, b: Any) -> list[str]:
    """What two fingerprints differ in, in words (``config (train.max_steps)``, ``data``,
    ``dtype``, ``defense version``, ``base weights``); [] when they agree on everything both
    record, or one is unknown."""
    if a is None or b is None:
        return []
    out = []
    both = sorted(set(a["settings"]) & set(b["settings"]))
    keys = a.get("base_key"), b.get("base_key")
    if all(keys):  # the weights' hash stands for the base's name (an alias and its path agree)
        both = [k for k in both if k != "model"]
    changed = [k for k in both if a["settings"][k] != b["settings"][k]]
    if changed:
        out.append(f"config ({', '.join(changed)})")
    if a["seed"] == b["seed"]:
        common = set(a["data"]) & set(b["data"])
        if any(a["data"][k] != b["data"][k] for k in common):
            out.append("data")
    if a["dtype"] and b["dtype"] and a["dtype"] != b["dtype"]:
        out.append("dtype")
    if a["version"] and b["version"] and a["version"] != b["version"]:
        out.append("defense version")
    if all(keys) and keys[0] != keys[1]:
        out.append("base weights")
    return out


def base_of(r: EvalRun, cache: dict[Any, Any] | None = None) -> str | None:
    """The content key of the base weights ``r``'s model rests on (``base_key``): its aligned
    model's base; for an attack of the base model itself (no alignment), the base the attack
    read; for an evaluation of a base model, that base. None where it was not recorded."""
    if r.aligned_dir is not None:
        fp = fingerprint(r.aligned_dir, cache)
        return fp.get("base_key") if fp else None
    if r.attacked_dir is None:
        model = r.manifest.get("evaluated_model") or {}
        return None if model.get("adapters") else model.get("base_key")
    key = ("attack input", r.attacked_dir)
    if cache is not None and key in cache:
        return cache[key]  # type: ignore[no-any-return]
    try:
        model = read_manifest(r.attacked_dir).get("input_model") or {}
        found = None if model.get("adapters") else model.get("base_key")
    except Exception:  # a report is made from what can be read
        found = None
    if cache is not None:
        cache[key] = found
    return found


def other_bases(r: EvalRun, ref: EvalRun, cache: dict[Any, Any] | None = None) -> str | None:
    """Why ``r`` and ``ref`` cannot be compared because they rest on different base weights
    (:func:`base_of`), in words; None when they rest on the same, or either is unknown. A
    comparison across them would measure the base models' difference with the defense's."""
    a, b = base_of(r, cache), base_of(ref, cache)
    if not a or not b or a == b:
        return None
    return (
        f"built on different base weights ({shown(r.path)} on content key {a[:12]}, "
        f"{shown(ref.path)} on {b[:12]})"
    )


def dtypes_of(r: EvalRun, cache: dict[Any, Any] | None = None) -> dict[str, str]:
    """The dtypes the stages behind ``r`` ran in, where recorded: ``alignment`` and ``attack``
    (training) and ``generation`` (the evaluation's)."""
    out: dict[str, str] = {}
    fp = fingerprint(r.aligned_dir, cache)
    if fp and fp.get("dtype"):
        out["alignment"] = str(fp["dtype"]).removeprefix("torch.")
    if r.attack_dtype:  # read with the attack's manifest when the report collected it
        out["attack"] = str(r.attack_dtype).removeprefix("torch.")
    precision = r.manifest.get("precision")
    if isinstance(precision, dict) and precision.get("dtype"):
        out["generation"] = str(precision["dtype"]).removeprefix("torch.")
    return out


def run_apart(r: EvalRun, ref: EvalRun, cache: dict[Any, Any] | None = None) -> str | None:
    """Why ``r`` and ``ref`` cannot be compared because a stage behind them ran in another dtype
    than the same stage behind the other (a bf16 alignment against an fp32 one: a GPU grid
    beside a CPU one, or a CPU with native bf16, where ``precision = "auto"`` picks bf16), in
    words; None when they agree wherever both recorded it."""
    a, b = dtypes_of(r, cache), dtypes_of(ref, cache)
    differ = [k for k in a if k in b and a[k] != b[k]]
    if not differ:
        return None
    what = ", ".join(f"{k} {a[k]} vs {b[k]}" for k in differ)
    return f"run in different dtypes ({what}; {shown(r.path)}, {shown(ref.path)})"


def between(r: EvalRun, ref: EvalRun, cache: dict[Path, Any]) -> list[str]:
    """What the aligned models behind ``r`` and ``ref`` differ in; [] when they are one model,
    or agree (:func:`differences`)."""
    if r.aligned_dir is None or ref.aligned_dir is None or r.aligned_dir == ref.aligned_dir:
        return []
    return differences(fingerprint(r.aligned_dir, cache), fingerprint(ref.aligned_dir, cache))


@dataclass
class MixedAlignment:
    """One method (and variant) whose attacked evaluations rest on aligned models trained
    differently: ``pairs`` holds each two aligned models that differ, and in what."""

    method: str
    label: str
    pairs: list[tuple[Path, Path, list[str]]]
    #: the pairs are attacks of the base model itself (no aligned model), not aligned models
    of_base: bool = False

    def text(self) -> str:
        return f"{self.label}: " + "; ".join(
            f"{shown(a)} and {shown(b)} differ in {', '.join(differ)}"
            for a, b, differ in self.pairs
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "label": self.label,
            "pairs": [
                {"attacked" if self.of_base else "aligned": [shown(a), shown(b)], "differ": differ}
                for a, b, differ in self.pairs
            ],
        }


def mixed(runs: list[EvalRun], cache: dict[Path, Any] | None = None) -> list[MixedAlignment]:
    """The methods (per variant) whose attacked evaluations rest on aligned models that differ
    (:func:`differences`), in the order the methods first appear; and the alignment defenses whose
    aligned models, evaluated before fine-tuning (the Before table), differ (as ``aligned
    (LABEL)``: the table shows one evaluation per seed, the others as repeats)."""
    cache = {} if cache is None else cache
    by_method: dict[tuple[str, Any], list[EvalRun]] = {}
    for r in runs:
        if r.kind == "attacked" and (r.aligned_dir or r.attacked_dir) is not None:
            by_method.setdefault((r.attacked_method, r.attacked_variant_key), []).append(r)
        elif r.kind == "aligned" and r.aligned_dir is not None:
            by_method.setdefault((f"aligned:{r.align}", r.variant_key), []).append(r)
    out = []
    for (method, variant), rs in by_method.items():
        pairs = []
        dirs = list(dict.fromkeys(r.aligned_dir for r in rs if r.aligned_dir is not None))
        for i, a in enumerate(dirs):
            for b in dirs[i + 1 :]:
                differ = differences(fingerprint(a, cache), fingerprint(b, cache))
                if differ:
                    pairs.append((a, b, differ))
        # attacks of the base model itself (no aligned model): their bases are compared
        of_base = list({r.attacked_dir: r for r in rs if r.aligned_dir is None}.values())
        for i, ra in enumerate(of_base):
            for rb in of_base[i + 1 :]:
                ka, kb = base_of(ra, cache), base_of(rb, cache)
                if ka and kb and ka != kb and ra.attacked_dir and rb.attacked_dir:
                    pairs.append((ra.attacked_dir, rb.attacked_dir, ["base weights"]))
        if pairs:
            plain = next((r for r in rs if not r.repair and r.label), None)
            label = plain.label if plain is not None else method
            if rs[0].kind == "aligned":
                label, method = f"aligned ({label})", rs[0].align or method
            shown_variant = " ".join(f"{k}={v}" for k, v in variant)
            label += f" ({shown_variant})" if shown_variant else ""
            of_base = all(r.aligned_dir is None for r in rs)
            out.append(MixedAlignment(method, label, pairs, of_base))
    return out
