"""Keras-style callbacks: hooks on any Callback, logs, params, self.model and stop_training."""

from __future__ import annotations

import torch
from torch import nn

from conftest import ScriptedLoss, tiny_learner
from hookloop import Callback, DataLoaders, KerasCallback, Learner, mae
from hookloop.callbacks.keras_logs import BatchLogs


def scripted_learner(losses, n_train, n_valid, bs=1, **kwargs):
    """Batches of `bs` items; `losses` are the batch losses in the order the loop meets them."""
    torch.manual_seed(0)
    x, y = torch.randn(n_train, 4), torch.zeros(n_train, 1)
    valid = (torch.randn(n_valid, 4), torch.zeros(n_valid, 1)) if n_valid else None
    dls = DataLoaders.from_tensors(
        x, y, valid=valid, valid_pct=None, bs=bs, valid_bs=bs, shuffle=False
    )
    learn = Learner(nn.Linear(4, 1), dls, ScriptedLoss(losses), device="cpu", **kwargs)
    learn.logger = lambda line: None
    return learn


class HookLog(Callback):
    """A plain hookloop Callback written with Keras hook names; records every call."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("on_train_begin",))

    def on_train_end(self, logs=None):
        self.calls.append(("on_train_end",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("on_epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("on_epoch_end", epoch))

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("on_train_batch_begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("on_train_batch_end", batch))

    def on_test_begin(self, logs=None):
        self.calls.append(("on_test_begin",))

    def on_test_end(self, logs=None):
        self.calls.append(("on_test_end",))

    def on_test_batch_begin(self, batch, logs=None):
        self.calls.append(("on_test_batch_begin", batch))

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("on_test_batch_end", batch))

    def on_predict_begin(self, logs=None):
        self.calls.append(("on_predict_begin",))

    def on_predict_end(self, logs=None):
        self.calls.append(("on_predict_end",))

    def on_predict_batch_begin(self, batch, logs=None):
        self.calls.append(("on_predict_batch_begin", batch))

    def on_predict_batch_end(self, batch, logs=None):
        self.calls.append(("on_predict_batch_end", batch))


def test_a_plain_callback_runs_keras_hooks_in_keras_order():
    cb = HookLog()
    learn = tiny_learner(cbs=cb, n_train=8, n_valid=4, bs=4)  # 2 training, 1 validation batch
    learn.fit(2)
    epoch = [
        ("on_train_batch_begin", 0),
        ("on_train_batch_end", 0),
        ("on_train_batch_begin", 1),
        ("on_train_batch_end", 1),
        ("on_test_begin",),
        ("on_test_batch_begin", 0),
        ("on_test_batch_end", 0),
        ("on_test_end",),
    ]
    assert cb.calls == [
        ("on_train_begin",),
        ("on_epoch_begin", 0),
        *epoch,
        ("on_epoch_end", 0),
        ("on_epoch_begin", 1),
        *epoch,
        ("on_epoch_end", 1),
        ("on_train_end",),
    ]


def test_validate_runs_the_on_test_hooks_and_get_preds_the_on_predict_hooks():
    cb = HookLog()
    learn = tiny_learner(cbs=cb, n_train=4, n_valid=16, bs=4)  # 2 validation batches of 8
    learn.validate()
    assert cb.calls == [
        ("on_test_begin",),
        ("on_test_batch_begin", 0),
        ("on_test_batch_end", 0),
        ("on_test_batch_begin", 1),
        ("on_test_batch_end", 1),
        ("on_test_end",),
    ]
    cb.calls.clear()
    learn.get_preds()
    assert cb.calls == [
        ("on_predict_begin",),
        ("on_predict_batch_begin", 0),
        ("on_predict_batch_end", 0),
        ("on_predict_batch_begin", 1),
        ("on_predict_batch_end", 1),
        ("on_predict_end",),
    ]


def test_epoch_end_logs_are_python_floats_under_keras_keys():
    # Epoch 0: train batches 1 and 3 (mean 2.0), valid 5.0; epoch 1: 2 and 4 (mean 3.0), valid 7.
    seen = []

    class Keep(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, logs))

    learn = scripted_learner([1.0, 3.0, 5.0, 2.0, 4.0, 7.0], n_train=2, n_valid=1, cbs=Keep())
    history = learn.fit(2)
    assert seen == [(0, {"loss": 2.0, "val_loss": 5.0}), (1, {"loss": 3.0, "val_loss": 7.0})]
    assert all(type(v) is float for _, logs in seen for v in logs.values())
    assert history.history == {"loss": [2.0, 3.0], "val_loss": [5.0, 7.0]}


def test_training_batch_logs_hold_the_running_mean_loss_weighted_by_batch_size():
    # Batches of 4, 4 and 2 items with losses 1, 4, 5: running means 4/4 = 1, (4+16)/8 = 2.5,
    # (4+16+10)/10 = 3.0 (the plain mean would be 3.33), the last equal to the epoch's loss.
    seen = []

    class Keep(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((batch, logs["loss"]))

    learn = scripted_learner([1.0, 4.0, 5.0], n_train=10, n_valid=0, bs=4, cbs=Keep())
    history = learn.fit(1)
    assert seen == [(0, 1.0), (1, 2.5), (2, 3.0)]
    assert history.history["loss"] == [3.0]


def test_validation_batch_logs_and_on_test_end_logs_use_keras_unprefixed_names():
    seen = []

    class Keep(Callback):
        def on_test_batch_end(self, batch, logs=None):
            seen.append((batch, dict(logs)))

        def on_test_end(self, logs=None):
            seen.append(("end", logs))

    learn = scripted_learner([2.0, 6.0], n_train=1, n_valid=2, metrics=mae, cbs=Keep())
    learn.validate()  # validate() alone: only the two validation batches draw a loss
    assert seen[:2] == [(0, {"loss": 2.0}), (1, {"loss": 4.0})]
    assert seen[2][0] == "end"
    assert seen[2][1]["loss"] == 4.0
    assert set(seen[2][1]) == {"loss", "mae"}


def count_device_reads(monkeypatch):
    """Counts tensor -> Python conversions (.item, .tolist, float()): each is a device sync."""
    counts = {"reads": 0}
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            counts["reads"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counts


def reads_during_fit(monkeypatch, cbs):
    learn = scripted_learner([1.0, 2.0, 3.0, 4.0], n_train=4, n_valid=0, cbs=cbs)
    with learn.no_bar():
        counts = count_device_reads(monkeypatch)
        learn.fit(1)  # 4 training batches
    monkeypatch.undo()
    return counts["reads"]


def test_batch_logs_cost_no_device_read_unless_a_hook_reads_them(monkeypatch):
    class Ignore(Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    class Read(Callback):
        def on_train_batch_end(self, batch, logs=None):
            logs["loss"]

    baseline = reads_during_fit(monkeypatch, None)
    assert reads_during_fit(monkeypatch, Ignore()) == baseline
    assert reads_during_fit(monkeypatch, Read()) == baseline + 4  # one read per batch


def test_batch_logs_kept_for_later_still_give_their_own_batchs_mean():
    kept = []

    class Keep(Callback):
        def on_train_batch_end(self, batch, logs=None):
            kept.append(logs)

    learn = scripted_learner([1.0, 3.0, 8.0], n_train=3, n_valid=0, cbs=Keep())
    learn.fit(1)
    assert isinstance(kept[0], BatchLogs)
    assert [logs["loss"] for logs in kept] == [1.0, 2.0, 4.0]


def test_batch_logs_read_through_json_and_dict_copies():
    import json

    logs = BatchLogs({"loss": torch.tensor(0.5)})
    assert json.dumps(logs) == '{"loss": 0.5}'
    assert {**BatchLogs({"loss": torch.tensor(0.25)})} == {"loss": 0.25}
    assert dict(BatchLogs({"loss": torch.tensor(2.0)})) == {"loss": 2.0}


def handler_names(learn):
    """Per phase and event, the class names of the handlers, in call order."""
    return {
        phase: {event: [type(h.__self__).__name__ for h in hs] for event, hs in table.items()}
        for phase, table in learn._tables.items()
    }


def test_callbacks_without_keras_hooks_add_nothing_to_the_dispatch_table():
    class Plain(Callback):
        def after_epoch(self):
            pass

    names = handler_names(tiny_learner(cbs=Plain()))
    for phase in ("train", "valid"):
        assert names[phase]["after_epoch"] == ["Plain", "Recorder"]
        assert names[phase]["before_fit"] == ["Recorder", "ProgressBar"]
        assert names[phase]["after_batch"] == ["Recorder", "ProgressBar"]


def test_an_epoch_hook_alone_adds_no_per_batch_handler():
    class EpochOnly(KerasCallback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    names = handler_names(tiny_learner(cbs=EpochOnly()))["train"]
    assert names["before_batch"] == []
    assert names["after_batch"] == ["Recorder", "ProgressBar"]
    # params are set before_fit; the stop_training flag is reset first and checked last.
    assert names["before_fit"][:2] == ["KerasStopTraining", "EpochOnly"]
    assert names["after_epoch"] == ["EpochOnly", "Recorder", "KerasStopTraining"]


def test_a_training_batch_hook_adds_the_stop_check_after_every_other_after_batch():
    class BatchHook(Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    names = handler_names(tiny_learner(cbs=BatchHook()))
    assert names["train"]["after_batch"] == [
        "BatchHook",
        "Recorder",
        "ProgressBar",
        "KerasStopTraining",
    ]
    assert names["valid"]["after_batch"] == ["Recorder", "ProgressBar"]


def test_params_hold_epochs_steps_and_verbose_from_on_train_begin():
    seen = []

    class Keep(Callback):
        def on_train_begin(self, logs=None):
            seen.append(dict(self.params))

    learn = tiny_learner(cbs=Keep(), n_train=12, bs=4)
    learn.fit(3)
    assert seen == [{"epochs": 3, "steps": 3, "verbose": 1}]


def test_self_model_is_the_learners_model_for_plain_and_keras_callbacks():
    class Plain(Callback):
        def on_train_begin(self, logs=None):
            pass

    class Keras(KerasCallback):
        pass

    plain, keras = Plain(), Keras()
    learn = tiny_learner(cbs=[plain, keras])
    assert plain.model is learn.model
    assert keras.model is learn.model


def test_stop_training_in_a_batch_hook_ends_the_epoch_after_that_batch():
    calls = []

    class StopAtBatch1(Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append(("batch", batch))
            if batch == 1:
                self.model.stop_training = True

        def on_test_end(self, logs=None):
            calls.append(("test_end",))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch))

    learn = tiny_learner(cbs=StopAtBatch1(), n_train=16, bs=4)  # 4 training batches
    history = learn.fit(3)
    assert calls == [("batch", 0), ("batch", 1), ("test_end",), ("epoch_end", 0)]
    assert history.epoch == [0]
    assert len(learn.recorder.losses) == 2  # the Recorder still saw the stopping batch
    assert "val_loss" in history.history


def test_stop_training_in_on_epoch_end_stops_after_that_epoch_and_others_still_see_it():
    after_epochs = []

    class StopAtEpoch1(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    class Late(Callback):
        order = 100

        def after_epoch(self):
            after_epochs.append(self.learn.epoch)

    learn = tiny_learner(cbs=[StopAtEpoch1(), Late()])
    history = learn.fit(5)
    assert history.epoch == [0, 1]
    assert after_epochs == [0, 1]


def test_stop_training_is_reset_at_the_start_of_each_fit():
    class StopFirstEpoch(KerasCallback):
        def on_train_begin(self, logs=None):
            self.flag_at_start = self.model.stop_training

        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    cb = StopFirstEpoch()
    learn = tiny_learner(cbs=cb)
    assert learn.fit(3).epoch == [0]
    assert learn.fit(3).epoch == [0]
    assert cb.flag_at_start is False


def test_on_batch_names_run_for_training_batches_only():
    calls = []

    class Legacy(Callback):
        def on_batch_begin(self, batch, logs=None):
            calls.append(("begin", batch, self.learn.training))

        def on_batch_end(self, batch, logs=None):
            calls.append(("end", batch, self.learn.training))

    learn = tiny_learner(cbs=Legacy(), n_train=8, n_valid=8, bs=4)  # 2 + 2 batches
    learn.fit(1)
    assert calls == [("begin", 0, True), ("end", 0, True), ("begin", 1, True), ("end", 1, True)]


def test_on_train_batch_end_wins_over_on_batch_end_when_both_are_defined():
    calls = []

    class Both(Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append("on_train_batch_end")

        def on_batch_end(self, batch, logs=None):
            calls.append("on_batch_end")

    tiny_learner(cbs=Both()).fit(1)
    assert calls == ["on_train_batch_end"]


def test_keras_callback_subclass_runs_its_overrides_and_super_calls():
    class Sub(KerasCallback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            self.epochs.append((epoch, sorted(logs)))

    cb = Sub()
    learn = tiny_learner(cbs=cb)
    learn.fit(2)
    assert cb.epochs == [(0, ["loss", "val_loss"]), (1, ["loss", "val_loss"])]
    assert cb.params == {"epochs": 2, "steps": 1, "verbose": 1}


def test_keras_guide_printing_callback_runs_unchanged(capsys):
    # From the Keras guide "Writing your own callbacks" (metric name changed to hookloop's mae).
    class LossAndErrorPrintingCallback(Callback):
        def on_train_batch_end(self, batch, logs=None):
            print("Up to batch {}, the average loss is {:7.2f}.".format(batch, logs["loss"]))

        def on_test_batch_end(self, batch, logs=None):
            print("Up to batch {}, the average loss is {:7.2f}.".format(batch, logs["loss"]))

        def on_epoch_end(self, epoch, logs=None):
            print(
                "The average loss for epoch {} is {:7.2f} "
                "and mean absolute error is {:7.2f}.".format(epoch, logs["loss"], logs["val_mae"])
            )

    learn = scripted_learner(
        [1.0, 3.0, 8.0], n_train=2, n_valid=1, metrics=mae, cbs=LossAndErrorPrintingCallback()
    )
    with learn.no_bar():  # only the callback's own lines on stdout
        learn.fit(1)
    mae_value = learn.recorder.log["mae"]
    assert capsys.readouterr().out.splitlines() == [
        "Up to batch 0, the average loss is    1.00.",
        "Up to batch 1, the average loss is    2.00.",
        "Up to batch 0, the average loss is    8.00.",
        f"The average loss for epoch 0 is    2.00 and mean absolute error is {mae_value:7.2f}.",
    ]
