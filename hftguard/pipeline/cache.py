"""Content-addressed cache of generations and judge verdicts, under ``$HFTGUARD_HOME/cache``.

Why: in a grid the same model is evaluated more than once — a re-run after the eval config changed,
a judge added to a finished grid, a second report with another headline judge — and generation is
the expensive part of an evaluation. Responses are keyed by everything that determines them (the
model's weights, the exact formatted prompts, the decoding settings) and verdicts by everything that
determines those (the judge's name, version, distribution and options, the prompts, the responses).
So adding a judge re-judges without regenerating, and a stale answer can never be served: change
anything that matters and the key changes. Nothing is ever invalidated; delete the directory to
reclaim space, or set ``HFTGUARD_CACHE=off`` to bypass it (nothing read, nothing written).

The calls ``hftguard eval`` makes::

    model_fp = cache.model_key(resolved.recipe)
    responses = cache.cached_generate(model_fp, prompts, decoding, lambda: generate(...))
    verdicts = cache.cached_verdicts(info, judge.config, prompts, responses,
                                     lambda: judge.judge(prompts, responses, ctx))

Imports no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hftguard.records import Verdict
from hftguard.runs import atomic_write_text, sha256_file, sha256_text

KEY_VERSION = "1"  # bump when what a key covers changes
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_FILES = ("config.json", "generation_config.json")
_FILE_HASHES: dict[tuple[str, int, int], str] = {}

#: Hits and misses in this process, by kind ("generations", "verdicts"); tests and logs read these.
STATS: dict[str, dict[str, int]] = {
    "generations": {"hit": 0, "miss": 0},
    "verdicts": {"hit": 0, "miss": 0},
}


def enabled() -> bool:
    return os.environ.get("HFTGUARD_CACHE", "on").strip().lower() not in ("off", "0", "no", "false")


def cache_dir() -> Path:
    """``$HFTGUARD_HOME/cache`` (the same home that holds converted models)."""
    from hftguard.engine.models import hftguard_home  # lazy: models imports torch

    return hftguard_home() / "cache"


def _canonical(obj: Any) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def _file_hash(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_HASHES:
        _FILE_HASHES[memo] = sha256_file(path)
    return _FILE_HASHES[memo]


def _model_files(d: Path) -> list[Path]:
    """The weight and model-config files of directory ``d`` (none if it is not a directory)."""
    if not d.is_dir():
        return []
    return [
        f
        for f in sorted(d.iterdir())
        if f.is_file() and (f.suffix in _WEIGHT_SUFFIXES or f.name in _CONFIG_FILES)
    ]


def weights_key(directory: Path) -> str | None:
    """A content hash of the weight and config files of one model directory (a base model's:
    ``models.base_key``), or None when it has no weight file. Memoised like :func:`model_key`."""
    files = _model_files(directory)
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in files):
        return None
    return sha256_text(["weights-key-v1", *(f"{f.name}:{_file_hash(f)}" for f in files)])


def model_key(recipe: Any) -> str:
    """A content hash of the weights (and model/generation configs) a model recipe describes.

    ``recipe`` is a ``ModelRecipe`` or its ``as_dict()``: a base model plus LoRA adapters, merged in
    order, so the order is part of the key. A base that is not a local directory (a hub id) is keyed
    by its name. File hashes are memoised per (path, size, mtime) within the process.
    """
    data = recipe.as_dict() if hasattr(recipe, "as_dict") else dict(recipe)
    parts = [f"model-key-v{KEY_VERSION}"]
    for i, entry in enumerate([data["base"], *data.get("adapters", [])]):
        parts.append(f"#{i}")
        files = _model_files(Path(entry))
        if not files:
            parts.append(f"name:{entry}")
        parts.extend(f"{f.name}:{_file_hash(f)}" for f in files)
    return sha256_text(parts)


def generation_key(model: str, prompts: Sequence[str], decoding: Mapping[str, Any]) -> str:
    """Key of one ``generate`` call: model key, formatted prompts in order, decoding settings."""
    return sha256_text([f"gen-v{KEY_VERSION}", model, _canonical(dict(decoding)), *prompts])


def judge_identity(info: Any, options: Any = None) -> dict[str, Any]:
    """What identifies a judge's behaviour: a ``ComponentInfo`` (or a name) and its options."""
    if isinstance(info, str):
        identity = {"name": info, "options": _canonical(options)}
    else:
        identity = {
            "name": info.name,
            "version": str(getattr(info, "version", "")),
            "distribution": str(getattr(info, "distribution", "")),
            "distribution_version": str(getattr(info, "distribution_version", "")),
            "options": _canonical(options),
        }
    weights = judge_weights_key(options)
    if weights:
        identity["weights"] = weights
    return identity


