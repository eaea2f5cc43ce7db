"""Trackers: TrackerCallback's monitor and state, EarlyStopping (fastai v2, v1 and Keras calls)."""

from __future__ import annotations

import functools
import operator

import pytest
from tracker_helpers import (
    CountBatches,
    Scripted,
    Weights,
    _same,
    _weights,
    epochs_run,
    make_learner,
)

from hookloop import (
    Callback,
    CancelFitException,
    EarlyStopping,
    EarlyStoppingCallback,
    ModelCheckpoint,
    SaveModel,
    accuracy,
)
from hookloop.checkpoint import atomic_save, safe_load


class StopBeforeEpoch(Callback):
    """Another stopper: ends the fit before epoch `epoch` starts."""

    def __init__(self, epoch):
        self.epoch_to_stop = epoch

    def before_epoch(self):
        if self.learn.epoch == self.epoch_to_stop:
            raise CancelFitException()


class ResumeAt(Callback):
    """What a resume does: after before_fit, load a tracker's state and skip the done epochs."""

    order = 100

    def __init__(self, epoch, tracker=None, state=None):
        self.start, self.tracker, self.state = epoch, tracker, state

    def before_fit(self):
        if self.tracker is not None:
            self.tracker.load_state_dict(self.state)
        self.learn.epoch = self.start


# ---- EarlyStopping ---------------------------------------------------------------------------

LOSSES_7 = [5, 4, 4.5, 3, 3.5, 3.6, 2]


@pytest.mark.parametrize(
    "values, kwargs, expected_epochs",
    [
        ([5, 4, 4.5, 3], {"patience": 1}, 3),  # 4.5 does not improve on 4: stop at epoch 2
        (LOSSES_7, {"patience": 2}, 6),  # 3.5, 3.6 after the best 3: stop at epoch 5
        (LOSSES_7, {"patience": 3}, 7),  # 2 comes in time
        ([5, 4.95, 4.9, 4], {"patience": 1, "min_delta": 0.1}, 2),  # 4.95 is only 0.05 better
        ([5, 4.8, 4.85, 4], {"patience": 2, "min_delta": 0.1}, 4),  # 4.8 is 0.2 better
        ([5, 4.9, 5.5, 4.8, 4.7], {"patience": 3}, 5),  # without a baseline: keeps going
        ([5, 4.9, 5.5, 4.8, 4.7], {"patience": 3, "baseline": 4.5}, 3),  # never beats 4.5
        ([1, 5, 4, 4.5], {"patience": 1}, 2),  # 5 is worse than 1
        ([1, 5, 4, 4.5], {"patience": 1, "start_from_epoch": 1}, 4),  # epoch 0 is ignored
    ],
)
def test_early_stopping_runs_this_many_epochs(values, kwargs, expected_epochs):
    learn = make_learner(metrics=Scripted(values))
    learn.fit(len(values), cbs=EarlyStopping(monitor="scripted_loss", **kwargs))
    assert epochs_run(learn) == expected_epochs


@pytest.mark.parametrize(
    "metric, kwargs, expected_epochs",
    [
        (Scripted([1, 2, 1.5], "scripted_score"), {}, 3),  # a score: 2 > 1 improves
        (Scripted([1, 2, 1.5], "scripted_score"), {"mode": "min"}, 2),
        (Scripted([1, 2, 1.5], "scripted_score"), {"comp": operator.lt}, 2),
        (Scripted([1, 2, 1.5], "scripted_loss"), {}, 2),  # a loss by its name: 2 is worse
        (Scripted([1, 2, 1.5], "scripted_loss", higher_is_better=True), {}, 3),  # flag wins
    ],
)
def test_early_stopping_direction_comes_from_mode_comp_or_the_metric(
    metric, kwargs, expected_epochs
):
    learn = make_learner(metrics=metric)
    learn.fit(3, cbs=EarlyStopping(monitor=metric.name, patience=1, **kwargs))
    assert epochs_run(learn) == expected_epochs


def test_early_stopping_prints_the_epoch_of_the_last_improvement():
    learn = make_learner(metrics=Scripted(LOSSES_7))
    es = EarlyStopping(monitor="scripted_loss", patience=2)
    learn.fit(7, cbs=es)
    assert learn.lines[-1] == "No improvement since epoch 3: early stopping"
    assert es.stopped_epoch == 5
    assert (es.best, es.best_epoch) == (3.0, 3)


def test_early_stopping_says_when_the_baseline_was_never_beaten():
    learn = make_learner(metrics=Scripted([5, 4.9, 5.5]))
    learn.fit(3, cbs=EarlyStopping(monitor="scripted_loss", patience=3, baseline=4.5))
    assert learn.lines[-1] == "No improvement over baseline 4.5 in 3 epochs: early stopping"


def test_early_stopping_accepts_the_keras_name_of_the_monitor():
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3]))
    learn.fit(4, cbs=EarlyStopping(monitor="val_scripted_loss", patience=1))
    assert epochs_run(learn) == 3


