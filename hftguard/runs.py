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

A run directory is locked while a stage writes it (:class:`RunLock`: ``DIR/.lock``, taken by
:func:`open_run_dir` before it looks at the directory, released when the stage ends), so a second
process on the same ``--out`` (a plain start, ``--resume`` or ``--overwrite``) gets
:class:`~hftguard.errors.RunDirInUse` instead of writing into the run. ``--overwrite`` also takes
the locks of the runs below the one it moves (a grid's stages).
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
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftguard.errors import ModelError, RunDirError, RunDirInUse

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
#: The kinds of run directory hftguard writes: a stage's, and ``pipeline``, the root of
#: ``hftguard run`` (a tree of stage runs).
STAGES = frozenset({"align", "finetune", "repair", "eval", "judge", "screen", "pipeline"})
#: What ``overwrite`` renames a replaced run to, next to it: ``.NAME`` + this + a UTC time.
REPLACED = ".replaced-"
#: The lock file of a run directory (:class:`RunLock`), and the record of who holds it.
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.json"
#: What a lock leaves in a run directory: never content (an empty directory stays empty).
LOCK_NAMES = frozenset({LOCK_FILE, HOLDER_FILE})
#: Where ``hftguard rejudge`` keeps the files it replaced, inside the evaluation's directory.
REJUDGE_BACKUP = "rejudged"


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def stamp() -> str:
    """A stage's ``started_at`` / ``ended_at``: UTC to the microsecond, so that a stage another
    process started just after its input ended is told from one built before it (the grid's
    staleness check; whole seconds tie)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


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


class RunLock:
    """The lock a process holds on a run directory while it writes it: ``DIR/.lock``.

    The file is locked with ``filelock.FileLock`` (``flock``), without waiting: a second process
    gets :class:`~hftguard.errors.RunDirInUse`, naming the holder from ``DIR/.lock.json`` (pid,
    host, since), which the holder writes once it has the lock. The operating system releases the
    lock when its process dies, so a lock file left by a killed run is not held: the next run
    takes it. :meth:`release` removes both files (only while they are still this lock's), so a
    finished run directory holds neither. Use it as a context manager, or see
    :func:`lock_run_dir`.
    """

    #: Attempts before a held lock counts as held: a release removes the lock file, and a process
    #: that opened the file just before may find the lock it then takes already unlinked.
    ATTEMPTS = 3

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock: Any = None
        self._token = ""

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> RunLock:
        """Take the lock (creating the directory); raise RunDirInUse when another process holds
        it. Filesystems without ``flock`` fall back to filelock's own behaviour."""
        from filelock import FileLock, Timeout

        if self._lock is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        for attempt in range(self.ATTEMPTS):
            lock = FileLock(str(path), timeout=0)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if attempt + 1 < self.ATTEMPTS:
                    time.sleep(0.02)
                continue
            fd = _lock_fd(lock)
            if fd is not None and not _same_file(fd, path):  # unlinked by its last holder
                lock.release()
                continue
            self._lock, self._token = lock, secrets.token_hex(8)
            try:
                holder = {"pid": os.getpid(), "host": platform.node(), "since": now()}
                atomic_write_json(self.directory / HOLDER_FILE, {**holder, "token": self._token})
            except OSError:
                pass  # the lock holds without the record; a contender's message says less
            return self
        raise RunDirInUse(self.directory, read_holder(self.directory))

    def release(self) -> None:
        """Let go of the lock and remove its files if they are still this lock's (the directory
        may have been moved, deleted or replaced meanwhile). Idempotent."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            holder = self.directory / HOLDER_FILE
            if read_holder(self.directory).get("token") == self._token:
                holder.unlink(missing_ok=True)
            fd = _lock_fd(lock)
            if fd is not None and _same_file(fd, self.directory / LOCK_FILE):
                (self.directory / LOCK_FILE).unlink()  # unlinked while held: see ATTEMPTS
        except OSError:
            pass
        finally:
            lock.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run_dir(path: str | Path) -> RunLock:
    """Lock the run directory ``path`` (created if need be) for this process; raise RunDirInUse
    when another holds it. ``with lock_run_dir(path): ...`` releases it at the end."""
    return RunLock(path).acquire()


def running_holder(path: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of run directory ``path`` now (:func:`read_holder`'s record, ``{}``
    when it has not written one yet), or None when no process does. Reads only: it opens an
    existing ``.lock`` read-only and tries ``flock`` on it without waiting, and creates nothing
    (for ``hftguard run --dry-run``). None where ``flock`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody holds it (a holder keeps the file while it holds it)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_holder(path: str | Path) -> dict[str, Any]:
    """What the holder of the lock of run directory ``path`` recorded, or {}."""
    try:
        data = json.loads((Path(path) / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _lock_fd(lock: Any) -> int | None:
    """The descriptor a held filelock lock holds (filelock 3 and 4 keep it there), or None."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    return fd if isinstance(fd, int) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.fstat(fd)
        return st.st_nlink > 0 and os.path.samestat(st, os.stat(path))
    except OSError:
        return False


def _has_content(path: Path) -> bool:
    """Whether directory ``path`` holds anything but a lock's files."""
    return path.is_dir() and any(p.name not in LOCK_NAMES for p in path.iterdir())


def _lock_below(path: Path) -> list[RunLock]:
    """Lock every run directory below ``path`` that has a lock file (the stages of a grid root);
    raise RunDirInUse, holding none, when another process holds one."""
    held: list[RunLock] = []
    try:
        for lock_file in sorted(path.rglob(LOCK_FILE)):
            if lock_file.parent != path and lock_file.is_file():
                held.append(RunLock(lock_file.parent).acquire())
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held


def busy_below(path: str | Path) -> RunDirInUse | None:
    """The RunDirInUse of a run directory below ``path`` another process holds, or None."""
    try:
        for lock in _lock_below(Path(path)):
            lock.release()
    except RunDirInUse as exc:
        return exc
    return None


@dataclass
class RunDir:
    """A run directory being written by one stage."""

    path: Path
    stage: str
    resumed: bool = False
    #: Where ``overwrite`` moved the run this one replaces (see :func:`open_run_dir`).
    replaced: Path | None = None
    #: This process's lock on the directory, from :func:`open_run_dir` until :meth:`release`.
    lock: RunLock | None = None

    def release(self) -> None:
        """Release the directory's lock (at the end of the stage; idempotent)."""
        if self.lock is not None:
            self.lock.release()

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def read_manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)

    def update_manifest(self, *, drop: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
        """Update the manifest (``drop``: keys to remove). When it becomes ``completed``, the run
        it replaced (``replaces``, set by ``overwrite``) is deleted: only now has the new run
        taken its place (a crash in between leaves the old run aside, never neither)."""
        data = read_manifest(self.path) if self.manifest_path.exists() else {}
        for key in drop:
            data.pop(key, None)
        data.update(fields)
        if "ended_at" in fields and isinstance(data.get("host"), dict):
            # a stage's first manifest is written before torch is loaded: its threads and card
            # are known by its end
            data["host"] = {**data["host"], **compute_host()}
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

    The directory is locked (:class:`RunLock`) before anything in it is looked at, and stays
    locked (``RunDir.lock``) until :meth:`RunDir.release`: another process holding it raises
    :class:`~hftguard.errors.RunDirInUse`. The caller releases it when the stage ends.
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
    try:
        lock: RunLock | None = RunLock(path).acquire()
    except RunDirInUse:
        raise
    except OSError as exc:
        if not path.is_dir():
            raise unwritable(path, exc) from exc
        lock = None  # a directory we cannot write: refused (or failing) below, as before
    try:
        has_content = _has_content(path)
        if lock is None and not has_content:
            make_out_dir(path)  # a new run would write here: refuse an unwritable one now
        replaced = None
        if has_content and overwrite:
            check_replaceable(path, stage)
            replaced, lock = _move_aside(path, lock)
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
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunDir(path, stage, resumed, replaced, lock)


def make_out_dir(path: Path) -> None:
    """Create the output directory ``path`` (and its parents) and check that files can be created
    in it: a :class:`RunDirError` saying why not (:func:`unwritable`) before anything is written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = _temp_file(path, ".write-test.", ".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unwritable(path, exc) from exc


def unwritable(path: Path, exc: OSError) -> RunDirError:
    """The error for an output directory that cannot be created or written (``exc`` says why)."""
    import errno

    path = Path(path)
    ancestor = next((p for p in (path, *path.parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        why = f"{ancestor} is a file, not a directory"
    elif isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        why = f"{ancestor if ancestor is not None else path} is not writable: {exc.strerror}"
    else:
        why = exc.strerror or str(exc)
        if exc.filename and Path(exc.filename).parent != path:  # not the write probe
            why = f"cannot create {exc.filename}: {why}"
    return RunDirError(
        f"Cannot create or write the output directory {path} ({why}).",
        hint="Choose an --out in a directory you can write to (or fix its permissions); the "
        "parent directories are created as needed, but not through a file.",
    )


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


def _move_aside(path: Path, lock: RunLock | None) -> tuple[Path, RunLock]:
    """Rename the run in ``path`` to ``.NAME.replaced-<UTC time>`` next to it and put a new, empty,
    locked directory in its place; return the old run's new path and the new directory's lock.

    ``lock`` (the old run's, moved with it) is released. The runs below ``path`` (a grid's stages)
    are locked while it moves: RunDirInUse when another process is writing one of them. The new
    directory is created and locked first, under a temporary name, so that no other process can
    take ``path`` between the two renames.
    """
    target = path.resolve()  # a symlinked --out: move (and later recreate) the directory itself
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = target.parent / f".{target.name}{REPLACED}{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = target.parent / f".{target.name}{REPLACED}{stamp}-{n}"
    below = _lock_below(target)
    fresh = make_temp_dir(target.parent, f".{target.name}.new-")
    new_lock = RunLock(fresh).acquire()  # no other process knows this directory
    try:
        try:
            os.rename(target, aside)
        except OSError as exc:
            raise RunDirError(
                f"Cannot move the run in {path} aside to {aside} to replace it: {exc}.",
                hint="Delete it yourself, or choose another --out.",
            ) from exc
        try:
            os.rename(fresh, target)
        except OSError as exc:  # something took the name meanwhile: put the run back
            os.rename(aside, target)
            raise RunDirError(
                f"Cannot replace the run in {path}: {exc}.", hint="Run the command again."
            ) from exc
    except BaseException:
        new_lock.release()
        shutil.rmtree(fresh, ignore_errors=True)
        for held in below:
            held.release()
        raise
    for held in [*below, *([lock] if lock is not None else [])]:
        held.directory = aside / held.directory.resolve().relative_to(target)
        held.release()
    new_lock.directory = path
    return aside, new_lock


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
    if not resumable and (busy := busy_below(path)) is not None:
        resumable, how = True, f"once {busy.path} is no longer in use ({busy.who})"
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


def set_aside(root: Path, manifest: Path) -> bool:
    """Whether ``manifest`` (a file below ``root``) belongs to a run kept aside rather than to a
    run of its own: one under a hidden directory (a run ``--overwrite`` moved aside) or one in
    the backup folder of an evaluation that ``hftguard rejudge`` re-judged."""
    parts = manifest.relative_to(root).parts[:-1]
    if any(part.startswith(".") for part in parts):
        return True
    return any(
        part == REJUDGE_BACKUP and (root.joinpath(*parts[:i]) / MANIFEST).is_file()
        for i, part in enumerate(parts)
    )


def rooted_model(path: str | Path, manifest: dict[str, Any]) -> Path | None:
    """Where the input model of the run in ``path`` is when its config names it relative to a
    grid's root (the manifest's ``model_root``, relative to ``path``: ``hftguard run``); None for
    a run whose ``config.model`` is spelled as given (a stage command, or an older grid)."""
    root, model = manifest.get("model_root"), (manifest.get("config") or {}).get("model")
    if not isinstance(root, str) or not isinstance(model, str) or not model:
        return None
    return Path(os.path.normpath(Path(path) / root / model))


def model_recipe(path: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The model recipe (``manifest["model"]``) of the run in ``path``, with its adapters found
    where they are now.

    A recipe records absolute adapter paths, the run's own adapter last (``<run>/adapter``). When
    the run is no longer where it was written (a grid moved or copied), each adapter recorded under
    the part of the old path that changed is looked for under the new one: a copied grid loads its
    own adapters, not the original's. An adapter found in neither place is a ModelError that
    says how to fix it.
    """
    model = dict(manifest["model"])
    adapters = [str(a) for a in model.get("adapters") or []]
    if not adapters or Path(adapters[-1]).name != "adapter":
        return model
    then, here = Path(adapters[-1]).parent, Path(path).resolve()
    if then == here:
        return model
    a, b = then.parts, here.parts
    k = 0  # the trailing path parts that stayed the same
    while k < min(len(a), len(b)) - 1 and a[-1 - k] == b[-1 - k]:
        k += 1
    old, new = Path(*a[: len(a) - k]), Path(*b[: len(b) - k])
    found = []
    for adapter in adapters:
        was = Path(adapter)
        moved = new / was.relative_to(old) if was.is_relative_to(old) else None
        if moved is not None and moved.is_dir():
            found.append(str(moved))
        elif was.is_dir():
            found.append(adapter)
        else:
            raise ModelError(
                f"The model of {path} needs the adapter {adapter}, which is missing"
                + (f" (and not at {moved} either)" if moved is not None and moved != was else "")
                + f": {path} was moved or copied from {then} without the run that adapter "
                "belongs to.",
                hint="Move or copy the whole grid (its --out directory), which keeps its stages "
                "together, or put that run back where it was; otherwise re-run the stages from "
                "that one on.",
            )
    model["adapters"] = found
    return model


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
            **compute_host(),
        },
        "started_at": stamp(),
    }


def compute_host() -> dict[str, Any]:
    """``torch_threads`` and, on a GPU, ``accelerator``: what a step time needs beside it.
    ``torch_threads`` is None while torch is not loaded (nothing here imports it)."""
    card = accelerator()
    return {"torch_threads": torch_threads(), **({"accelerator": card} if card else {})}


def accelerator() -> str | None:
    """The GPU's name (``NVIDIA H100 80GB HBM3``) where torch is loaded and sees one: a step time
    needs the card beside it. None on a CPU-only machine or when torch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(torch.cuda.current_device()))


def torch_threads() -> int | None:
    """The intra-op threads torch computes with (OMP_NUM_THREADS, ``hftguard bench --threads``),
    which a step time needs beside it; None when torch is not loaded (nothing here imports it)."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())
