"""Keras's per-epoch learning-rate callbacks: LearningRateScheduler and ReduceLROnPlateau."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Sequence

from .._check import check_choice, check_int, check_number, is_number
from .._util import is_rank_zero
from ..callback import Callback
from ..hyper import get_hyper, set_hyper
from ..learner import Learner
from ..metrics import higher_is_better
from .tracker import resolve_monitor


def log_learning_rate(learn: Learner) -> None:
    """Keras 3: add this epoch's `learning_rate` to the logs and the History, once per epoch."""
    recorder = learn.find_cb("recorder")
    if recorder is None or learn.opt is None:
        return
    history = recorder.history
    if not history.epoch or history.epoch[-1] != learn.epoch:
        return  # the epoch was not recorded (cancelled before its values were complete)
    lrs = history.history.setdefault("learning_rate", [])
    if len(lrs) >= len(history.epoch):
        return  # another callback logged it already
    while len(lrs) < len(history.epoch) - 1:
        lrs.append(float("nan"))  # epochs run before this callback was attached
    lr = get_hyper(learn.opt, "lr")[-1]
    lrs.append(lr)
    recorder.logs["learning_rate"] = lr


def _takes_lr(schedule: Callable) -> bool:
    # Keras tries schedule(epoch, lr) and falls back to schedule(epoch) on TypeError, which
    # would also swallow a TypeError raised inside the schedule; look at the signature instead.
    try:
        params = inspect.signature(schedule).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


