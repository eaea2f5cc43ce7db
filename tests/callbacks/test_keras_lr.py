"""Keras LearningRateScheduler and ReduceLROnPlateau on hand-checkable numbers."""

from __future__ import annotations

import pytest
import torch
from tracker_helpers import Scripted, make_learner

from conftest import tiny_learner
from hookloop import Callback, LearningRateScheduler, ReduceLROnPlateau


def scripted_learner(values, lr=0.1, higher_is_better=False):
    # One training batch per epoch (4 samples, bs 4), so recorder.hps['lr'] is one lr per epoch.
    # The metric says lower is better unless told otherwise (the name 'score' alone would
    # count as higher-is-better).
    metric = Scripted(values, name="score", higher_is_better=higher_is_better)
    return tiny_learner(metrics=[metric], lr=lr, opt_func=torch.optim.SGD)


# ---- LearningRateScheduler (Keras) -------------------------------------------------------


def test_learning_rate_scheduler_with_schedule_of_epoch():
    learn = tiny_learner(lr=1.0)
    learn.fit(3, cbs=LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1)))
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_learning_rate_scheduler_with_schedule_of_epoch_and_lr():
    learn = tiny_learner(lr=0.1)
    learn.fit(3, cbs=LearningRateScheduler(lambda epoch, lr: lr * 0.5))
    # Called at the start of every epoch, the first included: 0.1 * 0.5 = 0.05, then halved.
    assert learn.recorder.hps["lr"] == pytest.approx([0.05, 0.025, 0.0125])


def test_learning_rate_scheduler_logs_learning_rate_in_history_like_keras_3():
    learn = tiny_learner(lr=0.1)
    history = learn.fit(2, cbs=LearningRateScheduler(lambda epoch: [0.3, 0.2][epoch]))
    assert history.history["learning_rate"] == pytest.approx([0.3, 0.2])
    assert learn.recorder.logs["learning_rate"] == pytest.approx(0.2)


@pytest.mark.parametrize("bad", [1, torch.tensor(0.1), "0.1", None])
def test_learning_rate_scheduler_rejects_a_non_float_return(bad):
    learn = tiny_learner()
    with pytest.raises(ValueError, match="must return a float"):
        learn.fit(1, cbs=LearningRateScheduler(lambda epoch: bad))


def test_learning_rate_scheduler_does_not_swallow_a_type_error_raised_by_the_schedule():
    def schedule(epoch, lr):
        raise TypeError("bug inside the schedule")

    with pytest.raises(TypeError, match="bug inside the schedule"):
        tiny_learner().fit(1, cbs=LearningRateScheduler(schedule))


def test_learning_rate_scheduler_resumed_mid_epoch_does_not_apply_the_schedule_twice():
    first = LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    tiny_learner(lr=0.1).fit(1, cbs=first)  # epoch 0 ran with 0.1 * 0.5 = 0.05
    assert first.state_dict() == {"epoch": 0, "lr": pytest.approx(0.1)}
    resumed = LearningRateScheduler(lambda epoch, lr: lr * 0.5)

    class Load(Callback):
        order = 60  # callback state is loaded after before_fit, as on resume

        def before_fit(self):
            resumed.load_state_dict(first.state_dict())

    # The restored optimizer holds epoch 0's lr (0.05); the schedule must see 0.1 again.
    learn = tiny_learner(lr=0.05)
    learn.fit(1, cbs=[resumed, Load()])
    assert learn.recorder.hps["lr"] == pytest.approx([0.05])


def test_learning_rate_scheduler_verbose_prints_keras_message():
    learn = tiny_learner()
    lines = []
    learn.logger = lines.append
    with learn.no_bar():
        learn.fit(1, cbs=LearningRateScheduler(lambda epoch: 0.25, verbose=1))
    assert "Epoch 1: LearningRateScheduler setting learning rate to 0.25." in lines


# ---- ReduceLROnPlateau -------------------------------------------------------------------

VALUES = [5, 4, 4.5, 3, 3.5, 3.6, 2]


