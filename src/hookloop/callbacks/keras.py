"""Keras-style callbacks: KerasCallback, the dispatch that runs Keras hooks, stop_training."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from .._util import unwrap_model
from ..callback import DISPATCH_EXTENSIONS, Callback, DispatchExtension, handler_of
from ..data import find_bs
from ..events import KERAS_HOOKS, CancelFitException, CancelTrainException
from ..results import GatherPreds
from .keras_logs import (
    BatchLogs,
    Deferred,
    RunningMean,
    epoch_logs,
    fit_params,
    last_logs,
    validation_logs,
)

# Hooks that receive per-batch logs; a training batch hook makes the stop check run per batch.
_TRAIN_BATCH_HOOKS = (
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_batch_begin",
    "on_batch_end",
)


def _noop(fn: Callable) -> Callable:
    # Marks KerasCallback's empty default hooks, so a subclass pays only for what it overrides.
    fn.__hookloop_noop__ = True
    return fn


def keras_hook(cb: Callback, name: str) -> Callable | None:
    """The callback's Keras hook `name`, or None when absent or KerasCallback's empty default."""
    h = handler_of(cb, name)
    if h is None or getattr(getattr(h, "__func__", h), "__hookloop_noop__", False):
        return None
    return h


def has_keras_hooks(cb: Callback) -> bool:
    """True when `cb` defines at least one Keras hook (`on_epoch_end`, ...)."""
    return any(keras_hook(cb, name) is not None for name in KERAS_HOOKS)


# Adapters: each turns one loop event into a call of one Keras hook with Keras arguments.
# They are bound to the Keras callback (types.MethodType), so error notes and show_loop name it.


def _on_fit_begin(hook: Callable | None) -> Callable:
    def before_fit(cb: Callback) -> None:
        params = fit_params(cb.learn)
        if callable(getattr(type(cb), "set_params", None)):
            cb.set_params(params)
        elif getattr(type(cb), "params", None) is None:
            object.__setattr__(cb, "params", params)
        if hook is not None:
            hook({})

    return before_fit


def _with_logs(hook: Callable, logs: Callable[[Any], dict]) -> Callable:
    def adapter(cb: Callback) -> None:
        hook(logs(cb.learn))

    return adapter


def _with_epoch(hook: Callable, logs: Callable[[Any], dict]) -> Callable:
    def adapter(cb: Callback) -> None:
        learn = cb.learn
        hook(learn.epoch, logs(learn))

    return adapter


def _with_batch(hook: Callable, logs: Callable[[Any], dict]) -> Callable:
    def adapter(cb: Callback) -> None:
        learn = cb.learn
        hook(learn.iter, logs(learn))

    return adapter


def _with_running_loss(hook: Callable, logs: Any = None) -> Callable:
    # Keras 3: batch logs hold the phase's running mean loss, weighted by batch size. Nothing
    # is computed on the device unless the hook reads `logs`.
    running = RunningMean()

    def adapter(cb: Callback) -> None:
        nonlocal running
        learn = cb.learn
        loss = learn.loss
        if loss is None:
            hook(learn.iter, {})
            return
        if learn.iter == 0:
            running = RunningMean()  # a new phase; logs handed out earlier keep the old one
        n = running.add(loss, find_bs(learn.yb if learn.yb else learn.xb))
        mean = running.mean
        hook(learn.iter, BatchLogs({"loss": Deferred(lambda: mean(n))}))

    return adapter


def _empty(learn: Any) -> dict:
    return {}


def _outputs(learn: Any) -> dict:
    return {"outputs": learn.pred}


def _first(cb: Callback, *names: str) -> Callable | None:
    # Keras: on_train_batch_* falls back to the legacy on_batch_* when not overridden.
    for name in names:
        h = keras_hook(cb, name)
        if h is not None:
            return h
    return None


def keras_adapters(cb: Callback, phase: str, predicting: bool) -> list[tuple[str, Callable]]:
    """(event, bound adapter) pairs that run `cb`'s Keras hooks in the `phase` dispatch table."""
    if not has_keras_hooks(cb):
        return []
    hooks: list[tuple[str, Callable | None, Callable]] = [
        ("before_fit", None, _on_fit_begin(keras_hook(cb, "on_train_begin"))),
    ]

    def add(event: str, hook: Callable | None, make: Callable, logs: Callable) -> None:
        if hook is not None:
            hooks.append((event, hook, make(hook, logs)))

    add("after_fit", keras_hook(cb, "on_train_end"), _with_logs, last_logs)
    add("before_epoch", keras_hook(cb, "on_epoch_begin"), _with_epoch, _empty)
    add("after_epoch", keras_hook(cb, "on_epoch_end"), _with_epoch, epoch_logs)
    if phase == "train":
        begin = _first(cb, "on_train_batch_begin", "on_batch_begin")
        end = _first(cb, "on_train_batch_end", "on_batch_end")
        add("before_batch", begin, _with_batch, _empty)
        add("after_batch", end, _with_running_loss, None)
    elif predicting:
        add("before_validate", keras_hook(cb, "on_predict_begin"), _with_logs, _empty)
        add("after_validate", keras_hook(cb, "on_predict_end"), _with_logs, _empty)
        add("before_batch", keras_hook(cb, "on_predict_batch_begin"), _with_batch, _empty)
        add("after_batch", keras_hook(cb, "on_predict_batch_end"), _with_batch, _outputs)
    else:
        add("before_validate", keras_hook(cb, "on_test_begin"), _with_logs, _empty)
        add("after_validate", keras_hook(cb, "on_test_end"), _with_logs, validation_logs)
        add("before_batch", keras_hook(cb, "on_test_batch_begin"), _with_batch, _empty)
        add("after_batch", keras_hook(cb, "on_test_batch_end"), _with_running_loss, None)
    return [(event, types.MethodType(adapter, cb)) for event, _, adapter in hooks]


