"""TerminateOnNaN: stops at the first non-finite training loss, on the CPU and device paths."""

from __future__ import annotations

import math

import pytest
import torch
from tracker_helpers import Weights, _same, _weights, epochs_run, make_learner

from hookloop import TerminateOnNaN, TerminateOnNaNCallback

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
    assert epochs_run(learn) == 0
    assert learn.lines[-1] == "Epoch 0, batch 2: non-finite training loss (nan), stopping"


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
