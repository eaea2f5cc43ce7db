"""Learner.fit_one_cycle, fit_flat_cos and fit_sgdr: fastai's lr and momentum curves, step by step.

Expected values come from fastai's formulas, computed by hand:
SchedCos(a, b)(p) = a + (1 + cos(pi * (1 - p))) * (b - a) / 2, and step i of n uses pos = i / n.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_learner
from hookloop import Callback, ParamScheduler, get_hyper


class GroupLrs(Callback):
    """Records every parameter group's lr at each training batch."""

    run_valid = False

    def __init__(self):
        self.lrs = []

    def after_batch(self):
        self.lrs.append(get_hyper(self.learn.opt, "lr"))


def learner_with_steps(n_steps_per_epoch: int, **kwargs):
    # tiny_learner: bs 4, so n_train = 4 * steps gives that many training batches per epoch.
    return tiny_learner(n_train=4 * n_steps_per_epoch, bs=4, **kwargs)


def test_fit_one_cycle_lr_and_mom_match_fastai_over_20_steps():
    learn = learner_with_steps(10)
    learn.fit_one_cycle(2, lr_max=1e-2)  # 2 epochs x 10 batches = 20 steps, turning at step 5
    lrs, moms = learn.recorder.hps["lr"], learn.recorder.hps["mom"]
    assert len(lrs) == len(moms) == 20
    # step 0: lr_max / div = 1e-2 / 25 = 4e-4, mom 0.95.
    # step 2: pos .1 = .4 of the warm-up: (1 + cos(.6 pi)) / 2 = 0.345492, so
    #   lr = 4e-4 + 0.345492 * (1e-2 - 4e-4) = 3.71672e-3 and mom = .95 - 0.345492 * .1 = .915451.
    # step 5: pos .25, the top: lr 1e-2, mom 0.85.
    # step 10: pos .5 = 1/3 of the descent: (1 + cos(2 pi / 3)) / 2 = .25, so
    #   lr = 1e-2 - .25 * (1e-2 - 1e-7) = 7.500025e-3 and mom = .85 + .25 * .1 = .875.
    # step 15: pos .75 = 2/3 of the descent: (1 + cos(pi / 3)) / 2 = .75, so
    #   lr = 1e-2 - .75 * (1e-2 - 1e-7) = 2.500075e-3 and mom = .925.
    # step 19: pos .95 = 14/15 of the descent: (1 + cos(pi / 15)) / 2 = .989074, so
    #   lr = 1e-2 - .989074 * (1e-2 - 1e-7) = 1.09361e-4 and mom = .85 + .989074 * .1 = .948907.
    steps = [0, 2, 5, 10, 15, 19]
    expected_lr = [4e-4, 3.71672e-3, 1e-2, 7.500025e-3, 2.500075e-3, 1.09361e-4]
    expected_mom = [0.95, 0.915451, 0.85, 0.875, 0.925, 0.948907]
    assert [lrs[i] for i in steps] == pytest.approx(expected_lr, rel=1e-5)
    assert [moms[i] for i in steps] == pytest.approx(expected_mom, rel=1e-5)


def test_fit_one_cycle_sets_adam_betas0_as_momentum():
    probe = []

    class Betas(Callback):
        run_valid = False

        def after_batch(self):
            probe.append(self.learn.opt.param_groups[0]["betas"])

    learn = learner_with_steps(4)
    learn.fit_one_cycle(1, lr_max=1e-2, cbs=Betas())
    # 4 steps, top at step 1 (pos .25): betas[0] follows mom, betas[1] keeps AdamW's 0.999.
    assert probe[0] == pytest.approx((0.95, 0.999))
    assert probe[1] == pytest.approx((0.85, 0.999))


def test_fit_one_cycle_without_lr_max_uses_learn_lr():
    learn = learner_with_steps(4, lr=2e-2)
    learn.fit_one_cycle(1)
    # 4 steps: step 0 is 2e-2 / 25 = 8e-4, step 1 (pos .25) is the top, 2e-2.
    assert learn.recorder.hps["lr"][:2] == pytest.approx([8e-4, 2e-2])


def test_fit_one_cycle_spreads_a_slice_over_parameter_groups():
    probe = GroupLrs()
    learn = learner_with_steps(4, splitter=lambda m: [[m.weight], [m.bias]])
    learn.fit_one_cycle(1, lr_max=slice(1e-4, 1e-2), cbs=probe)
    # Two groups: slice(1e-4, 1e-2) gives lr_max [1e-4, 1e-2]; step 0 divides both by 25.
    assert probe.lrs[0] == pytest.approx([4e-6, 4e-4])
    assert probe.lrs[1] == pytest.approx([1e-4, 1e-2])


