"""What the training loop resumes from: seeded batch streams, checkpoints and its logs.

A stream's position is its step count, so saving the positions with the trainable parameters,
the optimizer, the schedule, the defense's state and the RNG is enough to resume a run exactly.
Checkpoints are written durably and carry the sha256 of their files; the last two are kept, and a
resume uses the newest that passes its check. Logs read back on resume tolerate a torn last line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hftguard.data.inputs import IGNORE_INDEX, Batch, Encoded, collate
from hftguard.engine.steps import Params
from hftguard.errors import HftguardError, RunDirError
from hftguard.runs import RunDir, atomic_write_json, atomic_write_text, sha256_file

# ---------------------------------------------------------------------------------------------
# Data streams


#: Length grouping sorts the examples by length within windows ("megabatches") of this many
#: batches of the epoch's seeded permutation: long enough to group similar lengths, short enough
#: that the order stays random at the scale of the epoch.
MEGABATCH_BATCHES = 50


class EpochSampler:
    """Deterministic, resumable batches: a seeded permutation per epoch, position = step.

    With ``group_by_length`` each epoch's permutation is cut into megabatches of
    ``batch_size * MEGABATCH_BATCHES`` indices, each megabatch is sorted by token length (longest
    first, stable), cut into batches, and the order of the batches is shuffled with a second
    generator seeded from (seed, epoch); the last, possibly short, batch stays last. An epoch still
    holds every example once, and a batch is still a pure function of (seed, epoch, position), so
    resuming at a stream position is exact.
    """

    def __init__(
        self,
        items: Sequence[Encoded],
        batch_size: int,
        seed: int,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        group_by_length: bool = False,
    ) -> None:
        if not items:
            raise HftguardError(
                "A training stream has no examples.", hint="Check the data options."
            )
        self.items = items
        self.batch_size = batch_size
        self.seed = seed
        self.shard = shard
        self.group_by_length = group_by_length
        n = len(items)
        self.per_epoch = (
            n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)
        )
        self._perm_epoch = -1
        self._perm: list[int] = []
        self._lengths: list[int] | None = None

    def batch_indices(self, index: int) -> list[int]:
        rank, world = self.shard
        idx = self.global_indices(index)
        return idx[rank::world] if world > 1 else idx

    def global_indices(self, index: int) -> list[int]:
        """The indices of the whole global batch ``index`` (every process's rows)."""
        epoch, pos = divmod(index, self.per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = torch.randperm(len(self.items), generator=g).tolist()
            if self.group_by_length:
                self._perm = self._grouped(self._perm, epoch)
            self._perm_epoch = epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]

    def _grouped(self, perm: list[int], epoch: int) -> list[int]:
        """``perm`` reordered into length-grouped batches (concatenated, in the epoch's order)."""
        bs = self.batch_size
        mega = bs * MEGABATCH_BATCHES
        if self._lengths is None:
            self._lengths = [len(e.input_ids) for e in self.items]
        lengths = self._lengths
        batches: list[list[int]] = []
        for start in range(0, len(perm), mega):
            window = sorted(perm[start : start + mega], key=lambda i: -lengths[i])
            batches += [window[j : j + bs] for j in range(0, len(window), bs)]
        # Only the epoch's last batch can be short (every megabatch but the last is a whole number
        # of batches); it stays last, so every other batch is full.
        n_full = len(batches) - (len(batches[-1]) < bs)
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch + 7_777_777)
        order = torch.randperm(n_full, generator=g).tolist() + list(range(n_full, len(batches)))
        return [i for b in order for i in batches[b]]

    def batch(self, index: int, pad_id: int) -> Batch:
        batch = collate([self.items[i] for i in self.batch_indices(index)], pad_id)
        world = self.shard[1]
        if world > 1:  # normalise every shard's loss by the global batch's tokens (lm_loss)
            everyone = [self.items[i] for i in self.global_indices(index)]
            batch.meta["loss_tokens"] = max(1, _loss_tokens(everyone)) / world
            if batch.refusal is not None:
                refusals = [e.refusal for e in everyone if e.refusal is not None]
                batch.refusal.meta["loss_tokens"] = max(1, _loss_tokens(refusals)) / world
        return batch


