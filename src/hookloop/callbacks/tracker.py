"""Trackers: TrackerCallback (watch one recorded value, remember its best) and EarlyStopping."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch

from .._check import check_choice, check_int, check_number
from .._util import keras_name, unwrap_model
from ..callback import Callback
from ..distributed import is_rank_zero
from ..events import CancelFitException
from ..metrics import higher_is_better
from . import compat

_MODES = ("auto", "min", "max")


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Clones stay on the model's device: copying is asynchronous there, no host sync.
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


def resolve_monitor(learn: Any, name: str) -> str:
    """The canonical recorded name that a tracker's `monitor` (fastai or Keras spelling) means.

    First the Recorder's rule (`val_loss` = `valid_loss`, a bare metric name or `val_<m>` is the
    validation value); then any recorded value's Keras key: when no validation value has the
    name, `mse` is the training `train_mse`, as in Keras. Unknown names raise the Recorder's
    ValueError, which lists the recorded names in both spellings.
    """
    recorder = learn.recorder
    try:
        return recorder.resolve(name)
    except ValueError:
        by_keras = {keras_name(n): n for n in recorder.recorded_names()}
        if name in by_keras:
            return by_keras[name]
        raise


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
            `accuracy` or `val_accuracy`, `train_loss` or `loss`; with no validation set, a
            training metric's Keras key such as `mse`). An unknown name raises a ValueError at
            the start of `fit`, listing the recorded names.
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
        check_choice("mode", mode, _MODES, what=f"one of {', '.join(_MODES)}")
        if comp is not None and mode != "auto" and bool(comp(0.0, 1.0)) != (mode == "min"):
            raise ValueError(f"comp={comp!r} and mode={mode!r} disagree on the direction")
        self.monitor = monitor
        self.comp = comp
        self.mode = mode
        # An infinite min_delta would make every value "no improvement": finite only.
        self.min_delta = float(check_number("min_delta", min_delta, 0, typed=True))
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
        self.monitor_name = resolve_monitor(self.learn, self.monitor)
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


class EarlyStopping(TrackerCallback, metaclass=compat.LearnerFirst):
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

    fastai v1's call `EarlyStoppingCallback(learn, monitor, mode, min_delta, patience)` (also
    what `callback_fns=[partial(...)]` does) is built by `compat.early_stopping`; it keeps v1's
    meaning of `patience` (epochs tolerated, default 0), so `self.patience` is one more.
    """

    order = TrackerCallback.order + 3
    # fastai v1's call EarlyStoppingCallback(learn, ...): see compat.LearnerFirst.
    from_learner = classmethod(compat.early_stopping)

    def __init__(
        self,
        monitor: str = "valid_loss",
        min_delta: float = 0.0,
        patience: int = 1,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
        *,
        comp: Callable[[Any, Any], Any] | None = None,
        reset_on_fit: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(
            monitor=monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit, mode=mode
        )
        self.patience = check_int("patience", patience, 0, typed=True)
        if baseline is not None:
            baseline = float(check_number("baseline", baseline, typed=True, finite=False))
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = check_int("start_from_epoch", start_from_epoch, 0, typed=True)
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


# fastai spelling.
EarlyStoppingCallback = EarlyStopping

__all__ = ["TrackerCallback", "EarlyStopping", "EarlyStoppingCallback", "resolve_monitor"]