class KerasStopTraining(Callback):
    """Turns Keras' `model.stop_training = True` into hookloop's cancel exceptions.

    build_dispatch adds it only when some callback defines Keras hooks: its before_fit runs
    first (the flag is reset each fit, before any `on_train_begin`), its after_batch and
    after_epoch run last, so every other callback still sees the batch or epoch that stops.
    """

    def __init__(self, learn: Any) -> None:
        object.__setattr__(self, "learn", learn)

    def before_fit(self) -> None:
        unwrap_model(self.learn.model).stop_training = False

    def after_batch(self) -> None:
        # Keras 3: a flag set during a training batch ends that epoch's batch loop.
        learn = self.learn
        if learn.training and getattr(unwrap_model(learn.model), "stop_training", False):
            raise CancelTrainException()

    def after_epoch(self) -> None:
        if getattr(unwrap_model(self.learn.model), "stop_training", False):
            raise CancelFitException()


def add_keras_stop(table: dict[str, list[Callable]], keras_cbs: list[Callback], phase: str) -> None:
    """Add the stop_training check for `keras_cbs` (callbacks with Keras hooks) to `table`."""
    learn = next((c.learn for c in keras_cbs if c.learn is not None), None)
    if learn is None:
        return
    stop = KerasStopTraining(learn)
    table["before_fit"].insert(0, stop.before_fit)
    table["after_epoch"].append(stop.after_epoch)
    batch_hooks = phase == "train" and any(
        keras_hook(c, n) is not None for c in keras_cbs for n in _TRAIN_BATCH_HOOKS
    )
    if batch_hooks:
        table["after_batch"].append(stop.after_batch)


def is_predicting(cbs: list[Callback]) -> bool:
    """True while get_preds runs (its GatherPreds callback is attached): on_predict_* hooks."""
    return any(isinstance(c, GatherPreds) for c in cbs)


