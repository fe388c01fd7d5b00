"""What the training loop resumes from: seeded batch streams and checkpoints.

A stream's position is its step count, so saving the positions with the trainable parameters,
the optimizer, the schedule, the defense's state and the RNG is enough to resume a run exactly.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hftguard.data import IGNORE_INDEX, Batch, Encoded, collate
from hftguard.errors import HftguardError
from hftguard.gradients import Params
from hftguard.runs import RunDir, atomic_write_json

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
# Checkpoints


def latest_checkpoint(run: RunDir) -> Path | None:
    if not run.checkpoints.is_dir():
        return None
    done = sorted(p for p in run.checkpoints.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def save_checkpoint(
    run: RunDir,
    step: int,
    params: Params,
    optimizer: Any,
    scheduler: Any,
    defense: Any,
    streams: dict[str, Stream],
) -> None:
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
    atomic_write_json(
        tmp / "state.json", {"step": step, "streams": {k: s.position for k, s in streams.items()}}
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in run.checkpoints.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    ckpt: Path,
    params: Params,
    optimizer: Any,
    scheduler: Any,
    defense: Any,
    streams: dict[str, Stream],
) -> int:
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt / "trainable.safetensors"))
    with torch.no_grad():
        for n, p in params:
            p.copy_(tensors[n].to(p.device, p.dtype))
    state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    defense.load_state_dict(state["defense"])
    torch.set_rng_state(state["rng"])
    meta = json.loads((ckpt / "state.json").read_text())
    for k, pos in meta["streams"].items():
        if k in streams:
            streams[k].position = pos
    return int(meta["step"])
