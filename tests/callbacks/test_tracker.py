"""Trackers and checkpoints: EarlyStopping, SaveModel, ModelCheckpoint, TerminateOnNaN."""

from __future__ import annotations

import functools
import math
import operator

import pytest
import torch
from torch import nn

from hookloop import (
    Callback,
    CancelFitException,
    DataLoaders,
    EarlyStopping,
    EarlyStoppingCallback,
    Learner,
    Metric,
    ModelCheckpoint,
    ProgressBar,
    SaveModel,
    SaveModelCallback,
    TerminateOnNaN,
    TerminateOnNaNCallback,
    accuracy,
)
from hookloop.checkpoint import atomic_save, safe_load


class Scripted(Metric):
    """A validation value that is `values[epoch]`, so trackers see exactly these numbers."""

    def __init__(self, values, name="scripted_loss", higher_is_better=None):
        self.values = list(values)
        self._name = name
        self.higher_is_better = higher_is_better
        self._epoch = 0

    def reset(self):
        pass

    def accumulate(self, learn):
        self._epoch = learn.epoch

    @property
    def value(self):
        return float(self.values[self._epoch])

    @property
    def name(self):
        return self._name


class Weights(Callback):
    """Keeps a copy of the weights at the end of every epoch (and optionally every step)."""

    def __init__(self, per_step=False):
        self.per_epoch, self.per_step, self.steps = {}, [], 0
        self._per_step = per_step

    def after_step(self):
        self.steps += 1
        if self._per_step:
            self.per_step.append(_weights(self.learn.model))

    def after_epoch(self):
        self.per_epoch[self.learn.epoch] = _weights(self.learn.model)


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


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_learner(metrics=None, n_train=8, bs=4, x_train=None, opt_func=torch.optim.AdamW, **kw):
    """Linear(4, 2) on n_train/bs training batches and one validation batch; logs captured."""
    g = torch.Generator().manual_seed(0)
    xt = torch.randn(n_train, 4, generator=g) if x_train is None else x_train
    yt = torch.randint(0, 2, (len(xt),), generator=g)
    xv, yv = torch.randn(4, 4, generator=g), torch.randint(0, 2, (4,), generator=g)
    dls = DataLoaders.from_tensors(xt, yt, valid=(xv, yv), bs=bs, shuffle=False)
    torch.manual_seed(0)
    learn = Learner(
        nn.Linear(4, 2),
        dls,
        nn.CrossEntropyLoss(),
        metrics=metrics,
        device="cpu",
        lr=0.1,
        opt_func=opt_func,
        **kw,
    )
    learn.remove_cb(ProgressBar)  # it prints to stdout; tests read learn.logger's lines
    learn.lines = []
    learn.logger = learn.lines.append
    return learn


def epochs_run(learn):
    return len(learn.recorder.rows)


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


