"""train.group_by_length: length-grouped, seeded, resumable batches (EpochSampler) and the
padding they save (hftguard.bench.padding)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from hftguard.data.inputs import Encoded
from hftguard.engine.checkpoints import MEGABATCH_BATCHES, EpochSampler


def _items(n: int, seed: int = 0) -> list[Encoded]:
    """``n`` examples of lengths 1..60, in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 61, (n,), generator=g).tolist()
    return [Encoded([7] * k, [7] * k, i % 5 == 0) for i, k in enumerate(lengths)]


def _epoch(sampler: EpochSampler, epoch: int) -> list[list[int]]:
    start = epoch * sampler.per_epoch
    return [sampler.global_indices(i) for i in range(start, start + sampler.per_epoch)]


# n = 37 (one megabatch, a short last batch); 257 with batch 2 spans three megabatches of 100.
CASES = [(37, 4), (40, 4), (257, 2), (5, 8)]


@pytest.mark.parametrize(("n", "bs"), CASES)
def test_grouped_epochs_hold_every_example_once(n, bs):
    items = _items(n)
    grouped = EpochSampler(items, bs, seed=3, group_by_length=True)
    plain = EpochSampler(items, bs, seed=3)
    assert grouped.per_epoch == plain.per_epoch
    for epoch in range(3):
        rows = [i for b in _epoch(grouped, epoch) for i in b]
        assert sorted(rows) == list(range(n))
        assert Counter(rows) == Counter(i for b in _epoch(plain, epoch) for i in b)


@pytest.mark.parametrize(("n", "bs"), CASES)
def test_every_grouped_batch_but_the_last_is_full(n, bs):
    sampler = EpochSampler(_items(n), bs, seed=1, group_by_length=True)
    for epoch in range(3):
        sizes = [len(b) for b in _epoch(sampler, epoch)]
        assert all(s == bs for s in sizes[:-1])
        assert sizes[-1] == (n % bs or bs)


def test_grouping_is_deterministic_per_seed_and_epoch():
    items = _items(257)
    a = EpochSampler(items, 2, seed=5, group_by_length=True)
    b = EpochSampler(items, 2, seed=5, group_by_length=True)
    other = EpochSampler(items, 2, seed=6, group_by_length=True)
    indices = range(3 * a.per_epoch)
    assert [a.global_indices(i) for i in indices] == [b.global_indices(i) for i in indices]
    assert [a.global_indices(i) for i in indices] != [other.global_indices(i) for i in indices]
    assert _epoch(a, 0) != _epoch(a, 1)  # a new order every epoch
    # Pure function of the position: reading out of order (as a resumed run does) agrees.
    fresh = EpochSampler(items, 2, seed=5, group_by_length=True)
    assert [fresh.global_indices(i) for i in reversed(indices)] == [
        a.global_indices(i) for i in reversed(indices)
    ]


