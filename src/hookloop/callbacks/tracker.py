"""Trackers and checkpoints: EarlyStopping, SaveModel, ModelCheckpoint, TerminateOnNaN."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._util import keras_name, unwrap_model
from ..callback import Callback
from ..checkpoint import atomic_save
from ..distributed import is_distributed, is_rank_zero
from ..events import CancelFitException
from ..learner import Learner
from ..metrics import higher_is_better

_MODES = ("auto", "min", "max")


def _check_number(arg: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{arg} must be a number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value!r}")
    return float(value)


def _check_int(arg: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value!r}")
    return value


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Clones stay on the model's device: copying is asynchronous there, no host sync.
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


def _bind_positional(
    owner: str, args: tuple, given: dict[str, Any], defaults: dict[str, Any], slots: tuple
) -> None:
    # Put positional arguments into their slots of `given`, refusing a slot also given by name.
    if len(args) > len(slots):
        raise TypeError(
            f"{owner} takes at most {len(slots)} positional arguments ({', '.join(slots)}), "
            f"got {len(args)}"
        )
    for slot, value in zip(slots, args):
        if given[slot] is not defaults[slot] and given[slot] != defaults[slot]:
            raise TypeError(f"{owner} got multiple values for argument {slot!r}")
        given[slot] = value


def _split_learner(owner: str, args: tuple, learn: Any) -> tuple[Any, tuple]:
    # fastai v1 passed the learner first: `SaveModelCallback(learn, ...)`.
    if learn is not None and not isinstance(learn, Learner):
        raise TypeError(f"learn must be a Learner, got {learn!r}")
    if args and isinstance(args[0], Learner):
        if learn is not None:
            raise TypeError(f"{owner} got the learner both positionally and as learn=")
        return args[0], args[1:]
    return learn, args


class TrackerCallback(Callback):
    """Watches one recorded value at the end of each epoch and remembers its best.

    Subclasses read `new_best` (this epoch improved on `best`) after calling
    `super().after_epoch()`. The value is read from the Recorder, which has the epoch's values
    complete before any `after_epoch` handler runs.

    Example:
        class PrintBest(TrackerCallback):
            def after_epoch(self):
                super().after_epoch()
                if self.new_best:
                    self.learn.logger(f"best so far: {self.best}")

    Args:
        monitor: the value to watch, fastai or Keras spelling (`valid_loss` or `val_loss`,
            `accuracy` or `val_accuracy`, `train_loss` or `loss`). An unknown name raises a
            ValueError at the start of `fit`, listing the recorded names.
        comp: fastai's comparison, e.g. `np.less` or `operator.gt`; `comp(new, best)` true means
            better. None: decided by `mode`.
        min_delta: an improvement must beat the best by more than this (in the value's unit).
        reset_on_fit: forget the best value at the start of each `fit`.
        mode: 'min', 'max', or 'auto' (a metric object's `higher_is_better` wins; otherwise
            losses and errors go down, everything else up).
    """

    order = 60

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable[[Any, Any], Any] | None = None,
        min_delta: float = 0.0,
        reset_on_fit: bool = True,
        mode: str = "auto",
    ) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a recorded value's name, got {monitor!r}")
        if comp is not None and not callable(comp):
            raise TypeError(f"comp must be a comparison such as np.less, got {comp!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if comp is not None and mode != "auto" and bool(comp(0.0, 1.0)) != (mode == "min"):
            raise ValueError(f"comp={comp!r} and mode={mode!r} disagree on the direction")
        self.monitor = monitor
        self.comp = comp
        self.mode = mode
        self.min_delta = _check_number("min_delta", min_delta, minimum=0)
        self.reset_on_fit = bool(reset_on_fit)
        self.monitor_name: str | None = None  # canonical name, resolved at before_fit
        self.lower_is_better: bool | None = None
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.new_best = False

    def before_fit(self) -> None:
        self._resolve()
        if self.reset_on_fit or self.best is None:
            self.best = self._initial_best()
            self.best_epoch = None
        self.new_best = False

    def _resolve(self) -> None:
        recorder = self.learn.recorder
        self.monitor_name = recorder.resolve(self.monitor)
        if self.comp is not None:
            self.lower_is_better = bool(self.comp(0.0, 1.0))
        elif self.mode != "auto":
            self.lower_is_better = self.mode == "min"
        else:
            metric = recorder.metric_object(self.monitor_name)
            self.lower_is_better = not higher_is_better(self.monitor_name, metric)

    def _initial_best(self) -> float:
        return math.inf if self.lower_is_better else -math.inf

    def current(self) -> float:
        """This epoch's value of the monitored quantity (NaN when the epoch has none)."""
        value = self.learn.recorder.log.get(self.monitor_name, math.nan)
        return float(value) if isinstance(value, (numbers.Real, torch.Tensor)) else math.nan

    def is_improvement(self, value: float, reference: float | None) -> bool:
        """True when `value` beats `reference` by more than `min_delta`; NaN never does."""
        if math.isnan(value):
            return False
        if reference is None:
            return True
        # fastai's convention: shift the new value by min_delta towards "worse", then compare.
        shifted = value + self.min_delta if self.lower_is_better else value - self.min_delta
        if self.comp is not None:
            return bool(self.comp(shifted, reference))
        return shifted < reference if self.lower_is_better else shifted > reference

    def after_epoch(self) -> None:
        value = self.current()
        self.new_best = self.is_improvement(value, self.best)
        if self.new_best:
            self.best, self.best_epoch = value, self.learn.epoch

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "new_best": self.new_best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.new_best = state["new_best"]


# Positional orders: this library's (the issue's, Keras's without verbose) and fastai v1's.
_EARLY_ARGS = (
    "monitor",
    "min_delta",
    "patience",
    "mode",
    "baseline",
    "restore_best_weights",
    "start_from_epoch",
)
_EARLY_V1_ARGS = ("monitor", "mode", "min_delta", "patience")


class EarlyStopping(TrackerCallback):
    """Stops training when the monitored value has stopped improving (fastai and Keras).

    Each epoch that does not improve on the best by more than `min_delta` adds one to a wait
    counter; an improvement resets it. When the counter reaches `patience`, it prints
    "No improvement since epoch N: early stopping" and ends the fit. Epochs are 0-based.

    Example:
        learn.fit(20, cbs=EarlyStopping(monitor="valid_loss", patience=2,
                                        restore_best_weights=True))

    Args:
        monitor: fastai or Keras name of the watched value (`valid_loss` / `val_loss`).
        min_delta: smallest change that counts as an improvement.
        patience: number of epochs without improvement after which training stops (1 stops at
            the first epoch that does not improve; Keras's `patience=0` behaves the same).
        mode: 'auto', 'min' or 'max'.
        baseline: Keras: the value must also beat this for the wait counter to reset, so
            training stops after `patience` epochs that never beat it.
        restore_best_weights: at the end of the fit, put back the weights of the best epoch,
            whatever ended the fit (this callback, another one, or the epoch limit). The best
            weights are kept as a copy in memory, on the model's device.
        start_from_epoch: ignore the epochs before this one (warm-up).
        comp: fastai's comparison (`np.less`, `np.greater`); overrides `mode`.
        reset_on_fit: start from scratch at each `fit`.
        verbose: Keras: 1 also prints when the best weights are restored.
        learn: fastai v1 passed the learner first, `EarlyStoppingCallback(learn, monitor,
            mode, min_delta, patience)` (also what `callback_fns=[partial(...)]` does); that
            call keeps v1's meaning of `patience` (epochs tolerated, default 0), so
            `self.patience` is one more.
    """

    order = TrackerCallback.order + 3

    def __init__(
        self,
        *args: Any,
        monitor: str = "valid_loss",
        min_delta: float = 0.0,
        patience: int | None = None,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        comp: Callable[[Any, Any], Any] | None = None,
        reset_on_fit: bool = True,
        verbose: int = 0,
        learn: Learner | None = None,
    ) -> None:
        given = {
            "monitor": monitor,
            "min_delta": min_delta,
            "patience": patience,
            "mode": mode,
            "baseline": baseline,
            "restore_best_weights": restore_best_weights,
            "start_from_epoch": start_from_epoch,
        }
        defaults = {
            "monitor": "valid_loss",
            "min_delta": 0.0,
            "patience": None,
            "mode": "auto",
            "baseline": None,
            "restore_best_weights": False,
            "start_from_epoch": 0,
        }
        learn, args = _split_learner("EarlyStopping", args, learn)
        self.v1 = learn is not None
        slots = _EARLY_V1_ARGS if self.v1 else _EARLY_ARGS
        _bind_positional("EarlyStopping", args, given, defaults, slots)
        patience = given["patience"]
        if patience is None:
            patience = 0 if self.v1 else 1
        patience = _check_int("patience", patience, minimum=0)
        if self.v1:
            patience += 1  # fastai v1 stopped when wait > patience; here, when wait >= patience
        super().__init__(
            monitor=given["monitor"],
            comp=comp,
            min_delta=given["min_delta"],
            reset_on_fit=reset_on_fit,
            mode=given["mode"],
        )
        self.patience = patience
        baseline = given["baseline"]
        self.baseline = None if baseline is None else _check_number("baseline", baseline)
        self.restore_best_weights = bool(given["restore_best_weights"])
        start_from_epoch = given["start_from_epoch"]
        self.start_from_epoch = _check_int("start_from_epoch", start_from_epoch, minimum=0)
        self.verbose = verbose
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def before_fit(self) -> None:
        super().before_fit()
        self.wait = 0
        self.stopped_epoch = None
        if self.reset_on_fit:
            self.best_weights = None

    def after_epoch(self) -> None:
        # Keras's algorithm: the counter counts every watched epoch and resets on an
        # improvement that also beats the baseline; stopping is only checked on a bad epoch.
        epoch = self.learn.epoch
        self.new_best = False
        if epoch < self.start_from_epoch:
            return
        value = self.current()
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = _snapshot(self.learn.model)
            self.best_epoch = epoch
        self.wait += 1
        if self.is_improvement(value, self.best):
            self.best, self.best_epoch, self.new_best = value, epoch, True
            if self.restore_best_weights:
                self.best_weights = _snapshot(self.learn.model)
            if self.baseline is None or self.is_improvement(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            if is_rank_zero():
                self.learn.logger(self._stop_message(epoch))
            raise CancelFitException()

    def _stop_message(self, epoch: int) -> str:
        since = epoch - self.wait  # the epoch that last reset the counter
        if since >= self.start_from_epoch:
            return f"No improvement since epoch {since}: early stopping"
        if self.baseline is not None:
            return (
                f"No improvement over baseline {self.baseline} in {self.wait} epochs: "
                f"early stopping"
            )
        return f"No improvement in {self.wait} epochs: early stopping"  # only NaN values

    def after_fit(self) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            unwrap_model(self.learn.model).load_state_dict(self.best_weights)
            if self.verbose and is_rank_zero():
                self.learn.logger(
                    f"Restored the weights of epoch {self.best_epoch} "
                    f"({self.monitor_name} = {self.best})"
                )

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(wait=self.wait, stopped_epoch=self.stopped_epoch)
        if self.best_weights is not None:
            state["best_weights"] = {k: v.detach().clone() for k, v in self.best_weights.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.wait = state["wait"]
        self.stopped_epoch = state["stopped_epoch"]
        weights = state.get("best_weights")
        self.best_weights = None if weights is None else {k: v.clone() for k, v in weights.items()}


# fastai v2 and v1 positional orders of SaveModelCallback's arguments.
_SAVE_V2_ARGS = (
    "monitor",
    "comp",
    "min_delta",
    "fname",
    "every_epoch",
    "at_end",
    "with_opt",
    "reset_on_fit",
)
_SAVE_V1_ARGS = ("monitor", "mode", "every", "name")


class SaveModel(TrackerCallback):
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
        learn: fastai v1 passed the learner first; it is accepted and otherwise unused (the
            learner that runs the callback is used).
    """

    order = TrackerCallback.order + 1

    def __init__(
        self,
        *args: Any,
        monitor: str | None = None,
        comp: Callable[[Any, Any], Any] | None = None,
        min_delta: float = 0.0,
        fname: str | None = None,
        every_epoch: bool | int = False,
        at_end: bool = False,
        with_opt: bool = False,
        reset_on_fit: bool = True,
        mode: str = "auto",
        every: str | None = None,
        name: str | None = None,
        learn: Learner | None = None,
    ) -> None:
        given = {
            "monitor": monitor,
            "comp": comp,
            "min_delta": min_delta,
            "fname": fname,
            "every_epoch": every_epoch,
            "at_end": at_end,
            "with_opt": with_opt,
            "reset_on_fit": reset_on_fit,
            "mode": mode,
            "every": every,
            "name": name,
        }
        defaults = {
            "monitor": None,
            "comp": None,
            "min_delta": 0.0,
            "fname": None,
            "every_epoch": False,
            "at_end": False,
            "with_opt": False,
            "reset_on_fit": True,
            "mode": "auto",
            "every": None,
            "name": None,
        }
        learn, args = _split_learner("SaveModel", args, learn)
        slots = _SAVE_V1_ARGS if learn is not None else _SAVE_V2_ARGS
        _bind_positional("SaveModel", args, given, defaults, slots)
        # The v1 call is recognised by the learner passed first or by a v1-only keyword.
        self.v1 = learn is not None or given["every"] is not None or given["name"] is not None
        every, name = given["every"], given["name"]
        every_epoch, fname = given["every_epoch"], given["fname"]
        if every is not None:
            if every not in ("epoch", "improvement"):
                raise ValueError(f"every must be 'epoch' or 'improvement', got {every!r}")
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
        if not isinstance(fname, (str, os.PathLike)) or not str(fname):
            raise TypeError(f"fname must be a non-empty file name, got {fname!r}")
        if isinstance(every_epoch, bool):
            every_epoch = int(every_epoch)
        else:
            every_epoch = _check_int("every_epoch", every_epoch, minimum=0)
        if every_epoch and given["at_end"]:
            raise ValueError("every_epoch and at_end cannot both be set")
        self._monitor_given = given["monitor"] is not None
        super().__init__(
            monitor=given["monitor"] if self._monitor_given else "valid_loss",
            comp=given["comp"],
            min_delta=given["min_delta"],
            reset_on_fit=given["reset_on_fit"],
            mode=given["mode"],
        )
        self.fname = str(fname)
        self.every_epoch = every_epoch
        self.at_end = bool(given["at_end"])
        self.with_opt = bool(given["with_opt"])
        self.last_saved_path: Path | None = None

    def before_fit(self) -> None:
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
        if not isinstance(filepath, (str, os.PathLike)) or not str(filepath):
            raise TypeError(f"filepath must be a non-empty str or path, got {filepath!r}")
        if save_freq != "epoch":
            if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
                raise ValueError(
                    f"save_freq must be 'epoch' or a positive int (batches), got {save_freq!r}"
                )
        self.filepath = os.fspath(filepath)
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.save_freq = save_freq
        self.initial_value_threshold = (
            None
            if initial_value_threshold is None
            else _check_number("initial_value_threshold", initial_value_threshold)
        )
        self.batches_since_save = 0
        self.last_saved_path: Path | None = None

    def before_fit(self) -> None:
        super().before_fit()
        if self.initial_value_threshold is not None:
            self.best = self.initial_value_threshold
        self.batches_since_save = 0
        self._check_pattern()

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


class TerminateOnNaN(Callback):
    """Stops the fit at the first non-finite (NaN or infinite) training loss.

    The training loss as recorded (`learn.loss`, unaffected by loss scaling) is checked after
    every `after_loss` handler has run, before backward. On the CPU (single process) each batch
    is checked at once, which costs nothing: the fit stops before backward and step, so no
    step is taken on the bad loss and the weights stay finite.

    On an accelerator (CUDA, MPS), or under torch.distributed, or with `check_every` set,
    reading a device value on the host each batch would stall the pipeline, so the check stays
    on the device: a non-finite loss sets a device flag and zeroes that batch's gradients
    there (`masked_fill_`, no sync). The optimizer still calls `step()` on the zeroed gradients
    (momentum and weight decay still act; the weights stay finite), and the flag is read once
    at the end of each training epoch, or every `check_every` training batches, where the fit
    stops (all ranks agree: the flag is reduced with MAX).

    Example:
        learn.fit(10, cbs=TerminateOnNaN())
        learn.fit(10, cbs=TerminateOnNaN(raise_error=True))   # RuntimeError instead

    Args:
        raise_error: raise RuntimeError instead of ending the fit gracefully (Keras 3); the
            fit's `after_fit` handlers then do not run, `after_exception` does.
        check_every: None: every batch on a single-process CPU run, once per training epoch
            otherwise. An int N: keep the flag on the device and read it every N training
            batches (and at each epoch's end), on any device.
    """

    order = -9

    def __init__(self, raise_error: bool = False, check_every: int | None = None) -> None:
        self.raise_error = bool(raise_error)
        self.check_every = (
            None if check_every is None else _check_int("check_every", check_every, 1)
        )
        self.stopped_at: tuple[int, int] | None = None  # (epoch, batch of that epoch)
        self._reset()

    def _reset(self) -> None:
        self._on_device: bool | None = None
        self._bad: torch.Tensor | None = None  # this batch's loss is non-finite
        # First bad batch since the fit started, as epoch * 2**32 + batch; -1: none yet.
        self._first: torch.Tensor | None = None
        self._since_read = 0

    def before_fit(self) -> None:
        self.stopped_at = None
        self._reset()

    def before_backward(self) -> None:
        learn = self.learn
        loss = learn.loss if isinstance(learn.loss, torch.Tensor) else torch.as_tensor(learn.loss)
        if self._on_device is None:
            self._on_device = (
                self.check_every is not None or loss.device.type != "cpu" or is_distributed()
            )
        if not self._on_device:
            if not bool(torch.isfinite(loss)):  # a CPU tensor: reading it is not a device sync
                self._stop(learn.epoch, learn.iter, f"{float(loss)}")
            return
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss)
        # Python scalars in torch.where need no host-to-device transfer.
        self._code = (learn.epoch << 32) + learn.iter
        self._first = torch.where(bad & (self._first < 0), self._code, self._first)
        self._bad = bad

    def after_backward(self) -> None:
        if self._bad is None:
            return
        grads = [p.grad for g in self.learn.opt.param_groups for p in g["params"]]
        grads = [g for g in grads if g is not None]
        bad = self._bad
        if is_distributed() and grads:
            # DDP has already averaged the gradients, so one rank's non-finite loss is in every
            # rank's gradients: decide on them, or the ranks would step differently and diverge.
            norms = torch.stack(torch._foreach_norm(grads))
            bad = bad | ~torch.isfinite(norms).all()
            self._first = torch.where(bad & (self._first < 0), self._code, self._first)
        for grad in grads:
            grad.masked_fill_(bad, 0.0)
        self._bad = None

    def after_batch(self) -> None:
        if self.check_every is None or not self.learn.training or self._first is None:
            return
        self._since_read += 1
        if self._since_read >= self.check_every:
            self._read()

    def after_train(self) -> None:
        if self._first is not None:
            self._read()

    def _read(self) -> None:
        # The one host-device sync: per epoch, or per `check_every` batches.
        self._since_read = 0
        flag = (self._first >= 0).to(torch.int32)
        if is_distributed():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if bool(flag):
            code = int(self._first)
            if code < 0:  # another rank saw it
                self._stop(self.learn.epoch, -1, "on another rank")
            self._stop(code >> 32, code & 0xFFFFFFFF, "nan or inf")

    def _stop(self, epoch: int, batch: int, value: str) -> None:
        self.stopped_at = (epoch, batch)
        message = f"Epoch {epoch}, batch {batch}: non-finite training loss ({value}), stopping"
        if self.raise_error:
            raise RuntimeError(message)
        if is_rank_zero():
            self.learn.logger(message)
        raise CancelFitException()


# fastai spellings.
EarlyStoppingCallback = EarlyStopping
SaveModelCallback = SaveModel
TerminateOnNaNCallback = TerminateOnNaN

__all__ = [
    "TrackerCallback",
    "EarlyStopping",
    "EarlyStoppingCallback",
    "SaveModel",
    "SaveModelCallback",
    "ModelCheckpoint",
    "TerminateOnNaN",
    "TerminateOnNaNCallback",
]