class CountBatches(Callback):
    def __init__(self):
        self.n = 0

    def before_batch(self):
        self.n += 1


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
        (lambda: SaveModel(every_epoch=True, at_end=True), "every_epoch and at_end"),
        (lambda: SaveModel(every="sometimes"), "every must be 'epoch' or 'improvement'"),
        (lambda: SaveModel(every_epoch=-2), "every_epoch must be >= 0, got -2"),
        (lambda: ModelCheckpoint("x.pth", save_freq=0), "save_freq must be 'epoch' or"),
        (lambda: ModelCheckpoint("x.pth", save_freq="batch"), "got 'batch'"),
        (lambda: TerminateOnNaN(check_every=0), "check_every must be >= 1"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_argument(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# ---- SaveModel (fastai v2 and v1) ----------------------------------------------------------


def test_save_model_saves_improvements_and_loads_the_best_at_the_end(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    learn.fit(3, cbs=[SaveModel(monitor="scripted_loss"), weights])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pth"]
    assert _same(_weights(learn.model), weights.per_epoch[1])
    assert "Better model found at epoch 1 with scripted_loss value: 4.0." in learn.lines
    saved = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert set(saved) == {"model"}  # with_opt=False by default
    assert _same(saved["model"], weights.per_epoch[1])


def test_save_model_with_opt_saves_the_optimizer_state(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(1, cbs=SaveModel(with_opt=True))
    saved = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert set(saved) == {"model", "opt"}


def test_save_model_every_epoch_writes_0_based_names_and_keeps_the_last_weights(tmp_path):
    weights = Weights()
    learn = make_learner(path=tmp_path)
    learn.fit(3, cbs=[SaveModel(every_epoch=True), weights])
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["model_0.pth", "model_1.pth", "model_2.pth"]
    saved = torch.load(tmp_path / "models" / "model_1.pth", weights_only=True)
    assert _same(saved["model"], weights.per_epoch[1])
    assert _same(_weights(learn.model), weights.per_epoch[2])


def test_save_model_every_epoch_2_writes_every_other_epoch(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(5, cbs=SaveModel(every_epoch=2, fname="ckpt"))
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["ckpt_0.pth", "ckpt_2.pth", "ckpt_4.pth"]


def test_save_model_at_end_writes_the_final_weights_and_does_not_load_the_best(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    learn.fit(3, cbs=[SaveModel(monitor="scripted_loss", at_end=True), weights])
    saved = torch.load(tmp_path / "models" / "model.pth", weights_only=True)
    assert _same(saved["model"], weights.per_epoch[2])
    assert _same(_weights(learn.model), weights.per_epoch[2])


def test_fastai_v1_every_epoch_call_writes_1_based_bestmodel_files(tmp_path):
    # The fastai v1 wiki snippet, with fit in place of fit_one_cycle.
    weights = Weights()
    learn = make_learner(metrics=accuracy, path=tmp_path)
    learn.fit(3, callbacks=[SaveModelCallback(learn, every="epoch", monitor="accuracy"), weights])
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["bestmodel_1.pth", "bestmodel_2.pth", "bestmodel_3.pth"]
    saved = torch.load(tmp_path / "models" / "bestmodel_1.pth", weights_only=True)
    assert _same(saved["model"], weights.per_epoch[0])  # bestmodel_1 is the first epoch


def test_fastai_v1_improvement_call_writes_bestmodel_and_loads_it(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), path=tmp_path)
    cb = SaveModelCallback(learn, "scripted_loss", "auto", "improvement", "best")
    learn.fit(3, callbacks=[cb, weights])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["best.pth"]
    assert _same(_weights(learn.model), weights.per_epoch[1])


def test_fastai_v1_callback_fns_builds_the_callback_with_the_learner(tmp_path):
    learn = make_learner(
        metrics=accuracy,
        path=tmp_path,
        callback_fns=[functools.partial(SaveModelCallback, every="epoch", monitor="accuracy")],
    )
    learn.fit(2)
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["bestmodel_1.pth", "bestmodel_2.pth"]


def test_save_model_callback_is_the_fastai_alias_with_the_v2_call(tmp_path):
    learn = make_learner(path=tmp_path)
    learn.fit(2, cbs=SaveModelCallback("valid_loss", every_epoch=True))
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_0.pth", "model_1.pth"]


def test_save_model_reloads_on_every_rank_so_it_is_not_rank_zero_only():
    assert SaveModel.rank_zero_only is False
    assert EarlyStopping.rank_zero_only is False
    assert ModelCheckpoint.rank_zero_only is True


# ---- ModelCheckpoint (Keras) -----------------------------------------------------------------


def test_model_checkpoint_pattern_uses_1_based_epochs_and_recorded_values(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5]))
    pattern = str(tmp_path / "ckpt" / "m-{epoch:02d}-{val_scripted_loss:.1f}.pth")
    learn.fit(3, cbs=ModelCheckpoint(pattern))
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["m-01-5.0.pth", "m-02-4.0.pth", "m-03-4.5.pth"]


def test_model_checkpoint_pattern_accepts_fastai_names_and_val_loss(tmp_path):
    learn = make_learner(metrics=Scripted([5]))
    learn.fit(1, cbs=ModelCheckpoint(str(tmp_path / "{scripted_loss:.0f}-{val_loss:.3f}.pth")))
    expected = f"5-{learn.recorder.rows[0]['valid_loss']:.3f}.pth"
    assert [p.name for p in tmp_path.iterdir()] == [expected]


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("w-{val_acc:.2f}.pth", "names 'val_acc'.*epoch, train_loss, valid_loss"),
        ("w-{batch}.pth", "names 'batch'"),  # batch exists only with an int save_freq
        ("w-{val_loss:d}.pth", "not a valid pattern"),
        ("w-{}.pth", "not a valid pattern"),
    ],
)
def test_model_checkpoint_bad_pattern_raises_before_the_first_batch(tmp_path, pattern, message):
    learn = make_learner()
    count = CountBatches()
    with pytest.raises(ValueError, match=message):
        learn.fit(1, cbs=[ModelCheckpoint(str(tmp_path / pattern)), count])
    assert count.n == 0
    assert list(tmp_path.iterdir()) == []


def test_model_checkpoint_save_best_only_writes_only_improvements(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3]))
    cb = ModelCheckpoint(
        str(tmp_path / "best-{epoch:02d}.pth"), monitor="val_scripted_loss", save_best_only=True
    )
    learn.fit(4, cbs=cb)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best-01.pth", "best-02.pth", "best-04.pth"]


