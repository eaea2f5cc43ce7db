"""torch.distributed support: rank helpers, process-group setup, DDP training, reductions."""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
)

from ._check import check_int, check_number
from ._util import (
    is_distributed,
    is_rank_zero,
    local_rank,
    rank,
    rank_zero_print,
    world_size,
)
from .callback import Callback
from .learner import FIT_EXTENSIONS, Learner


def barrier() -> None:
    """Wait for every rank (no-op outside a process group of two or more)."""
    if is_distributed() and dist.get_world_size() > 1:
        dist.barrier()


def _as_timeout(timeout: Any) -> datetime.timedelta | None:
    if timeout is None or isinstance(timeout, datetime.timedelta):
        return timeout
    check_number("timeout", timeout, positive=True, what="positive seconds or a timedelta")
    return datetime.timedelta(seconds=timeout)


def init_distributed(backend: str | None = None, timeout: Any = None) -> bool:
    """Create the default process group from torchrun's environment; True if it was created.

    Nothing happens (False) when a group already exists or `WORLD_SIZE` is missing or 1.
    The backend is nccl when CUDA is available (each process then uses GPU `LOCAL_RANK`),
    gloo otherwise. `timeout` (seconds or a timedelta) bounds every collective: a rank that
    stops answering makes the others fail after it instead of waiting forever.
    """
    timeout = _as_timeout(timeout)
    if is_distributed() or not dist.is_available() or world_size() < 2:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start the "
            f"script with torchrun, or call torch.distributed.init_process_group yourself"
        )
    cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank())
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, **kwargs)
    return True