def test_early_stopping_monitors_a_training_metric_by_its_keras_key_with_no_validation_set():
    # Keras: compile(metrics=["mse"]), fit without validation data, EarlyStopping("mse").
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3], "mse"), valid=False, train_metrics=True)
    es = EarlyStopping(monitor="mse", patience=1)
    learn.fit(4, cbs=es)
    # 4.5 does not improve on 4: stops after epoch 2, as with a validation value.
    assert es.monitor_name == "train_mse"
    assert epochs_run(learn) == 3
    assert learn.recorder.history.history["mse"] == [5.0, 4.0, 4.5]


def test_with_no_validation_set_the_metrics_are_computed_on_the_training_data_as_keras():
    # Keras's default: no validation data, metrics=["mse"], EarlyStopping("mse"); no
    # train_metrics switch needed, since the metrics would otherwise be computed nowhere.
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3], "mse"), valid=False)
    es = EarlyStopping(monitor="mse", patience=1)
    learn.fit(4, cbs=es)
    assert es.monitor_name == "train_mse"
    assert epochs_run(learn) == 3
    assert learn.recorder.history.history["mse"] == [5.0, 4.0, 4.5]


@pytest.mark.parametrize(
    "tracker",
    [
        lambda: EarlyStopping(monitor="mse"),
        lambda: SaveModel(monitor="mse"),
        lambda: ModelCheckpoint("x.pth", monitor="mse"),
    ],
)
def test_every_tracker_reads_a_keras_training_key_as_the_training_metric(
    tracker, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # ModelCheckpoint paths are relative to the working directory
    learn = make_learner(
        metrics=Scripted([5], "mse"), valid=False, train_metrics=True, path=tmp_path
    )
    cb = tracker()
    learn.fit(1, cbs=cb)
    assert cb.monitor_name == "train_mse"


def test_a_bare_metric_name_means_the_validation_value_when_both_are_recorded():
    # hookloop follows fastai here: with a validation set, `mse` is its value (Keras: val_mse).
    learn = make_learner(metrics=Scripted([5], "mse"), train_metrics=True)
    es = EarlyStopping(monitor="mse")
    learn.fit(1, cbs=es)
    assert es.monitor_name == "valid_mse"  # the validation column (train_metrics=True names)


def test_early_stopping_callback_is_the_fastai_alias():
    assert EarlyStoppingCallback is EarlyStopping
    learn = make_learner(cbs=EarlyStoppingCallback(patience=3))
    assert learn.early_stopping.monitor == "valid_loss"


def test_early_stopping_takes_its_arguments_positionally_in_the_documented_order():
    learn = make_learner(metrics=Scripted(LOSSES_7))
    learn.fit(7, cbs=EarlyStopping("scripted_loss", 0.0, 2))  # monitor, min_delta, patience
    assert epochs_run(learn) == 6


def test_early_stopping_refuses_an_argument_given_twice():
    with pytest.raises(TypeError, match="multiple values for argument 'monitor'"):
        EarlyStopping("valid_loss", monitor="accuracy")


def test_fastai_v1_early_stopping_patience_counts_tolerated_epochs():
    # fastai v1 stops when wait > patience: its patience 1 is patience 2 here (6 epochs).
    learn = make_learner(metrics=Scripted(LOSSES_7))
    learn.fit(7, callbacks=[EarlyStoppingCallback(learn, "scripted_loss", "auto", 0.0, 1)])
    assert epochs_run(learn) == 6


def test_fastai_v1_early_stopping_through_callback_fns():
    # The fastai v1 docs' spelling; the default v1 patience 0 stops at the first bad epoch.
    learn = make_learner(
        metrics=Scripted([5, 4, 4.5, 3]),
        callback_fns=[functools.partial(EarlyStoppingCallback, monitor="scripted_loss")],
    )
    learn.fit(4)
    assert epochs_run(learn) == 3
    assert learn.early_stopping.patience == 1


def test_restore_best_weights_when_another_callback_stops_the_fit():
    # Best epoch 1 (value 1); patience 10 never triggers; the other stopper ends it after 4.
    weights = Weights()
    learn = make_learner(metrics=Scripted([3, 1, 2, 2.5, 2.8, 2.9]))
    es = EarlyStopping(monitor="scripted_loss", patience=10, restore_best_weights=True)
    learn.fit(6, cbs=[es, weights, StopBeforeEpoch(4)])
    assert epochs_run(learn) == 4
    assert es.stopped_epoch is None
    assert _same(_weights(learn.model), weights.per_epoch[1])
    assert not _same(weights.per_epoch[1], weights.per_epoch[3])


def test_restore_best_weights_when_the_epoch_limit_ends_the_fit():
    weights = Weights()
    learn = make_learner(metrics=Scripted([3, 1, 2]))
    learn.fit(
        3, cbs=[EarlyStopping("scripted_loss", patience=5, restore_best_weights=True), weights]
    )
    assert _same(_weights(learn.model), weights.per_epoch[1])


def test_restore_best_weights_after_early_stopping_itself_stops():
    weights = Weights()
    learn = make_learner(metrics=Scripted(LOSSES_7))
    es = EarlyStopping("scripted_loss", patience=2, restore_best_weights=True)
    learn.fit(7, cbs=[es, weights])
    assert _same(_weights(learn.model), weights.per_epoch[3])


def test_without_restore_best_weights_the_last_weights_stay():
    weights = Weights()
    learn = make_learner(metrics=Scripted([3, 1, 2]))
    learn.fit(3, cbs=[EarlyStopping("scripted_loss", patience=5), weights])
    assert _same(_weights(learn.model), weights.per_epoch[2])


def test_early_stopping_state_resumes_with_the_same_decisions(tmp_path):
    # Uninterrupted: best 3 at epoch 3, then 3.5, 3.6 -> stops at epoch 5, restores epoch 3.
    full_weights = Weights()
    full = make_learner(metrics=Scripted(LOSSES_7))
    full_es = EarlyStopping("scripted_loss", patience=2, restore_best_weights=True)
    full.fit(7, cbs=[full_es, full_weights])

    # Interrupted after epoch 4; the state goes through a weights-only file.
    first = make_learner(metrics=Scripted(LOSSES_7), path=tmp_path)
    es = EarlyStopping("scripted_loss", patience=2, restore_best_weights=True)
    first.fit(5, cbs=es)
    assert (es.wait, es.best, es.best_epoch) == (1, 3.0, 3)
    atomic_save(es.state_dict(), tmp_path / "es.pth")
    first.save("after_epoch_4")

    second = make_learner(metrics=Scripted(LOSSES_7), path=tmp_path)
    second.load("after_epoch_4")
    resumed = EarlyStopping("scripted_loss", patience=2, restore_best_weights=True)
    state = safe_load(tmp_path / "es.pth")
    second.fit(7, cbs=[resumed, ResumeAt(5, resumed, state)])

    assert [r["epoch"] for r in second.recorder.rows] == [5]  # 3.6 at epoch 5: wait 2, stop
    assert resumed.stopped_epoch == full_es.stopped_epoch == 5
    assert (resumed.best, resumed.best_epoch) == (full_es.best, full_es.best_epoch) == (3.0, 3)
    assert second.lines[-1] == full.lines[-1] == "No improvement since epoch 3: early stopping"
    assert _same(_weights(second.model), full_weights.per_epoch[3])


def test_a_fresh_early_stopping_without_the_state_decides_differently():
    # The control for the resume test: at epoch 5, 3.6 is a new best for a fresh tracker.
    learn = make_learner(metrics=Scripted(LOSSES_7))
    es = EarlyStopping("scripted_loss", patience=2)
    learn.fit(7, cbs=[es, ResumeAt(5)])
    assert [r["epoch"] for r in learn.recorder.rows] == [5, 6]


# ---- monitor names and arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tracker",
    [
        lambda: EarlyStopping(monitor="val_acc"),
        lambda: SaveModel(monitor="val_acc"),
        lambda: ModelCheckpoint("x.pth", monitor="val_acc"),
    ],
)
def test_an_unknown_monitor_raises_before_the_first_batch_listing_the_names(tracker, tmp_path):
    learn = make_learner(metrics=accuracy, path=tmp_path)
    count = CountBatches()
    with pytest.raises(ValueError, match="'val_acc'.*train_loss, valid_loss, accuracy"):
        learn.fit(1, cbs=[tracker(), count])
    assert count.n == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EarlyStopping(patience=-1), "patience must be >= 0, got -1"),
        (lambda: EarlyStopping(min_delta=-0.1), "min_delta must be >= 0"),
        (lambda: EarlyStopping(mode="up"), "mode must be one of auto, min, max, got 'up'"),
        (lambda: EarlyStopping(monitor=3), "monitor must be"),
        (lambda: EarlyStopping(comp=operator.lt, mode="max"), "disagree"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize(
    "tracker",
    [
        lambda: SaveModel(monitor="scripted_loss"),
        lambda: ModelCheckpoint("unused.pth", monitor="scripted_loss", save_best_only=True),
        lambda: EarlyStopping("scripted_loss", patience=3, restore_best_weights=True),
    ],
)
def test_tracker_state_round_trips_through_a_weights_only_file(tracker, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    cb = tracker()
    learn.fit(3, cbs=cb)
    atomic_save(cb.state_dict(), tmp_path / "state.pth")
    fresh = tracker()
    fresh.load_state_dict(safe_load(tmp_path / "state.pth"))
    assert (fresh.best, fresh.best_epoch) == (cb.best, cb.best_epoch) == (4.0, 1)
    assert fresh.state_dict().keys() == cb.state_dict().keys()