def _loss_tokens(items: Sequence[Encoded]) -> int:
    """The response tokens ``token_nll`` counts (labels shifted by one position)."""
    return sum(sum(lab != IGNORE_INDEX for lab in e.labels[1:]) for e in items)


class Stream:
    """An infinite iterator over an extra data stream; its position is checkpointed."""

    def __init__(self, sampler: EpochSampler, pad_id: int) -> None:
        self.sampler = sampler
        self.pad_id = pad_id
        self.position = 0

    def next(self) -> Batch:
        b = self.sampler.batch(self.position, self.pad_id)
        self.position += 1
        return b


# ---------------------------------------------------------------------------------------------
# Durable files


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (created, renamed, removed files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories (Windows): nothing to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file below directory ``path``, then the directories themselves."""
    dirs = [path]
    for item in sorted(path.rglob("*")):
        if item.is_dir():
            dirs.append(item)
        elif item.is_file():
            with item.open("rb") as fh:
                os.fsync(fh.fileno())
    for d in reversed(dirs):
        fsync_dir(d)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A temporary directory next to ``path`` to write into; when the block ends without an
    error it is made durable (files and directories fsynced) and renamed to ``path``, replacing
    what was there. On an error it is removed and ``path`` is untouched."""
    from hftguard import runs

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = runs.make_temp_dir(path.parent, f".{path.name}.")  # mode 0o777 less the umask
    try:
        yield tmp
        runs.default_modes(tmp)  # e.g. safetensors shards are written 0o600
        fsync_tree(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Logs read back on resume


def trim_log(
    path: Path,
    keep: Callable[[dict[str, Any]], bool],
    warn: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Rewrite the JSON-lines log ``path`` with the records ``keep`` accepts; return them.

    A crash while a line was being appended leaves a torn last line: it is dropped (with a
    ``warn``ing). Any other line that is not a JSON object is real damage: a RunDirError.
    """
    raw = path.read_bytes().split(b"\n")
    n_lines = len(raw) - (raw[-1] == b"")
    numbered = [(i, line) for i, line in enumerate(raw, 1) if line.strip()]
    kept_lines: list[str] = []
    records: list[dict[str, Any]] = []
    for k, (number, line) in enumerate(numbered):
        try:
            text = line.decode("utf-8")
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if k == len(numbered) - 1:
                if warn is not None:
                    warn(f"Dropped the torn last line of {path} (a crash while writing it).")
                break
            raise RunDirError(
                f"{path} is damaged: line {number} of {n_lines} is not a JSON record ({exc}).",
                hint="Only a torn last line (a crash while writing it) is repaired on --resume. "
                "Remove the damaged line by hand, or start the run again with --overwrite.",
            ) from exc
        if keep(record):
            kept_lines.append(text)
            records.append(record)
    atomic_write_text(path, "".join(line + "\n" for line in kept_lines))
    return records


# ---------------------------------------------------------------------------------------------
# Checkpoints

#: The files of a checkpoint besides ``state.json``, which is written last and holds their sha256.
CHECKPOINT_FILES = ("trainable.safetensors", "state.pt")


def checkpoint_dirs(run: RunDir) -> list[Path]:
    """The checkpoint directories of ``run``, oldest first."""
    if not run.checkpoints.is_dir():
        return []
    return sorted(p for p in run.checkpoints.glob("step-*") if p.is_dir())


def save_checkpoint(
    run: RunDir,
    step: int,
    params: Params,
    optimizer: Any,
    scheduler: Any,
    defense: Any,
    streams: dict[str, Stream],
) -> None:
    """Write the checkpoint of ``step`` durably; keep it and the newest older one.

    The files go to a temporary directory, are fsynced, and ``state.json`` (the step, the stream
    positions and the sha256 of every other file) is written last; the directory is then renamed
    into place. Two are kept so that a checkpoint damaged after it was written (a disk error, a
    crash the filesystem did not survive) still leaves one to resume from.
    """
    from safetensors.torch import save_file

    final = run.checkpoints / f"step-{step:07d}"
    tmp = run.checkpoints / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {n: p.detach().contiguous().cpu() for n, p in params}, str(tmp / "trainable.safetensors")
    )
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "defense": defense.state_dict(),
            "rng": torch.get_rng_state(),
        },
        tmp / "state.pt",
    )
    for name in CHECKPOINT_FILES:
        with (tmp / name).open("rb") as fh:
            os.fsync(fh.fileno())
    atomic_write_json(
        tmp / "state.json",
        {
            "step": step,
            "streams": {k: s.position for k, s in streams.items()},
            "files": {name: sha256_file(tmp / name) for name in CHECKPOINT_FILES},
        },
    )
    fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_dir(run.checkpoints)
    older = [p for p in checkpoint_dirs(run) if p.name < final.name]
    keep = {final, *older[-1:]}
    for old in [*checkpoint_dirs(run), *run.checkpoints.glob(".tmp-step-*")]:
        if old not in keep:  # older ones, and any from after ``step`` (an abandoned attempt)
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class _Checkpoint:
    """A checkpoint read into memory and checked, not yet applied."""

    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def _read_checkpoint(ckpt: Path, params: Params) -> _Checkpoint:
    """Read ``ckpt`` and check it (sha256 of each file where state.json records them); raise
    ValueError/OSError (or whatever the readers raise) when it is damaged."""
    from safetensors.torch import load_file

    meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("step"), int)
        and isinstance(meta.get("streams"), dict)
    ):
        raise ValueError("state.json holds no step and stream positions")
    files = meta.get("files")  # absent in checkpoints of older versions: read unchecked
    if isinstance(files, dict):
        for name, digest in files.items():
            if sha256_file(ckpt / name) != digest:
                raise ValueError(f"{name} does not match the sha256 in state.json")
    tensors = load_file(str(ckpt / "trainable.safetensors"))
    missing = [n for n, _ in params if n not in tensors]
    if missing:
        raise ValueError(f"trainable.safetensors lacks {missing[0]}")
    state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    lacking = {"optimizer", "scheduler", "defense", "rng"} - set(state)
    if lacking:
        raise ValueError(f"state.pt lacks {', '.join(sorted(lacking))}")
    return _Checkpoint(meta, tensors, state)


def _apply_checkpoint(
    loaded: _Checkpoint,
    params: Params,
    optimizer: Any,
    scheduler: Any,
    defense: Any,
    streams: dict[str, Stream],
) -> int:
    with torch.no_grad():
        for n, p in params:
            p.copy_(loaded.tensors[n].to(p.device, p.dtype))
    state = loaded.state
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    defense.load_state_dict(state["defense"])
    torch.set_rng_state(state["rng"])
    for k, pos in loaded.meta["streams"].items():
        if k in streams:
            streams[k].position = pos
    return int(loaded.meta["step"])


def load_checkpoint(
    ckpt: Path,
    params: Params,
    optimizer: Any,
    scheduler: Any,
    defense: Any,
    streams: dict[str, Stream],
) -> int:
    """Restore the checkpoint ``ckpt`` (checked first); the step it was saved at."""
    loaded = _read_checkpoint(ckpt, params)
    return _apply_checkpoint(loaded, params, optimizer, scheduler, defense, streams)


def resume_from_checkpoint(
    run: RunDir,
    params: Params,
    optimizer: Any,
    scheduler: Any,
    defense: Any,
    streams: dict[str, Stream],
    warn: Callable[[str], None],
) -> tuple[int, Path] | None:
    """Restore the newest checkpoint of ``run`` that passes its check: (step, its directory).

    A damaged checkpoint is skipped with a warning (the previous one is used: the run is
    deterministic from any checkpoint); None when there is none; a RunDirError when every one is
    damaged.
    """
    dirs = checkpoint_dirs(run)
    if not dirs:
        return None
    damaged = []
    for ckpt in reversed(dirs):
        try:
            loaded = _read_checkpoint(ckpt, params)
        except Exception as exc:  # any reader's error: this checkpoint cannot be used
            why = f"{type(exc).__name__}: {exc}"
            damaged.append(f"{ckpt.name} ({why})")
            warn(f"Checkpoint {ckpt} is damaged and is skipped: {why}")
            continue
        return _apply_checkpoint(loaded, params, optimizer, scheduler, defense, streams), ckpt
    raise RunDirError(
        f"Cannot resume {run.path}: no usable checkpoint in {run.checkpoints} "
        f"({'; '.join(damaged)}).",
        hint="Start the run again with --overwrite (or delete the checkpoints directory and "
        "--resume to train from step 0 again).",
    )
