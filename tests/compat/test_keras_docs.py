"""Keras callback snippets (API docs and guides), run with `import hookloop as hl`.

`keras.callbacks.X` becomes `hl.X`, `model.fit(x, y, epochs=n, callbacks=[...])` becomes
`learn.fit(n, callbacks=[...])`, `model.evaluate`/`model.predict` become `learn.validate` /
`learn.get_preds`; the callbacks and what they do are Keras'.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
import urllib.parse

import pytest
import torch
from torch import nn

import hookloop as hl
from conftest import sign_dls


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Keras snippets write relative paths


def classifier(**kwargs) -> hl.Learner:
    torch.manual_seed(0)
    return hl.Learner(
        nn.Linear(4, 2), sign_dls(), nn.CrossEntropyLoss(), metrics=hl.accuracy, **kwargs
    )


def regression_dls() -> hl.DataLoaders:
    """48 training and 16 validation rows of y = x @ w, in batches of 16."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return hl.DataLoaders.from_tensors(x, y, valid_pct=0.25, bs=16, seed=0)


def keras_doc_learner() -> hl.Learner:
    """The Keras docs' toy problem: Dense(10) on np.arange(100).reshape(5, 20), targets 0, SGD,
    mse, batch_size=1, no validation data."""
    torch.manual_seed(0)
    x = torch.arange(100, dtype=torch.float32).reshape(5, 20)
    dls = hl.DataLoaders.from_tensors(x, torch.zeros(5, 10), valid_pct=None, bs=1, shuffle=False)
    return hl.Learner(nn.Linear(20, 10), dls, nn.MSELoss(), opt_func=torch.optim.SGD, lr=0.01)


# ---- History ---------------------------------------------------------------------------------