class LearningRateScheduler(Callback):
    """Keras: sets the learning rate at the start of every epoch to `schedule(epoch, lr)`.

    `schedule(epoch)` (one argument) works too. `epoch` is 0-based; `lr` is the current rate of
    the last parameter group; the returned float is written to every group. The epoch's rate is
    added to the logs and the History as `learning_rate`, as in Keras 3.

    Example:
        learn.fit(10, cbs=LearningRateScheduler(lambda epoch, lr: lr if epoch < 5 else lr * 0.9))

    Args:
        schedule: `schedule(epoch, lr) -> float` or `schedule(epoch) -> float`.
        verbose: 0 quiet, 1 prints a line whenever the rate is set.
    """

    order = -5  # log learning_rate before other after_epoch handlers read the logs
    logs_learning_rate = True  # Keras-style CSVLogger gives learning_rate a column

    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, got {schedule!r}")
        check_int("verbose", verbose, 0, what="0 or 1", owner="LearningRateScheduler")
        self.schedule, self.verbose = schedule, verbose
        self._with_lr = _takes_lr(schedule)
        self._start: tuple[int, float] | None = None  # (epoch, the lr the schedule was given)

    def before_fit(self) -> None:
        self._start = None

    def before_epoch(self) -> None:
        learn = self.learn
        epoch = learn.epoch
        if self._start is not None and self._start[0] == epoch:
            # Resumed inside this epoch: the optimizer holds the scheduled lr already, so give
            # the schedule the lr it saw at the epoch's start (no double application).
            lr_in = self._start[1]
        else:
            lr_in = get_hyper(learn.opt, "lr")[-1]
        self._start = (epoch, lr_in)
        lr = self.schedule(epoch, lr_in) if self._with_lr else self.schedule(epoch)
        # Keras accepts only floats: an int or a tensor is more likely a bug than a rate.
        if not isinstance(lr, numbers.Real) or isinstance(lr, numbers.Integral):
            raise ValueError(
                f"LearningRateScheduler: the schedule must return a float, got {lr!r} "
                f"({type(lr).__name__}) for epoch {epoch}"
            )
        set_hyper(learn.opt, "lr", float(lr))
        if self.verbose > 0 and is_rank_zero():
            learn.logger(
                f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr)}."
            )

    def after_epoch(self) -> None:
        log_learning_rate(self.learn)

    def state_dict(self) -> dict:
        if self._start is None:
            return {}
        return {"epoch": self._start[0], "lr": self._start[1]}

    def load_state_dict(self, state: dict) -> None:
        self._start = (state["epoch"], state["lr"]) if state else None


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by `factor` when a monitored value stops improving.

    fastai and Keras semantics: after `patience` epochs without an improvement larger than
    `min_delta`, every parameter group's rate becomes `max(lr * factor, min_lr)`; then
    `cooldown` epochs pass before epochs without improvement count again. The direction
    (`mode='auto'`) comes from the name: losses and errors should go down, other metrics up,
    and a metric object's `higher_is_better` wins.

    Example:
        learn.fit(30, cbs=ReduceLROnPlateau(monitor='val_loss', factor=0.5, patience=2))

    Args:
        monitor: a recorded name, fastai (`valid_loss`, `accuracy`) or Keras (`val_loss`).
        factor: new_lr = lr * factor; must be in (0, 1).
        patience: epochs without improvement before the rate is reduced.
        min_delta: an improvement must beat the best value by more than this.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: lower bound of the rate (one value, or one per parameter group).
        mode: 'auto', 'min' (lower is better) or 'max'.
        verbose: 1 prints a line on each reduction.
        reset_on_fit: start afresh (best, wait, cooldown) at every fit.
    """

    order = -5  # log learning_rate before other after_epoch handlers read the logs
    logs_learning_rate = True  # Keras-style CSVLogger gives learning_rate a column

    def __init__(
        self,
        monitor: str = "valid_loss",
        factor: float = 0.1,
        patience: int = 10,
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0.0,
        mode: str = "auto",
        verbose: int = 0,
        reset_on_fit: bool = True,
    ) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"ReduceLROnPlateau: monitor must be a str, got {monitor!r}")
        if not is_number(factor):
            raise TypeError(f"ReduceLROnPlateau: factor must be a float, got {factor!r}")
        if factor >= 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support a factor >= 1.0, got factor={factor!r} "
                f"(new_lr = lr * factor; fastai's factor=10 is factor=0.1 here)"
            )
        if not factor > 0:  # NaN too
            raise ValueError(f"ReduceLROnPlateau: factor must be > 0, got factor={factor!r}")
        owner = "ReduceLROnPlateau"
        check_int("patience", patience, 0, owner=owner)
        check_int("cooldown", cooldown, 0, owner=owner)
        check_number("min_delta", min_delta, 0, what=">= 0", owner=owner)
        min_lrs = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr]
        for v in min_lrs:
            check_number("min_lr", v, 0, what=">= 0", owner=owner, shown=min_lr)
        check_choice("mode", mode, ("auto", "min", "max"), owner=owner)
        self.monitor, self.factor, self.patience = monitor, float(factor), patience
        self.min_delta, self.cooldown, self.min_lr = float(min_delta), cooldown, min_lr
        self.mode, self.verbose, self.reset_on_fit = mode, verbose, reset_on_fit
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def _reset(self) -> None:
        self.best = -math.inf if self._higher else math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def before_fit(self) -> None:
        recorder = self.learn.recorder
        self._name = resolve_monitor(self.learn, self.monitor)
        if self.mode == "auto":
            self._higher = higher_is_better(self._name, recorder.metric_object(self._name))
        else:
            self._higher = self.mode == "max"
        n_groups = len(self.learn.opt.param_groups)
        if isinstance(self.min_lr, (list, tuple)):
            if len(self.min_lr) != n_groups:
                raise ValueError(
                    f"ReduceLROnPlateau: min_lr has {len(self.min_lr)} values for {n_groups} "
                    f"parameter groups"
                )
            self._min_lrs = [float(v) for v in self.min_lr]
        else:
            self._min_lrs = [float(self.min_lr)] * n_groups
        if self.reset_on_fit or self.best is None:
            self._reset()

    def _improved(self, current: float) -> bool:
        if self._higher:
            return current > self.best + self.min_delta
        return current < self.best - self.min_delta

    def after_epoch(self) -> None:
        learn = self.learn
        log_learning_rate(learn)
        recorder = learn.recorder
        if not recorder.rows or recorder.rows[-1]["epoch"] != learn.epoch:
            return  # this epoch has no values (cancelled before validation ended)
        current = float(recorder.rows[-1][self._name])
        # Keras's order of checks: cooldown first, then improvement, then patience.
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best = current
            self.wait = 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                self._reduce()

    def _reduce(self) -> None:
        learn = self.learn
        old = get_hyper(learn.opt, "lr")
        new = [max(lr * self.factor, m) if lr > m else lr for lr, m in zip(old, self._min_lrs)]
        if new == old:
            return  # every group is at min_lr already
        set_hyper(learn.opt, "lr", new)
        self.cooldown_counter = self.cooldown
        self.wait = 0
        if self.verbose > 0 and is_rank_zero():
            learn.logger(
                f"Epoch {learn.epoch + 1}: ReduceLROnPlateau reducing learning rate to {new[-1]}."
            )

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.wait = state["wait"]
        self.cooldown_counter = state["cooldown_counter"]


# fastai v1's name.
ReduceLROnPlateauCallback = ReduceLROnPlateau


__all__ = [
    "LearningRateScheduler",
    "ReduceLROnPlateau",
    "ReduceLROnPlateauCallback",
    "log_learning_rate",
]
