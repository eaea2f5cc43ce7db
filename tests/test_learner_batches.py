"""Batches beyond (x, y): mappings, models that compute their own loss, loaders with no length."""

from __future__ import annotations

import math
from collections import UserDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from conftest import OwnLossClassifier
from hookloop import (
    EMA,
    BackupAndRestore,
    Callback,
    GradientAccumulation,
    GradientClip,
    LambdaCallback,
    Learner,
    MixedPrecision,
    ProgressBar,
    TerminateOnNaN,
    accuracy,
)
from hookloop.data import find_bs, to_device


class Scale(nn.Module):
    """pred = w * x with w = 1: one SGD step on (w*x - t)^2 at x=2, t=6, lr=0.1 gives w = 2.6."""

    def __init__(self, own_loss: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.own_loss = own_loss
        self.seen: list[set[str]] = []

    def forward(self, x, labels=None):
        self.seen.append({"x", "labels"} if labels is not None else {"x"})
        pred = self.w * x
        if not self.own_loss:
            return pred
        out = {"logits": pred}
        if labels is not None:
            out["loss"] = ((pred - labels) ** 2).mean()
        return out


def _one_batch(batch):
    return DataLoader([batch], batch_size=None)


def _mse(pred, target):
    return ((pred - target) ** 2).mean()


def _learner(model, batch, **kwargs):
    learn = Learner(model, (_one_batch(batch), None), opt_func=torch.optim.SGD, lr=0.1, **kwargs)
    learn.remove_cb(learn.progress_bar)
    learn.logger = lambda line: None
    return learn


def test_a_mapping_batch_calls_the_model_with_keyword_arguments_and_labels_as_targets():
    batch = {"x": torch.tensor([2.0]), "labels": torch.tensor([6.0])}
    model = Scale()
    learn = _learner(model, batch, loss_func=_mse)
    learn.fit(1)
    assert model.seen == [{"x"}]  # the targets leave the inputs when loss_func computes the loss
    assert learn.yb[0].tolist() == [6.0]
    assert model.w.item() == pytest.approx(2.6)


def test_a_model_that_returns_its_own_loss_trains_without_a_loss_function():
    batch = {"x": torch.tensor([2.0]), "labels": torch.tensor([6.0])}
    model = Scale(own_loss=True)
    learn = _learner(model, batch)
    learn.fit(1)
    assert model.seen == [{"x", "labels"}]  # the model needs its labels to compute its loss
    assert learn.loss.item() == pytest.approx(16.0)  # (1*2 - 6)^2
    assert model.w.item() == pytest.approx(2.6)
    assert set(learn.pred) == {"logits", "loss"}  # learn.pred is the whole output


def test_metrics_and_get_preds_see_the_logits_of_a_structured_output():
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])  # the argmax is right for 3 of 4 rows

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x, labels=None):
            logits = x + 0 * self.w
            return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    batch = {"x": x, "labels": labels}
    learn = Learner(Classifier(), (_one_batch(batch), _one_batch(batch)), metrics=accuracy)
    assert learn.validate()["accuracy"] == pytest.approx(0.75)
    preds, targets = learn.get_preds()
    assert torch.equal(preds, x) and targets.tolist() == [0, 1, 1, 0]


def test_a_model_with_no_loss_and_no_loss_function_fails_before_the_first_step():
    batch = {"x": torch.tensor([2.0]), "labels": torch.tensor([6.0])}
    model = Scale()
    learn = _learner(model, batch)
    with pytest.raises(ValueError, match="loss_func is None and the model's output"):
        learn.fit(1)
    assert model.w.item() == 1.0


def test_keras_style_dict_inputs_train_with_a_normal_loss():
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, inputs):
            return self.w * inputs["image"] + inputs["meta"]

    batch = ({"image": torch.tensor([2.0]), "meta": torch.tensor([0.0])}, torch.tensor([6.0]))
    model = TwoInputs()
    learn = _learner(model, batch, loss_func=_mse)
    learn.fit(1)
    assert model.w.item() == pytest.approx(2.6)


def test_nested_batches_move_to_the_device_whole_and_report_their_batch_size():
    batch = (
        UserDict({"ids": torch.zeros(3, 4), "mask": [torch.ones(3)]}),  # BatchEncoding-like
        {"labels": torch.zeros(3)},
    )
    moved = to_device(batch, torch.device("meta"))
    assert moved[0]["ids"].device.type == "meta"
    assert moved[0]["mask"][0].device.type == "meta"
    assert moved[1]["labels"].device.type == "meta"
    assert find_bs(batch) == 3


