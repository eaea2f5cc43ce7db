"""Exact resume after a crash: BackupAndRestore, fit(resume=...), and a resumable sampler."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, Sampler

from .._check import check_int
from .._util import is_rank_zero
from ..callback import Callback
from ..checkpoint_format import (
    MANIFEST,
    FolderLock,
    is_checkpoint_name,
    list_checkpoints,
    remove_stale_temporaries,
    stale_temporaries,
)
from ..collectives import fail_together, raise_shared_failure
from ..data import is_stateful_loader
from ..learner import FIT_EXTENSIONS
from ..training_state import ANY_RUN, Checkpoint, position_target, save_checkpoint


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 2 + salt) % 2**63)
    return g


class ResumableSampler(Sampler[int]):
    """Wraps a sampler so each epoch's order depends only on `(seed, epoch)` and can start late.

    Random samplers (`RandomSampler`, `SubsetRandomSampler`, `WeightedRandomSampler`) get a
    generator seeded by `(seed, epoch)` at the start of each epoch; samplers with `set_epoch`
    (`DistributedSampler`) are told the epoch. Setting `start` skips that many indices on the next
    pass only (index generation, no data loading). `make_resumable` installs it in a DataLoader.

    Example:
        sampler = ResumableSampler(RandomSampler(ds), seed=0)
        sampler.set_epoch(3); sampler.start = 64   # epoch 3 from its 65th sample

    Args:
        sampler: the sampler to wrap.
        seed: base seed of the per-epoch generators.
        loader: the DataLoader it serves; its `generator` is reseeded per epoch too, so worker
            seeds depend on `(seed, epoch, worker)` and creating the iterator draws nothing from
            the global random state.
    """

    def __init__(self, sampler: Sampler, seed: int, loader: DataLoader | None = None) -> None:
        check_int("seed", seed, typed=True)
        self.sampler = sampler
        self.seed = seed
        self.loader = loader
        self.epoch = 0
        self.start = 0  # indices to skip on the next pass

    def set_epoch(self, epoch: int) -> None:
        """Select the order of `epoch` (the learner calls it before each epoch)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self.loader is not None:
            self.loader.generator = _epoch_generator(self.seed, epoch, 1)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        if hasattr(self.sampler, "generator"):
            self.sampler.generator = _epoch_generator(self.seed, self.epoch, 0)
        start, self.start = self.start, 0
        return itertools.islice(iter(self.sampler), start, None)


def make_resumable(dl: Any, seed: int | None = None) -> bool:
    """Make `dl` able to restart at `(epoch, batch)`; True when it can (changed in place).

    hookloop's TensorLoader already can, and so can a loader that saves its own position
    (`state_dict()`, torchdata's StatefulDataLoader: a backup holds that state). A torch
    DataLoader over a map-style dataset gets its sampler wrapped in a ResumableSampler seeded by
    `seed` (default: the loader's generator's seed, else `torch.initial_seed()`). Other loaders
    are left alone (False).
    """
    if dl is None:
        return False
    if position_target(dl) is not None or is_stateful_loader(dl):
        return True
    if not isinstance(dl, DataLoader) or isinstance(dl.dataset, IterableDataset):
        return False
    if dl.batch_sampler is not None and type(dl.batch_sampler) is not BatchSampler:
        return False  # a custom batch sampler: its batches cannot be skipped by sample count
    if seed is None:
        seed = dl.generator.initial_seed() if dl.generator is not None else torch.initial_seed()
    wrapped = ResumableSampler(dl.sampler, seed, loader=dl)
    # DataLoader refuses a new `sampler` after construction to keep it consistent with
    # `batch_sampler`; replacing both together keeps them consistent.
    object.__setattr__(dl, "sampler", wrapped)
    if dl.batch_sampler is not None:
        dl.batch_sampler.sampler = wrapped
    return True


