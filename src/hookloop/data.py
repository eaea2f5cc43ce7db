"""DataLoaders: a (train, valid) pair, fast tensor-slicing loaders, and device transfer."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ._check import check_int, check_number
from ._util import find_bs


class TensorLoader:
    """Yields `(x[idx], y[idx], ...)` batches by slicing tensors: no per-sample collate.

    Shuffling draws one permutation per epoch from a generator seeded by `(seed, epoch)`, so
    the order of any epoch is reproducible and a run can restart at `(epoch, offset)`.
    Under torch.distributed, `shard(rank, world_size)` gives each rank its part of every global
    batch of `bs * world_size` samples (see `shard`).

    Args:
        tensors: tensors sharing their first dimension.
        bs: batch size.
        shuffle: draw a new permutation each epoch.
        seed: base seed of the permutations.
        drop_last: drop the last, smaller batch.
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        bs: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor, got none")
        n = len(tensors[0])
        for t in tensors:
            if len(t) != n:
                raise ValueError(
                    f"tensors must share their first dimension, got lengths "
                    f"{[len(t) for t in tensors]}"
                )
        check_int("bs", bs, 1)
        self.tensors = tensors
        self.bs = bs
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0  # batches to skip in the next iteration (resume within an epoch)
        # Set by shard(): this loader yields rank `rank`'s part of each global batch.
        self.rank, self.world_size, self.pad = 0, 1, True

    @property
    def dataset(self) -> Sequence:
        return _TensorView(self.tensors)

    @property
    def n(self) -> int:
        return len(self.tensors[0])

    @property
    def device(self) -> torch.device | None:
        """Where the batches are made: the tensors' device (None if they are on several)."""
        devices = {t.device for t in self.tensors}
        return devices.pop() if len(devices) == 1 else None

    def _n_global(self) -> int:
        # Global batches of bs * world_size samples in one epoch.
        size = self.bs * self.world_size
        return self.n // size if self.drop_last else math.ceil(self.n / size)

    def __len__(self) -> int:
        n_batches = self._n_global()
        if self.world_size > 1 and not self.pad and not self.drop_last:
            # Without padding, a rank may get nothing of the last, smaller global batch.
            last = self.n - (n_batches - 1) * self.bs * self.world_size
            if n_batches and last // self.world_size == 0 and self.rank >= last:
                n_batches -= 1
        return n_batches

    def shard(self, rank: int, world_size: int, pad: bool = True) -> TensorLoader:
        """A loader over the same tensors that yields rank `rank`'s part of each global batch.

        Global batch i holds samples `order[i*G:(i+1)*G]` with `G = bs * world_size`, the order
        drawn from `(seed, epoch)` as in a single process, and rank r gets its r-th slice of
        `bs` samples, so the ranks together see what one process with `bs=G` sees. With `pad`
        (training) the last, smaller global batch is topped up with samples from the start of
        the order, as DistributedSampler does, so every rank gets as many batches of equal size;
        without it (validation) the samples are split without repeats and a rank may get one
        batch fewer.
        """
        check_int("world_size", world_size, 1)
        check_int("rank", rank, 0, below=world_size)
        new = copy.copy(self)
        new.rank, new.world_size, new.pad = rank, world_size, bool(pad)
        return new

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of `epoch` (called by the learner before each epoch)."""
        self.epoch = epoch

    def order(self) -> torch.Tensor | None:
        """The sample order of the current epoch, or None when sequential."""
        if not self.shuffle:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).to(self.tensors[0].device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.world_size > 1:
            yield from self._iter_shard()
            return
        perm = self.order()
        bs, n, ts = self.bs, self.n, self.tensors
        stop = len(self) * bs
        begin, self.start = self.start * bs, 0
        if perm is None:
            for i in range(begin, stop, bs):
                yield tuple(t[i : i + bs] for t in ts)
        else:
            for i in range(begin, min(stop, n), bs):
                idx = perm[i : i + bs]
                # index_select gives what t[idx] gives, without Python's indexing machinery
                # (about half the time per tensor on a small batch).
                yield tuple([t.index_select(0, idx) for t in ts])

    def _iter_shard(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.order()
        if order is None:
            order = torch.arange(self.n, device=self.tensors[0].device)
        n, size, w, r = self.n, self.bs * self.world_size, self.world_size, self.rank
        begin, self.start = self.start, 0
        for i in range(self._n_global()):
            lo, hi = i * size, min((i + 1) * size, n)
            if self.pad:
                per_rank = math.ceil((hi - lo) / w)
                pos = torch.arange(lo + r * per_rank, lo + (r + 1) * per_rank) % n
                idx = order[pos.to(order.device)]
            else:
                idx = torch.tensor_split(order[lo:hi], w)[r]
                if len(idx) == 0:
                    continue
            # Skipping counts this rank's batches (a mid-epoch resume skips as many on each rank).
            if begin:
                begin -= 1
                continue
            yield tuple(t[idx] for t in self.tensors)

    def to(self, device: torch.device | str) -> TensorLoader:
        """Move the tensors once, so batches need no per-step transfer."""
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self


class _TensorView:
    """Indexable view over tensors, so `loader.dataset[i]` works like a TensorDataset."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)


