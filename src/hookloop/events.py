"""The ordered set of loop events, the cancel exceptions of each level, and legacy aliases."""

from __future__ import annotations

import types

# Every event the loop fires, in the order a full training batch meets them. Callbacks
# implement methods with these names; the dispatch table is built from this tuple only.
EVENTS: tuple[str, ...] = (
    "after_create",
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_cancel_backward",
    "after_backward",
    "before_step",
    "after_cancel_step",
    "after_step",
    "after_cancel_batch",
    "after_batch",
    "after_cancel_train",
    "after_train",
    "before_validate",
    "after_cancel_validate",
    "after_validate",
    "after_cancel_epoch",
    "after_epoch",
    "after_cancel_fit",
    "after_fit",
    "after_exception",
)

# fastai's `event` namespace: `event.after_batch == "after_batch"`, every event an attribute,
# so a misspelt name fails where it is written instead of never firing.
event = types.SimpleNamespace(**{name: name for name in EVENTS})

# The fastai book's spellings; accepted with a DeprecationWarning.
LEGACY_ALIASES: dict[str, str] = {
    "begin_fit": "before_fit",
    "begin_epoch": "before_epoch",
    "begin_train": "before_train",
    "begin_batch": "before_batch",
    "begin_validate": "before_validate",
}

# Every Keras hook hookloop runs, with the loop event it runs on (callbacks/keras.py adapts
# them; LambdaCallback accepts these names beside the events).
KERAS_HOOKS: dict[str, str] = {
    "on_train_begin": "before_fit",
    "on_train_end": "after_fit",
    "on_epoch_begin": "before_epoch",
    "on_epoch_end": "after_epoch",
    "on_train_batch_begin": "before_batch",
    "on_train_batch_end": "after_batch",
    "on_batch_begin": "before_batch",
    "on_batch_end": "after_batch",
    "on_test_begin": "before_validate",
    "on_test_end": "after_validate",
    "on_test_batch_begin": "before_batch",
    "on_test_batch_end": "after_batch",
    "on_predict_begin": "before_validate",
    "on_predict_end": "after_validate",
    "on_predict_batch_begin": "before_batch",
    "on_predict_batch_end": "after_batch",
}


class CancelException(Exception):
    """Base of the control-flow exceptions a callback raises to skip the rest of a level."""


class CancelFitException(CancelException):
    """Stop training: skips to `after_cancel_fit` and `after_fit`."""


class CancelEpochException(CancelException):
    """Skip the rest of this epoch: `after_cancel_epoch`, `after_epoch`, then the next epoch."""


class CancelTrainException(CancelException):
    """Skip the rest of this epoch's training batches; validation still runs."""


class CancelValidException(CancelException):
    """Skip the rest of this epoch's validation batches."""


class CancelBatchException(CancelException):
    """Skip the rest of this batch, including the optimizer step and zero_grad."""


class CancelBackwardException(CancelException):
    """Skip the backward pass of this batch."""


class CancelStepException(CancelException):
    """Skip the optimizer step of this batch; gradients are still zeroed."""


__all__ = [
    "EVENTS",
    "event",
    "LEGACY_ALIASES",
    "KERAS_HOOKS",
    "CancelException",
    "CancelFitException",
    "CancelEpochException",
    "CancelTrainException",
    "CancelValidException",
    "CancelBatchException",
    "CancelBackwardException",
    "CancelStepException",
]