class KerasDispatch(DispatchExtension):
    """Runs the Keras hooks of any callback, and turns `model.stop_training` into cancels."""

    def handlers(self, cb: Callback, cbs: list[Callback], phase: str) -> list[tuple[str, Callable]]:
        if not has_keras_hooks(cb):
            return []
        return keras_adapters(cb, phase, is_predicting(cbs))

    def finish(self, table: dict[str, list[Callable]], cbs: list[Callback], phase: str) -> None:
        keras_cbs = [cb for cb in cbs if has_keras_hooks(cb)]
        if keras_cbs:
            add_keras_stop(table, keras_cbs, phase)


DISPATCH_EXTENSIONS.append(KerasDispatch())


class KerasCallback(Callback):
    """Base class for callbacks written for Keras: they run unchanged after changing the base.

    Hooks receive Keras arguments: `epoch` (0-based) or `batch` (index within the epoch) and a
    `logs` dict with Keras keys (`loss`, `val_loss`, `val_accuracy`) as Python floats.
    `self.model` is the learner's model; `self.model.stop_training = True` stops training
    (after the current batch's epoch when set in a batch hook, after the epoch otherwise).
    `self.params` holds `epochs`, `steps` and `verbose`. A plain `Callback` with these method
    names runs them the same way; this base adds the empty defaults, so `super()` calls work.

    Example:
        class StopAtLoss(KerasCallback):
            def on_epoch_end(self, epoch, logs=None):
                if logs["loss"] < 0.1:
                    self.model.stop_training = True

        learn.fit(10, cbs=StopAtLoss())

    Args:
        (none) subclasses take whatever arguments they need.
    """

    params: dict | None = None

    @property
    def model(self) -> Any:
        """The learner's model (Keras: `self.model`)."""
        model = self.__dict__.get("_model")
        if model is not None:
            return model
        return unwrap_model(self.learn.model) if self.learn is not None else None

    @model.setter
    def model(self, model: Any) -> None:
        object.__setattr__(self, "_model", model)

    def set_model(self, model: Any) -> None:
        """Keras API: use `model` as `self.model` (normally the learner's model is used)."""
        self.model = model

    def set_params(self, params: dict) -> None:
        """Keras API: called with `epochs`, `steps` and `verbose` before `on_train_begin`."""
        object.__setattr__(self, "params", params)

    @_noop
    def on_train_begin(self, logs: dict | None = None) -> None:
        """Start of `fit`."""

    @_noop
    def on_train_end(self, logs: dict | None = None) -> None:
        """End of `fit`; `logs` are the last epoch's."""

    @_noop
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start of epoch `epoch` (0-based)."""

    @_noop
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """End of epoch `epoch`; `logs` holds the epoch's losses and metrics."""

    @_noop
    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Start of training batch `batch`."""

    @_noop
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """End of training batch `batch`; `logs['loss']` is its loss."""

    @_noop
    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Keras 2 name of `on_train_batch_begin`."""

    @_noop
    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """Keras 2 name of `on_train_batch_end`."""

    @_noop
    def on_test_begin(self, logs: dict | None = None) -> None:
        """Start of a validation phase (in fit or `validate`)."""

    @_noop
    def on_test_end(self, logs: dict | None = None) -> None:
        """End of a validation phase; `logs` holds `loss` and the metrics."""

    @_noop
    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Start of validation batch `batch`."""

    @_noop
    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """End of validation batch `batch`."""

    @_noop
    def on_predict_begin(self, logs: dict | None = None) -> None:
        """Start of `get_preds`."""

    @_noop
    def on_predict_end(self, logs: dict | None = None) -> None:
        """End of `get_preds`."""

    @_noop
    def on_predict_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Start of prediction batch `batch`."""

    @_noop
    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """End of prediction batch `batch`; `logs['outputs']` is the model's output."""


__all__ = [
    "KerasCallback",
    "KerasStopTraining",
    "KERAS_HOOKS",
    "keras_adapters",
    "add_keras_stop",
    "has_keras_hooks",
    "is_predicting",
]
