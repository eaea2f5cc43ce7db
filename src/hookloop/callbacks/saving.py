"""Checkpoint savers: SaveModel (fastai: best model via learn.save) and ModelCheckpoint (Keras)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._check import check_choice, check_int, check_number, check_path, check_writable_file
from .._util import keras_name, unwrap_model
from ..checkpoint import atomic_save
from ..distributed import is_distributed, is_rank_zero
from . import compat
from .tracker import TrackerCallback


class SaveModel(TrackerCallback, metaclass=compat.LearnerFirst):
    """Saves the model when the monitored value improves and loads the best at the end (fastai).

    Files go through `learn.save` to `learn.path/learn.model_dir/<fname>.pth`, atomically, as
    state dicts (`torch.load(weights_only=True)` reads them). fastai v2's call writes
    `model.pth` on each improvement, or `model_0.pth, model_1.pth, ...` (0-based) with
    `every_epoch`. fastai v1's call, `SaveModelCallback(learn, every='epoch'|'improvement',
    monitor=..., name='bestmodel')`, writes `bestmodel.pth` or `bestmodel_1.pth,
    bestmodel_2.pth, ...` (1-based, as fastai v1 did). The file is written on rank 0 only; the
    best weights are loaded back on every rank.

    Example:
        learn.fit(10, cbs=SaveModel(monitor="accuracy"))     # models/model.pth, best loaded
        learn.fit(10, cbs=SaveModel(every_epoch=2))          # model_0.pth, model_2.pth, ...
        learn.fit(3, callbacks=[SaveModelCallback(learn, every="epoch", monitor="accuracy")])

    Args:
        monitor: fastai or Keras name of the watched value (default `valid_loss`).
        comp: fastai's comparison (`np.less`, `np.greater`); overrides `mode`.
        min_delta: smallest change that counts as an improvement.
        fname: file name stem (default `model`; fastai v1 call: `bestmodel`).
        every_epoch: True saves after every epoch, an int k after every k-th (epochs 0, k, 2k,
            ...), instead of on improvement; nothing is loaded at the end.
        at_end: also save the final model at the end of the fit (instead of loading the best).
        with_opt: also save the optimizer state.
        reset_on_fit: forget the best value at the start of each `fit`.
        mode: 'auto', 'min' or 'max'.
        every: fastai v1: 'improvement' (default) or 'epoch'.
        name: fastai v1 spelling of `fname`.

    fastai v1's call `SaveModelCallback(learn, monitor, mode, every, name)` is built by
    `compat.save_model`; the learner it is given is otherwise unused (the learner that runs the
    callback is used).
    """

    order = TrackerCallback.order + 1
    # fastai v1's call SaveModelCallback(learn, ...): see compat.LearnerFirst.
    from_learner = classmethod(compat.save_model)

    def __init__(
        self,
        monitor: str | None = None,
        comp: Callable[[Any, Any], Any] | None = None,
        min_delta: float = 0.0,
        fname: str | None = None,
        every_epoch: bool | int = False,
        at_end: bool = False,
        with_opt: bool = False,
        reset_on_fit: bool = True,
        *,
        mode: str = "auto",
        every: str | None = None,
        name: str | None = None,
    ) -> None:
        # fastai v1's keywords (every, name) mean v1's file names: bestmodel, numbered from 1.
        self.v1 = every is not None or name is not None
        if every is not None:
            check_choice("every", every, ("epoch", "improvement"), what="'epoch' or 'improvement'")
            if every_epoch is not False:
                raise ValueError(
                    "give either every (fastai v1) or every_epoch (fastai v2), not both"
                )
            every_epoch = every == "epoch"
        if name is not None:
            if fname is not None and fname != name:
                raise ValueError(f"give either fname or name, not both (got {fname!r}, {name!r})")
            fname = name
        if fname is None:
            fname = "bestmodel" if self.v1 else "model"
        check_path("fname", fname, empty=False, what="a non-empty file name")
        if isinstance(every_epoch, bool):
            every_epoch = int(every_epoch)
        else:
            every_epoch = check_int("every_epoch", every_epoch, 0, typed=True)
        if every_epoch and at_end:
            raise ValueError("every_epoch and at_end cannot both be set")
        self._monitor_given = monitor is not None
        super().__init__(
            monitor=monitor if self._monitor_given else "valid_loss",
            comp=comp,
            min_delta=min_delta,
            reset_on_fit=reset_on_fit,
            mode=mode,
        )
        self.fname = str(fname)
        self.every_epoch = every_epoch
        self.at_end = bool(at_end)
        self.with_opt = bool(with_opt)
        self.last_saved_path: Path | None = None

    def before_fit(self) -> None:
        if is_rank_zero():
            # A bad folder fails now, not at the first save after an epoch of training.
            name = f"{self.fname}_0" if self.every_epoch else self.fname
            check_writable_file(self.learn.model_file(name), "SaveModel (learn.path/model_dir)")
        # Saving every k epochs needs no monitor; a monitor the user named is still checked.
        if self.every_epoch and not self._monitor_given:
            return
        super().before_fit()
        if self.reset_on_fit:
            self.last_saved_path = None

    def _save(self, name: str) -> None:
        learn = self.learn
        if is_rank_zero():
            self.last_saved_path = learn.save(name, with_opt=self.with_opt)
        else:
            self.last_saved_path = learn.model_file(name)

    def after_epoch(self) -> None:
        epoch = self.learn.epoch
        if self.every_epoch:
            if epoch % self.every_epoch == 0:
                self._save(f"{self.fname}_{epoch + 1 if self.v1 else epoch}")
            return
        super().after_epoch()
        if self.new_best:
            if is_rank_zero():
                self.learn.logger(
                    f"Better model found at epoch {epoch} with {self.monitor} value: {self.best}."
                )
            self._save(self.fname)

    def after_fit(self) -> None:
        if self.at_end:
            self._save(self.fname)
        elif not self.every_epoch and self.last_saved_path is not None:
            if is_distributed():
                torch.distributed.barrier()  # rank 0 has finished writing the file
            self.learn.load(self.fname, with_opt=self.with_opt)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["last_saved_path"] = (
            None if self.last_saved_path is None else str(self.last_saved_path)
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        path = state.get("last_saved_path")
        self.last_saved_path = None if path is None else Path(path)


class ModelCheckpoint(TrackerCallback):
    """Saves the model to a file named from a Keras pattern, every epoch or every N batches.

    `filepath` is formatted with `epoch` (1-based, as in Keras: `{epoch:02d}` is `01` after the
    first epoch), `batch` (1-based batch of the epoch, with an int `save_freq`) and every
    recorded value in Keras and fastai spelling (`{val_loss:.2f}`, `{valid_loss:.2f}`,
    `{val_accuracy}`, `{accuracy}`); a key that names nothing is an error at the start of `fit`.
    Relative paths are relative to the working directory, as in Keras. Files are written
    atomically with `torch.save` (whatever the extension) and hold state dicts only:
    `save_weights_only=True` writes the model's state dict, otherwise
    `{"model": ..., "opt": ...}`, both readable with `torch.load(weights_only=True)` and
    `learn.load(path)`. Writes happen on rank 0 only.

    With an int `save_freq`, files are written every `save_freq` training batches and the
    pattern's values are those of the last completed epoch (NaN during the first). The
    monitored value exists only at the end of an epoch (reading it per batch would need a
    device sync), so with `save_best_only=True` the comparison and the write happen at the end
    of each epoch, whatever `save_freq` says.

    Example:
        learn.fit(10, cbs=ModelCheckpoint("ckpt/weights.{epoch:02d}-{val_loss:.2f}.pth"))
        learn.fit(10, cbs=ModelCheckpoint("best.pth", monitor="val_accuracy",
                                          save_best_only=True))

    Args:
        filepath: file-name pattern (str or PathLike).
        monitor: fastai or Keras name of the watched value (default `val_loss`).
        verbose: 1 prints a line for each save or skipped save.
        save_best_only: write only when the monitored value improves (one file unless the
            pattern varies).
        save_weights_only: write the model's state dict only (no optimizer state).
        mode: 'auto', 'min' or 'max'.
        save_freq: 'epoch', or an int: write every that many training batches.
        initial_value_threshold: with `save_best_only`, a first save needs a value better than
            this.
        min_delta: smallest change that counts as an improvement.
    """

    order = TrackerCallback.order + 1
    rank_zero_only = True  # its only effect is writing files

    def __init__(
        self,
        filepath: str | os.PathLike,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        *,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__(monitor=monitor, min_delta=min_delta, mode=mode)
        check_path("filepath", filepath, empty=False)
        if save_freq != "epoch":
            check_int("save_freq", save_freq, 1, what="'epoch' or a positive int (batches)")
        self.filepath = os.fspath(filepath)
        _check_pattern_syntax(self.filepath)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.save_freq = save_freq
        if initial_value_threshold is not None:
            initial_value_threshold = float(
                check_number(
                    "initial_value_threshold", initial_value_threshold, typed=True, finite=False
                )
            )
        self.initial_value_threshold = initial_value_threshold
        self.batches_since_save = 0
        self.last_saved_path: Path | None = None

    def before_fit(self) -> None:
        super().before_fit()
        if self.initial_value_threshold is not None:
            self.best = self.initial_value_threshold
        self.batches_since_save = 0
        self._check_pattern()
        # A bad folder fails now, not at the first save after an epoch of training.
        check_writable_file(self._sample_path(), "ModelCheckpoint filepath")

    def _sample_path(self) -> str:
        values: dict[str, Any] = dict.fromkeys(self._keys(), 0.0)
        values["epoch"] = values["batch"] = 1
        return self.filepath.format(**values)

    def _keys(self) -> list[str]:
        names = self.learn.recorder.recorded_names()
        keys = ["epoch"] + (["batch"] if self.save_freq != "epoch" else [])
        return keys + names + [keras_name(n) for n in names]

    def _check_pattern(self) -> None:
        dummy: dict[str, Any] = dict.fromkeys(self._keys(), 0.0)
        dummy["epoch"] = 1
        if "batch" in dummy:
            dummy["batch"] = 1
        try:
            self.filepath.format(**dummy)
        except KeyError as e:
            raise ValueError(
                f"ModelCheckpoint filepath {self.filepath!r} names {e.args[0]!r}, which is not "
                f"a recorded value; it can use {', '.join(self._keys())}"
            ) from None
        except (IndexError, ValueError) as e:
            raise ValueError(
                f"ModelCheckpoint filepath {self.filepath!r} is not a valid pattern "
                f"(keys: {', '.join(self._keys())}): {e}"
            ) from None

    def _path(self, batch: int | None) -> Path:
        recorder = self.learn.recorder
        row = recorder.rows[-1] if recorder.rows else {}
        values: dict[str, Any] = {}
        for n in recorder.recorded_names():
            values[n] = values[keras_name(n)] = row.get(n, math.nan)
        values["epoch"] = self.learn.epoch + 1
        if batch is not None:
            values["batch"] = batch
        return Path(self.filepath.format(**values))

    def _write(self, path: Path) -> None:
        learn = self.learn
        model_state = unwrap_model(learn.model).state_dict()
        if self.save_weights_only:
            atomic_save(model_state, path)
        else:
            state: dict[str, Any] = {"model": model_state}
            if learn.opt is not None:
                state["opt"] = learn.opt.state_dict()
            atomic_save(state, path)
        self.last_saved_path = path

    def after_batch(self) -> None:
        if self.save_freq == "epoch" or not self.learn.training:
            return
        self.batches_since_save += 1
        if self.batches_since_save >= self.save_freq:
            self.batches_since_save = 0
            if not self.save_best_only:
                path = self._path(self.learn.iter + 1)
                if self.verbose:
                    self.learn.logger(
                        f"Epoch {self.learn.epoch + 1}, batch {self.learn.iter + 1}: "
                        f"saving model to {path}"
                    )
                self._write(path)

    def after_epoch(self) -> None:
        if self.save_freq != "epoch" and not self.save_best_only:
            return
        epoch = self.learn.epoch
        batch = None if self.save_freq == "epoch" else len(self.learn.dls.train)
        path = self._path(batch)
        if not self.save_best_only:
            if self.verbose:
                self.learn.logger(f"Epoch {epoch + 1}: saving model to {path}")
            self._write(path)
            return
        value = self.current()
        self.new_best = self.is_improvement(value, self.best)
        if self.new_best:
            if self.verbose:
                self.learn.logger(
                    f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to "
                    f"{value:.5f}, saving model to {path}"
                )
            self.best, self.best_epoch = value, epoch
            self._write(path)
        elif self.verbose:
            self.learn.logger(
                f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}"
            )

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["batches_since_save"] = self.batches_since_save
        state["last_saved_path"] = (
            None if self.last_saved_path is None else str(self.last_saved_path)
        )
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.batches_since_save = state["batches_since_save"]
        path = state.get("last_saved_path")
        self.last_saved_path = None if path is None else Path(path)


class _SampleValues(dict):
    """Any key: an int for epoch and batch, a float otherwise (the values a pattern gets)."""

    def __missing__(self, key: str) -> Any:
        return 1 if key in ("epoch", "batch") else 0.5


def _check_pattern_syntax(filepath: str) -> None:
    # Which names exist is known at the start of fit (they depend on the metrics); whether the
    # pattern formats at all (`{epoch[0]}`, `{}`, `{val_loss:d}`) is known now.
    try:
        filepath.format_map(_SampleValues())
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"ModelCheckpoint: filepath {filepath!r} is not a valid pattern: {e} (it is formatted "
            f"with named values: epoch and batch as ints, the recorded values as floats, e.g. "
            f"'weights.{{epoch:02d}}-{{val_loss:.2f}}.pth')"
        ) from None


# fastai spelling.
SaveModelCallback = SaveModel

__all__ = ["SaveModel", "SaveModelCallback", "ModelCheckpoint"]