def test_fit_returns_a_history_of_epoch_averages_and_the_fit_params():
    learn = classifier(train_metrics=True)
    batches = []

    class Count(hl.Callback):
        run_valid = False

        def after_loss(self):
            y = self.learn.yb[0]
            correct = (self.learn.pred.argmax(1) == y).sum().item()
            batches.append((self.learn.loss.item(), correct, len(y)))

    my_history = learn.fit(2, callbacks=[Count()])
    assert my_history.params == {"epochs": 2, "steps": 3, "verbose": 1}
    assert my_history.epoch == [0, 1]
    assert set(my_history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for epoch in (0, 1):
        part = batches[3 * epoch : 3 * epoch + 3]  # 3 equal batches of 16
        assert my_history.history["loss"][epoch] == pytest.approx(sum(b[0] for b in part) / 3)
        assert my_history.history["accuracy"][epoch] == pytest.approx(sum(b[1] for b in part) / 48)


def test_a_history_passed_as_a_callback_collects_the_same_logs():
    history = hl.History()
    learn = classifier()
    returned = learn.fit(2, callbacks=[history])
    assert history.history == returned.history
    assert history.epoch == [0, 1]
    assert history.params == {"epochs": 2, "steps": 3, "verbose": 1}


# ---- BaseLogger ------------------------------------------------------------------------------


def test_base_logger_averages_the_epochs_batch_losses():
    learn = classifier()
    logger = hl.BaseLogger(stateful_metrics=None)
    learn.fit(1, callbacks=[logger])
    losses = learn.recorder.raw_losses  # 3 batches of 16 rows: the average is the plain mean
    assert logger.logs["loss"] == pytest.approx(sum(losses) / 3)


def test_base_logger_stateful_metrics_are_logged_as_they_are():
    learn = classifier()
    logger = hl.BaseLogger(stateful_metrics=["loss"])
    learn.fit(1, callbacks=[logger])
    assert logger.logs["loss"] == pytest.approx(learn.recorder.raw_losses[-1])


# ---- CSVLogger -------------------------------------------------------------------------------


def test_csv_logger_writes_training_log_with_one_row_per_epoch(tmp_path):
    csv_logger = hl.CSVLogger("training.log")
    learn = classifier()
    history = learn.fit(3, callbacks=[csv_logger])
    lines = (tmp_path / "training.log").read_text().splitlines()
    assert lines[0] == "epoch,loss,val_accuracy,val_loss"  # Keras: epoch, sorted log keys
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    assert [float(r[3]) for r in rows] == pytest.approx(history.history["val_loss"])


def test_csv_logger_keras_keywords_separator_and_append(tmp_path):
    learn = classifier()
    learn.fit(1, callbacks=[hl.CSVLogger(filename="log.tsv", separator="\t", append=True)])
    learn.fit(1, callbacks=[hl.CSVLogger(filename="log.tsv", separator="\t", append=True)])
    lines = (tmp_path / "log.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:2] == ["epoch", "loss"]
    assert len(lines) == 3  # one header, one row per fit


def test_csv_logger_as_keras_tests_it_four_separators_per_line_and_one_header(tmp_path):
    # keras/src/callbacks/csv_logger_test.py: metrics=["mse"] with validation data logs
    # epoch, loss, mse, val_loss, val_mse; append=True and a reused logger add rows only.
    def make():
        torch.manual_seed(0)
        return hl.Learner(
            nn.Linear(4, 1), regression_dls(), nn.MSELoss(), metrics=hl.mse, train_metrics=True
        )

    make().fit(1, callbacks=[hl.CSVLogger("log.tsv", separator="\t")])
    cbks = [hl.CSVLogger("log.tsv", separator="\t", append=True)]
    learn = make()
    learn.fit(1, callbacks=cbks)
    learn.fit(2, callbacks=cbks)
    lines = (tmp_path / "log.tsv").read_text().splitlines()
    assert lines[0] == "epoch\tloss\tmse\tval_loss\tval_mse"
    assert [line.count("\t") for line in lines] == [4] * 5
    assert [line.split("\t")[0] for line in lines[1:]] == ["0", "0", "0", "1"]


# ---- Callback: the Keras guide's CustomCallback ------------------------------------------------


class CustomCallback(hl.Callback):
    def on_train_begin(self, logs=None):
        keys = list(logs.keys())
        print(f"Starting training; got log keys: {keys}")

    def on_train_end(self, logs=None):
        keys = list(logs.keys())
        print(f"Stop training; got log keys: {keys}")

    def on_epoch_begin(self, epoch, logs=None):
        keys = list(logs.keys())
        print(f"Start epoch {epoch} of training; got log keys: {keys}")

    def on_epoch_end(self, epoch, logs=None):
        keys = list(logs.keys())
        print(f"End epoch {epoch} of training; got log keys: {keys}")

    def on_test_begin(self, logs=None):
        keys = list(logs.keys())
        print(f"Start testing; got log keys: {keys}")

    def on_test_end(self, logs=None):
        keys = list(logs.keys())
        print(f"Stop testing; got log keys: {keys}")

    def on_predict_begin(self, logs=None):
        keys = list(logs.keys())
        print(f"Start predicting; got log keys: {keys}")

    def on_predict_end(self, logs=None):
        keys = list(logs.keys())
        print(f"Stop predicting; got log keys: {keys}")

    def on_train_batch_begin(self, batch, logs=None):
        keys = list(logs.keys())
        print(f"...Training: start of batch {batch}; got log keys: {keys}")

    def on_train_batch_end(self, batch, logs=None):
        keys = list(logs.keys())
        print(f"...Training: end of batch {batch}; got log keys: {keys}")

    def on_test_batch_begin(self, batch, logs=None):
        keys = list(logs.keys())
        print(f"...Evaluating: start of batch {batch}; got log keys: {keys}")

    def on_test_batch_end(self, batch, logs=None):
        keys = list(logs.keys())
        print(f"...Evaluating: end of batch {batch}; got log keys: {keys}")

    def on_predict_batch_begin(self, batch, logs=None):
        keys = list(logs.keys())
        print(f"...Predicting: start of batch {batch}; got log keys: {keys}")

    def on_predict_batch_end(self, batch, logs=None):
        keys = list(logs.keys())
        print(f"...Predicting: end of batch {batch}; got log keys: {keys}")


def hook_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "got log keys" in ln]


def test_custom_callback_hooks_run_in_keras_order_during_fit(capsys):
    learn = classifier()
    with learn.no_logging():
        learn.fit(1, callbacks=[CustomCallback()])
    epoch_keys = "['loss', 'val_loss', 'val_accuracy']"
    assert hook_lines(capsys.readouterr().out) == [
        "Starting training; got log keys: []",
        "Start epoch 0 of training; got log keys: []",
        "...Training: start of batch 0; got log keys: []",
        "...Training: end of batch 0; got log keys: ['loss']",
        "...Training: start of batch 1; got log keys: []",
        "...Training: end of batch 1; got log keys: ['loss']",
        "...Training: start of batch 2; got log keys: []",
        "...Training: end of batch 2; got log keys: ['loss']",
        "Start testing; got log keys: []",
        "...Evaluating: start of batch 0; got log keys: []",
        "...Evaluating: end of batch 0; got log keys: ['loss']",
        "Stop testing; got log keys: ['loss', 'accuracy']",
        f"End epoch 0 of training; got log keys: {epoch_keys}",
        f"Stop training; got log keys: {epoch_keys}",
    ]


def test_custom_callback_test_hooks_run_during_validate(capsys):
    learn = classifier()
    res = learn.validate(cbs=[CustomCallback()])
    assert hook_lines(capsys.readouterr().out) == [
        "Start testing; got log keys: []",
        "...Evaluating: start of batch 0; got log keys: []",
        "...Evaluating: end of batch 0; got log keys: ['loss']",
        "Stop testing; got log keys: ['loss', 'accuracy']",
    ]
    assert set(res.keys()) == {"valid_loss", "accuracy"}


def test_custom_callback_predict_hooks_run_during_get_preds(capsys):
    learn = classifier()
    preds, _ = learn.get_preds(cbs=[CustomCallback()])
    assert hook_lines(capsys.readouterr().out) == [
        "Start predicting; got log keys: []",
        "...Predicting: start of batch 0; got log keys: []",
        "...Predicting: end of batch 0; got log keys: ['outputs']",
        "Stop predicting; got log keys: []",
    ]
    assert preds.shape == (16, 2)


def test_keras_2_batch_hooks_get_the_batch_index_and_the_running_mean_loss():
    seen = []

    class LossPerBatch(hl.Callback):
        def on_batch_begin(self, batch, logs=None):
            seen.append(("begin", batch))

        def on_batch_end(self, batch, logs=None):
            seen.append(("end", batch, logs["loss"]))

    learn = classifier()
    learn.fit(1, callbacks=[LossPerBatch()])
    l0, l1, l2 = learn.recorder.raw_losses
    assert seen == [
        ("begin", 0),
        ("end", 0, pytest.approx(l0)),
        ("begin", 1),
        ("end", 1, pytest.approx((l0 + l1) / 2)),
        ("begin", 2),
        ("end", 2, pytest.approx((l0 + l1 + l2) / 3)),
    ]


def test_test_batch_hooks_get_batch_index_and_logs_during_fit_validation():
    seen = []

    class TestBatches(hl.Callback):
        def on_test_batch_begin(self, batch, logs=None):
            seen.append(("begin", batch, dict(logs)))

        def on_test_batch_end(self, batch, logs=None):
            seen.append(("end", batch, dict(logs)))

    learn = classifier()
    history = learn.fit(1, callbacks=[TestBatches()])
    val_loss = history.history["val_loss"][0]
    assert seen == [("begin", 0, {}), ("end", 0, {"loss": pytest.approx(val_loss)})]


# ---- EarlyStopping -----------------------------------------------------------------------------


def test_early_stopping_on_loss_doc_example_runs_4_epochs():
    callback = hl.EarlyStopping(monitor="loss", patience=3)
    learn = keras_doc_learner()
    with learn.no_logging():
        history = learn.fit(10, callbacks=[callback])
    # The docs' toy problem diverges with SGD at 0.01: the first epoch stays the best.
    assert len(history.history["loss"]) == 4


def test_early_stopping_restores_the_best_weights():
    weights = []

    class Keep(hl.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights.append(self.model.weight.detach().clone())

    learn = classifier(lr=0.5)
    stop = hl.EarlyStopping(monitor="val_loss", patience=1, min_delta=10, restore_best_weights=True)
    history = learn.fit(10, callbacks=[Keep(), stop])
    # No epoch betters the first by 10: epoch 0 is the best, epoch 1 uses the patience.
    assert history.epoch == [0, 1]
    assert torch.equal(learn.model.weight, weights[0])
    assert not torch.equal(weights[1], weights[0])


# ---- LambdaCallback ----------------------------------------------------------------------------


def _sleep() -> None:
    time.sleep(60)


def test_lambda_callback_doc_examples(tmp_path, capsys):
    # Print the batch number at the beginning of every batch.
    batch_print_callback = hl.LambdaCallback(on_train_batch_begin=lambda batch, logs: print(batch))

    # Stream the epoch loss to a file in JSON format.
    json_log = open("loss_log.json", mode="wt", buffering=1)  # noqa: UP015 (as in the docs)
    json_logging_callback = hl.LambdaCallback(
        on_epoch_end=lambda epoch, logs: json_log.write(
            json.dumps({"epoch": epoch, "loss": logs["loss"]}) + "\n"
        ),
        on_train_end=lambda logs: json_log.close(),
    )

    # Terminate some processes after having finished model training.
    processes = [multiprocessing.get_context("fork").Process(target=_sleep)]
    processes[0].start()
    cleanup_callback = hl.LambdaCallback(
        on_train_end=lambda logs: [p.terminate() for p in processes if p.is_alive()]
    )

    learn = classifier()
    with learn.no_logging():
        history = learn.fit(
            2, callbacks=[batch_print_callback, json_logging_callback, cleanup_callback]
        )
    assert capsys.readouterr().out.split() == ["0", "1", "2"] * 2
    assert json_log.closed
    records = [json.loads(line) for line in (tmp_path / "loss_log.json").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["loss"] for r in records] == pytest.approx(history.history["loss"])
    processes[0].join(timeout=10)
    assert processes[0].exitcode == -15  # SIGTERM


# ---- LearningRateScheduler ---------------------------------------------------------------------


def test_learning_rate_scheduler_doc_example():
    def scheduler(epoch, lr):
        if epoch < 10:
            return lr
        else:
            return lr * math.exp(-0.1)

    learn = keras_doc_learner()
    learn.create_opt()
    assert round(learn.opt.param_groups[0]["lr"], 5) == 0.01
    callback = hl.LearningRateScheduler(scheduler)
    with learn.no_logging():
        learn.fit(15, callbacks=[callback])
    assert round(learn.opt.param_groups[0]["lr"], 5) == 0.00607


def test_learning_rate_scheduler_with_one_argument_sets_each_epochs_lr():
    learn = classifier()
    learn.fit(3, callbacks=[hl.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))])
    assert learn.recorder.lrs == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.1 / 3] * 3)