def judge_weights_key(options: Any) -> str | None:
    """Content key of a model judge's weights when its ``model`` option is a local directory, so a
    judge re-downloaded or fine-tuned in place is never answered from stale cached verdicts."""
    model = getattr(options, "model", None)
    if isinstance(model, str) and model and Path(model).is_dir():
        return model_key({"base": model})
    return None


def verdict_key(judge: Mapping[str, Any], prompts: Sequence[str], responses: Sequence[str]) -> str:
    """Key of one ``judge.judge`` call: the judge's identity and every (prompt, response) pair."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    pairs = [f"{p}\x1e{r}" for p, r in zip(prompts, responses, strict=True)]
    return sha256_text([f"verdict-v{KEY_VERSION}", _canonical(dict(judge)), *pairs])


def _path(kind: str, key: str) -> Path:
    return cache_dir() / kind / key[:2] / f"{key}.json"


def _read(kind: str, key: str, n: int) -> list[Any] | None:
    path = _path(kind, key)
    if not enabled() or not path.is_file():
        return None
    try:
        items = json.loads(path.read_text(encoding="utf-8"))["items"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged entry is a miss; it is rewritten below
    return items if isinstance(items, list) and len(items) == n else None


def _write(kind: str, key: str, items: list[Any], about: Mapping[str, Any]) -> None:
    if enabled():
        atomic_write_text(
            _path(kind, key), json.dumps({"about": dict(about), "items": items}, default=str) + "\n"
        )


def _note(reporter: Any, kind: str, hit: bool, n: int, label: str) -> None:
    STATS[kind]["hit" if hit else "miss"] += 1
    if hit and reporter is not None and n:
        reporter.info(f"{label or kind}: {n} {kind} from cache")


def cached_generate(
    model: str,
    prompts: Sequence[str],
    decoding: Mapping[str, Any],
    fn: Callable[[], list[str]],
    *,
    reporter: Any = None,
    label: str = "",
) -> list[str]:
    """Return ``fn()`` (the responses to ``prompts``), from the cache when this exact call was made.

    ``model`` is :func:`model_key`; ``decoding`` every setting that can change a response (budget,
    sampling, batch size — padding changes batched numerics —, dtype, device type).
    """
    key = generation_key(model, prompts, decoding)
    hit = _read("generations", key, len(prompts))
    if hit is not None and all(isinstance(x, str) for x in hit):
        _note(reporter, "generations", True, len(hit), label)
        return hit
    out = list(fn())
    if len(out) != len(prompts):
        raise ValueError(f"generate returned {len(out)} responses for {len(prompts)} prompts")
    _note(reporter, "generations", False, len(out), label)
    _write(
        "generations",
        key,
        out,
        {
            "model": model,
            "decoding": dict(decoding),
            "n": len(out),
            "first_prompt": prompts[0] if prompts else "",
        },
    )
    return out


def cached_verdicts(
    info: Any,
    options: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    fn: Callable[[], list[Verdict]],
    *,
    reporter: Any = None,
    label: str = "",
) -> list[Verdict]:
    """Return ``fn()`` (the judge's verdicts), from the cache when this judge saw these pairs.

    ``info`` is the judge's ``ComponentInfo`` (or its name), ``options`` its Config instance.
    """
    identity = judge_identity(info, options)
    key = verdict_key(identity, prompts, responses)
    hit = _read("verdicts", key, len(prompts))
    if hit is not None:
        try:
            verdicts = [
                Verdict(
                    bool(v["harmful"]), v["label"], float(v["score"]), dict(v.get("detail") or {})
                )
                for v in hit
            ]
        except (KeyError, TypeError, ValueError):
            verdicts = None
        if verdicts is not None:
            _note(reporter, "verdicts", True, len(verdicts), label)
            return verdicts
    out = list(fn())
    if len(out) != len(prompts):
        raise ValueError(f"the judge returned {len(out)} verdicts for {len(prompts)} pairs")
    _note(reporter, "verdicts", False, len(out), label)
    _write(
        "verdicts",
        key,
        [
            {"harmful": v.harmful, "label": v.label, "score": v.score, "detail": v.detail}
            for v in out
        ],
        {"judge": identity, "n": len(out)},
    )
    return out


def digest(text: str) -> str:
    """A short stable hash (for names derived from free text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
