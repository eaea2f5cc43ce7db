"""fastai v2 callback-guide snippets, run as written with `from hookloop import *`."""

# The point of this module is that the star import supplies every name the snippets use.
# ruff: noqa: F403, F405

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import sign_dls
from hookloop import *


@pytest.fixture
def dls(tmp_path, monkeypatch):
    # Snippets write to the working directory (models/, history.csv): keep that in tmp_path.
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    return sign_dls()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return nn.Linear(4, 2)


# The guide's callback, verbatim.
class PrintMetricsCallback(Callback):
    def after_epoch(self):
        print(f"Loss: {self.learn.loss:.4f}, Accuracy: {self.learn.recorder.metrics[0]:.4f}")


def test_print_metrics_callback_prints_the_current_epochs_accuracy_once_per_epoch(
    dls, model, capsys
):
    learn = Learner(dls, model, metrics=accuracy, cbs=PrintMetricsCallback())
    learn.fit(2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Loss:")]
    # learn.loss after an epoch is the last validation batch's loss; with one validation batch
    # that is the epoch's valid_loss.
    expected = [
        f"Loss: {row['valid_loss']:.4f}, Accuracy: {row['accuracy']:.4f}"
        for row in learn.recorder.rows
    ]
    assert lines == expected
    assert len(lines) == 2


def test_single_callback_and_single_metric_are_accepted_without_lists(dls, model):
    learn = Learner(dls, model, metrics=accuracy, cbs=PrintMetricsCallback())
    assert [m.name for m in learn.metrics] == ["accuracy"]
    assert isinstance(learn.print_metrics, PrintMetricsCallback)


def test_early_stopping_callback_stops_when_valid_loss_stops_improving(dls, model):
    learn = Learner(dls, model, metrics=accuracy)
    # No epoch improves valid_loss by 10: the first sets the best, then 2 epochs of patience.
    learn.fit(10, cbs=EarlyStoppingCallback(monitor="valid_loss", min_delta=10, patience=2))
    assert [row["epoch"] for row in learn.recorder.rows] == [0, 1, 2]


def test_save_model_callback_saves_on_each_improvement_and_loads_the_best(
    dls, model, tmp_path, capsys
):
    learn = Learner(dls, model, metrics=accuracy, lr=1e-1)
    save = SaveModelCallback(monitor="accuracy", fname="best")
    learn.fit(3, cbs=save)
    saved = torch.load(tmp_path / "models" / "best.pth", weights_only=True)["model"]
    assert torch.equal(saved["weight"], learn.model.weight.detach())
    accs = [row["accuracy"] for row in learn.recorder.rows]
    assert save.best == max(accs)
    better = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Better model")]
    improvements = sum(a > max(accs[:i], default=-1) for i, a in enumerate(accs))
    assert len(better) == improvements >= 1


def test_save_model_callback_every_epoch_writes_model_0_to_model_2(dls, model, tmp_path):
    learn = Learner(dls, model, metrics=accuracy)
    learn.fit(3, cbs=SaveModelCallback(every_epoch=True))
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["model_0.pth", "model_1.pth", "model_2.pth"]


def test_csv_logger_writes_history_csv_with_a_row_per_epoch(dls, model, tmp_path):
    learn = Learner(dls, model, metrics=accuracy, cbs=CSVLogger())
    learn.fit(2)
    df = learn.csv_logger.read_log()
    assert list(df.columns) == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert list(df["epoch"]) == [0, 1]
    assert list(df["valid_loss"]) == pytest.approx([r["valid_loss"] for r in learn.recorder.rows])
    assert (tmp_path / "history.csv").read_text().startswith("epoch,train_loss,")


def test_mixup_trains_on_mixed_inputs_and_leaves_validation_alone(dls, model):
    seen = {"train": [], "valid": []}

    class Inputs(Callback):
        order = MixUp.order + 1  # after MixUp has mixed the batch

        def before_batch(self):
            seen["train" if self.training else "valid"].append(self.learn.xb[0].clone())

    learn = Learner(dls, model, metrics=accuracy, cbs=[MixUp(0.4), Inputs()])
    learn.fit(1)
    raw_train = [b[0] for b in dls.train]
    raw_valid = [b[0] for b in dls.valid]
    # Each training batch is a mixture of itself and a permutation of itself; validation
    # batches are untouched.
    assert not any(torch.equal(a, b) for a, b in zip(seen["train"], raw_train))
    assert all(torch.equal(a, b) for a, b in zip(seen["valid"], raw_valid))
    assert len(seen["train"]) == 3


class ScheduleAndFreeze(Callback):
    """A custom callback from the guide's list of events, writing learner state."""

    def before_fit(self):
        self.learn.n_epoch = 2  # train 2 epochs whatever fit was asked
        self.learn.epochs_started = 0

    def before_epoch(self):
        self.learn.epochs_started += 1

    def before_train(self):
        # Freeze the bias for the training phase: the optimizer skips params without grads.
        self.learn.model.bias.requires_grad_(False)
        self.learn.opt.param_groups[0]["lr"] = 0.5 / (self.learn.epoch + 1)

    def after_train(self):
        self.learn.model.bias.requires_grad_(True)
        self.learn.lrs_used = [*getattr(self.learn, "lrs_used", []), self.opt.param_groups[0]["lr"]]


def test_custom_callback_writing_learner_attributes_changes_the_fit(dls, model):
    bias = model.bias.detach().clone()
    learn = Learner(dls, model, metrics=accuracy, cbs=ScheduleAndFreeze(), opt_func=torch.optim.SGD)
    learn.fit(5)
    assert len(learn.recorder.rows) == 2
    assert learn.epochs_started == 2
    assert learn.lrs_used == [0.5, 0.25]
    assert learn.recorder.lrs == [0.5] * 3 + [0.25] * 3
    assert torch.equal(learn.model.bias, bias)
    assert learn.model.bias.requires_grad
    assert all(math.isfinite(r["valid_loss"]) for r in learn.recorder.rows)