def test_grouped_batches_sort_each_megabatch_and_shuffle_the_batches():
    items = _items(257)
    bs = 2
    sampler = EpochSampler(items, bs, seed=2, group_by_length=True)
    batches = _epoch(sampler, 0)
    lengths = [[len(items[i].input_ids) for i in b] for b in batches]
    assert all(b == sorted(b, reverse=True) for b in lengths)  # longest first within a batch
    # The megabatches are the windows of the seeded permutation (grouping never mixes them).
    perm = torch.randperm(257, generator=torch.Generator().manual_seed(2 * 100003)).tolist()
    mega = bs * MEGABATCH_BATCHES
    window = {i: k // mega for k, i in enumerate(perm)}
    assert all(len({window[i] for i in b}) == 1 for b in batches)
    # The batches are not in megabatch order (their order is shuffled), the short one is last.
    assert [window[b[0]] for b in batches] != sorted(window[b[0]] for b in batches)
    assert len(batches[-1]) == 1


def test_sharding_splits_the_grouped_global_batch():
    items = _items(40)
    world = 3
    shards = [
        EpochSampler(items, 8, seed=4, shard=(rank, world), group_by_length=True)
        for rank in range(world)
    ]
    whole = EpochSampler(items, 8, seed=4, group_by_length=True)
    for index in range(2 * whole.per_epoch):
        glob = whole.global_indices(index)
        rows = [s.batch_indices(index) for s in shards]
        assert sorted(i for r in rows for i in r) == sorted(glob)
        assert all(r == glob[rank::world] for rank, r in enumerate(rows))


def test_the_ungrouped_path_is_the_plain_seeded_permutation():
    items = _items(37)
    bs, seed = 4, 11
    sampler = EpochSampler(items, bs, seed)
    for index in range(3 * sampler.per_epoch):
        epoch, pos = divmod(index, sampler.per_epoch)
        g = torch.Generator().manual_seed(seed * 100003 + epoch)
        perm = torch.randperm(len(items), generator=g).tolist()
        assert sampler.global_indices(index) == perm[pos * bs : (pos + 1) * bs]


def test_grouped_batches_have_less_padding():
    from hftguard.bench.padding import measure_padding

    out = measure_padding({"varied": _items(257)}, batch_size=8, seed=0, epochs=2)["varied"]
    random, grouped = out["random"], out["grouped"]
    assert grouped["batches"] == random["batches"] == 2 * 33
    assert grouped["pad_share"] < random["pad_share"] / 3
    assert grouped["mean_width"] < random["mean_width"]
    assert out["token_ratio"] < 1


def test_measure_padding_counts_the_pads_of_the_collated_batches(tiny_tok):
    from hftguard.bench.padding import training_padding
    from hftguard.data.inputs import collate

    items = _items(37)
    stats = training_padding(items, 4, seed=0, group_by_length=True)
    sampler = EpochSampler(items, 4, 0, group_by_length=True)
    batches = [collate([items[i] for i in b], 0) for b in _epoch(sampler, 0)]
    total = sum(b.attention_mask.numel() for b in batches)
    pads = sum(int((b.attention_mask == 0).sum()) for b in batches)
    assert (stats["tokens"], stats["pad_tokens"]) == (total, pads)
    widths = [b.input_ids.shape[1] for b in batches]
    assert stats["mean_width"] == pytest.approx(sum(widths) / len(widths))


def test_generation_padding_sorted_beats_unsorted():
    from hftguard.bench.padding import generation_padding

    lengths = [len(e.input_ids) for e in _items(100)]
    out = generation_padding(lengths, 16)
    assert out["sorted"]["pad_share"] < out["unsorted"]["pad_share"]
    assert out["sorted"]["batches"] == out["unsorted"]["batches"] == 7


# ---------------------------------------------------------------------------------------------
# In the training loop


def _data(tok, n=12):
    from hftguard.data.inputs import encode_all
    from hftguard.records import Example

    exs = [
        Example(f"question {i}", " ".join(["answer"] * (1 + 5 * (i % 4))) + f" {i}", "refusal")
        for i in range(n)
    ]
    return encode_all(exs, tok, "chat", 64)


def _run(tmp_path, tok, name, defense, resume=False, steps=6):
    from training_helpers import train_tiny

    return train_tiny(
        tmp_path,
        tok,
        name,
        defense,
        _data(tok),
        resume=resume,
        max_steps=steps,
        group_by_length=True,
    )[0]


def test_grouped_training_resumes_bit_identically(tmp_path, tiny_tok):
    from hftguard.builtins.defenses.sft import SFTAlign

    class Crash(SFTAlign):
        def training_step(self, model, batch, ctx):
            if ctx.step == 3:
                raise KeyboardInterrupt
            return super().training_step(model, batch, ctx)

    # The data's lengths vary, so grouping really changes the batches of this run.
    items = _data(tiny_tok)
    grouped = EpochSampler(items, 4, 3, group_by_length=True)
    plain = EpochSampler(items, 4, 3)
    assert [grouped.global_indices(i) for i in range(6)] != [
        plain.global_indices(i) for i in range(6)
    ]

    full = _run(tmp_path, tiny_tok, "full", SFTAlign())
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tiny_tok, "crash", Crash())
    assert (tmp_path / "crash" / "checkpoints" / "step-0000002" / "state.json").exists()
    resumed = _run(tmp_path, tiny_tok, "crash", SFTAlign(), resume=True)
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Antibody's fine-tuning softmax compares the samples of a batch


def test_antibody_finetune_refuses_length_grouping():
    from hftguard.builtins.defenses.antibody_finetune import AntibodyFinetune
    from hftguard.context import PlanContext
    from hftguard.errors import ConfigError

    AntibodyFinetune().plan(PlanContext(total_steps=10, batch_size=8, group_by_length=False))
    with pytest.raises(ConfigError, match="group_by_length") as err:
        AntibodyFinetune().plan(PlanContext(total_steps=10, batch_size=8, group_by_length=True))
    assert "softmax over the batch" in str(err.value)
    assert "group_by_length" in (err.value.hint or "")


def test_the_config_check_passes_group_by_length_to_plan(registry):
    from hftguard.config import FinetuneConfig, TrainOptions
    from hftguard.errors import ConfigError
    from hftguard.pipeline.common import check_components

    def cfg(defense, grouped):
        return FinetuneConfig(defense=defense, train=TrainOptions(group_by_length=grouped))

    check_components(cfg("sft", True), registry)  # other defenses accept it
    check_components(cfg("antibody", False), registry)
    with pytest.raises(ConfigError, match="group_by_length"):
        check_components(cfg("antibody", True), registry)
