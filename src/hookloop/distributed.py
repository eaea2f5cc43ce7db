"""torch.distributed training: DistributedTrainer (DDP, sharded data, reduced values), the
callback `fit` adds under torchrun, and fastai's `learn.distrib_ctx()`.

The helpers it is built on live in `process_group` (setup), `collectives` and `sharding`; they
are importable from here too.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ._util import (
    is_distributed,
    is_rank_zero,
    local_rank,
    rank,
    rank_zero_print,
    world_size,
)
from .callback import Callback
from .collectives import (
    _active,
    all_gather_object,
    any_rank,
    barrier,
    broadcast_int,
    broadcast_object,
    fail_together,
    gather_object,
    raise_shared_failure,
    reduce_weighted,
    send_failure,
    was_shared,
)
from .learner import FIT_EXTENSIONS, Learner
from .process_group import DEFAULT_TIMEOUT, _as_timeout, destroy_distributed, init_distributed
from .sharding import ShardSampler, shard_loader


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
    counts, so every rank records the same values. A failure in `before_fit` on any rank (a
    rank-0-only callback's check of its file) is raised on every rank, at the first event
    after `before_fit`, as the same error. Outside a process group of two or more processes it
    does nothing.

    Example:
        learn.fit(3, cbs=DistributedTrainer(find_unused_parameters=True))

    Args:
        sync_bn: convert BatchNorm layers to SyncBatchNorm (CUDA only; ignored on the CPU).
        shard_valid: give each rank part of the validation set; False validates the whole set
            on every rank (exact for any metric, world_size times the work). A model wrapped
            with FSDP (`fully_shard`) is never wrapped in DDP and always validates the whole
            set on every rank, since each of its forwards is a collective.
        backend: process-group backend if one has to be created (None: nccl on CUDA, gloo).
        timeout: seconds (or a timedelta) for the collectives of a group created here (default
            `DEFAULT_TIMEOUT`, 10 minutes).
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
        # Between the end of our before_fit and the first event after before_fit: a failure
        # there may be one rank's alone (a rank-0-only callback's check).
        self._setup_open = False

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
        # Opened after our own collectives: an exchange must not meet DDP's or the seed's.
        self._setup_open = True

    def before_epoch(self) -> None:
        if self._setup_open:
            self._close_setup()

    def _close_setup(self) -> None:
        # Every rank that got through before_fit tells "no failure", and raises the error of a
        # rank that failed (in its after_exception, or in a fail_together at another call site)
        # instead of training on and waiting for it in the first gradient all-reduce until the
        # timeout. Once per fit: the batches pay nothing for it.
        self._setup_open = False
        raise_shared_failure()

    def before_train(self) -> None:
        if self._ddp is not None:
            self.learn.model = self._ddp

    def before_validate(self) -> None:
        # Validation needs no gradient sync, and DDP's buffer broadcast is a collective that
        # ranks with different numbers of validation batches would not match.
        if self._module is not None:
            self.learn.model = self._module

    def after_fit(self) -> None:
        if self._setup_open:  # a fit with no epoch to run (a resumed, complete run)
            self._close_setup()
        self._restore()

    def after_exception(self) -> None:
        error = self.learn.exception
        if self._setup_open:
            self._setup_open = False
            # Shared already: every rank raised it from the same exchange, and a second one
            # would wait alone. KeyboardInterrupt and SystemExit stop this process only, as in
            # fail_together.
            if isinstance(error, Exception) and not was_shared(error):
                send_failure(error)
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
    "all_gather_object",
    "gather_object",
    "fail_together",
    "DEFAULT_TIMEOUT",
    "ShardSampler",
    "shard_loader",
    "DistributedTrainer",
    "distributed_callbacks",
    "distrib_ctx",
]
