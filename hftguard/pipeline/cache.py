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
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hftguard.records import Verdict
from hftguard.runs import atomic_write_text, sha256_file, sha256_text

KEY_VERSION = "1"  # bump when what a key covers changes
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CONFIG_FILES = ("config.json", "generation_config.json")
_FILE_HASHES: dict[tuple[str, str], str] = {}

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


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read once per content: memoised in the process, and, for files of
    1 MiB or more, on disk under ``cache/file-sha256.json`` (unless ``HFTGUARD_CACHE=off``),
    keyed by the real path and its size, mtime, inode and ctime (a file rewritten in place, or
    copied over with its mtime kept, changes its ctime). A hub cache's LFS blob is named by its
    sha256 already: that name is taken without reading the file."""
    real = path.resolve()
    st = real.stat()
    stat = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
    memo = (str(real), stat)
    if memo in _FILE_HASHES:
        return _FILE_HASHES[memo]
    if real.parent.name == "blobs" and _SHA256.fullmatch(real.name):
        digest = real.name
    else:
        stored = _stored_hashes() if st.st_size >= _STORE_FROM and enabled() else None
        entry = stored.get(str(real)) if stored is not None else None
        if isinstance(entry, dict) and entry.get("stat") == stat:
            digest = str(entry["sha256"])
        else:
            digest = sha256_file(real)
            if stored is not None:
                stored[str(real)] = {"stat": stat, "sha256": digest}
                try:
                    atomic_write_text(cache_dir() / _HASH_FILE, json.dumps(stored, indent=0))
                except OSError:  # a read-only home: the hash is still right, only not kept
                    pass
    _FILE_HASHES[memo] = digest
    return digest


_HASH_FILE = "file-sha256.json"
_STORE_FROM = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STORED: dict[str, Any] = {}


def _stored_hashes() -> dict[str, Any]:
    """The on-disk file hashes (read once per process and cache directory)."""
    where = str(cache_dir())
    if where not in _STORED:
        try:
            data = json.loads((cache_dir() / _HASH_FILE).read_text())
        except (OSError, ValueError):
            data = {}
        _STORED[where] = data if isinstance(data, dict) else {}
    stored: dict[str, Any] = _STORED[where]
    return stored


def hub_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of hub model ``repo_id``'s current revision in the local hub cache
    (what an offline ``from_pretrained`` loads), or None. Downloads nothing."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id, no cache: nothing there
        return None
    return Path(found).parent if isinstance(found, str) else None


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
    """A content hash of the weight files of one model directory (a base model's:
    ``models.base_key``), or None when it has none. The config files are left out: transformers
    writes the same model's config differently from version to version (``transformers_version``,
    ``rope_scaling`` against ``rope_parameters``), so one model converted or saved on two machines
    would count as two."""
    files = [f for f in _model_files(directory) if f.suffix in _WEIGHT_SUFFIXES]
    if not files:
        return None
    return sha256_text(["weights-key-v1", *(f"{f.name}:{file_sha256(f)}" for f in files)])


def model_key(recipe: Any) -> str:
    """A content hash of the weights (and model/generation configs) a model recipe describes.

    ``recipe`` is a ``ModelRecipe`` or its ``as_dict()``: a base model plus LoRA adapters, merged in
    order, so the order is part of the key. A hub id is keyed by the files of its current snapshot
    in the local hub cache (by its name where it has none there: before 2026-11-27 always by its
    name, so a newer revision was served the older one's generations). File hashes are memoised
    (:func:`file_sha256`).
    """
    data = recipe.as_dict() if hasattr(recipe, "as_dict") else dict(recipe)
    parts = [f"model-key-v{KEY_VERSION}"]
    for i, entry in enumerate([data["base"], *data.get("adapters", [])]):
        parts.append(f"#{i}")
        d = Path(entry)
        if not d.is_dir() and (snapshot := hub_snapshot(entry)) is not None:
            d = snapshot
        files = _model_files(d)
        if not files:
            parts.append(f"name:{entry}")
        parts.extend(f"{f.name}:{file_sha256(f)}" for f in files)
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
