"""The loop's event sequence, and what each cancel exception skips (DESIGN §2)."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import EventLog, tiny_learner
from hookloop import (
    Callback,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    CancelTrainException,
    CancelValidException,
    event,
)
from hookloop.events import EVENTS

TRAIN_BATCH = [
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
]
VALID_BATCH = ["before_batch", "after_pred", "after_loss", "after_batch"]


def run(raise_at=None, n_epoch=1):
    log = EventLog(raise_at)
    learn = tiny_learner(cbs=log)
    learn.fit(n_epoch)
    return log.events, learn


def test_fit_with_one_train_and_one_valid_batch_fires_exactly_20_events():
    events, _ = run()
    expected = (
        ["before_fit", "before_epoch", "before_train"]
        + TRAIN_BATCH
        + ["after_train", "before_validate"]
        + VALID_BATCH
        + ["after_validate", "after_epoch", "after_fit"]
    )
    assert events == expected
    assert len(events) == 20


def test_cancel_batch_in_before_batch_skips_the_rest_of_the_batch():
    events, _ = run({"before_batch": CancelBatchException()})
    assert events[:6] == [
        "before_fit",
        "before_epoch",
        "before_train",
        "before_batch",
        "after_cancel_batch",
        "after_batch",
    ]
    assert events[6] == "after_train"


def test_cancel_batch_skips_step_and_zero_grad():
    class Probe(Callback):
        def before_step(self):
            raise CancelBatchException()

    learn = tiny_learner(cbs=Probe())
    before = learn.model.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(learn.model.weight, before)  # no step
    assert learn.model.weight.grad is not None  # gradients were not zeroed
    assert learn.model.weight.grad.abs().sum() > 0


def test_cancel_step_skips_the_step_but_still_zeroes_gradients():
    log = EventLog({"before_step": CancelStepException()})
    learn = tiny_learner(cbs=log)
    before = learn.model.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(learn.model.weight, before)
    assert learn.model.weight.grad is None  # zero_grad(set_to_none=True) ran
    i = log.events.index("before_step")
    assert log.events[i : i + 4] == [
        "before_step",
        "after_cancel_step",
        "after_step",
        "after_batch",
    ]


def test_cancel_backward_skips_backward_then_steps():
    events, _ = run({"before_backward": CancelBackwardException()})
    i = events.index("before_backward")
    assert events[i : i + 5] == [
        "before_backward",
        "after_cancel_backward",
        "after_backward",
        "before_step",
        "after_step",
    ]


def test_cancel_train_still_validates():
    events, _ = run({"before_batch": CancelTrainException()})
    assert events[:6] == [
        "before_fit",
        "before_epoch",
        "before_train",
        "before_batch",
        "after_cancel_train",
        "after_train",
    ]
    assert events[6:8] == ["before_validate", "before_batch"]


def test_cancel_valid_ends_validation_and_the_epoch_goes_on():
    events, _ = run({"before_validate": CancelValidException()})
    i = events.index("before_validate")
    assert events[i:] == [
        "before_validate",
        "after_cancel_validate",
        "after_validate",
        "after_epoch",
        "after_fit",
    ]


def test_cancel_epoch_moves_to_the_next_epoch():
    events, learn = run({"before_train": CancelEpochException()}, n_epoch=2)
    assert events[:5] == [
        "before_fit",
        "before_epoch",
        "before_train",
        "after_cancel_epoch",
        "after_epoch",
    ]
    assert events.count("before_epoch") == 2
    assert learn.recorder.history.epoch == [0, 1]


def test_cancel_fit_in_before_batch_unwinds_inner_levels_without_their_after_events():
    events, _ = run({"before_batch": CancelFitException()}, n_epoch=3)
    assert events == [
        "before_fit",
        "before_epoch",
        "before_train",
        "before_batch",
        "after_cancel_fit",
        "after_fit",
    ]


def test_cancel_train_raised_during_validation_is_an_error_naming_it_and_the_phase():
    class Bad(Callback):
        def before_validate(self):
            raise CancelTrainException()

    learn = tiny_learner(cbs=Bad())
    with pytest.raises(RuntimeError, match="CancelTrainException.*validation"):
        learn.fit(1)


def test_validate_fires_only_validation_and_batch_events():
    log = EventLog()
    learn = tiny_learner(cbs=log)
    learn.validate()
    assert log.events == ["before_validate"] + VALID_BATCH + ["after_validate"]


def test_legacy_begin_names_run_as_before_events_with_a_deprecation_warning():
    seen = []

    class Book(Callback):
        def begin_fit(self):
            seen.append("begin_fit")

        def begin_batch(self):
            seen.append("begin_batch")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn = tiny_learner(cbs=Book())
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) == 2
    learn.fit(1)
    assert seen == ["begin_fit", "begin_batch", "begin_batch"]  # 1 train + 1 valid batch


def test_exception_in_a_callback_fires_after_exception_once_and_keeps_its_type():
    log = EventLog({"after_loss": ZeroDivisionError("boom")})
    learn = tiny_learner(cbs=log)
    with pytest.raises(ZeroDivisionError) as info:
        learn.fit(2)
    assert log.events[-1] == "after_exception"
    assert log.events.count("after_exception") == 1
    assert "after_fit" not in log.events
    assert any("EventLog" in n and "after_loss" in n for n in info.value.__notes__)


def test_learner_exception_is_set_during_after_exception():
    seen = []

    class Boom(Callback):
        def after_pred(self):
            raise KeyError("x")

        def after_exception(self):
            seen.append(type(self.learn.exception).__name__)

    with pytest.raises(KeyError):
        tiny_learner(cbs=Boom()).fit(1)
    assert seen == ["KeyError"]


def test_keyboard_interrupt_fires_after_exception_and_is_reraised():
    log = EventLog({"before_step": KeyboardInterrupt()})
    learn = tiny_learner(cbs=log)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1)
    assert log.events[-1] == "after_exception"


def _failing_clean_up_then_log(clean_up_error: BaseException) -> tuple[EventLog, EventLog]:
    """A fit that fails in after_loss, whose first callback also fails in after_exception."""
    broken = EventLog({"after_loss": ZeroDivisionError("boom"), "after_exception": clean_up_error})
    return broken, EventLog()  # both order -100: they run in this order


def test_a_failing_after_exception_does_not_skip_the_next_callbacks_after_exception():
    broken, log = _failing_clean_up_then_log(OSError("disk gone"))
    with pytest.raises(ZeroDivisionError):
        tiny_learner(cbs=[broken, log]).fit(1)
    assert log.events[-1] == "after_exception"


def test_the_training_error_propagates_with_a_note_naming_the_callback_whose_clean_up_failed():
    broken, log = _failing_clean_up_then_log(OSError("disk gone"))
    with pytest.raises(ZeroDivisionError, match="boom") as info:
        tiny_learner(cbs=[broken, log]).fit(1)
    notes = [n for n in info.value.__notes__ if "after_exception" in n]
    assert len(notes) == 1
    assert notes[0].startswith("after_exception of callback EventLog failed too: OSError: disk")


def test_a_keyboard_interrupt_in_after_exception_propagates_after_the_other_clean_ups():
    broken, log = _failing_clean_up_then_log(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as info:
        tiny_learner(cbs=[broken, log]).fit(1)
    assert log.events[-1] == "after_exception"
    assert isinstance(info.value.__context__, ZeroDivisionError)  # the training error


def test_callbacks_passed_to_fit_are_detached_after_an_exception():
    log = EventLog({"after_batch": ValueError("x")})
    learn = tiny_learner()
    with pytest.raises(ValueError):
        learn.fit(1, cbs=log)
    assert log not in learn.cbs
    assert not hasattr(learn, "event_log")


def test_the_event_namespace_names_every_event_and_refuses_a_misspelling():
    assert event.after_batch == "after_batch"
    assert [getattr(event, name) for name in EVENTS] == list(EVENTS)
    with pytest.raises(AttributeError):
        _ = event.afterbatch