def destroy_distributed() -> None:
    """Destroy the default process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # nccl reduces CUDA tensors only; gloo takes CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _active() -> bool:
    return is_distributed() and dist.get_world_size() > 1


def reduce_weighted(pairs: dict[str, tuple[float, int]]) -> dict[str, float]:
    """Per name, the mean over ranks of `value` weighted by `count`: sum(v*c) / sum(c).

    One all_reduce for all names. A rank with count 0 adds nothing; a name with no samples on
    any rank is NaN; a NaN with samples on any rank makes the result NaN on every rank.
    Outside a process group the values come back unchanged.
    """
    if not _active():
        return {k: float(v) for k, (v, _) in pairs.items()}
    names = list(pairs)
    rows = [[float(v) * c if c else 0.0, float(c)] for v, c in pairs.values()]
    t = torch.tensor(rows, dtype=torch.float64, device=_comm_device()).reshape(-1, 2)
    dist.all_reduce(t)
    return {k: s / c if c else float("nan") for k, (s, c) in zip(names, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank (one all_reduce; local outside DDP)."""
    if not _active():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank `src`'s `value` on every rank (local outside DDP)."""
    if not _active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_comm_device())
    dist.broadcast(t, src)
    return int(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank (`obj` itself outside DDP)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


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
    return DataLoader(dl.dataset, **kwargs)


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


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(model, (FSDPModule, FullyShardedDataParallel))


def _loader_seed(dl: Any) -> int:
    # DistributedSampler needs the same seed on every rank: rank 0's choice is broadcast.
    gen = getattr(dl, "generator", None)
    seed = gen.initial_seed() if gen is not None else torch.initial_seed()
    return broadcast_int(seed % (2**63))


class DistributedTrainer(Callback):
    """Trains with DistributedDataParallel: wraps the model, shards the data, reduces values.

    `fit` adds it by itself when the script runs under torchrun (`WORLD_SIZE` > 1), so the same
    script runs as `python train.py` and `torchrun --nproc_per_node=2 train.py`. Add it (or use
    `learn.distrib_ctx()`) to pass options. For the fit, `learn.model` is the DDP wrapper during
    training and the user's module during validation, `learn.dls` holds this rank's shards, and
    the Recorder averages each epoch's losses and metrics over the ranks, weighted by sample
    counts, so every rank records the same values. Outside a process group of two or more
    processes it does nothing.

    Example:
        learn.fit(3, cbs=DistributedTrainer(find_unused_parameters=True))

    Args:
        sync_bn: convert BatchNorm layers to SyncBatchNorm (CUDA only; ignored on the CPU).
        shard_valid: give each rank part of the validation set; False validates the whole set
            on every rank (exact for any metric, world_size times the work). A model wrapped
            with FSDP (`fully_shard`) is never wrapped in DDP and always validates the whole
            set on every rank, since each of its forwards is a collective.
        backend: process-group backend if one has to be created (None: nccl on CUDA, gloo).
        timeout: seconds (or a timedelta) for the collectives of a group created here.
        **ddp_kwargs: passed to DistributedDataParallel (`find_unused_parameters`, ...).
    """

    # Before TrainEval (-10) and the Recorder: they read the length of the sharded loader.
    order = -20

    def __init__(
        self,
        sync_bn: bool = True,
        shard_valid: bool = True,
        backend: str | None = None,
        timeout: Any = None,
        **ddp_kwargs: Any,
    ) -> None:
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a str such as 'gloo' or 'nccl', got {backend!r}")
        self.timeout = _as_timeout(timeout)
        self.sync_bn, self.shard_valid, self.backend = bool(sync_bn), bool(shard_valid), backend
        self.ddp_kwargs = ddp_kwargs
        self._reset()

    def _reset(self) -> None:
        self._saved: tuple | None = None  # (model, dls) to put back after the fit
        self._ddp: nn.Module | None = None
        self._module: nn.Module | None = None

    def before_fit(self) -> None:
        init_distributed(self.backend, self.timeout)
        if not _active():
            return
        learn = self.learn
        model, dls = learn.model, learn.dls
        self._saved = (model, dls)
        fsdp = _is_fsdp(model)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            ddp, module = model, model.module  # the user wrapped it already
        elif fsdp:
            ddp, module = model, model  # FSDP syncs gradients itself: no DDP around it
        else:
            module = model
            cuda = learn.device.type == "cuda"
            if self.sync_bn and cuda:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            ids = [learn.device.index if learn.device.index is not None else local_rank()]
            ddp = nn.parallel.DistributedDataParallel(
                module, device_ids=ids if cuda else None, **self.ddp_kwargs
            )
        self._ddp, self._module = ddp, module
        r, w = rank(), world_size()
        seed = _loader_seed(dls.train) if isinstance(dls.train, DataLoader) else 0
        shards = copy.copy(dls)
        shards.loaders = [
            shard_loader(dls.train, r, w, train=True, seed=seed),
            # Every FSDP forward is a collective: ranks must run as many validation batches.
            shard_loader(dls.valid, r, w, train=False)
            if self.shard_valid and not fsdp
            else dls.valid,
        ]
        learn.dls = shards
        learn.model = ddp
        recorder = learn.find_cb("recorder")
        if recorder is not None:
            recorder.reduce_fn = reduce_weighted

    def before_train(self) -> None:
        if self._ddp is not None:
            self.learn.model = self._ddp

    def before_validate(self) -> None:
        # Validation needs no gradient sync, and DDP's buffer broadcast is a collective that
        # ranks with different numbers of validation batches would not match.
        if self._module is not None:
            self.learn.model = self._module

    def after_fit(self) -> None:
        self._restore()

    def after_exception(self) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._saved is None:
            return
        learn = self.learn
        model, dls = self._saved
        if self._module is not None and model is not self._ddp:
            model = self._module  # SyncBatchNorm conversion may have replaced the top module
        learn.model, learn.dls = model, dls
        recorder = learn.find_cb("recorder")
        if recorder is not None:
            recorder.reduce_fn = None
        self._reset()


def distributed_callbacks(learn: Learner, extra: list, resume: Any = None) -> list[Callback]:
    """What `fit` adds under torchrun: a DistributedTrainer unless one is attached already."""
    if world_size() < 2:
        return []
    init_distributed()
    # Rank-0-only callbacks are dropped from the dispatch table of the other ranks.
    learn.refresh_callbacks()
    if any(isinstance(c, DistributedTrainer) for c in [*learn.cbs, *extra]):
        return []
    return [DistributedTrainer()]


@contextlib.contextmanager
def distrib_ctx(
    learn: Learner,
    sync_bn: bool = True,
    backend: str | None = None,
    timeout: Any = None,
    in_notebook: bool = False,
    **ddp_kwargs: Any,
) -> Iterator[Learner]:
    """Train with DDP inside the block (fastai's `learn.distrib_ctx()`).

    Creates the process group from torchrun's environment if none exists (and destroys it on
    leaving), and attaches a DistributedTrainer for the block. Run as one process, it does
    nothing. fastai's `in_notebook=True` (launching the processes from a notebook) is not
    supported: start the script with torchrun.
    """
    if in_notebook:
        raise ValueError(
            "distrib_ctx(in_notebook=True) is not supported: put the training in a script and "
            "start it with `torchrun --nproc_per_node=N script.py`"
        )
    created = init_distributed(backend, timeout)
    if is_distributed():
        learn.refresh_callbacks()
    cb = DistributedTrainer(sync_bn=sync_bn, backend=backend, timeout=timeout, **ddp_kwargs)
    learn.add_cb(cb)
    try:
        yield learn
    finally:
        learn.remove_cb(cb)
        if created:
            destroy_distributed()


# fastai's learn.distrib_ctx(); under torchrun every fit adds a DistributedTrainer.
FIT_EXTENSIONS.append(distributed_callbacks)
Learner.distrib_ctx = distrib_ctx

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_rank_zero",
    "rank_zero_print",
    "barrier",
    "init_distributed",
    "destroy_distributed",
    "reduce_weighted",
    "any_rank",
    "broadcast_int",
    "broadcast_object",
    "ShardSampler",
    "shard_loader",
    "DistributedTrainer",
    "distributed_callbacks",
    "distrib_ctx",
]
