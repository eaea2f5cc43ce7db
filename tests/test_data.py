"""DataLoaders and TensorLoader: splits, batch slicing, reproducible shuffling, device moves."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from hookloop import DataLoaders, TensorLoader, find_bs, to_device


def test_tensor_loader_slices_batches_with_an_uneven_last_batch():
    x = torch.arange(10).float().unsqueeze(1)
    dl = TensorLoader(x, torch.arange(10), bs=4)
    sizes = [len(xb) for xb, _ in dl]
    assert len(dl) == 3 and sizes == [4, 4, 2]
    assert torch.equal(torch.cat([yb for _, yb in dl]), torch.arange(10))


def test_drop_last_drops_the_short_batch():
    dl = TensorLoader(torch.arange(10), bs=4, drop_last=True)
    assert len(dl) == 2 and [len(b[0]) for b in dl] == [4, 4]


def test_shuffle_is_a_permutation_fixed_by_seed_and_epoch():
    y = torch.arange(20)
    a, b = TensorLoader(y, bs=5, shuffle=True, seed=1), TensorLoader(y, bs=5, shuffle=True, seed=1)
    first = torch.cat([t[0] for t in a])
    assert sorted(first.tolist()) == list(range(20))
    assert torch.equal(first, torch.cat([t[0] for t in b]))
    a.set_epoch(1)
    assert not torch.equal(first, torch.cat([t[0] for t in a]))


def test_start_skips_batches_once():
    dl = TensorLoader(torch.arange(10), bs=4)
    dl.start = 1
    assert [b[0].tolist() for b in dl] == [[4, 5, 6, 7], [8, 9]]
    assert len(list(dl)) == 3  # the next pass starts from the beginning again


def test_from_tensors_holds_out_valid_pct_of_the_samples():
    dls = DataLoaders.from_tensors(torch.randn(100, 3), torch.zeros(100), valid_pct=0.2, bs=10)
    assert dls.train.n == 80 and dls.valid.n == 20
    assert dls.valid.bs == 20  # validation batches are twice as large, like fastai


def test_from_tensors_with_an_explicit_validation_set():
    x, y = torch.randn(8, 2), torch.arange(8)
    dls = DataLoaders.from_tensors(x, y, valid=(x[:2], y[:2]), bs=4)
    assert dls.train.n == 8 and dls.valid.n == 2
    assert dls[0] is dls.train and dls[1] is dls.valid


def test_from_tensors_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length, got 5 and 4"):
        DataLoaders.from_tensors(torch.zeros(5, 1), torch.zeros(4))


def test_bad_batch_size_is_an_error():
    with pytest.raises(ValueError, match="bs must be a positive int, got 0"):
        TensorLoader(torch.zeros(4), bs=0)


def test_from_datasets_builds_torch_loaders():
    ds = TensorDataset(torch.randn(10, 2), torch.arange(10))
    dls = DataLoaders.from_datasets(ds, ds, bs=4)
    assert len(dls.train) == 3 and dls.valid.batch_size == 8


def test_dataset_view_indexes_like_a_tensor_dataset():
    dl = TensorLoader(torch.arange(6) * 10, torch.arange(6), bs=2)
    assert [int(t) for t in dl.dataset[2]] == [20, 2]
    assert len(dl.dataset) == 6


def test_to_device_moves_nested_batches_and_find_bs_reads_the_first_dimension():
    b = (torch.zeros(3, 2), [torch.ones(3)], {"m": torch.ones(3, 1)})
    moved = to_device(b, torch.device("cpu"))
    assert moved[0] is b[0]  # already there: no copy
    assert find_bs(moved) == 3 and find_bs({"m": torch.ones(7, 1)}) == 7


def _batches(loader: TensorLoader) -> list[list[int]]:
    return [b[0].tolist() for b in loader]


def test_shards_split_each_global_batch_between_the_ranks():
    # bs=2 on 2 ranks: global batches of 4 (the last one, [8, 9], is split 1 + 1).
    x = torch.arange(10)
    shards = [TensorLoader(x, bs=2).shard(r, 2) for r in range(2)]
    assert _batches(shards[0]) == [[0, 1], [4, 5], [8]]
    assert _batches(shards[1]) == [[2, 3], [6, 7], [9]]


def test_shuffled_shards_together_are_the_batches_of_one_loader_with_twice_the_bs():
    x = torch.arange(20)
    single = TensorLoader(x, bs=8, shuffle=True, seed=3)
    shards = [TensorLoader(x, bs=4, shuffle=True, seed=3).shard(r, 2) for r in range(2)]
    for epoch in (0, 1):
        for loader in (single, *shards):
            loader.set_epoch(epoch)
        joined = [a + b for a, b in zip(_batches(shards[0]), _batches(shards[1]))]
        assert joined == _batches(single)


def test_training_shards_pad_the_last_batch_so_every_rank_gets_as_many_batches():
    # 5 samples, global batch 4: the last global batch [4] is topped up with sample 0.
    shards = [TensorLoader(torch.arange(5), bs=2).shard(r, 2) for r in range(2)]
    assert [_batches(s) for s in shards] == [[[0, 1], [4]], [[2, 3], [0]]]
    assert [len(s) for s in shards] == [2, 2]


def test_validation_shards_split_the_samples_without_repeats():
    shards = [TensorLoader(torch.arange(5), bs=2).shard(r, 2, pad=False) for r in range(2)]
    assert [_batches(s) for s in shards] == [[[0, 1], [4]], [[2, 3]]]
    assert [len(s) for s in shards] == [2, 1]


def test_shard_start_skips_this_ranks_batches():
    shard = TensorLoader(torch.arange(8), bs=2).shard(1, 2)
    shard.start = 1
    assert _batches(shard) == [[6, 7]]


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank must be an int in \\[0, 2\\), got 2"):
        TensorLoader(torch.arange(4), bs=2).shard(2, 2)
