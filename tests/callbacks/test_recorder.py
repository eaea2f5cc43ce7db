"""Recorder: per-batch and smoothed losses, epoch averages, hyper-parameters, tables and plots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import ScriptedLoss, tiny_learner
from hookloop import Callback, DataLoaders, Learner, accuracy


def scripted_learner(train_losses, n_train, bs, valid_losses=(), **kwargs):
    x, y = torch.randn(n_train, 4), torch.zeros(n_train).long()
    n_valid = len(valid_losses)
    valid = (torch.randn(n_valid, 4), torch.zeros(n_valid).long()) if n_valid else None
    dls = DataLoaders.from_tensors(
        x, y, valid=valid, valid_pct=None, bs=bs, valid_bs=1, shuffle=False
    )
    values = list(train_losses) + list(valid_losses)
    learn = Learner(nn.Linear(4, 2), dls, ScriptedLoss(values), device="cpu", **kwargs)
    learn.logger = lambda line: None
    return learn


def test_first_smoothed_loss_equals_the_first_raw_loss_and_then_debiases():
    # beta 0.98: ema1 = 0.02*4 -> /0.02 = 4; ema2 = 0.98*0.08 + 0.02*2 = 0.1184 -> /0.0396
    learn = scripted_learner([4.0, 2.0], n_train=2, bs=1)
    learn.fit(1)
    assert learn.recorder.raw_losses == [4.0, 2.0]
    assert learn.recorder.smooth_losses == pytest.approx([4.0, 0.1184 / 0.0396])


def test_keras_loss_is_the_epoch_average_weighted_by_batch_size():
    # Batches of 4, 4 and 2 with losses 1, 2, 4: (4 + 8 + 8) / 10 = 2.0 (plain mean: 2.33)
    learn = scripted_learner([1.0, 2.0, 4.0], n_train=10, bs=4)
    history = learn.fit(1)
    assert history.history["loss"] == [2.0]


def test_valid_loss_is_the_average_over_validation_batches():
    learn = scripted_learner([1.0], n_train=1, bs=1, valid_losses=[3.0, 5.0])
    assert learn.fit(1).history["val_loss"] == [4.0]


class PeekAfterRecorder(Callback):
    """After the Recorder's after_batch of each training batch, keeps `look(recorder)`."""

    order = 55
    run_valid = False

    def __init__(self, look) -> None:
        self.look, self.seen = look, []

    def after_batch(self):
        self.seen.append(self.look(self.learn.recorder))


def test_per_batch_losses_stay_on_the_device_until_the_epoch_ends():
    peek = PeekAfterRecorder(lambda recorder: len(recorder._pending))
    learn = scripted_learner([1.0, 2.0, 3.0], n_train=3, bs=1, cbs=peek)
    learn.fit(1)
    assert peek.seen == [1, 2, 3]  # nothing was read back per batch
    assert learn.recorder._pending == [] and learn.recorder.raw_losses == [1.0, 2.0, 3.0]


def test_hyper_parameters_read_mid_epoch_cover_every_batch_so_far_without_reading_losses():
    peek = PeekAfterRecorder(lambda recorder: (list(recorder.hps["lr"]), len(recorder._pending)))
    learn = scripted_learner([1.0, 2.0, 3.0], n_train=3, bs=1, cbs=peek, lr=0.5)
    learn.fit(1)
    # The lr list grows batch by batch while the three losses stay pending on the device.
    assert peek.seen == [([0.5], 1), ([0.5, 0.5], 2), ([0.5, 0.5, 0.5], 3)]


def test_learning_rate_and_momentum_are_recorded_per_training_batch():
    learn = tiny_learner(opt_func=torch.optim.SGD, lr=0.1, n_train=8, bs=4)
    learn.create_opt()
    learn.opt.param_groups[0]["momentum"] = 0.9
    learn.fit(2)
    assert learn.recorder.lrs == [0.1] * 4
    assert learn.recorder.hps["mom"] == [0.9] * 4


def test_epoch_values_are_complete_for_an_order_zero_after_epoch():
    # The fastai seed's PrintMetricsCallback reads recorder.metrics[0] in after_epoch at order 0.
    lines = []

    class PrintMetricsCallback(Callback):
        def after_epoch(self):
            lines.append(f"Accuracy: {self.learn.recorder.metrics[0]:.4f}")

    learn = tiny_learner(metrics=accuracy, cbs=PrintMetricsCallback())
    learn.fit(2)
    accs = learn.recorder.history.history["val_accuracy"]
    assert lines == [f"Accuracy: {a:.4f}" for a in accs]


