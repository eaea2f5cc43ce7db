"""fastai v1 callback-wiki snippets, run as written with `from hookloop import *`."""

# The point of this module is that the star import supplies every name the snippets use.
# ruff: noqa: F403, F405

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from conftest import sign_dls
from hookloop import *


@pytest.fixture
def data(tmp_path, monkeypatch):
    # fastai v1 called its DataBunch `data`; snippets write under the working directory.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    return sign_dls()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def test_learner_takes_data_first_and_a_metrics_list(data, model):
    learn = Learner(data, model, metrics=[accuracy])
    assert learn.model is model
    assert learn.dls is data
    history = learn.fit(1)
    assert set(history.history) == {"loss", "val_loss", "val_accuracy"}


def test_lr_find_then_recorder_plot_draws_loss_against_a_log_lr_axis(data, model):
    learn = Learner(data, model, metrics=[accuracy])
    before = model.weight.detach().clone()
    learn.lr_find()
    fig = learn.recorder.plot()
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "Learning Rate"
    xs = ax.lines[0].get_xdata()
    # The sweep starts at 1e-7 and grows; plot() skips 10 points at the start, 5 at the end.
    lrs = learn.recorder.lrs
    assert list(xs) == pytest.approx(lrs[10:-5])
    assert lrs[0] == pytest.approx(1e-7)
    assert torch.equal(learn.model.weight, before)  # lr_find restores the weights
    assert fig._repr_png_().startswith(b"\x89PNG")  # a notebook draws it as the cell's value


def test_fit_one_cycle_then_plot_lr_with_moms_draws_both_schedules(data, model):
    learn = Learner(data, model, metrics=[accuracy])
    lr = 1e-2
    learn.fit_one_cycle(3, lr)
    fig = learn.recorder.plot_lr(show_moms=True)
    ax_lr, ax_mom = fig.axes
    lrs = list(ax_lr.lines[0].get_ydata())
    moms = list(ax_mom.lines[0].get_ydata())
    assert len(lrs) == len(moms) == 9  # 3 epochs of 3 batches
    assert lrs[0] == pytest.approx(lr / 25)
    assert max(lrs) == pytest.approx(lr, rel=0.05)
    assert moms[0] == pytest.approx(0.95)
    assert min(moms) == pytest.approx(0.85, abs=0.005)


def test_fit_one_cycle_accepts_v1_keywords_max_lr_div_factor_and_final_div(data, model):
    learn = Learner(data, model)
    learn.fit_one_cycle(2, max_lr=1e-2, div_factor=10.0, final_div=100.0, pct_start=0.5)
    lrs = learn.recorder.lrs
    # 6 batches, cosine up over the first half from 1e-3 to 1e-2, down towards 1e-4.
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[3] == pytest.approx(1e-2)
    assert 1e-4 < lrs[-1] < lrs[4]


def test_fit_one_cycle_tot_epochs_runs_the_first_part_of_a_longer_cycle(data, model):
    whole = Learner(data, model)
    whole.fit_one_cycle(4, max_lr=1e-2)
    torch.manual_seed(0)
    part = Learner(data, nn.Linear(4, 2))
    part.fit_one_cycle(2, max_lr=1e-2, tot_epochs=4)
    rest = Learner(data, nn.Linear(4, 2))
    rest.fit_one_cycle(2, max_lr=1e-2, tot_epochs=4, start_epoch=2)
    assert part.recorder.lrs + rest.recorder.lrs == pytest.approx(whole.recorder.lrs)


def test_mixup_returns_the_learner_with_a_mixup_callback(data, model):
    learn = Learner(data, model, metrics=[accuracy]).mixup()
    assert isinstance(learn, Learner)
    assert isinstance(learn.mix_up, MixUp)
    learn.fit(1)
    # Training used the mixed loss; validation the plain one, so valid_loss is finite.
    assert math.isfinite(learn.recorder.rows[0]["valid_loss"])


def test_callback_fns_csv_logger_and_read_logged_file(data, model, tmp_path):
    learn = Learner(data, model, metrics=[accuracy, error_rate], callback_fns=[CSVLogger])
    learn.fit(3)
    df = learn.csv_logger.read_logged_file()
    assert list(df.columns) == [
        "epoch",
        "train_loss",
        "valid_loss",
        "accuracy",
        "error_rate",
        "time",
    ]
    assert list(df["epoch"]) == [0, 1, 2]
    assert list(df["accuracy"] + df["error_rate"]) == pytest.approx([1.0] * 3)
    assert list(df["train_loss"]) == pytest.approx([r["train_loss"] for r in learn.recorder.rows])
    assert (tmp_path / "history.csv").exists()


def test_callback_fns_accepts_a_partial(data, model, tmp_path):
    learn = Learner(data, model, callback_fns=[functools.partial(CSVLogger, filename="log")])
    learn.fit(1)
    assert (tmp_path / "log.csv").read_text().startswith("epoch,train_loss,valid_loss,time")


def test_save_model_callback_every_epoch_writes_bestmodel_1_to_3(data, model, tmp_path):
    learn = Learner(data, model, metrics=accuracy)
    learn.fit_one_cycle(
        3, 1e-4, callbacks=[SaveModelCallback(learn, every="epoch", monitor="accuracy")]
    )
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["bestmodel_1.pth", "bestmodel_2.pth", "bestmodel_3.pth"]
    last = torch.load(tmp_path / "models" / "bestmodel_3.pth", weights_only=True)["model"]
    assert torch.equal(last["weight"], learn.model.weight.detach())


def test_recorder_plot_after_a_fit_draws_the_losses(data, model):
    learn = Learner(data, model, metrics=[accuracy])
    learn.fit(2)
    (ax,) = learn.recorder.plot().axes
    assert ax.get_xlabel() == "training batch"
    assert ax.get_ylabel() == "loss"


def test_save_model_callback_every_improvement_writes_bestmodel_and_loads_it(data, model, tmp_path):
    weights = []

    class Keep(Callback):
        def after_epoch(self):
            weights.append(self.learn.model.weight.detach().clone())

    learn = Learner(data, model, metrics=accuracy, lr=1e-1)
    save = SaveModelCallback(learn, every="improvement", monitor="valid_loss")
    learn.fit(3, callbacks=[Keep(), save])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["bestmodel.pth"]
    losses = [row["valid_loss"] for row in learn.recorder.rows]
    best = losses.index(min(losses))
    assert torch.equal(learn.model.weight, weights[best])
