"""TerminateOnNaN: stops at the first non-finite training loss, on the CPU and device paths."""

from __future__ import annotations

import math

import pytest
import torch
from tracker_helpers import Weights, _same, _weights, epochs_run, make_learner

from hookloop import CSVLogger, TerminateOnNaN, TerminateOnNaNCallback

# ---- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TerminateOnNaN(check_every=0), "check_every must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# ---- TerminateOnNaN --------------------------------------------------------------------------


def nan_inputs(bad_row):
    """16 training rows (4 batches of 4), one of them NaN."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    x[bad_row] = math.nan
    return x


def _finite(model):
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_terminate_on_nan_stops_before_stepping_on_the_bad_batch():
    weights = Weights(per_step=True)
    learn = make_learner(x_train=nan_inputs(9), n_train=16, bs=4)  # row 9 is in batch 2
    nan_stop = TerminateOnNaN()
    learn.fit(3, cbs=[nan_stop, weights])
    assert nan_stop.stopped_at == (0, 2)
    assert weights.steps == 2
    assert _finite(learn.model)
    assert _same(_weights(learn.model), weights.per_step[1])
    assert epochs_run(learn) == 1  # the bad epoch is recorded (Keras), then the fit stops
    assert "Epoch 0, batch 2: non-finite training loss (nan), stopping" in learn.lines


def test_terminate_on_nan_records_the_bad_epoch_with_its_nan_loss_then_stops():
    # Keras 3: the batch loop ends after the bad batch, validation runs, on_epoch_end gets the
    # logs, and no further epoch starts.
    learn = make_learner(x_train=nan_inputs(9), n_train=16, bs=4)  # row 9 is in batch 2
    history = learn.fit(3, cbs=TerminateOnNaN())
    assert history.epoch == [0]
    assert math.isnan(history.history["loss"][0])
    assert math.isfinite(history.history["val_loss"][0])  # validation ran
    assert len(learn.recorder.losses) == 3  # batches 0, 1 and the bad 2; batch 3 never ran


def test_terminate_on_nan_in_the_first_batch_keeps_that_epoch_in_the_history():
    learn = make_learner(x_train=nan_inputs(0), n_train=16, bs=4)
    history = learn.fit(3, cbs=TerminateOnNaN())
    assert len(history.history["loss"]) == 1
    assert math.isnan(history.history["loss"][0])


def test_terminate_on_nan_lets_csv_logger_write_the_nan_row(tmp_path):
    # Keras's csv_logger_test (test_stop_training_csv): the last row holds "nan".
    learn = make_learner(x_train=nan_inputs(9), n_train=16, bs=4, path=tmp_path)
    learn.fit(3, cbs=[TerminateOnNaN(), CSVLogger("log.csv")])
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,loss,val_loss"
    assert len(lines) == 2
    assert lines[1].split(",")[:2] == ["0", "nan"]


def test_terminate_on_nan_device_path_records_the_bad_epoch_too():
    learn = make_learner(x_train=nan_inputs(5), n_train=16, bs=4, opt_func=torch.optim.SGD)
    history = learn.fit(3, cbs=TerminateOnNaN(check_every=1))  # batch 1 is bad, read at once
    assert history.epoch == [0]
    assert math.isnan(history.history["loss"][0])
    assert len(learn.recorder.losses) == 2  # no training batch after the read


def test_terminate_on_nan_raise_error_says_keras_words_and_records_nothing():
    learn = make_learner(x_train=nan_inputs(9), n_train=16, bs=4)
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered"):
        learn.fit(3, cbs=TerminateOnNaN(raise_error=True))
    assert epochs_run(learn) == 0


def test_terminate_on_nan_raise_error_raises_runtime_error():
    learn = make_learner(x_train=nan_inputs(9), n_train=16, bs=4)
    with pytest.raises(RuntimeError, match="Epoch 0, batch 2: non-finite training loss"):
        learn.fit(3, cbs=TerminateOnNaN(raise_error=True))
    assert _finite(learn.model)


def test_terminate_on_nan_device_path_zeroes_the_bad_gradients_and_stops_at_the_read():
    # check_every=4 takes the no-sync path: batch 1 is bad, its gradients are zeroed, and the
    # flag is read after batch 3. With plain SGD, zero gradients leave the weights unchanged.
    weights = Weights(per_step=True)
    learn = make_learner(
        x_train=nan_inputs(5), n_train=16, bs=4, opt_func=torch.optim.SGD
    )  # row 5 is in batch 1
    nan_stop = TerminateOnNaN(check_every=4)
    learn.fit(3, cbs=[nan_stop, weights])
    assert nan_stop.stopped_at == (0, 1)
    assert weights.steps == 4
    assert _finite(learn.model)
    assert _same(weights.per_step[1], weights.per_step[0])  # the bad batch moved nothing
    assert not _same(weights.per_step[2], weights.per_step[1])


def test_terminate_on_nan_does_nothing_on_finite_losses():
    learn = make_learner()
    nan_stop = TerminateOnNaN(check_every=1)
    learn.fit(2, cbs=nan_stop)
    assert nan_stop.stopped_at is None
    assert epochs_run(learn) == 2


def test_terminate_on_nan_callback_is_the_fastai_alias():
    assert TerminateOnNaNCallback is TerminateOnNaN