class _Restore(Callback):
    """Restores a checkpoint into the fit it is attached to (the restore half of the backups).

    It runs last (`order` 1000): its before_fit comes after every other callback's before_fit,
    which may reset state, and for a mid-epoch checkpoint its before_train comes after every
    other before_epoch/before_train (see `Checkpoint`).
    """

    order = 1000
    owner = "resume"  # who says so in an error

    def __init__(self) -> None:
        self.restore_from: Path | None = None  # one-shot source given by fit(resume=path)
        self.restored_from: Path | None = None
        self._pending: Checkpoint | None = None
        self._active = False

    def _source(self) -> Path | None:
        return None

    def _run_name(self) -> Any:
        # The run name a backup of this folder must carry; ANY_RUN: not compared.
        return ANY_RUN

    def before_fit(self) -> None:
        # Under DDP every rank reads and checks the checkpoint; a rank that found it unusable
        # (a ResumeMismatchError, a broken file) makes every rank raise, instead of the others
        # training on and waiting for it in the first gradient all-reduce.
        with fail_together():
            self._restore_at_fit_start()

    def _restore_at_fit_start(self) -> None:
        learn = self.learn
        self.restored_from, self._pending = None, None
        # lr_find's short fit is not the training to back up: it must neither restore the
        # backups, nor overwrite them, nor delete them when it ends.
        self._active = not learn.trial_run
        if not self._active:
            return
        make_resumable(learn.dls.train)
        explicit, self.restore_from = self.restore_from, None
        source = explicit or self._source()
        run_name = ANY_RUN if explicit else self._run_name()
        if source is None:
            return
        source = Path(source)
        if (source / MANIFEST).exists() or (explicit and is_checkpoint_name(source.name)):
            # One checkpoint named explicitly: a broken one is an error, not a fallback.
            ckpt = Checkpoint.read(source, map_location=learn.device)
        else:
            # Checkpoint.newest gathers from every rank. A callback that runs on rank 0 alone
            # may have failed before this one: its error, sent from rank 0's after_exception,
            # must be met here by an exchange, which the gather would not match.
            raise_shared_failure()
            ckpt = Checkpoint.newest(source, map_location=learn.device)
        if ckpt is None:
            if explicit is None:
                return  # nothing backed up yet: a fresh start
            raise FileNotFoundError(f"resume: no complete checkpoint in {str(source)!r}")
        ckpt.restore_fit_start(learn, run_name, owner=self.owner)
        self.restored_from = ckpt.path
        self._pending = ckpt if ckpt.mid_epoch else None
        done = "; the run is already complete" if ckpt.epoch >= learn.n_epoch else ""
        learn.logger(f"resumed from {ckpt.path} (epoch {ckpt.epoch}, batch {ckpt.iter}){done}")

    def before_train(self) -> None:
        if self._pending is not None:
            ckpt, self._pending = self._pending, None
            ckpt.restore_train_start(self.learn)