def test_values_and_log_use_fastai_names():
    learn = tiny_learner(metrics=accuracy)
    learn.fit(2)
    rec = learn.recorder
    assert rec.metric_names == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(rec.values) == 2 and len(rec.values[0]) == 3
    assert rec.log["epoch"] == 1 and rec.log["valid_loss"] == rec.values[1][1]


def test_the_epoch_table_goes_through_the_logger():
    lines = []
    learn = tiny_learner(metrics=accuracy)
    learn.logger = lines.append
    with learn.no_bar():
        learn.fit(2)
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]


def test_resolve_accepts_fastai_and_keras_names_and_rejects_unknown_ones():
    learn = tiny_learner(metrics=accuracy)
    rec = learn.recorder
    assert rec.resolve("val_loss") == "valid_loss"
    assert rec.resolve("loss") == "train_loss"
    assert rec.resolve("val_accuracy") == "accuracy"
    with pytest.raises(ValueError, match="'f1'.*train_loss, valid_loss, accuracy"):
        rec.resolve("f1")


def test_plot_loss_writes_a_png(tmp_path):
    learn = tiny_learner(n_train=32, bs=4)
    learn.fit(2)
    path = tmp_path / "loss.png"
    learn.recorder.plot_loss(fname=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_state_dict_round_trip_restores_history_and_losses():
    learn = tiny_learner(metrics=accuracy)
    learn.fit(2)
    state = learn.recorder.state_dict()
    other = tiny_learner(metrics=accuracy)
    other.recorder.load_state_dict(state)
    assert other.recorder.history.history == learn.recorder.history.history
    assert other.recorder.losses == learn.recorder.losses
    assert other.recorder.metrics == learn.recorder.metrics


# ---- fastai's recorder.losses: the smoothed loss, growing batch by batch ---------------------


def test_losses_hold_the_smoothed_loss_and_grow_during_the_epoch():
    # Raw 4, 2, 3 at beta 0.98: ema 0.08, 0.1184, 0.176032 over 1 - 0.98**n = 0.02, 0.0396,
    # 0.058808 -> 4, 2.98990, 2.99333. A callback after the Recorder sees k values at batch k.
    peek = PeekAfterRecorder(lambda recorder: list(recorder.losses))
    learn = scripted_learner([4.0, 2.0, 3.0], n_train=3, bs=1, cbs=peek)
    learn.fit(1)
    smooth = [4.0, 0.1184 / 0.0396, 0.176032 / 0.058808]
    assert peek.seen == [pytest.approx(smooth[:k]) for k in (1, 2, 3)]
    assert learn.recorder.losses == pytest.approx(smooth)
    assert learn.recorder.raw_losses == [4.0, 2.0, 3.0]
    assert learn.recorder.losses == learn.recorder.smooth_losses


def test_train_loss_in_the_table_is_the_smoothed_loss_and_keras_loss_the_epoch_mean():
    # Batches of 4, 4 and 2 with losses 1, 2, 4. Smoothed at the epoch's end:
    # ema 0.02, 0.0596, 0.138408 / (1 - 0.98**3 = 0.058808) = 2.35355; mean (4+8+8)/10 = 2.0.
    learn = scripted_learner([1.0, 2.0, 4.0], n_train=10, bs=4)
    history = learn.fit(1)
    assert learn.recorder.rows[-1]["train_loss"] == pytest.approx(0.138408 / 0.058808)
    assert learn.recorder.values[-1] == [pytest.approx(0.138408 / 0.058808)]
    assert learn.recorder.log["train_loss"] == learn.recorder.losses[-1]
    assert history.history["loss"] == [2.0] and learn.recorder.logs["loss"] == 2.0


def test_losses_wait_on_the_device_in_a_buffer_read_every_flush_every_batches(monkeypatch):
    from hookloop.callbacks import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "FLUSH_EVERY", 4)
    peek = PeekAfterRecorder(lambda r: (len(r._pending), r.n_losses))
    learn = scripted_learner([float(i) for i in range(10)], n_train=10, bs=1, cbs=peek)
    learn.fit(1)
    # The 4th and 8th batches fill the buffer: one read each; the rest at the epoch's end.
    pending = [p for p, _ in peek.seen]
    assert pending == [1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert [n for _, n in peek.seen] == list(range(1, 11))
    assert learn.recorder.raw_losses == [float(i) for i in range(10)]
    # The epoch mean sums across the reads: (0 + 1 + ... + 9) / 10.
    assert learn.recorder.logs["loss"] == 4.5


def test_per_batch_history_is_stored_as_8_byte_floats():
    from hookloop.callbacks.float_series import FloatSeries

    learn = tiny_learner(opt_func=torch.optim.SGD, n_train=8, bs=4)
    learn.create_opt()
    learn.opt.param_groups[0]["momentum"] = 0.9
    learn.fit(1)
    rec = learn.recorder
    series = [rec.losses, rec.raw_losses, rec.lrs, rec.hps["mom"]]
    assert all(isinstance(s, FloatSeries) and len(s) == 2 for s in series)
    assert [s.nbytes for s in series] == [16] * 4


# ---- train_metrics: fastai's train_<metric> / valid_<metric> columns --------------------------


def target_mean(pred, y):
    """A metric a reader can compute: the mean target (train targets 0, valid targets 1)."""
    return y.float().mean()


def zeros_and_ones_learner(**kwargs):
    x = torch.randn(8, 4)
    dls = DataLoaders.from_tensors(
        x, torch.zeros(8).long(), valid=(x[:4], torch.ones(4).long()), bs=4, shuffle=False
    )
    learn = Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss(), device="cpu", **kwargs)
    learn.logger = lambda line: None
    return learn