class DataLoaders:
    """A training loader and an optional validation loader: `dls.train`, `dls.valid`, `dls[0]`."""

    def __init__(self, train: Any, valid: Any = None) -> None:
        self.loaders = [train, valid]

    @property
    def train(self) -> Any:
        return self.loaders[0]

    @property
    def valid(self) -> Any:
        return self.loaders[1]

    def __getitem__(self, i: int) -> Any:
        return self.loaders[i]

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loaders)

    @classmethod
    def from_tensors(
        cls,
        x: torch.Tensor,
        y: torch.Tensor,
        valid_pct: float | None = 0.2,
        valid: tuple[torch.Tensor, torch.Tensor] | None = None,
        bs: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        valid_bs: int | None = None,
        device: torch.device | str | None = None,
    ) -> DataLoaders:
        """Loaders that slice `x`, `y` directly. The validation split is `valid=(xv, yv)` or a
        seeded random `valid_pct` of the samples (0 or None: no validation set)."""
        x, y = _as_tensor("x", x), _as_tensor("y", y)
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        check_int("bs", bs, 1)
        if valid_bs is not None:
            check_int("valid_bs", valid_bs, 1, what="a positive int or None (2 * bs)")
        if valid is not None:
            if not isinstance(valid, (tuple, list)) or len(valid) != 2:
                got = (
                    f"{type(valid).__name__} of {len(valid)}"
                    if isinstance(valid, (tuple, list))
                    else repr(valid)
                )
                raise ValueError(f"valid must be a pair (x_valid, y_valid), got {got}")
            xv, yv = (
                _as_tensor("valid[0] (x_valid)", valid[0]),
                _as_tensor("valid[1] (y_valid)", valid[1]),
            )
            if len(xv) != len(yv):
                raise ValueError(
                    f"valid's x and y must have the same length, got {len(xv)} and {len(yv)}"
                )
            xt, yt = x, y
        elif valid_pct:
            check_number("valid_pct", valid_pct, positive=True, below=1, what="in (0, 1)")
            g = torch.Generator()
            g.manual_seed(seed)
            perm = torch.randperm(len(x), generator=g)
            n_valid = int(round(len(x) * valid_pct))
            vi, ti = perm[:n_valid], perm[n_valid:]
            xt, yt, xv, yv = x[ti], y[ti], x[vi], y[vi]
        else:
            xt, yt, xv, yv = x, y, None, None
        if device is not None:
            xt, yt = xt.to(device), yt.to(device)
            if xv is not None:
                xv, yv = xv.to(device), yv.to(device)
        train = TensorLoader(xt, yt, bs=bs, shuffle=shuffle, seed=seed)
        vl = None if xv is None else TensorLoader(xv, yv, bs=valid_bs or bs * 2)
        return cls(train, vl)

    @classmethod
    def from_datasets(
        cls,
        train_ds: Dataset,
        valid_ds: Dataset | None = None,
        bs: int = 64,
        shuffle: bool = True,
        num_workers: int = 0,
        valid_bs: int | None = None,
        **kwargs: Any,
    ) -> DataLoaders:
        """torch DataLoaders over map-style datasets."""
        if bs is not None:  # None: torch's DataLoader without batching
            check_int("bs", bs, 1, what="a positive int or None")
        if valid_bs is not None:
            check_int("valid_bs", valid_bs, 1, what="a positive int or None (2 * bs)")
        train = DataLoader(
            train_ds, batch_size=bs, shuffle=shuffle, num_workers=num_workers, **kwargs
        )
        valid = None
        if valid_ds is not None:
            valid = DataLoader(
                valid_ds, batch_size=valid_bs or bs * 2, num_workers=num_workers, **kwargs
            )
        return cls(train, valid)


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    # torch.as_tensor's own error ("Could not infer dtype of NoneType") names no argument.
    if isinstance(value, torch.Tensor):
        return value
    wanted = f"{name} must be a tensor (or an array or a nested list of numbers)"
    if isinstance(value, Iterator):
        raise TypeError(
            f"{wanted}, got {type(value).__name__}: an iterator is read once and has no length; "
            f"materialise it first, e.g. torch.stack(list(...))"
        )
    if value is None or isinstance(value, (str, bytes, Mapping)):
        raise TypeError(f"{wanted}, got {type(value).__name__}")
    try:
        return torch.as_tensor(value)
    except (TypeError, RuntimeError, ValueError) as e:
        raise TypeError(f"{wanted}, got {type(value).__name__} ({e})") from None