class BackupAndRestore(_Restore):
    """Backs up the whole training state so that running the same script again after a crash
    continues exactly where the newest complete backup left off (Keras `BackupAndRestore`).

    The resumed run is bit-identical to one that was never interrupted: weights, optimizer,
    gradient scaler and every callback's state, the Recorder's history, the random states, and
    the position in the data (mid-epoch backups resume at the next batch, without replaying).

    Example:
        learn.fit(10, cbs=BackupAndRestore("backups"))   # killed in epoch 6? run it again.

    Args:
        backup_dir: folder of the backups, one sub-folder per backup (created when needed).
        save_freq: 'epoch' backs up at the end of every epoch; an int n backs up after every
            n training batches (counted over the whole fit).
        keep: number of complete backups kept; an older one is deleted only once a newer one
            is complete.
        delete_on_success: delete the backups when fit ends without an exception.
        delete_checkpoint: Keras's name for `delete_on_success` (wins when given).
        double_checkpoint: Keras's switch between `keep=2` (True) and `keep=1` (False).
        run_name: a name for this run, stored in each backup: a backup with another name is
            an error, not a resume. Unnamed runs are told apart by their model's structure,
            optimizer class and training data only.

    A backup is resumed only by the run that made it: the same model structure (names and
    shapes), optimizer class, run name, training data (samples, batch size, batches per epoch,
    `steps_per_epoch`) and `n_epoch`; any difference is a `ResumeMismatchError` naming it,
    in before_fit. The folder is checked (a folder, writable) and locked in before_fit: a second
    run using it at the same time is an error. Temporaries left by a writer that died are
    removed then.
    """

    owner = "BackupAndRestore"

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        save_freq: str | int = "epoch",
        keep: int = 2,
        delete_on_success: bool = True,
        *,
        delete_checkpoint: bool | None = None,
        double_checkpoint: bool | None = None,
        run_name: str | None = None,
    ) -> None:
        super().__init__()
        if delete_checkpoint is not None:
            delete_on_success = delete_checkpoint
        if double_checkpoint is not None:
            keep = 2 if double_checkpoint else 1
        if backup_dir is None or backup_dir == "":
            # Keras's message; Path("") would be the working directory, deleted on success.
            raise ValueError(f"Empty `backup_dir` argument passed: got {backup_dir!r}")
        if not isinstance(backup_dir, (str, os.PathLike)):
            raise TypeError(f"backup_dir must be a path, got {backup_dir!r}")
        if save_freq != "epoch":
            check_int("save_freq", save_freq, 1, what="'epoch' or a positive int")
        check_int("keep", keep, 1)
        if run_name is not None and not isinstance(run_name, str):
            raise TypeError(
                f"BackupAndRestore: run_name must be a str or None, got "
                f"{type(run_name).__name__}: {run_name!r}"
            )
        self.run_name = run_name
        self._lock: FolderLock | None = None
        self.backup_dir = Path(backup_dir)
        self.save_freq = save_freq
        self.keep = keep
        self.delete_on_success = delete_on_success
        if save_freq != "epoch":
            # Only then is this callback called per batch: 'epoch' costs nothing per batch.
            self.after_batch = self._backup_every_n

    def _source(self) -> Path | None:
        return self.backup_dir

    def _run_name(self) -> Any:
        return self.run_name

    def _take_folder(self) -> None:
        # Before anything is read or trained: the folder must be a folder we can write in, and
        # ours alone while this fit runs.
        d = self.backup_dir
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(
                f"BackupAndRestore: backup_dir {str(d)!r} is a file, not a folder; give the "
                f"folder for the backups (created when needed)"
            )
        lock = FolderLock(d, owner="BackupAndRestore")
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK | os.X_OK):
                raise PermissionError(f"no write permission on {str(d)!r}")
            lock.acquire()
        except OSError as e:
            raise type(e)(
                f"BackupAndRestore: cannot write backups in backup_dir {str(d)!r} "
                f"({e.strerror or e}); give a folder this process can create and write in"
            ) from e
        self._lock = lock
        remove_stale_temporaries(d)

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def before_fit(self) -> None:
        learn = self.learn
        if not learn.trial_run:
            self._release()  # a fit that ended without after_fit (an error elsewhere)
            # Rank 0 alone writes the backups, so it alone checks and locks the folder; the
            # other ranks wait for its outcome here and raise its error with it (a file
            # instead of a folder, a folder in use), instead of waiting for it in the next
            # collective until the timeout.
            with fail_together():
                if is_rank_zero():
                    self._take_folder()
        try:
            if (
                self.save_freq != "epoch"
                and not learn.trial_run
                and not make_resumable(learn.dls.train)
            ):
                raise ValueError(
                    f"save_freq={self.save_freq!r} backs up mid-epoch, but the training loader "
                    f"({type(self.learn.dls.train).__name__}) cannot restart mid-epoch; use "
                    f"save_freq='epoch', a hookloop DataLoaders, or a torch DataLoader over a "
                    f"map-style dataset"
                )
            super().before_fit()
        except BaseException:
            self._release()
            raise

    def _backup(self, epoch: int, iter: int) -> None:
        if self._active:  # on every rank: save_checkpoint gathers their random states
            save_checkpoint(
                self.learn, self.backup_dir, epoch, iter, keep=self.keep, run_name=self.run_name
            )

    def _backup_every_n(self) -> None:
        learn = self.learn
        if learn.training and learn.train_iter % self.save_freq == 0:
            self._backup(learn.epoch, learn.iter + 1)

    def after_epoch(self) -> None:
        if self.save_freq == "epoch":
            self._backup(self.learn.epoch + 1, 0)

    def after_fit(self) -> None:
        if not self._active:
            return  # lr_find's fit: it took no lock and leaves the backups alone
        try:
            if self.delete_on_success and is_rank_zero():
                self._delete_contents()  # under the lock: no other run is writing there
        finally:
            self._release()
        if self.delete_on_success and is_rank_zero():
            self._remove_folder()

    def after_exception(self) -> None:
        if not self.learn.trial_run:
            self._release()

    def _delete_contents(self) -> None:
        d = self.backup_dir
        if not d.is_dir():
            return
        for p in list_checkpoints(d):
            shutil.rmtree(p, ignore_errors=True)
        for p in stale_temporaries(d):  # never a live writer's
            shutil.rmtree(p, ignore_errors=True)

    def _remove_folder(self) -> None:
        try:
            self.backup_dir.rmdir()
        except OSError:
            pass  # the user keeps other files there, or another run has started in it

    def delete_backups(self) -> None:
        """Delete this callback's backups (and the folder, when nothing else is in it)."""
        self._delete_contents()
        self._remove_folder()


class _ResumeFrom(_Restore):
    """Restores one checkpoint (or the newest in a folder) for `fit(resume=path)`."""

    owner = "fit(resume=...)"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.restore_from = path


def resume_callbacks(learn: Any, fit_cbs: list, resume: Any) -> list[Callback]:
    """What `fit(resume=...)` attaches: 'auto' adds BackupAndRestore(path/model_dir/'backup')
    unless one is attached; a path restores from that checkpoint or folder."""
    if resume is None:
        return []
    attached = [c for c in list(learn.cbs) + list(fit_cbs) if isinstance(c, BackupAndRestore)]
    if resume == "auto":
        return [] if attached else [BackupAndRestore(learn.path / learn.model_dir / "backup")]
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume must be None, 'auto' or a path, got {resume!r}")
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume: no checkpoint or backup folder at {str(path)!r}")
    if attached:
        attached[0].restore_from = path
        return []
    return [_ResumeFrom(path)]


FIT_EXTENSIONS.append(resume_callbacks)

__all__ = ["BackupAndRestore", "ResumableSampler", "make_resumable"]