# ---- ModelCheckpoint ---------------------------------------------------------------------------


def test_model_checkpoint_writes_one_file_per_epoch_named_from_epoch_and_val_loss(tmp_path):
    learn = classifier()
    history = learn.fit(3, callbacks=[hl.ModelCheckpoint("weights.{epoch:02d}-{val_loss:.2f}.h5")])
    expected = [
        f"weights.{e + 1:02d}-{v:.2f}.h5" for e, v in enumerate(history.history["val_loss"])
    ]
    assert sorted(p.name for p in tmp_path.glob("weights.*")) == expected
    last = torch.load(tmp_path / expected[-1], weights_only=True)
    assert torch.equal(last["model"]["weight"], learn.model.weight.detach())


def test_model_checkpoint_best_only_then_load_the_checkpoint(tmp_path):
    weights = {}

    class Keep(hl.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch] = (logs["val_accuracy"], self.model.weight.detach().clone())

    checkpoint_filepath = str(tmp_path / "ckpt" / "checkpoint.weights.h5")
    model_checkpoint_callback = hl.ModelCheckpoint(
        filepath=checkpoint_filepath,
        save_weights_only=True,
        monitor="val_accuracy",
        mode="max",
        save_best_only=True,
    )
    learn = classifier(lr=0.1)
    learn.fit(4, callbacks=[Keep(), model_checkpoint_callback])
    best_epoch = max(weights, key=lambda e: (weights[e][0], -e))  # first epoch of the max
    learn.load(checkpoint_filepath)
    assert torch.equal(learn.model.weight, weights[best_epoch][1])