def peek_batch(dl: Any) -> Any:
    """The batch of `dl`'s first samples (as many as its batch size), made without iterating
    `dl`, or None. Unshuffled, it is the loader's first batch.

    Iterating would move a stateful loader's position, start worker processes and draw from
    the global random state (a DataLoader's base seed), so a resumed run would no longer see
    what the original saw. A TensorLoader is sliced; a DataLoader over a map-style dataset
    collates `dataset[0:batch_size]` (2 samples with a custom batch sampler) with its own
    collate_fn, with the random states (torch's CPU generator, `random`, numpy) put back
    afterwards in case the dataset draws from them. Any other loader (an iterable dataset, a
    stream, a custom class) gives None.
    """
    if isinstance(dl, TensorLoader):
        return tuple(t[: dl.bs] for t in dl.tensors) if dl.n else None
    if not isinstance(dl, DataLoader) or dl.batch_sampler is None:
        return None  # not a torch DataLoader, or one that yields samples unbatched
    ds = dl.dataset
    if isinstance(ds, IterableDataset) or not hasattr(ds, "__getitem__"):
        return None
    try:
        k = min(dl.batch_size or 2, len(ds))
    except TypeError:
        return None
    if k == 0:
        return None
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return dl.collate_fn([ds[i] for i in range(k)])
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def is_stateful_loader(dl: Any) -> bool:
    """True for a loader that saves and restores its own position with `state_dict()` /
    `load_state_dict()` (torchdata's StatefulDataLoader): a resume restores it as it is."""
    return callable(getattr(dl, "state_dict", None)) and callable(
        getattr(dl, "load_state_dict", None)
    )


def to_device(b: Any, device: torch.device) -> Any:
    """Move a batch (tensors, possibly nested in tuples, lists and mappings) to `device`.

    A namedtuple keeps its type; a mapping that is not a dict (transformers' BatchEncoding)
    becomes a dict of the same keys."""
    if isinstance(b, torch.Tensor):
        return b if b.device == device else b.to(device, non_blocking=True)
    if isinstance(b, tuple) and hasattr(b, "_fields"):
        return type(b)(*(to_device(o, device) for o in b))
    if isinstance(b, (tuple, list)):
        return type(b)([to_device(o, device) for o in b])
    if isinstance(b, Mapping):
        return {k: to_device(v, device) for k, v in b.items()}
    return b


def on_device(b: Any, device: torch.device) -> bool:
    """True when every tensor in the (possibly nested) batch `b` is already on `device`."""
    if isinstance(b, torch.Tensor):
        return b.device == device
    if isinstance(b, (tuple, list)):
        return all(on_device(o, device) for o in b)
    if isinstance(b, Mapping):
        return all(on_device(v, device) for v in b.values())
    return True


__all__ = ["DataLoaders", "TensorLoader", "to_device", "on_device", "find_bs"]
