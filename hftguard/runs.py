"""Run directories: manifest (provenance), atomic writes, resume markers, reading back.

Every stage writes ``OUT/manifest.json`` and its artefacts into a run directory. Writing into an
existing run directory is refused unless ``resume`` (continue an unfinished run) or ``overwrite``
(start again) is given. Every JSON file is written atomically (temp file + rename), so a crash never
leaves a half-written result; files and directories get the permissions the umask allows, like any
other file the user creates. The next stage reads a previous run only through this module.

``overwrite`` never loses a run: it replaces only a recognisable hftguard run of the same stage
(:func:`run_stage`), and only by moving it aside (``.NAME.replaced-<time>`` next to it) until the
new run completes; a new run that fails with nothing to resume from puts it back
(:func:`settle_replacement`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import secrets
import shutil
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.errors import RunDirError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
#: The kinds of run directory hftguard writes: a stage's, and ``pipeline``, the root of
#: ``hftguard run`` (a tree of stage runs).
STAGES = frozenset({"align", "finetune", "eval", "judge", "pipeline"})
#: What ``overwrite`` renames a replaced run to, next to it: ``.NAME`` + this + a UTC time.
REPLACED = ".replaced-"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _temp_names(parent: Path, prefix: str, suffix: str = "") -> Iterator[Path]:
    for _ in range(100):
        yield parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
    raise FileExistsError(f"No free temporary name {prefix}*{suffix} in {parent}.")


def _temp_file(parent: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Like ``tempfile.mkstemp``, but created with mode 0o666 less the umask (mkstemp's is always
    0o600), so a file renamed into place is as readable as any other file the user creates."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for name in _temp_names(parent, prefix, suffix):
        try:
            return os.open(name, flags | getattr(os, "O_BINARY", 0), 0o666), name
        except FileExistsError:
            continue
    raise AssertionError("unreachable")  # _temp_names raises when it runs out


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """Like ``tempfile.mkdtemp(dir=parent, prefix=prefix)``, but with mode 0o777 less the umask
    (mkdtemp's is always 0o700): for a directory that is filled, then renamed into place."""
    for name in _temp_names(parent, prefix):
        try:
            name.mkdir(0o777)
            return name
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process umask. Read from /proc on Linux; elsewhere by setting and restoring it (the
    umask is process-wide, so that happens under a lock, and only here)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def default_modes(path: Path) -> None:
    """Give the files under ``path`` (and ``path``) the modes new ones get, 0o666 (directories
    0o777) less the umask: for a directory written by libraries that leave their files 0o600
    (safetensors shards written through a temporary file), before it is renamed into place."""
    mask = umask()
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, f".{path.name}.", ".tmp")
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
    #: Where ``overwrite`` moved the run this one replaces (see :func:`open_run_dir`).
    replaced: Path | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def read_manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Update the manifest. When it becomes ``completed``, the run it replaced (``replaces``,
        set by ``overwrite``) is deleted: only now has the new run taken its place (a crash in
        between leaves the old run aside, never neither)."""
        data = read_manifest(self.path) if self.manifest_path.exists() else {}
        data.update(fields)
        atomic_write_json(self.manifest_path, data)
        if data.get("status") == "completed" and "replaces" in data:
            drop_replaced(self.path, data.pop("replaces"))
            atomic_write_json(self.manifest_path, data)
        return data


def open_run_dir(
    out: str | Path, stage: str, *, resume: bool = False, overwrite: bool = False
) -> RunDir:
    """Create (or reopen with ``resume``) the output directory of a stage.

    ``overwrite`` replaces an existing run only when it is recognisably an hftguard run
    (:func:`run_stage`) of the same ``stage``, and does not delete it: it is moved aside
    (``RunDir.replaced``; the caller records its name as ``replaces`` in the new manifest), deleted
    when the new run completes (:meth:`RunDir.update_manifest`) and put back when the new run fails
    with nothing to resume from (:func:`settle_replacement`).
    """
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
    replaced = None
    if has_content and overwrite:
        check_replaceable(path, stage)
        replaced = _move_aside(path)
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
    return RunDir(path, stage, resumed, replaced)


def run_stage(path: str | Path) -> str | None:
    """The stage of the hftguard run in ``path``, or None when ``path`` is not recognisably one.

    The rule: ``manifest.json`` parses as a JSON object whose ``stage`` is one of :data:`STAGES`,
    whose ``status`` is a string and whose ``config`` is an object; a stage run (all but
    ``pipeline``) also carries ``started_at``. Every stage writes these first
    (:func:`base_manifest`), and ``hftguard run`` writes the first three into its root. Anything
    else (no manifest, another tool's ``manifest.json``, a damaged one) is not hftguard's: it is
    never replaced.
    """
    try:
        data = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    stage = data.get("stage")
    if not isinstance(stage, str) or stage not in STAGES:
        return None
    if not isinstance(data.get("status"), str) or not isinstance(data.get("config"), dict):
        return None
    if stage != "pipeline" and not isinstance(data.get("started_at"), str):
        return None
    return stage


def check_replaceable(path: Path, stage: str) -> None:
    """Refuse to replace ``path`` unless it holds an hftguard run of ``stage`` (see
    :func:`run_stage`) and the process can move it aside (it is not the current directory)."""
    found = run_stage(path)
    if found is None:
        what = (
            f"its {MANIFEST} is not an hftguard manifest"
            if (path / MANIFEST).exists()
            else f"no {MANIFEST}"
        )
        raise RunDirError(
            f"Refusing to overwrite {path}: it is not an hftguard run directory ({what}).",
            hint="--overwrite replaces only a run that hftguard wrote. Choose another --out, or "
            "delete the directory yourself if you mean to.",
        )
    if found != stage:
        raise RunDirError(
            f"Refusing to overwrite {path}: it holds a '{found}' run, not a '{stage}' run.",
            hint=f"Choose another --out for the {stage} run (or delete {path} yourself if you "
            "mean to replace it).",
        )
    target, cwd = path.resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise RunDirError(
            f"Refusing to overwrite {path}: it is (or contains) the current directory.",
            hint="Run the command from another directory (e.g. its parent), or choose another "
            "--out.",
        )


def _move_aside(path: Path) -> Path:
    """Rename the run in ``path`` to ``.NAME.replaced-<UTC time>`` next to it; return that path."""
    target = path.resolve()  # a symlinked --out: move (and later recreate) the directory itself
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = target.parent / f".{target.name}{REPLACED}{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = target.parent / f".{target.name}{REPLACED}{stamp}-{n}"
    try:
        os.rename(target, aside)
    except OSError as exc:
        raise RunDirError(
            f"Cannot move the run in {path} aside to {aside} to replace it: {exc}.",
            hint="Delete it yourself, or choose another --out.",
        ) from exc
    target.mkdir()
    return aside


def _replaced_path(path: Path, name: Any) -> Path | None:
    """The directory a run's ``replaces`` names, if it is a moved-aside hftguard run next to it."""
    target = Path(path).resolve()
    if not (
        isinstance(name, str)
        and name.startswith(f".{target.name}{REPLACED}")
        and "/" not in name
        and os.sep not in name
    ):
        return None
    aside = target.parent / name
    return aside if aside.is_dir() and run_stage(aside) is not None else None


def drop_replaced(path: Path, name: Any) -> None:
    """Delete the run that the run in ``path`` replaced, and what that one was replacing in turn
    (an overwrite of a run that crashed while it was itself replacing one)."""
    for _ in range(100):
        aside = _replaced_path(path, name)
        if aside is None:
            return
        name = read_manifest(aside).get("replaces")
        shutil.rmtree(aside, ignore_errors=True)


def settle_replacement(
    path: str | Path, *, resumable: bool, how: str = "with --resume"
) -> str | None:
    """After the run in ``path`` failed (or was interrupted): if it was replacing a run, put that
    run back, unless the new one is ``resumable`` (it has checkpoints, or finished stages; ``how``
    says how to continue it): then both stay, the old one aside until the new one completes.
    Returns what was done, for the user; None when the run replaced nothing."""
    path = Path(path)
    try:
        name = read_manifest(path).get("replaces")
    except RunDirError:
        return None
    aside = _replaced_path(path, name)
    if aside is None:
        return None
    if resumable:
        return (
            f"{path} keeps this unfinished run (continue it {how}); the run it replaces is kept "
            f"in {aside} until it completes."
        )
    target = path.resolve()
    shutil.rmtree(target)
    os.rename(aside, target)
    return f"The run that was in {path} before --overwrite is back in place, unchanged."


def has_checkpoint(path: str | Path) -> bool:
    """Whether the run in ``path`` has a training checkpoint to resume from."""
    return any(p.is_dir() for p in (Path(path) / "checkpoints").glob("step-*"))


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
    except (OSError, ValueError) as exc:
        raise RunDirError(
            f"Cannot read {p}: {exc}.",
            hint="The run directory is damaged (or not hftguard's): delete it and re-run the "
            "stage, or choose another --out.",
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