# ---- ProgbarLogger -----------------------------------------------------------------------------


def test_progbar_logger_replaces_the_default_bar_and_prints_the_table_once(capsys):
    learn = classifier()
    learn.fit(2, callbacks=[hl.ProgbarLogger()])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1"]
    assert sum(isinstance(c, hl.ProgressBar) for c in learn.cbs) == 1


def test_progbar_logger_in_fit_is_the_only_bar_drawn():
    drawing = []

    class Bars(hl.Callback):
        order = hl.ProgressBar.order + 1

        def after_batch(self):
            bars = [c for c in self.learn.cbs if isinstance(c, hl.ProgressBar)]
            drawing.append([c.bar is not None for c in bars])

    learn = classifier()
    learn.progress_bar.show_bar = True
    learn.fit(1, callbacks=[hl.ProgbarLogger(show_bar=True), Bars()])
    # The default bar first, the ProgbarLogger second: only the latter draws, each batch.
    assert drawing == [[False, True]] * 4


def test_progbar_logger_accepts_keras_2_arguments(capsys):
    learn = classifier()
    learn.fit(1, callbacks=[hl.ProgbarLogger(count_mode="steps", stateful_metrics=None)])
    assert len(capsys.readouterr().out.splitlines()) == 2


# ---- ReduceLROnPlateau -------------------------------------------------------------------------


