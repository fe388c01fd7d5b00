"""Read the papers' benchmark data from a local copy or from the Hugging Face hub.

The dataset components for the real benchmarks (BeaverTails, the RepNoise refusal file, SST2,
AG News, GSM8K, AlpacaEval) all take a ``source`` option. :func:`load_records` resolves it:

* an existing **file** (``.jsonl``, ``.json``, ``.csv``, ``.parquet``; the text formats may be
  compressed, e.g. BeaverTails' ``round0/30k/train.jsonl.xz``) is read with
  :func:`hftguard.data.files.read_records`;
* an existing **directory** is searched for the split's file under a list of candidate names (the
  hub repository's own layout, the Parquet export's ``data/<split>-*.parquet``, plain
  ``<split>.jsonl``...), or read as a ``datasets`` ``save_to_disk`` directory;
* anything else is a **hub id** handed to ``datasets.load_dataset`` (an optional dependency:
  ``pip install hftguard[hub]``).

Records come back as :class:`SourceRecord`: plain dicts of the published fields that also know
where they came from, so a component can say which file and record lacks a field. Every failure
is a :class:`~hftguard.errors.DataError` whose hint says how to pass a local copy instead; no
network problem surfaces as a traceback. Nothing here imports ``datasets`` (or torch) until a hub
or ``save_to_disk`` source is actually read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.data.files import file_format, read_records
from hftguard.errors import ConfigError, DataError

#: What to install for hub sources (``pyproject.toml``: ``[project.optional-dependencies] hub``).
INSTALL_HINT = "install hftguard[hub] (pip install datasets)"


class SourceRecord(dict):  # type: ignore[type-arg]  # a dict of the record's published fields
    """One record as published (a plain dict) plus where it was read from.

    Attributes:
        where: Location for error messages, e.g. ``/data/bt/train.jsonl.xz: line 7`` or
            ``PKU-Alignment/BeaverTails [30k_train]: record 7``.
        origin: The file or ``hub id [split]`` the record came from (for ``meta["source"]``).
        index: 0-based position of the record in its file or hub split.
    """

    __slots__ = ("index", "origin", "where")

    def __init__(self, data: dict[str, Any], where: str, origin: str, index: int) -> None:
        super().__init__(data)
        self.where = where
        self.origin = origin
        self.index = index


def local_copy_hint(dataset: str) -> str:
    """How to point ``dataset`` at a local copy (the ``dataset_options`` config key)."""
    return (
        f"pass a local copy: --set 'dataset_options.{dataset}.source=\"/path/to/copy\"' "
        "(a file in the published schema, or a directory holding the published files; "
        "see docs/datasets.md)"
    )


def split_file_names(split: str, config: str | None = None) -> list[str]:
    """Candidate names (relative, ``*`` globs allowed) of ``split``'s file in a local directory.

    Covers a plain export (``<split>.jsonl``, ``.json``, ``.csv``, ``.parquet``, compressed
    variants), the hub's Parquet layout (``data/<split>-*.parquet``, ``<config>/<split>-*``) and
    BeaverTails' ``round<k>/<size>/<part>.jsonl.xz`` layout for splits named like ``30k_train``.
    """
    names: list[str] = []
    size, sep, part = split.partition("_")
    if sep and size.endswith("k") and size[:-1].isdigit() and part in ("train", "test"):
        # PKU-Alignment/BeaverTails: round0/30k/train.jsonl.xz (2023), .jsonl.gz since the
        # October 2023 re-upload; split 30k_train on the hub.
        for ext in (".jsonl.xz", ".jsonl.gz", ".jsonl"):
            names.append(f"round0/{size}/{part}{ext}")
    for ext in (
        ".jsonl",
        ".jsonl.xz",
        ".jsonl.gz",
        ".json",
        ".json.xz",
        ".json.gz",
        ".csv",
        ".parquet",
    ):
        names.append(f"{split}{ext}")
    names += [f"{split}-*.parquet", f"data/{split}-*.parquet", f"data/{split}.jsonl"]
    # the hub's layout for JSON Lines / CSV repositories: data/train-00000-of-00001.jsonl
    names += [f"{split}-*{ext}" for ext in _SHARD_EXTS]
    names += [f"data/{split}-*{ext}" for ext in _SHARD_EXTS]
    if config:
        names += [f"{config}/{split}-*.parquet", f"{config}/{split}.jsonl"]
        names += [f"{config}/{split}-*{ext}" for ext in _SHARD_EXTS]
    return names


_SHARD_EXTS = (".jsonl", ".jsonl.gz", ".json", ".csv")


def load_records(
    source: str,
    *,
    dataset: str,
    hub_split: str,
    hub_config: str | None = None,
    local_names: Iterable[str] = (),
    hub_file: str | None = None,
) -> list[SourceRecord]:
    """The records of one split of ``source`` (a local file or directory, or a hub id).

    Args:
        source: Path of a file or directory, or a Hugging Face hub dataset id.
        dataset: The component's name, for messages and the local-copy hint.
        hub_split: The split to read from a hub id, a directory or a ``save_to_disk`` copy (a
            file *is* its split, so it is read whole).
        hub_config: The hub configuration (``"main"`` for GSM8K), also tried as a subdirectory.
        local_names: Extra candidate file names for a directory, tried first (e.g. the name of
            the file the paper's repository ships).
        hub_file: Read this file of the hub repository as JSON instead of the repository's
            loading script (AlpacaEval: ``alpaca_eval_gpt4_baseline.json``).
    """
    text = str(source).strip()
    if not text:
        raise ConfigError(
            f"dataset {dataset!r}: source is empty",
            hint=f"give a hub id or a local path; {local_copy_hint(dataset)}",
        )
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir():
            return list(_directory(path, dataset, hub_split, hub_config, local_names))
        return list(_file(path))
    if _looks_like_path(text):
        raise DataError(
            f"dataset {dataset!r}: {text}: no such file or directory",
            hint="check the path (relative paths are relative to the current directory)",
        )
    return list(_hub(text, dataset, hub_split, hub_config, hub_file))


def clear_cache() -> None:
    """Forget files and hub splits read in this process (tests; files changed on disk are
    re-read anyway)."""
    _read_file.cache_clear()
    _hub.cache_clear()
    _hub_load_cached.cache_clear()


def _looks_like_path(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", ".\\")) or "\\" in text:
        return True
    return file_format(text) is not None or text.count("/") > 1


def _file(path: Path) -> tuple[SourceRecord, ...]:
    stat = path.stat()
    return _read_file(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_file(path_text: str, mtime_ns: int, size: int) -> tuple[SourceRecord, ...]:
    # mtime and size are part of the cache key so an edited file is read again
    path = Path(path_text)
    out = []
    for index, (where, _number, record) in enumerate(read_records(path)):
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: {where}: expected a JSON object, found {type(record).__name__}",
                hint="each record must be an object with the published fields",
            )
        out.append(SourceRecord(record, f"{path}: {where}", str(path), index))
    return tuple(out)


def _directory(
    path: Path,
    dataset: str,
    split: str,
    config: str | None,
    local_names: Iterable[str],
) -> tuple[SourceRecord, ...]:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return _from_disk(path, dataset, split)
    tried: list[str] = []
    for name in [*local_names, *split_file_names(split, config)]:
        if name in tried:
            continue
        tried.append(name)
        if "*" in name:
            matches = sorted(p for p in path.glob(name) if p.is_file())
        else:
            matches = [path / name] if (path / name).is_file() else []
        if matches:
            records: list[SourceRecord] = []
            for match in matches:  # sharded Parquet exports: read the shards in order
                for rec in _file(match):
                    records.append(
                        SourceRecord(dict(rec), rec.where, rec.origin, len(records))
                        if len(matches) > 1
                        else rec
                    )
            return tuple(records)
    raise DataError(
        f"dataset {dataset!r}: directory {path} has no file for split {split!r}",
        hint=f"looked for: {', '.join(tried)}; point source at the file itself instead",
    )


def _from_disk(path: Path, dataset: str, split: str) -> tuple[SourceRecord, ...]:
    try:
        import datasets  # optional dependency (hftguard[hub])
    except ImportError as exc:
        raise DataError(
            f"dataset {dataset!r}: {path} is a Hugging Face save_to_disk directory, and "
            "reading it needs the datasets package",
            hint=f"{INSTALL_HINT}, or export the split to JSONL and pass that file as source",
        ) from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many unrelated types for a damaged directory
        raise DataError(
            f"dataset {dataset!r}: cannot read the save_to_disk directory {path} "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if hasattr(loaded, "keys"):  # a DatasetDict: pick the split
        if split not in loaded:
            raise DataError(
                f"dataset {dataset!r}: {path} has no split {split!r}",
                hint=f"its splits: {', '.join(loaded.keys())}",
            )
        loaded = loaded[split]
    origin = f"{path} [{split}]"
    return _rows(loaded, origin)


@functools.lru_cache(maxsize=8)
def _hub(
    hub_id: str, dataset: str, split: str, config: str | None, hub_file: str | None
) -> tuple[SourceRecord, ...]:
    try:
        import datasets  # optional dependency (hftguard[hub])
    except ImportError as exc:
        raise DataError(
            f"dataset {dataset!r}: {hub_id!r} is not a local file or directory, and loading it "
            "from the Hugging Face hub needs the datasets package",
            hint=f"{INSTALL_HINT} or {local_copy_hint(dataset)}",
        ) from exc
    what = f"{hub_id}/{hub_file}" if hub_file else f"{hub_id} (split {split!r})"
    try:
        if hub_file:
            loaded = datasets.load_dataset(
                "json", data_files=f"hf://datasets/{hub_id}/{hub_file}", split="train"
            )
        elif config:
            loaded = datasets.load_dataset(hub_id, config, split=split)
        else:
            loaded = datasets.load_dataset(hub_id, split=split)
    except Exception as exc:  # network, offline mode, unknown id or split, auth...
        raise DataError(
            f"dataset {dataset!r}: cannot load {what} from the Hugging Face hub "
            f"({type(exc).__name__}: {_first_line(exc)}); no local file or directory "
            f"{hub_id!r} exists either",
            hint=f"check the hub id and the network (this machine may be offline), or "
            f"{local_copy_hint(dataset)}",
        ) from exc
    return _rows(loaded, f"{hub_id} [{split}]")


def _rows(rows: Iterable[Any], origin: str) -> tuple[SourceRecord, ...]:
    return tuple(
        SourceRecord(dict(row), f"{origin}: record {index + 1}", origin, index)
        for index, row in enumerate(rows)
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


# ---------------------------------------------------------------------------------------------
# Field access with errors that name the file, the record and the field


def _missing(record: SourceRecord, name: str, dataset: str, schema: Sequence[str]) -> DataError:
    return DataError(
        f"{record.where}: required field {name!r} is missing",
        hint=f"dataset {dataset!r} reads the published schema ({', '.join(schema)}); "
        "is source the right file?",
    )


def text_field(
    record: SourceRecord,
    name: str,
    dataset: str,
    schema: Sequence[str],
    *,
    required: bool = True,
    allow_empty: bool = False,
) -> str:
    """``record[name]`` as text; a missing/empty (when required) or non-text value is an error."""
    value = record.get(name)
    if value is None:
        if required:
            raise _missing(record, name, dataset, schema)
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(
            f"{record.where}: field {name!r} must be text, found {type(value).__name__}",
            hint=f"dataset {dataset!r} reads the published schema ({', '.join(schema)})",
        )
    text = str(value)
    if required and not allow_empty and not text.strip():
        raise DataError(
            f"{record.where}: required field {name!r} is empty",
            hint="every record needs a non-empty value",
        )
    return text


def bool_field(record: SourceRecord, name: str, dataset: str, schema: Sequence[str]) -> bool:
    """``record[name]`` as a bool (JSON true/false; also "true"/"false" and 0/1 from CSV)."""
    value = record.get(name)
    if value is None:
        raise _missing(record, name, dataset, schema)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(
        f"{record.where}: field {name!r} must be true or false, found {value!r}",
        hint=f"dataset {dataset!r} reads the published schema ({', '.join(schema)})",
    )


def int_field(record: SourceRecord, name: str, dataset: str, schema: Sequence[str]) -> int:
    """``record[name]`` as an integer (a JSON number, or digits from CSV)."""
    value = record.get(name)
    if value is None:
        raise _missing(record, name, dataset, schema)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise DataError(
        f"{record.where}: field {name!r} must be an integer, found {value!r}",
        hint=f"dataset {dataset!r} reads the published schema ({', '.join(schema)})",
    )


# ---------------------------------------------------------------------------------------------
# Any hub dataset by id: ``hf:ID[@REVISION][:CONFIG][:SPLIT]``

#: Prefix of a dataset argument naming a Hugging Face dataset by id.
HF_PREFIX = "hf:"
#: Directory (or ``os.pathsep``-separated directories) of local copies of hub datasets, each in
#: the hub repository's layout under its id: ``$HFTGUARD_HF_DATASETS_DIR/ORG/NAME/data/...``.
MIRROR_ENV = "HFTGUARD_HF_DATASETS_DIR"
HF_SPEC_SYNTAX = (
    "write hf:ID[@REVISION][:CONFIG][:SPLIT], e.g. hf:stanfordnlp/sst2:validation or "
    "hf:openai/gsm8k:main:test"
)


@dataclass(frozen=True)
class HubSpec:
    """A parsed ``hf:`` dataset argument (``text``: as written)."""

    text: str
    id: str
    config: str | None
    split: str | None
    revision: str | None


def is_hf_spec(spec: Any) -> bool:
    """Whether a dataset argument names a hub dataset (``hf:...``)."""
    return isinstance(spec, str) and spec.strip().lower().startswith(HF_PREFIX)


def parse_hf_spec(spec: str) -> HubSpec:
    """Parse ``hf:ID[@REVISION][:CONFIG][:SPLIT]``.

    One part after the id is the split (``hf:stanfordnlp/sst2:validation``), two are the
    configuration and the split (``hf:openai/gsm8k:main:test``); without a split the stage's own
    (``train`` for training data, ``test`` for evaluation prompts) is read. An empty part keeps
    the default (``hf:openai/gsm8k:main:`` = configuration ``main``, the stage's split).
    """
    text = spec.strip()
    body = text[len(HF_PREFIX) :]
    parts = body.split(":")
    if len(parts) > 3:
        raise ConfigError(f"bad hub dataset {text!r}: too many ':' parts", hint=HF_SPEC_SYNTAX)
    hub_id, _, revision = parts[0].strip().partition("@")
    hub_id = hub_id.strip()
    names = hub_id.split("/")
    if not hub_id or len(names) > 2 or not all(names) or any(" " in n for n in names):
        raise ConfigError(
            f"bad hub dataset {text!r}: {hub_id!r} is not a hub id (NAME or ORG/NAME)",
            hint=HF_SPEC_SYNTAX,
        )
    rest = [x.strip() or None for x in parts[1:]]
    config, split = (None, rest[0]) if len(rest) == 1 else [*rest, None, None][:2]
    return HubSpec(text, hub_id, config, split, revision.strip() or None)


def mirror_dir(hub_id: str) -> Path | None:
    """The local copy of ``hub_id`` under :data:`MIRROR_ENV`, or None."""
    import os

    for root in os.environ.get(MIRROR_ENV, "").split(os.pathsep):
        if root.strip():
            candidate = Path(root.strip()).expanduser() / hub_id
            if candidate.is_dir():
                return candidate
    return None


def records_sha256(records: Iterable[dict[str, Any]]) -> str:
    """sha256 of records' content (canonical JSON lines): the same for a hub split and a local
    copy of it in any file format."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for record in records:
        line = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def load_hub_spec(spec: HubSpec, default_split: str) -> tuple[list[SourceRecord], dict[str, Any]]:
    """The records of an ``hf:`` dataset and its provenance for the manifest.

    Read from the local copy under :data:`MIRROR_ENV` when there is one (no network, no
    ``datasets`` package for JSONL/JSON/CSV files), else from the hub with
    ``datasets.load_dataset(ID, CONFIG, split=SPLIT, revision=REVISION)``. Offline, or without
    ``datasets``, it fails at once with a :class:`DataError` whose hint says what to do.
    Provenance: ``{"hf_id", "config", "split", "revision", "sha256", "records"}`` plus
    ``"mirror"`` (the local copy's directory) when it was read locally.
    """
    split = spec.split or default_split
    local = mirror_dir(spec.id)
    provenance: dict[str, Any] = {"hf_id": spec.id, "config": spec.config, "split": split}
    if local is not None:
        first = (
            [f"{spec.config}/{split}-*{ext}" for ext in (".parquet", *_SHARD_EXTS)]
            if spec.config
            else []
        )
        records = list(_directory(local, spec.text, split, spec.config, first))
        provenance["revision"] = "local mirror"
        if spec.revision:
            provenance["requested_revision"] = spec.revision
        provenance["mirror"] = str(local)
    else:
        records, revision = _hub_split(spec.id, spec.config, split, spec.revision, spec.text)
        provenance["revision"] = revision
    provenance["sha256"] = records_sha256(records)
    provenance["records"] = len(records)
    return records, provenance


def _mirror_hint(hub_id: str) -> str:
    return (
        f"put a copy in the hub's layout under ${MIRROR_ENV} (e.g. "
        f"$HFTGUARD_HF_DATASETS_DIR/{hub_id}/data/train-00000-of-00001.jsonl, as `hf download "
        f"{hub_id} --repo-type dataset --local-dir DIR/{hub_id}` writes it), or pass the "
        "split's file itself as the dataset argument (see docs/datasets.md)"
    )


def _hub_split(
    hub_id: str, config: str | None, split: str, revision: str | None, what: str
) -> tuple[list[SourceRecord], str]:
    import importlib.util

    from hftguard import network

    if importlib.util.find_spec("datasets") is None:
        raise DataError(
            f"{what}: no local copy of {hub_id!r} (${MIRROR_ENV} is "
            f"{'unset' if not _mirror_roots() else 'set but has no ' + hub_id + '/'}), and "
            "loading it from the Hugging Face hub needs the datasets package",
            hint=f"{INSTALL_HINT}, or {_mirror_hint(hub_id)}",
        )
    if network.offline() or not network.hub_reachable():
        raise DataError(
            f"{what}: the Hugging Face hub is not reachable (offline) and there is no local "
            f"copy of {hub_id!r}",
            hint=_mirror_hint(hub_id),
        )
    return _hub_load(hub_id, config, split, revision, what)


def _mirror_roots() -> list[str]:
    import os

    return [r for r in os.environ.get(MIRROR_ENV, "").split(os.pathsep) if r.strip()]


@functools.lru_cache(maxsize=8)
def _hub_load_cached(
    hub_id: str, config: str | None, split: str, revision: str | None, what: str
) -> tuple[tuple[SourceRecord, ...], str]:
    import datasets  # optional dependency (hftguard[hub]); checked by the caller

    try:
        loaded = datasets.load_dataset(hub_id, config, split=split, revision=revision)
    except Exception as exc:  # network, unknown id, config or split, auth...
        raise DataError(
            f"{what}: cannot load {hub_id} (config {config!r}, split {split!r}) from the "
            f"Hugging Face hub ({type(exc).__name__}: {_first_line(exc)})",
            hint=f"check the id, configuration and split on the hub, or {_mirror_hint(hub_id)}",
        ) from exc
    resolved = revision or "main"
    try:  # the commit the hub served, when huggingface_hub can tell
        from huggingface_hub import HfApi

        resolved = HfApi().dataset_info(hub_id, revision=revision).sha or resolved
    except Exception:  # the requested revision is recorded instead
        pass
    return _rows(loaded, f"{hub_id} [{split}]"), resolved


def _hub_load(
    hub_id: str, config: str | None, split: str, revision: str | None, what: str
) -> tuple[list[SourceRecord], str]:
    rows, resolved = _hub_load_cached(hub_id, config, split, revision, what)
    return list(rows), resolved