def test_model_checkpoint_save_best_only_one_file_holds_the_best_epoch(tmp_path):
    weights = Weights()
    learn = make_learner(metrics=Scripted([5, 4, 4.5]))
    path = tmp_path / "best.pth"
    learn.fit(3, cbs=[ModelCheckpoint(path, "scripted_loss", save_best_only=True), weights])
    assert _same(torch.load(path, weights_only=True)["model"], weights.per_epoch[1])


def test_model_checkpoint_initial_value_threshold_must_be_beaten_first(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5, 3]))
    cb = ModelCheckpoint(
        str(tmp_path / "best-{epoch}.pth"),
        monitor="scripted_loss",
        save_best_only=True,
        initial_value_threshold=4.2,
    )
    learn.fit(4, cbs=cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-2.pth", "best-4.pth"]


def test_model_checkpoint_save_freq_counts_training_batches_across_epochs(tmp_path):
    # 2 training batches per epoch, save_freq 3: after global batches 3 and 6, i.e.
    # epoch 2 batch 1 and epoch 3 batch 2 (Keras numbering, 1-based).
    weights = Weights(per_step=True)
    learn = make_learner(n_train=8, bs=4)
    cb = ModelCheckpoint(str(tmp_path / "b-{epoch}-{batch}.pth"), save_freq=3)
    learn.fit(3, cbs=[cb, weights])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b-2-1.pth", "b-3-2.pth"]
    saved = torch.load(tmp_path / "b-2-1.pth", weights_only=True)
    assert _same(saved["model"], weights.per_step[2])  # the weights after the 3rd step


def test_model_checkpoint_batch_files_carry_the_last_completed_epoch_values(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4]), n_train=8, bs=4)
    cb = ModelCheckpoint(str(tmp_path / "{epoch}-{batch}-{scripted_loss}.pth"), save_freq=2)
    learn.fit(2, cbs=cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1-2-nan.pth", "2-2-5.0.pth"]


def test_model_checkpoint_save_best_only_with_save_freq_checks_at_the_end_of_each_epoch(tmp_path):
    # The monitored value exists only once an epoch ends; 2 batches per epoch, so batch 2.
    learn = make_learner(metrics=Scripted([5, 4, 4.5]), n_train=8, bs=4)
    cb = ModelCheckpoint(
        str(tmp_path / "{epoch}-{batch}.pth"), "scripted_loss", save_best_only=True, save_freq=1
    )
    learn.fit(3, cbs=cb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1-2.pth", "2-2.pth"]


def test_model_checkpoint_verbose_prints_keras_style_lines(tmp_path):
    learn = make_learner(metrics=Scripted([5, 4, 4.5]))
    path = tmp_path / "best.pth"
    learn.fit(3, cbs=ModelCheckpoint(path, "val_scripted_loss", verbose=1, save_best_only=True))
    assert [line for line in learn.lines if line.startswith("Epoch")] == [
        f"Epoch 1: val_scripted_loss improved from inf to 5.00000, saving model to {path}",
        f"Epoch 2: val_scripted_loss improved from 5.00000 to 4.00000, saving model to {path}",
        "Epoch 3: val_scripted_loss did not improve from 4.00000",
    ]


def test_model_checkpoint_weights_only_file_is_a_plain_state_dict(tmp_path):
    learn = make_learner()
    path = tmp_path / "w.weights.pth"
    learn.fit(1, cbs=ModelCheckpoint(path, save_weights_only=True))
    state = torch.load(path, weights_only=True)
    fresh = nn.Linear(4, 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weight, learn.model.weight)


def test_model_checkpoint_whole_model_file_is_state_dicts_that_learn_load_reads(tmp_path):
    learn = make_learner()
    path = tmp_path / "full.pth"
    learn.fit(1, cbs=ModelCheckpoint(path))
    state = torch.load(path, weights_only=True)
    assert set(state) == {"model", "opt"}
    other = make_learner()
    other.load(path)
    assert torch.equal(other.model.weight, learn.model.weight)
    assert set(other.opt.state_dict()["state"]) == {0, 1}  # Adam moments for weight and bias


def test_model_checkpoint_leaves_no_temporary_files(tmp_path):
    learn = make_learner()
    learn.fit(2, cbs=ModelCheckpoint(tmp_path / "m{epoch}.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m1.pth", "m2.pth"]


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
