"""Recorder plots: plot_sched, plot_lr, plot_metrics (Figures, written as PNG with fname)."""

from __future__ import annotations

import pytest

from conftest import tiny_learner
from hookloop import accuracy

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def one_cycle_learner():
    learn = tiny_learner(n_train=16, bs=4, metrics=accuracy)
    learn.fit_one_cycle(2, 1e-2)  # 8 training batches
    return learn


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_plot_sched_draws_each_recorded_hyper_parameter_and_writes_png(one_cycle_learner, tmp_path):
    rec = one_cycle_learner.recorder
    fig = rec.plot_sched(fname=tmp_path / "sched.png")
    axes = visible_axes(fig)
    assert [ax.get_ylabel() for ax in axes] == ["lr", "mom"]
    assert list(axes[0].get_lines()[0].get_ydata()) == rec.hps["lr"]
    assert (tmp_path / "sched.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_sched_with_keys_draws_only_those(one_cycle_learner):
    fig = one_cycle_learner.recorder.plot_sched(keys="mom")
    assert [ax.get_ylabel() for ax in visible_axes(fig)] == ["mom"]


def test_plot_sched_unknown_key_lists_the_recorded_ones(one_cycle_learner):
    with pytest.raises(ValueError, match="'wd'; recorded: lr, mom"):
        one_cycle_learner.recorder.plot_sched(keys=["wd"])


def test_plot_lr_shows_moms_beside_the_lr_when_asked(one_cycle_learner, tmp_path):
    rec = one_cycle_learner.recorder
    assert len(rec.plot_lr().axes) == 1
    fig = rec.plot_lr(show_moms=True, fname=tmp_path / "lr.png")
    lr_ax, mom_ax = fig.axes
    assert (lr_ax.get_ylabel(), mom_ax.get_ylabel()) == ("learning rate", "momentum")
    assert list(mom_ax.get_lines()[0].get_ydata()) == rec.hps["mom"]
    assert (tmp_path / "lr.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_metrics_has_a_loss_panel_and_one_per_metric(one_cycle_learner, tmp_path):
    rec = one_cycle_learner.recorder
    fig = rec.plot_metrics(fname=tmp_path / "metrics.png")
    losses, acc = visible_axes(fig)
    assert (losses.get_title(), acc.get_title()) == ("losses", "accuracy")
    train, valid = losses.get_lines()
    assert list(train.get_xdata()) == [0, 1]
    assert list(valid.get_ydata()) == [r["valid_loss"] for r in rec.rows]
    assert list(acc.get_lines()[0].get_ydata()) == [r["accuracy"] for r in rec.rows]
    assert (tmp_path / "metrics.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_metrics_before_any_fit_is_an_error():
    with pytest.raises(ValueError, match="call fit first"):
        tiny_learner().recorder.plot_metrics()
