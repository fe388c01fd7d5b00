"""Run directories: manifest (provenance), atomic writes, resume markers, reading back.

Every stage writes ``OUT/manifest.json`` and its artefacts into a run directory. Writing into an
existing run directory is refused unless ``resume`` (continue an unfinished run) or ``overwrite``
(start again) is given. Every JSON file is written atomically (temp file + rename), so a crash never
leaves a half-written result. The next stage reads a previous run only through this module.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.errors import RunDirError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("hftguard", "torch", "transformers", "peft", "accelerate", "pluggy", "typer"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class RunDir:
    """A run directory being written by one stage."""

    path: Path
    stage: str
    resumed: bool = False

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def read_manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        data = read_manifest(self.path) if self.manifest_path.exists() else {}
        data.update(fields)
        atomic_write_json(self.manifest_path, data)
        return data


def open_run_dir(
    out: str | Path, stage: str, *, resume: bool = False, overwrite: bool = False
) -> RunDir:
    """Create (or reopen with ``resume``) the output directory of a stage."""
    path = Path(out)
    if resume and overwrite:
        raise RunDirError(
            "--resume and --overwrite cannot be used together.",
            hint="--resume continues an unfinished run; --overwrite starts afresh.",
        )
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"Output path {path} exists and is not a directory.", hint="Choose another --out."
        )
    has_content = path.is_dir() and any(path.iterdir())
    if has_content and overwrite:
        if not (path / MANIFEST).exists():
            raise RunDirError(
                f"Refusing to overwrite {path}: it is not an hftguard run directory "
                f"(no {MANIFEST}).",
                hint="Delete it yourself or choose another --out.",
            )
        shutil.rmtree(path)
        has_content = False
    if has_content and not resume:
        status = _status(path)
        raise RunDirError(
            f"Output directory {path} already exists"
            + (f" (status: {status})." if status else "."),
            hint="Pass --resume to continue it, --overwrite to replace it, or choose another "
            "--out.",
        )
    resumed = False
    if has_content and resume:
        manifest = read_manifest(path)
        if manifest.get("stage") != stage:
            raise RunDirError(
                f"{path} holds a '{manifest.get('stage')}' run, not a '{stage}' run.",
                hint="Resume it with the command that created it, or choose another --out.",
            )
        resumed = True
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path, stage, resumed)


def _status(path: Path) -> str | None:
    try:
        status = read_manifest(path).get("status")
        return str(status) if status else None
    except RunDirError:
        return None


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    if not p.exists():
        raise RunDirError(
            f"{Path(path)} is not an hftguard run directory (no {MANIFEST}).",
            hint="Pass the --out directory of a finished hftguard stage.",
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(
            f"Cannot read {p}: {exc}.",
            hint="The run directory is damaged; re-run the stage with --overwrite.",
        ) from exc
    if not isinstance(data, dict):
        raise RunDirError(f"{p} is not a JSON object.")
    return data


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def base_manifest(
    stage: str, command: list[str] | None, config: dict[str, Any], seed: int
) -> dict[str, Any]:
    """The provenance fields every stage records at start."""
    return {
        "schema_version": SCHEMA_VERSION,
        "stage": stage,
        "status": "running",
        "command": command or sys.argv,
        "config": config,
        "seed": seed,
        "libraries": library_versions(),
        "host": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "node": platform.node(),
        },
        "started_at": now(),
    }