def test_train_metrics_columns_are_train_and_valid_prefixed_as_fastai():
    learn = zeros_and_ones_learner(metrics=target_mean, train_metrics=True)
    history = learn.fit(1)
    rec = learn.recorder
    assert rec.metric_names == [
        "epoch", "train_loss", "train_target_mean", "valid_loss", "valid_target_mean", "time"
    ]  # fmt: skip
    row = rec.rows[-1]
    assert row["train_target_mean"] == 0.0 and row["valid_target_mean"] == 1.0
    assert rec.metrics == [1.0]  # fastai's recorder.metrics: the validation values
    # Keras keys stay Keras's: the training value bare, the validation value val_.
    assert history.history["target_mean"] == [0.0] and history.history["val_target_mean"] == [1.0]
    assert learn.validate()["target_mean"] == 1.0


def test_recorder_train_metrics_switch_works_like_the_learner_flag():
    learn = zeros_and_ones_learner(metrics=target_mean)
    learn.recorder.train_metrics = True  # fastai's switch
    assert learn.train_metrics is True
    learn.fit(1)
    assert learn.recorder.rows[-1]["train_target_mean"] == 0.0
    assert learn.recorder.rows[-1]["valid_target_mean"] == 1.0


def test_monitor_names_resolve_beside_train_metrics():
    learn = zeros_and_ones_learner(metrics=target_mean, train_metrics=True)
    rec = learn.recorder
    # The bare name is the validation value (fastai), as are Keras's val_ and fastai's valid_.
    assert rec.resolve("valid_target_mean") == "valid_target_mean"
    assert rec.resolve("target_mean") == "valid_target_mean"
    assert rec.resolve("val_target_mean") == "valid_target_mean"
    assert rec.resolve("train_target_mean") == "train_target_mean"
    assert rec.resolve("loss") == "train_loss" and rec.resolve("val_loss") == "valid_loss"


def test_a_version_1_recorder_state_loads_with_raw_losses_and_the_epochs_running_sums():
    # Version 1 kept raw losses under "losses" and every batch size; mid-epoch at batch 2 of
    # epoch 1 (batches of 4 and 2 with losses 3 and 6): sum 4*3 + 2*6 = 24 over 6 samples.
    learn = scripted_learner([1.0], n_train=1, bs=1)
    rec = learn.recorder
    v1 = {
        "losses": [5.0, 3.0, 6.0],
        "smooth_losses": [5.0, 4.0, 4.5],
        "ema": 0.1,
        "batch_bs": [4, 4, 2],
        "hps": {"lr": [0.1, 0.1, 0.1]},
        "rows": [{"epoch": 0, "train_loss": 5.0}],
        "iters": [1],
        "history": {"history": {"loss": [5.0]}, "epoch": [0], "params": {}},
        "last_validation": {},
        "epoch_in_progress": {
            "row": {"epoch": 1},
            "done": False,
            "train_start": 1,
            "elapsed": 0.0,
            "train_mets": [],
        },
    }
    state = rec.migrate_state_dict(v1, 1)
    assert state["raw_losses"] == [5.0, 3.0, 6.0]
    assert state["epoch_in_progress"]["loss_sum"] == 24.0
    assert state["epoch_in_progress"]["loss_count"] == 6
    rec.load_state_dict(state)
    assert rec.raw_losses == [5.0, 3.0, 6.0] and rec.losses == [5.0, 4.0, 4.5]
    assert rec.lrs == [0.1] * 3 and rec.logs["loss"] == 5.0
