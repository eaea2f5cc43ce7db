"""ParamScheduler on hand-checkable numbers."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_learner
from hookloop import Callback, ParamScheduler, SchedLin, get_hyper

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