class Stream(IterableDataset):
    """Yields (x, y) batches 0, 1, 2, ... up to `n` (None: forever); it has no length."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __iter__(self):
        i = 0
        while self.n is None or i < self.n:
            yield torch.full((2, 1), float(i)), torch.zeros(2, 1)
            i += 1


class Seen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        self.firsts: list[float] = []

    def forward(self, x):
        self.firsts.append(x[0, 0].item())
        return self.lin(x)


def _stream_learner(n):
    model = Seen()
    dl = DataLoader(Stream(n), batch_size=None)
    learn = Learner(model, (dl, None), loss_func=nn.MSELoss())
    learn.remove_cb(learn.progress_bar)
    learn.logger = lambda line: None
    return learn, model


def test_a_loader_with_no_length_trains_each_epoch_to_its_end():
    learn, model = _stream_learner(3)
    n_iters = []
    learn.fit(2, cbs=LambdaCallback(after_batch=lambda: n_iters.append(learn.n_iter)))
    assert model.firsts == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert n_iters == [None] * 6
    assert learn.train_iter == 6 and learn.total_iters is None


def test_steps_per_epoch_bounds_an_endless_stream_and_carries_it_over_epochs():
    learn, model = _stream_learner(None)
    learn.fit(2, steps_per_epoch=3)
    assert model.firsts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # epoch 2 goes on where epoch 1 ended
    assert learn.total_iters == 6 and learn.pct_train == 1.0


def test_steps_per_epoch_restarts_a_finite_loader_when_it_runs_out():
    learn, model = _stream_learner(4)
    learn.fit(2, steps_per_epoch=3)
    assert model.firsts == [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]


def test_steps_per_epoch_must_be_a_positive_int():
    learn, _ = _stream_learner(3)
    with pytest.raises(ValueError, match="steps_per_epoch must be a positive int, got 0"):
        learn.fit(1, steps_per_epoch=0)


def test_a_schedule_on_a_stream_asks_for_steps_per_epoch():
    learn, _ = _stream_learner(None)
    with pytest.raises(ValueError, match=r"give fit\(\.\.\., steps_per_epoch=k\)"):
        learn.fit_one_cycle(1, lr_max=1e-2)


def test_fit_one_cycle_on_a_stream_with_steps_per_epoch_ends_at_lr_max_over_div_final():
    learn, model = _stream_learner(None)
    learn.fit_one_cycle(2, lr_max=1e-2, steps_per_epoch=5)
    assert len(model.firsts) == 10
    lrs = learn.recorder.lrs
    assert lrs[0] == pytest.approx(1e-2 / 25)  # lr_max / div at the first batch
    assert max(lrs) == pytest.approx(1e-2, rel=0.05)


def test_the_progress_bar_of_a_stream_has_no_total(capsys):
    learn, _ = _stream_learner(3)
    totals = []
    learn.add_cb(ProgressBar(show_bar=True))
    learn.fit(
        1, cbs=LambdaCallback(after_batch=lambda: totals.append(learn.progress_bar.bar.total))
    )
    assert totals == [None, None, None]


def _own_loss_learner(tmp_path, bs=8, **kwargs):
    # 32 training and 16 validation rows; the label says whether x0 > 0.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] > 0).long()
    rows = [{"x": x[i], "labels": y[i]} for i in range(48)]
    train, valid = DataLoader(rows[:32], batch_size=bs), DataLoader(rows[32:], batch_size=16)
    learn = Learner(OwnLossClassifier(), (train, valid), metrics=accuracy, lr=1e-1, path=tmp_path)
    learn.remove_cb(learn.progress_bar)
    learn.logger = lambda line: None
    for name, value in kwargs.items():
        setattr(learn, name, value)
    return learn


@pytest.mark.parametrize(
    "make_cb",
    [
        lambda: MixedPrecision(torch.bfloat16),
        lambda: GradientClip(1.0),
        lambda: EMA(decay=0.5),
        lambda: TerminateOnNaN(),
        lambda: GradientAccumulation(steps=2),
    ],
    ids=["MixedPrecision", "GradientClip", "EMA", "TerminateOnNaN", "GradientAccumulation"],
)
def test_each_training_callback_trains_a_model_with_its_own_loss(tmp_path, make_cb):
    learn = _own_loss_learner(tmp_path)
    learn.fit(3, cbs=make_cb())
    losses = [row["valid_loss"] for row in learn.recorder.rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_gradient_accumulation_of_two_batches_of_8_equals_batches_of_16_with_the_models_loss(
    tmp_path,
):
    accumulated = _own_loss_learner(tmp_path, bs=8)
    accumulated.fit(2, cbs=GradientAccumulation(steps=2))
    whole = _own_loss_learner(tmp_path, bs=16)
    whole.fit(2)
    torch.testing.assert_close(accumulated.model.lin.weight, whole.model.lin.weight)


def test_schedules_and_the_lr_finder_run_on_a_model_with_its_own_loss(tmp_path):
    learn = _own_loss_learner(tmp_path)
    suggestion = learn.lr_find(num_it=8, show_plot=False)
    assert suggestion.valley > 0
    learn.fit_one_cycle(2, lr_max=1e-1)
    assert learn.recorder.lrs[0] == pytest.approx(1e-1 / 25)


def test_save_load_and_backup_resume_a_model_with_its_own_loss(tmp_path):
    reference = _own_loss_learner(tmp_path / "ref")
    reference.fit(3)
    learn = _own_loss_learner(tmp_path / "run")

    class Crash(Callback):
        def after_epoch(self):
            if self.learn.epoch == 1:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        learn.fit(3, cbs=[BackupAndRestore(tmp_path / "backup"), Crash()])
    resumed = _own_loss_learner(tmp_path / "run")
    epochs_run = []
    count = LambdaCallback(before_epoch=lambda: epochs_run.append(resumed.epoch))
    resumed.fit(3, cbs=[BackupAndRestore(tmp_path / "backup"), count])
    assert epochs_run == [1, 2]  # epoch 0 from the backup; the crash preceded epoch 1's backup
    assert torch.equal(resumed.model.lin.weight, reference.model.lin.weight)
    resumed.save("m")
    fresh = _own_loss_learner(tmp_path / "run")
    fresh.load("m")
    assert torch.equal(fresh.model.lin.weight, reference.model.lin.weight)
