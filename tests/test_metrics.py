"""Metrics: batch-size weighting, the fastai protocol, torchmetrics objects, values on device."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_learner
from hookloop import AvgMetric, DataLoaders, Learner, accuracy, error_rate
from hookloop.metrics import AvgLoss, AvgSmoothLoss, as_metric


class FakeLearn:
    def __init__(self, pred, y, loss=None):
        self.pred, self.yb, self.xb, self.loss = pred, (y,), (pred,), loss


def one_hot_pred(labels):
    return torch.nn.functional.one_hot(torch.tensor(labels), 2).float()


def test_accuracy_and_error_rate_on_a_batch():
    pred = one_hot_pred([0, 1, 1, 0])
    y = torch.tensor([0, 1, 0, 0])
    assert accuracy(pred, y).item() == 0.75
    assert error_rate(pred, y).item() == 0.25


def test_avg_metric_weights_by_batch_size_so_an_uneven_last_batch_gives_the_global_mean():
    # Batches of 4, 4 and 2 with 3, 2 and 2 correct: the epoch value is 7/10, not
    # the mean of batch accuracies (0.75 + 0.5 + 1.0) / 3 = 0.75.
    m = AvgMetric(accuracy)
    m.reset()
    for labels, targets in [
        ([0, 1, 1, 0], [0, 1, 0, 0]),
        ([1, 1, 0, 0], [1, 0, 1, 0]),
        ([1, 0], [1, 0]),
    ]:
        m.accumulate(FakeLearn(one_hot_pred(labels), torch.tensor(targets)))
    assert m.value.item() == 0.7


def test_learner_metric_over_uneven_batches_equals_the_global_accuracy():
    x = torch.eye(2).repeat(5, 1)  # 10 samples
    # The model predicts argmax(x) = 0,1,0,1,...: the last batch (2 samples) is all wrong,
    # so the global accuracy is 8/10 while the mean of batch accuracies is (1+1+0)/3.
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
    dls = DataLoaders.from_tensors(x, y, valid=(x, y), bs=4, valid_bs=4, shuffle=False)
    model = torch.nn.Identity()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))
    learn = Learner(model, dls, torch.nn.CrossEntropyLoss(), metrics=accuracy, device="cpu")
    assert learn.validate()["accuracy"] == 0.8


def test_metric_values_stay_on_the_device_until_read():
    m = AvgMetric(accuracy)
    m.accumulate(FakeLearn(one_hot_pred([0, 1]), torch.tensor([0, 1])))
    assert all(isinstance(v, torch.Tensor) for v in m.vals)
    assert isinstance(m.value, torch.Tensor)


def loss_batches(values, bs=2):
    """FakeLearn batches of `bs` samples whose loss is each of `values`."""
    return [FakeLearn(torch.zeros(bs, 2), torch.zeros(bs).long(), torch.tensor(v)) for v in values]


def test_avg_loss_folds_its_values_into_a_device_sum_every_256_batches():
    # 600 batches of 2 samples, loss i % 10: 256 + 256 folded into `total`, 88 still listed.
    # Folded: 51 cycles of 0..9 (45 each) then 0 and 1, times 2 samples: 2 * 2296 = 4592.
    # Mean over all 600 (60 full cycles) = 4.5.
    m = AvgLoss()
    for b in loss_batches([float(i % 10) for i in range(600)]):
        m.accumulate(b)
    assert len(m.vals) == 88 and len(m.counts) == 88
    assert isinstance(m.total, torch.Tensor) and m.total.item() == 4592.0
    assert m.total_count == 1024 and m.n_samples == 1200
    assert isinstance(m.value, torch.Tensor) and m.value.item() == 4.5


def test_avg_metric_state_dict_resumes_the_running_sum_bit_for_bit():
    values = [0.1 * i for i in range(300)]
    whole = AvgLoss()
    for b in loss_batches(values):
        whole.accumulate(b)
    first = AvgLoss()
    for b in loss_batches(values[:280]):
        first.accumulate(b)
    resumed = AvgLoss()
    resumed.load_state_dict(first.state_dict())
    for b in loss_batches(values[280:]):
        resumed.accumulate(b)
    assert resumed.value.item() == whole.value.item()  # exact, not approx
    assert resumed.value.item() == pytest.approx(sum(values) / 300)


def test_avg_metric_under_256_batches_keeps_the_single_sum_it_always_had():
    # Below the fold every value is summed at once, as before the running sum existed.
    m = AvgLoss()
    for b in loss_batches([1.0, 2.0, 4.0]):
        m.accumulate(b)
    assert m.total is None and m.value.item() == 7 / 3
    old = AvgLoss()
    old.load_state_dict({"vals": list(m.vals), "counts": list(m.counts)})  # a v1 state
    assert old.value.item() == 7 / 3


def test_avg_smooth_loss_is_a_debiased_moving_average():
    # beta 0.5: ema1 = 0.5*4 = 2 -> 2/(1-0.5) = 4; ema2 = 0.5*2 + 0.5*2 = 2 -> 2/0.75 = 2.6667
    m = AvgSmoothLoss(beta=0.5)
    m.accumulate(FakeLearn(None, None, loss=torch.tensor(4.0)))
    assert m.value.item() == pytest.approx(4.0)
    m.accumulate(FakeLearn(None, None, loss=torch.tensor(2.0)))
    assert m.value.item() == pytest.approx(8 / 3)


def test_fastai_protocol_metric_is_used_as_it_is():
    class CountBatches:
        name = "n_batches"

        def reset(self):
            self.n = 0

        def accumulate(self, learn):
            self.n += 1

        @property
        def value(self):
            return self.n

    learn = tiny_learner(metrics=CountBatches(), n_valid=16, bs=4)  # 2 valid batches of 8
    learn.fit(1)
    assert learn.recorder.log["n_batches"] == 2.0


def test_torchmetrics_metric_is_driven_through_update_and_compute():
    torchmetrics = pytest.importorskip("torchmetrics")
    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=2, average="micro")
    wrapped = as_metric(metric)
    assert wrapped.name == "multiclass_accuracy"
    wrapped.reset()
    wrapped.accumulate(FakeLearn(one_hot_pred([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])))
    assert wrapped.value.item() == 0.75


def test_as_metric_rejects_what_is_not_a_metric():
    with pytest.raises(TypeError, match="metrics.*'acc'"):
        as_metric("acc")