def test_fit_one_cycle_runs_cbs_and_callbacks_for_that_fit_only():
    a, b = GroupLrs(), GroupLrs()
    learn = learner_with_steps(4)
    learn.fit_one_cycle(1, 1e-2, cbs=a, callbacks=[b])
    assert len(a.lrs) == len(b.lrs) == 4
    assert not any(isinstance(cb, (ParamScheduler, GroupLrs)) for cb in learn.cbs)


def test_fit_one_cycle_passes_wd_to_fit():
    learn = learner_with_steps(2)
    learn.fit_one_cycle(1, 1e-2, wd=0.25)
    assert get_hyper(learn.opt, "wd") == [0.25]


def test_fit_one_cycle_with_an_optimizer_without_momentum_schedules_lr_only():
    learn = learner_with_steps(4, opt_func=torch.optim.Adagrad)
    learn.fit_one_cycle(1, 1e-2)
    assert "mom" not in learn.recorder.hps
    assert learn.recorder.hps["lr"][:2] == pytest.approx([4e-4, 1e-2])


def test_fit_one_cycle_accepts_fastai_v1_max_lr_and_two_moms():
    learn = learner_with_steps(4)
    learn.fit_one_cycle(1, max_lr=1e-2, moms=(0.95, 0.85))
    # (0.95, 0.85) means 0.95 -> 0.85 -> 0.95, as (0.95, 0.85, 0.95); 4 steps, top at step 1.
    # step 2: pos .5 = 1/3 of the descent: 0.85 + 0.25 * 0.1 = 0.875.
    assert learn.recorder.hps["lr"][:2] == pytest.approx([4e-4, 1e-2])
    assert learn.recorder.hps["mom"][:3] == pytest.approx([0.95, 0.85, 0.875])


def test_fit_one_cycle_rejects_bad_arguments_before_training():
    learn = learner_with_steps(2)
    with pytest.raises(ValueError, match="pct_start"):
        learn.fit_one_cycle(1, 1e-2, pct_start=1.5)
    with pytest.raises(ValueError, match="moms"):
        learn.fit_one_cycle(1, 1e-2, moms=(0.95,))
    with pytest.raises(ValueError, match="div"):
        learn.fit_one_cycle(1, 1e-2, div=0)
    assert learn.recorder.rows == []


def test_fit_flat_cos_is_flat_for_three_quarters_then_cosine():
    learn = learner_with_steps(10)
    learn.fit_flat_cos(2, lr=1e-2)
    lrs = learn.recorder.hps["lr"]
    # Steps 0-15 (pos < .75, and .75 itself starts the cosine at its top) stay at 1e-2.
    # step 16: pos .8 = .2 of the cosine: (1 + cos(.8 pi)) / 2 = .095492, so
    #   lr = 1e-2 - .095492 * (1e-2 - 1e-7) = 9.04509e-3;
    # step 18: .6 of it: (1 + cos(.4 pi)) / 2 = .654508 -> 3.45498e-3;
    # step 19: .8 of it: (1 + cos(.2 pi)) / 2 = .904508 -> 9.55005e-4.
    assert lrs[:16] == pytest.approx([1e-2] * 16)
    assert [lrs[16], lrs[18], lrs[19]] == pytest.approx(
        [9.04509e-3, 3.45498e-3, 9.55005e-4], rel=1e-5
    )
    assert learn.recorder.hps["mom"] == [0.9] * 20  # momentum left alone (AdamW's beta1)


def test_fit_sgdr_runs_cycles_growing_by_cycle_mult():
    learn = learner_with_steps(4)
    history = learn.fit_sgdr(2, 1, lr_max=1e-2)
    # 2 cycles, 1 then 2 epochs: 3 epochs of 4 steps. Cycle 1 is steps 0-3, cycle 2 steps 4-11.
    assert history.epoch == [0, 1, 2]
    lrs = learn.recorder.hps["lr"]
    # step 0: 1e-2; step 2 (half of cycle 1): 5e-3; step 3 (.75 of it):
    #   1e-2 * (1 - (1 + cos(pi / 4)) / 2) = 1.46447e-3; step 4 restarts at 1e-2;
    #   step 8 (half of cycle 2): 5e-3.
    assert [lrs[i] for i in (0, 2, 3, 4, 8)] == pytest.approx(
        [1e-2, 5e-3, 1.46447e-3, 1e-2, 5e-3], rel=1e-5
    )


def test_fit_sgdr_with_cycle_mult_1_restarts_every_cycle_len_epochs():
    learn = learner_with_steps(2)
    history = learn.fit_sgdr(3, 1, lr_max=1e-2, cycle_mult=1)
    assert history.epoch == [0, 1, 2]
    # Each epoch is a cycle of 2 steps: 1e-2 at its start, half of that in the middle.
    assert learn.recorder.hps["lr"] == pytest.approx([1e-2, 5e-3] * 3)


def test_fit_sgdr_rejects_zero_cycles():
    with pytest.raises(ValueError, match="n_cycles"):
        learner_with_steps(2).fit_sgdr(0, 1)
