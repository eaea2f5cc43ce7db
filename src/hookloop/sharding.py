"""Each rank's share of the data: ShardSampler for validation, shard_loader for any loader."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
)

from ._check import check_int
from .data import is_stateful_loader


class ShardSampler(Sampler[int]):
    """Indices `rank, rank + world_size, ...` of a dataset of `n` items: a split without repeats.

    Used for validation, where repeating samples (as DistributedSampler pads) would bias the
    metrics; ranks may get one sample fewer than others.

    Example:
        list(ShardSampler(5, rank=1, world_size=2))   # [1, 3]

    Args:
        n: number of items.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        check_int("n", n, 0, what="a non-negative int")
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0, below=world_size)
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _with_sampler(dl: DataLoader, sampler: Sampler) -> DataLoader:
    # A copy of `dl` that draws its indices from `sampler`; everything else is kept.
    kwargs: dict[str, Any] = {
        "batch_size": dl.batch_size,
        "sampler": sampler,
        "num_workers": dl.num_workers,
        "collate_fn": dl.collate_fn,
        "pin_memory": dl.pin_memory,
        "drop_last": dl.drop_last,
        "timeout": dl.timeout,
        "worker_init_fn": dl.worker_init_fn,
        "multiprocessing_context": dl.multiprocessing_context,
        "generator": dl.generator,
        "persistent_workers": dl.persistent_workers,
    }
    if dl.num_workers > 0:
        kwargs["prefetch_factor"] = dl.prefetch_factor
    # A StatefulDataLoader stays one, so a backup can hold each rank's position.
    cls = type(dl) if is_stateful_loader(dl) else DataLoader
    return cls(dl.dataset, **kwargs)


def shard_loader(dl: Any, rank: int, world_size: int, train: bool = True, seed: int = 0) -> Any:
    """This rank's share of `dl`: its part of each batch (training) or of the samples (valid).

    hookloop's TensorLoader is sharded with `shard` (same global batches as one process with
    `bs * world_size`); a torch DataLoader gets a DistributedSampler (training, shuffled when
    `dl` shuffled, with `seed`) or a ShardSampler (validation). A loader already drawing from a
    DistributedSampler, an IterableDataset's loader (shard it yourself, torch cannot) and
    None are returned as they are.
    """
    if dl is None or world_size < 2:
        return dl
    if hasattr(dl, "shard"):
        return dl.shard(rank, world_size, pad=train)
    if isinstance(dl, DataLoader):
        if isinstance(dl.sampler, DistributedSampler) or isinstance(dl.dataset, IterableDataset):
            return dl
        if dl.batch_size is None:
            raise TypeError(
                "a DataLoader with a custom batch_sampler cannot be sharded automatically; give "
                "it a batch_sampler that yields this rank's batches (DistributedSampler inside)"
            )
        if train:
            sampler: Sampler = DistributedSampler(
                dl.dataset,
                num_replicas=world_size,
                rank=rank,
                shuffle=isinstance(dl.sampler, RandomSampler),
                seed=seed,
                drop_last=dl.drop_last,
            )
        else:
            sampler = ShardSampler(len(dl.dataset), rank, world_size)
        return _with_sampler(dl, sampler)
    warnings.warn(
        f"{type(dl).__name__} is neither a hookloop TensorLoader nor a torch DataLoader: it is "
        f"used unsharded, so every rank sees all of it; each rank must yield as many batches",
        stacklevel=2,
    )
    return dl


__all__ = ["ShardSampler", "shard_loader"]