def test_reduce_lr_on_plateau_doc_example_cuts_the_lr_after_patience_down_to_min_lr():
    # Inputs all zero and no bias: the loss is log(2) whatever the weights, a perfect plateau.
    x, y = torch.zeros(64, 4), torch.arange(64) % 2
    dls = hl.DataLoaders.from_tensors(x, y, valid_pct=0.25, bs=16, seed=0)
    learn = hl.Learner(nn.Linear(4, 2, bias=False), dls, nn.CrossEntropyLoss(), lr=0.01)
    reduce_lr = hl.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=5, min_lr=0.001)
    learn.fit(12, callbacks=[reduce_lr])
    per_epoch = learn.recorder.lrs[::3]  # 3 batches per epoch
    # Epoch 0 sets the best; after epoch 5 (5 epochs without improvement) 0.01 -> 0.002; after
    # epoch 10, 0.002 * 0.2 = 0.0004 is below min_lr: 0.001.
    assert per_epoch == pytest.approx([0.01] * 6 + [0.002] * 5 + [0.001])


# ---- RemoteMonitor -----------------------------------------------------------------------------


def test_remote_monitor_posts_each_epochs_logs(http_server):
    monitor = hl.RemoteMonitor(
        root=http_server.root, path="/publish/epoch/end/", field="data", headers=None
    )
    learn = classifier()
    history = learn.fit(2, callbacks=[monitor])
    assert [path for path, _, _ in http_server.received] == ["/publish/epoch/end/"] * 2
    posted = [
        json.loads(urllib.parse.parse_qs(body)["data"][0]) for _, _, body in http_server.received
    ]
    assert [p["epoch"] for p in posted] == [0, 1]
    assert [p["val_accuracy"] for p in posted] == pytest.approx(history.history["val_accuracy"])
    assert [p["loss"] for p in posted] == pytest.approx(history.history["loss"])


# ---- TensorBoard -------------------------------------------------------------------------------


def test_tensorboard_writes_each_epochs_values_for_tensorboards_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard_callback = hl.TensorBoard(log_dir="./logs")
    learn = classifier()
    history = learn.fit(2, callbacks=[tensorboard_callback])
    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"epoch/train_loss", "epoch/valid_loss", "epoch/accuracy"} <= set(scalars)
    events = acc.Scalars("epoch/valid_loss")
    assert [e.step for e in events] == [0, 1]
    assert [e.value for e in events] == pytest.approx(history.history["val_loss"])


# ---- TerminateOnNaN ----------------------------------------------------------------------------


def test_terminate_on_nan_stops_at_the_first_nan_batch_before_the_step():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    x[20] = float("nan")  # in the second training batch (rows 16..31)
    dls = hl.DataLoaders.from_tensors(
        x[:48], (x[:48, 0] > 0).long(), valid=(x[48:], (x[48:, 0] > 0).long()), bs=16, shuffle=False
    )
    torch.manual_seed(0)
    learn = hl.Learner(nn.Linear(4, 2), dls, nn.CrossEntropyLoss())
    steps = []

    class CountSteps(hl.Callback):
        def after_step(self):
            steps.append(self.learn.iter)

    history = learn.fit(5, callbacks=[hl.TerminateOnNaN(), CountSteps()])
    assert history.epoch == [0]  # Keras: the bad epoch is recorded, then training stops
    assert math.isnan(history.history["loss"][0])
    assert steps == [0]  # one optimizer step, on the first batch
    assert learn.train_iter == 2  # the bad batch counts as a batch run (no step taken)
    assert torch.isfinite(learn.model.weight).all()


# ---- BackupAndRestore ------------------------------------------------------------------------


@pytest.mark.parametrize("backup_dir", ["", None])
def test_backup_and_restore_refuses_an_empty_backup_dir(backup_dir):
    # Keras's backup_and_restore_test: ValueError "Empty `backup_dir` argument passed". An
    # empty path would be the working directory, which a successful fit deletes.
    with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
        hl.BackupAndRestore(backup_dir=backup_dir)
