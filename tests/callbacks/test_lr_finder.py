"""LRFinder and Learner.lr_find: the sweep, divergence stop, exact restore, suggestions, plots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_learner
from hookloop import (
    Callback,
    DataLoaders,
    Learner,
    LRFinder,
    SuggestionMethod,
    minimum,
    slide,
    steep,
    valley,
)


def regression_learner(path=".", **kwargs):
    """y = x @ w with SGD: the loss explodes once the lr passes ~1, so the sweep diverges."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [3.0], [0.5]])
    dls = DataLoaders.from_tensors(x, y, bs=16, shuffle=False)
    torch.manual_seed(0)
    learn = Learner(
        nn.Linear(4, 1), dls, nn.MSELoss(), opt_func=torch.optim.SGD, device="cpu", path=path
    )
    learn.logger = lambda line: None
    return learn


def snapshot(learn):
    model = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt = learn.opt.state_dict()
    state = {p: {k: v.clone() for k, v in s.items()} for p, s in opt["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]]
    return model, state, groups, learn.model.training


def assert_same_state(a, b):
    model_a, state_a, groups_a, training_a = a
    model_b, state_b, groups_b, training_b = b
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert state_a.keys() == state_b.keys()
    for p in state_a:
        assert all(torch.equal(state_a[p][k], state_b[p][k]) for k in state_a[p])
    assert groups_a == groups_b
    assert training_a == training_b


# ---- the sweep ---------------------------------------------------------------------------


def test_lr_find_sweeps_exponentially_from_start_lr_over_num_it_batches():
    learn = tiny_learner(n_train=64, bs=16)
    learn.lr_find(stop_div=False, show_plot=False)
    lrs = learn.recorder.lrs
    # Batch i uses 1e-7 * (10 / 1e-7) ** (i / 100) = 10 ** (-7 + 8 i / 100).
    assert len(lrs) == 100
    assert [lrs[0], lrs[25], lrs[50], lrs[99]] == pytest.approx(
        [1e-7, 1e-5, 1e-3, 10**0.92], rel=1e-9
    )


def test_lr_find_stops_once_the_smoothed_loss_exceeds_4_times_its_minimum():
    learn = regression_learner()
    learn.lr_find(show_plot=False)
    smooth = learn.recorder.smooth_losses
    assert len(smooth) < 100
    # The last batch is the first whose smoothed loss is above 4x the lowest one so far.
    assert smooth[-1] > 4 * min(smooth)
    assert all(smooth[i] <= 4 * min(smooth[: i + 1]) for i in range(len(smooth) - 1))


def test_lr_find_without_stop_div_runs_all_num_it_batches():
    learn = regression_learner()
    learn.lr_find(num_it=40, stop_div=False, show_plot=False, suggest_funcs=None)
    assert len(learn.recorder.lrs) == 40


def test_lr_find_skips_validation_and_prints_no_table(capsys):
    batches = {True: 0, False: 0}

    class CountBatches(Callback):
        def after_batch(self):
            batches[self.learn.training] += 1

    learn = tiny_learner(n_train=64, bs=16, cbs=CountBatches())
    learn.lr_find(num_it=20, show_plot=False)
    # 20 training batches over 5 epochs of 4; every validation is cancelled before its batches.
    # The 20th batch cancels the fit, so only the first 4 epochs have a row.
    assert batches == {True: 20, False: 0}
    assert len(learn.recorder.rows) == 4
    assert all(math.isnan(r["valid_loss"]) for r in learn.recorder.rows)
    assert capsys.readouterr().out == ""


# ---- restoring state ---------------------------------------------------------------------


def test_lr_find_restores_model_and_optimizer_bit_identically():
    learn = regression_learner(path=".")
    learn.opt_func = torch.optim.AdamW  # a stateful optimizer: exp_avg, exp_avg_sq, step
    learn.fit(1, lr=1e-2)
    before = snapshot(learn)
    learn.lr_find(show_plot=False)
    assert_same_state(before, snapshot(learn))


def test_training_after_lr_find_equals_training_without_it():
    a, b = regression_learner(), regression_learner()
    a.lr_find(show_plot=False)
    a.fit(2, lr=1e-2)
    b.fit(2, lr=1e-2)
    assert torch.equal(a.model.weight, b.model.weight)
    assert a.recorder.history.history == b.recorder.history.history


def test_lr_find_restores_state_when_a_callback_raises():
    class Boom(Callback):
        order = 70

        def after_batch(self):
            if self.learn.train_iter == 10:
                raise RuntimeError("boom")

    learn = regression_learner()
    learn.create_opt()
    before = snapshot(learn)
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(3, cbs=[LRFinder(num_it=50), Boom()])  # 12 batches; Boom raises at 10
    assert_same_state(before, snapshot(learn))


def test_lr_find_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learn = regression_learner(path=tmp_path)
    learn.lr_find(show_plot=True)
    assert list(tmp_path.rglob("*")) == []


# ---- suggestions -------------------------------------------------------------------------


def test_lr_find_returns_suggested_lrs_named_after_the_functions():
    learn = tiny_learner(n_train=64, bs=16)
    result = learn.lr_find(suggest_funcs=(valley, slide, minimum, SuggestionMethod.Steep))
    assert type(result).__name__ == "SuggestedLRs"
    assert result._fields == ("valley", "slide", "minimum", "steep")
    lrs = learn.recorder.lrs
    for value in (result.valley, result.slide, result.steep):
        assert lrs[0] <= value <= lrs[-1]
    # minimum: a tenth of the lr with the lowest smoothed loss, among the points fastai keeps
    # (the first num_it // 10 = 10 and the last 5 are skipped).
    smooth = learn.recorder.smooth_losses
    best = min(range(10, len(smooth) - 5), key=lambda i: smooth[i])
    assert result.minimum == pytest.approx(lrs[best] / 10)


def test_lr_find_with_suggest_funcs_none_returns_none():
    learn = tiny_learner(n_train=64, bs=16)
    assert learn.lr_find(num_it=20, show_plot=False, suggest_funcs=None) is None


LRS5 = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def flat(suggestion):
    """(lr, (lr_at_point, loss_at_point)) -> (lr, lr_at_point, loss_at_point)."""
    value, (lr, loss) = suggestion
    return value, lr, loss


def test_minimum_suggests_a_tenth_of_the_lr_with_the_lowest_loss():
    assert flat(minimum(LRS5, [3, 2, 1, 2, 9], 100)) == pytest.approx((1e-3, 1e-2, 1.0))


def test_steep_suggests_the_steepest_descent_per_log_lr():
    # Drops per decade: -0.1, -1.9, -0.1, +4.1: the steepest starts at 1e-3.
    assert flat(steep(LRS5, [3, 2.9, 1.0, 0.9, 5], 100)) == pytest.approx((1e-3, 1e-3, 2.9))


def test_valley_picks_a_point_in_the_longest_decreasing_run():
    lrs = [10.0 ** (i - 7) for i in range(8)]
    # Losses fall over indices 0-5 (a run of 6), then rise. fastai's rule: max_end 5,
    # max_start 5 - 6 = -1, sections 6 / 3 = 2, idx = -1 + 2 + 1 = 2 -> lrs[2] = 1e-5.
    assert flat(valley(lrs, [5, 4, 3, 2, 1, 0.5, 6, 7], 100)) == pytest.approx((1e-5, 1e-5, 3.0))


def test_slide_walks_left_until_the_slopes_15_points_apart_agree():
    lrs = [10 ** (-7 + i / 4) for i in range(30)]
    losses = [3 - 0.1 * i if i <= 20 else 1.0 for i in range(30)]
    # np.gradient is -0.1 on the slope (i < 20), -0.05 at i = 20, 0 on the flat (i > 20).
    # The window (l, r = l + 15) slides left from r = 29 while the slopes at its ends differ,
    # keeping lrs[l]; at l = 4 (r = 19) both are -0.1 and it stops. The last kept is lrs[5]
    # = 10 ** (-7 + 5 / 4), where the loss is 3 - 0.5 = 2.5.
    assert flat(slide(lrs, losses, 100)) == pytest.approx((10**-5.75, 10**-5.75, 2.5))


def test_lr_finder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_it"):
        LRFinder(num_it=5)
    with pytest.raises(ValueError, match="below end_lr"):
        LRFinder(start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ValueError, match="start_lr"):
        LRFinder(start_lr=0)


# ---- plots -------------------------------------------------------------------------------


def test_recorder_plot_after_lr_find_is_loss_vs_lr_and_after_fit_the_loss_plot():
    learn = tiny_learner(n_train=64, bs=16)
    learn.lr_find(show_plot=False)
    ax = learn.recorder.plot().axes[0]
    assert (ax.get_xscale(), ax.get_xlabel()) == ("log", "Learning Rate")
    learn.fit(1)
    ax = learn.recorder.plot().axes[0]
    assert (ax.get_xscale(), ax.get_xlabel()) == ("linear", "training batch")


def test_recorder_plot_with_suggestion_sets_min_grad_lr_like_fastai_v1():
    learn = regression_learner()
    learn.lr_find(show_plot=False)
    fig = learn.recorder.plot(suggestion=True)
    assert learn.recorder.min_grad_lr in learn.recorder.lrs
    assert fig.axes[0].get_legend().get_texts()[0].get_text().startswith("min_grad")


def test_lr_find_plot_marks_the_suggestions_and_saves_as_png(tmp_path):
    learn = regression_learner()
    suggested = learn.lr_find(suggest_funcs=(valley, minimum))
    fig = learn.recorder.lr_find_result.fig
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["valley", "minimum"]
    # The marked points sit on the curve at the suggested lrs.
    marker = ax.get_lines()[1]
    assert marker.get_xdata()[0] == pytest.approx(suggested.valley)
    out = learn.recorder.plot_lr_find(fname=tmp_path / "lr_find.png")
    assert out.axes[0].get_xscale() == "log"
    data = (tmp_path / "lr_find.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_after_lr_find_values_rows_hold_only_the_training_loss_as_fastai():
    # 4 batches an epoch, num_it 10: epochs 0 and 1 complete (the sweep skips validation), the
    # 10th batch ends the fit in epoch 2. fastai: one value per row, the smoothed train loss.
    learn = regression_learner()
    learn.fit(5, cbs=LRFinder(num_it=10, stop_div=False))
    rec = learn.recorder
    assert rec.values == [[rec.losses[3]], [rec.losses[7]]]
    assert [len(v) for v in rec.values] == [1, 1]