def test_reduce_lr_on_plateau_patience_1():
    learn = scripted_learner(VALUES)
    learn.fit(7, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1, min_delta=0))
    # Worse at epochs 2, 4 and 5: each halves the lr of the following epoch.
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_reduce_lr_on_plateau_patience_2_with_keras_monitor_name():
    learn = scripted_learner(VALUES)
    learn.fit(7, cbs=ReduceLROnPlateau("val_score", factor=0.5, patience=2, min_delta=0))
    # Epoch 2 is worse, 3 a new best (resets), 4 and 5 worse: the second one reduces.
    assert learn.recorder.hps["lr"] == pytest.approx([0.1] * 6 + [0.05])


def test_reduce_lr_on_plateau_monitors_a_training_metric_by_its_keras_key_with_no_validation_set():
    # One training batch per epoch and no validation set; lr 0.1.
    metric = Scripted(VALUES, name="mse")
    learn = make_learner(
        [metric], n_train=4, opt_func=torch.optim.SGD, valid=False, train_metrics=True
    )
    learn.fit(7, cbs=ReduceLROnPlateau("mse", factor=0.5, patience=1, min_delta=0))
    # The same numbers as with the validation value: worse at epochs 2, 4 and 5.
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.0125])


def test_reduce_lr_on_plateau_stops_at_min_lr():
    learn = scripted_learner([1, 2, 3, 4, 5])
    learn.fit(5, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1, min_lr=0.03))
    # 0.1 -> 0.05 -> max(0.025, 0.03) = 0.03, then it stays there.
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.03, 0.03])


def test_reduce_lr_on_plateau_cooldown_skips_epochs_after_a_reduction():
    learn = scripted_learner([1, 2, 3, 4, 5])
    learn.fit(5, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1, cooldown=2))
    # Reduction after epoch 1; epoch 2 is in cooldown; epoch 3 ends it and counts (Keras).
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_reduce_lr_on_plateau_min_delta_ignores_small_improvements():
    learn = scripted_learner([1.0, 0.95, 0.85])
    learn.fit(3, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1, min_delta=0.1))
    # 0.95 is not below 1.0 - 0.1, so epoch 1 reduces; 0.85 is below 0.9 (a new best).
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.05])


def test_reduce_lr_on_plateau_auto_mode_follows_higher_is_better():
    learn = scripted_learner([0.5, 0.6, 0.55, 0.7], higher_is_better=True)
    learn.fit(4, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1))
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_reduce_lr_on_plateau_explicit_mode_wins_over_the_metric_flag():
    learn = scripted_learner([0.5, 0.6, 0.55, 0.7], higher_is_better=False)
    learn.fit(4, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1, mode="max"))
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.1, 0.1, 0.05])


def test_reduce_lr_on_plateau_logs_lr_and_prints_when_verbose():
    learn = scripted_learner([1, 2, 3])
    lines = []
    learn.logger = lines.append
    with learn.no_bar():
        history = learn.fit(3, cbs=ReduceLROnPlateau("score", factor=0.5, patience=1, verbose=1))
    # learning_rate is the lr each epoch ran with (logged before the reduction), as in Keras 3.
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05])
    assert "Epoch 2: ReduceLROnPlateau reducing learning rate to 0.05." in lines


def test_reduce_lr_on_plateau_unknown_monitor_fails_before_training_listing_names():
    learn = tiny_learner()
    with pytest.raises(ValueError, match="train_loss, valid_loss"):
        learn.fit(1, cbs=ReduceLROnPlateau("val_acc"))
    assert learn.recorder.losses == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"factor": 1.0}, "factor >= 1.0"),
        ({"factor": 10}, "factor=0.1 here"),
        ({"factor": 0}, "factor must be > 0"),
        ({"patience": -1}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"mode": "best"}, "mode"),
        ({"min_lr": -1}, "min_lr"),
    ],
)
def test_reduce_lr_on_plateau_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_state_round_trip_continues_the_count():
    first = ReduceLROnPlateau("score", factor=0.5, patience=2, min_delta=0)
    learn = scripted_learner([1, 2])
    learn.fit(2, cbs=first)
    assert (first.best, first.wait) == (1, 1)
    # A resumed callback (state loaded after before_fit) sees one more bad epoch and reduces.
    second = ReduceLROnPlateau("score", factor=0.5, patience=2, min_delta=0)

    class Load(Callback):
        order = 60

        def before_fit(self):
            second.load_state_dict(first.state_dict())

    learn2 = scripted_learner([3, 4])
    learn2.fit(2, cbs=[second, Load()])
    assert learn2.recorder.hps["lr"] == pytest.approx([0.1, 0.05])
