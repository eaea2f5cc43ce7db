"""ParamScheduler on hand-checkable numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_learner
from hookloop import Callback, ParamScheduler, SchedLin, combined_cos, get_hyper

# ---- ParamScheduler ----------------------------------------------------------------------


def test_param_scheduler_sets_lr_from_pct_train_before_each_batch():
    learn = tiny_learner(n_train=8, bs=4, lr=0.1)
    learn.fit(2, cbs=ParamScheduler({"lr": SchedLin(0.1, 0.5)}))
    # 2 epochs x 2 batches: pct_train 0, .25, .5, .75 -> 0.1 + pct * 0.4.
    assert learn.recorder.hps["lr"] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_param_scheduler_records_names_the_recorder_does_not_and_nothing_twice():
    learn = tiny_learner(n_train=16, bs=4)
    learn.fit(1, cbs=ParamScheduler({"lr": SchedLin(0.1, 0.5), "wd": SchedLin(0.0, 0.4)}))
    hps = learn.recorder.hps
    assert hps["wd"] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert hps["lr"] == pytest.approx([0.1, 0.2, 0.3, 0.4])  # 4 batches, 4 values (not 8)
    assert len(hps["mom"]) == 4


def test_param_scheduler_accepts_one_value_per_parameter_group():
    seen = []

    class Probe(Callback):
        run_valid = False

        def after_batch(self):
            seen.append(get_hyper(self.learn.opt, "lr"))

    learn = tiny_learner(splitter=lambda m: [[m.weight], [m.bias]])
    learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: [0.01, 0.02]}), Probe()])
    assert seen == [[0.01, 0.02]]


class GroupLrs(Callback):
    """Records every parameter group's lr after each training batch."""

    run_valid = False

    def __init__(self):
        self.seen = []

    def after_batch(self):
        self.seen.append(get_hyper(self.learn.opt, "lr"))


def two_group_learner(**kwargs):
    # 8 rows in batches of 4: two training batches per epoch; groups [weight], [bias].
    return tiny_learner(n_train=8, bs=4, splitter=lambda m: [[m.weight], [m.bias]], **kwargs)


def test_param_scheduler_sets_discriminative_lrs_from_a_numpy_array_schedule():
    # fastai's discriminative schedules compute on arrays: one lr per group.
    learn, probe = two_group_learner(), GroupLrs()
    sched = SchedLin(np.array([0.01, 0.1]), np.array([0.03, 0.3]))
    learn.fit(1, cbs=[ParamScheduler({"lr": sched}), probe])
    # pct_train 0 then 0.5: [0.01, 0.1], then halfway to [0.03, 0.3].
    assert probe.seen == [pytest.approx([0.01, 0.1]), pytest.approx([0.02, 0.2])]


def test_param_scheduler_runs_fastais_combined_cos_of_arrays():
    # fastai's own test of discriminative lrs (nbs/14_callback.schedule).
    learn, probe = two_group_learner(), GroupLrs()
    lo, mid, end = np.array([1e-4, 1e-3]), np.array([1e-3, 1e-2]), np.array([1e-5, 1e-4])
    learn.fit(1, cbs=[ParamScheduler({"lr": combined_cos(0.5, lo, mid, end)}), probe])
    # pos 0 is the start of the warm-up, pos 0.5 its peak.
    assert probe.seen == [pytest.approx([1e-4, 1e-3]), pytest.approx([1e-3, 1e-2])]


def test_param_scheduler_sets_one_lr_per_group_from_a_tensor_schedule():
    learn, probe = two_group_learner(), GroupLrs()
    learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: torch.tensor([0.5, 1.0]) * 0.1}), probe])
    assert probe.seen == [pytest.approx([0.05, 0.1])] * 2


def test_param_scheduler_takes_a_list_of_schedules_one_per_group():
    learn, probe = two_group_learner(), GroupLrs()
    learn.fit(1, cbs=[ParamScheduler({"lr": [SchedLin(0.1, 0.3), SchedLin(1.0, 3.0)]}), probe])
    assert probe.seen == [pytest.approx([0.1, 1.0]), pytest.approx([0.2, 2.0])]


def test_param_scheduler_gives_a_one_value_array_to_every_group():
    # As fastai's set_hyper: a single value stands for every group.
    learn, probe = two_group_learner(), GroupLrs()
    learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: np.array([0.05])}), probe])
    assert probe.seen == [[0.05, 0.05]] * 2


def test_param_scheduler_rejects_a_per_group_schedule_of_the_wrong_length_before_training():
    learn = two_group_learner()
    sched = ParamScheduler({"lr": lambda pos: np.array([0.1, 0.2, 0.3])})
    with pytest.raises(ValueError, match="'lr' returns 3 values and the optimizer has 2"):
        learn.fit(1, cbs=sched)
    assert learn.recorder.losses == []


def test_param_scheduler_rejects_unknown_names_and_non_callables():
    with pytest.raises(ValueError, match="'momentum'"):
        ParamScheduler({"momentum": SchedLin(0.9, 0.8)})
    with pytest.raises(TypeError, match="'lr' is not callable"):
        ParamScheduler({"lr": 0.1})
    with pytest.raises(TypeError, match="dict"):
        ParamScheduler([SchedLin(0, 1)])


def test_param_scheduler_names_the_optimizer_lacking_a_hyper_parameter_before_training():
    learn = tiny_learner(opt_func=torch.optim.Adagrad)
    with pytest.raises(ValueError, match="Adagrad has no hyper-parameter 'mom'"):
        learn.fit(1, cbs=ParamScheduler({"mom": SchedLin(0.9, 0.8)}))
    assert learn.recorder.losses == []
