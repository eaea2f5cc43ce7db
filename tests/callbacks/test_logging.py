"""Logging callbacks: CSVLogger (real files), LambdaCallback, BaseLogger, the fastai seed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from logging_helpers import scripted_learner, two_epochs
from torch import nn
from tracker_helpers import Scripted

from hookloop import (
    BaseLogger,
    Callback,
    CancelEpochException,
    CSVLogger,
    DataLoaders,
    LambdaCallback,
    Learner,
    LearningRateScheduler,
    RemoteMonitor,
    TensorBoard,
    accuracy,
    error_rate,
)

TIME = re.compile(r"\d\d:\d\d")


# ---- CSVLogger -------------------------------------------------------------------------------


def test_csv_logger_writes_a_header_and_one_row_per_epoch_with_0_based_epochs(tmp_path):
    learn = two_epochs(path=tmp_path)
    learn.fit(2, cbs=CSVLogger())
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,valid_loss,time"
    assert [line.rsplit(",", 1)[0] for line in lines[1:]] == ["0,2.0,5.0", "1,3.0,7.0"]
    assert all(TIME.fullmatch(line.rsplit(",", 1)[1]) for line in lines[1:])


def test_csv_rows_are_on_disk_before_the_next_epoch_starts(tmp_path):
    seen = []

    class ReadFile(Callback):
        def before_epoch(self):
            seen.append(len((tmp_path / "history.csv").read_text().splitlines()))

    learn = two_epochs(path=tmp_path, cbs=ReadFile())
    learn.fit(2, cbs=CSVLogger())
    assert seen == [1, 2]  # the header, then the header and epoch 0's row


def test_csv_append_continues_an_existing_file_without_a_second_header(tmp_path):
    two_epochs(path=tmp_path).fit(2, cbs=CSVLogger())
    two_epochs(path=tmp_path).fit(2, cbs=CSVLogger(append=True))
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,valid_loss,time"
    assert [line.split(",")[0] for line in lines] == ["epoch", "0", "1", "0", "1"]


def test_csv_without_append_starts_the_file_again(tmp_path):
    two_epochs(path=tmp_path).fit(2, cbs=CSVLogger())
    two_epochs(path=tmp_path).fit(1, cbs=CSVLogger())
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 2


def test_csv_append_to_a_file_with_other_columns_is_an_error(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,loss\n0,1.0\n")
    learn = two_epochs(path=tmp_path)
    with pytest.raises(ValueError, match="has the columns 'epoch,loss'"):
        learn.fit(1, cbs=CSVLogger(append=True))


def test_read_log_returns_a_dataframe_when_pandas_is_installed(tmp_path):
    logger = CSVLogger()
    two_epochs(path=tmp_path).fit(2, cbs=logger)
    df = logger.read_log()
    assert list(df.columns) == ["epoch", "train_loss", "valid_loss", "time"]
    assert df["epoch"].tolist() == [0, 1]
    assert df["valid_loss"].tolist() == [5.0, 7.0]


def test_read_log_returns_a_list_of_dicts_without_pandas(tmp_path, monkeypatch):
    logger = CSVLogger()
    two_epochs(path=tmp_path).fit(2, cbs=logger)
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    rows = logger.read_log()
    assert [{k: v for k, v in r.items() if k != "time"} for r in rows] == [
        {"epoch": 0, "train_loss": 2.0, "valid_loss": 5.0},
        {"epoch": 1, "train_loss": 3.0, "valid_loss": 7.0},
    ]


def test_fastai_v1_callback_fns_csv_logger_and_read_logged_file(tmp_path):
    torch.manual_seed(0)
    data = DataLoaders.from_tensors(torch.randn(64, 4), torch.randint(0, 2, (64,)), bs=16)
    learn = Learner(
        data, nn.Linear(4, 2), metrics=[accuracy, error_rate], callback_fns=[CSVLogger],
        path=tmp_path, device="cpu",
    )  # fmt: skip
    learn.logger = lambda line: None
    learn.fit(3)
    df = learn.csv_logger.read_logged_file()
    assert (tmp_path / "history.csv").exists()
    assert list(df.columns) == [
        "epoch",
        "train_loss",
        "valid_loss",
        "accuracy",
        "error_rate",
        "time",
    ]
    assert df["epoch"].tolist() == [0, 1, 2]
    assert df["accuracy"].tolist() == pytest.approx([v[2] for v in learn.recorder.values])
    assert (df["accuracy"] + df["error_rate"]).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_fastai_v1_learner_first_argument_adds_csv_to_the_filename(tmp_path):
    learn = two_epochs(path=tmp_path)
    learn.fit(1, callbacks=[CSVLogger(learn, filename="run1")])
    assert (tmp_path / "run1.csv").read_text().startswith("epoch,train_loss")


def test_keras_filename_keyword_and_separator(tmp_path):
    learn = two_epochs(path=tmp_path)
    learn.fit(1, cbs=CSVLogger(filename="log.tsv", separator="\t"))
    lines = (tmp_path / "log.tsv").read_text().splitlines()
    assert lines == ["epoch\tloss\tval_loss", "0\t2.0\t5.0"]  # Keras's columns


def test_csv_logger_called_the_keras_way_writes_epoch_and_the_sorted_keras_keys(tmp_path):
    # Keras: CSVLogger(filename, separator=",", append=False); logs loss, mse, val_loss, val_mse.
    learn = two_epochs(path=tmp_path, metrics=Scripted([0.5, 0.25], "mse"), train_metrics=True)
    learn.fit(2, cbs=CSVLogger("training.log", separator=",", append=False))
    lines = (tmp_path / "training.log").read_text().splitlines()
    # train loss 2.0 then 3.0, valid loss 5.0 then 7.0; 0-based epochs; no time column.
    assert lines == ["epoch,loss,mse,val_loss,val_mse", "0,2.0,0.5,5.0,0.5", "1,3.0,0.25,7.0,0.25"]


@pytest.mark.parametrize(
    "make",
    [
        lambda learn: CSVLogger(),
        lambda learn: CSVLogger(fname="history.csv"),
        lambda learn: CSVLogger(Path("history.csv")),
        lambda learn: CSVLogger(learn, filename="history"),  # fastai v1
    ],
    ids=["no-args", "fname", "path", "v1"],
)
def test_csv_logger_called_the_fastai_way_writes_the_recorders_columns(tmp_path, make):
    learn = two_epochs(path=tmp_path)
    learn.fit(1, cbs=make(learn))
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,valid_loss,time"


def test_csv_logger_style_overrides_how_it_was_called(tmp_path):
    two_epochs(path=tmp_path).fit(1, cbs=CSVLogger("a.csv", style="fastai"))
    two_epochs(path=tmp_path).fit(1, cbs=CSVLogger(fname="b.csv", style="keras"))
    assert (tmp_path / "a.csv").read_text().startswith("epoch,train_loss,valid_loss,time\n")
    assert (tmp_path / "b.csv").read_text().startswith("epoch,loss,val_loss\n")


def test_csv_logger_takes_keras_positional_order_filename_separator_append(tmp_path):
    two_epochs(path=tmp_path).fit(1, cbs=CSVLogger("log.tsv", "\t"))
    two_epochs(path=tmp_path).fit(1, cbs=CSVLogger("log.tsv", "\t", True))
    lines = (tmp_path / "log.tsv").read_text().splitlines()
    assert lines == ["epoch\tloss\tval_loss", "0\t2.0\t5.0", "0\t2.0\t5.0"]


def test_keras_csv_logger_reused_with_append_writes_one_header(tmp_path):
    # Keras's csv_logger_test: a second fit with the same append=True logger adds its rows.
    logger = CSVLogger("log.csv", append=True)
    learn = scripted_learner([1.0, 2.0] * 3, n_train=1, n_valid=1, path=tmp_path)
    learn.fit(1, cbs=logger)
    learn.fit(2, cbs=logger)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == ["epoch,loss,val_loss", "0,1.0,2.0", "0,1.0,2.0", "1,1.0,2.0"]


def test_keras_csv_logger_has_a_learning_rate_column_with_a_keras_lr_callback(tmp_path):
    learn = two_epochs(path=tmp_path)
    learn.fit(1, cbs=[CSVLogger("log.csv"), LearningRateScheduler(lambda epoch: 0.5)])
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == ["epoch,learning_rate,loss,val_loss", "0,0.5,2.0,5.0"]


def test_keras_csv_logger_writes_nan_as_nan(tmp_path):
    learn = scripted_learner([float("nan"), 2.0], n_train=1, n_valid=1, path=tmp_path)
    learn.fit(1, cbs=CSVLogger("log.csv"))
    assert (tmp_path / "log.csv").read_text().splitlines()[1] == "0,nan,2.0"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"separator": ";;"}, ValueError, "separator must be one character, got ';;'"),
        ({"append": "yes"}, TypeError, "append must be a bool, got 'yes'"),
        ({"fname": 3}, TypeError, "fname must be a str or path, got int"),
        ({"fname": "a.csv", "filename": "b.csv"}, ValueError, "give the file name once"),
        ({"style": "pandas"}, ValueError, "style must be one of 'fastai', 'keras', got 'pandas'"),
    ],
)
def test_csv_logger_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CSVLogger(**kwargs)


def test_csv_load_state_dict_rewrites_the_file_to_the_checkpoint_rows(tmp_path):
    # A run checkpoints after epoch 1, writes epoch 2, and is resumed from the checkpoint: the
    # file must hold epochs 0-1 as first written (same time strings), then the resumed rows.
    first = CSVLogger()
    states = []

    class Checkpoint(Callback):
        order = 100  # after the CSVLogger's row

        def after_epoch(self):
            states.append(first.state_dict())

    scripted_learner([1.0] * 6, n_train=1, n_valid=1, path=tmp_path).fit(
        3, cbs=[first, Checkpoint()]
    )
    original = (tmp_path / "history.csv").read_text().splitlines()
    assert len(original) == 4

    state = states[1]  # after epoch 1

    class Resume(Callback):
        order = 100  # resume loads callback state after before_fit

        def before_fit(self):
            self.learn.csv_logger.load_state_dict(state)
            self.learn.epoch = 2  # the loop starts at the checkpoint's next epoch

    resumed = scripted_learner([1.0] * 2, n_train=1, n_valid=1, path=tmp_path)
    resumed.fit(3, cbs=[CSVLogger(append=False), Resume()])
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[:3] == original[:3]  # header and epochs 0-1, byte for byte
    assert [line.split(",")[0] for line in lines] == ["epoch", "0", "1", "2"]


def test_csv_state_loaded_before_fit_is_written_when_the_fit_starts(tmp_path):
    state = {"lines": ["epoch,train_loss,valid_loss,time", "0,9.0,9.0,01:02"]}
    logger = CSVLogger()
    logger.load_state_dict(state)
    two_epochs(path=tmp_path).fit(1, cbs=logger)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[:2] == state["lines"]
    assert lines[2].startswith("0,2.0,5.0,")


# ---- LambdaCallback --------------------------------------------------------------------------


def test_lambda_callback_runs_fastai_events_and_keras_hooks():
    calls = []
    cb = LambdaCallback(
        on_epoch_end=lambda epoch, logs: calls.append(("on_epoch_end", epoch, logs["val_loss"])),
        on_train_begin=lambda logs: calls.append(("on_train_begin",)),
        before_fit=lambda: calls.append(("before_fit",)),
        after_fit=lambda: calls.append(("after_fit",)),
        on_test_end=lambda logs: calls.append(("on_test_end", logs["loss"])),
    )
    two_epochs(cbs=cb).fit(2)
    assert calls == [
        ("before_fit",),
        ("on_train_begin",),
        ("on_test_end", 5.0),
        ("on_epoch_end", 0, 5.0),
        ("on_test_end", 7.0),
        ("on_epoch_end", 1, 7.0),
        ("after_fit",),
    ]


def test_lambda_callback_takes_keras_positional_arguments_in_keras_order():
    epochs = []
    cb = LambdaCallback(None, lambda epoch, logs: epochs.append(epoch))  # on_epoch_end
    two_epochs(cbs=cb).fit(2)
    assert epochs == [0, 1]


def test_lambda_callback_keeps_other_keywords_as_attributes_like_keras():
    # Keras's lambda_callback_test: LambdaCallback(custom_method=f) has cb.custom_method.
    def custom_method():
        return "custom_method_called"

    cb = LambdaCallback(on_epoch_end=lambda epoch, logs: None, custom_method=custom_method)
    assert cb.custom_method() == "custom_method_called"
    assert LambdaCallback(patience_note=3).patience_note == 3  # any value, as Keras


def test_lambda_callback_keeps_an_attribute_out_of_the_loop():
    calls = []
    cb = LambdaCallback(custom_method=lambda: calls.append("called"))
    two_epochs(cbs=cb).fit(2)
    assert calls == []


def test_lambda_callback_warns_when_a_keyword_is_one_typo_from_a_hook_name():
    with pytest.warns(UserWarning, match="'on_epoch_ends' is not a hook name.*'on_epoch_end'"):
        cb = LambdaCallback(on_epoch_ends=lambda epoch, logs: None)
    assert callable(cb.on_epoch_ends)  # kept, as Keras keeps it


def test_lambda_callback_rejects_a_hook_that_is_not_callable():
    with pytest.raises(TypeError, match="on_epoch_end must be callable, got 3"):
        LambdaCallback(on_epoch_end=3)


# ---- BaseLogger ------------------------------------------------------------------------------


def test_base_logger_averages_the_training_loss_weighted_by_batch_size():
    # Batches of 4, 4 and 2 items with losses 1, 4, 5: (4 + 16 + 10) / 10 = 3.0
    logger = BaseLogger()
    learn = scripted_learner([1.0, 4.0, 5.0, 6.0], n_train=10, n_valid=1, bs=4)
    history = learn.fit(1, cbs=logger)
    assert logger.logs == {"loss": 3.0, "val_loss": 6.0}
    assert logger.history == [{"loss": 3.0, "val_loss": 6.0}]
    assert history.history == {"loss": [3.0], "val_loss": [6.0]}  # the Recorder is still there
    assert type(learn.recorder).__name__ == "Recorder"


def test_base_logger_stateful_metric_is_logged_as_it_is_not_averaged():
    logger = BaseLogger(stateful_metrics=["loss"])
    learn = scripted_learner([1.0, 4.0, 5.0, 6.0], n_train=10, n_valid=1, bs=4)
    learn.fit(1, cbs=logger)
    assert logger.logs["loss"] == 5.0  # the last batch's value


def test_base_logger_unknown_stateful_name_fails_before_training():
    learn = two_epochs()
    with pytest.raises(ValueError, match="'acc' matches no recorded value"):
        learn.fit(1, cbs=BaseLogger(stateful_metrics=["acc"]))
    assert learn.recorder.losses == []


# ---- the fastai seed -------------------------------------------------------------------------


def test_fastai_print_metrics_callback_runs_as_written(capsys):
    class PrintMetricsCallback(Callback):
        def after_epoch(self):
            print(f"Loss: {self.learn.loss:.4f}, Accuracy: {self.learn.recorder.metrics[0]:.4f}")

    torch.manual_seed(0)
    dls = DataLoaders.from_tensors(torch.randn(64, 4), torch.randint(0, 2, (64,)), bs=16)
    model = nn.Linear(4, 2)
    learn = Learner(dls, model, metrics=accuracy, cbs=PrintMetricsCallback(), device="cpu")
    with learn.no_bar():
        learn.fit(2)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Loss")]
    # 13 validation items in one batch: the last batch's loss is the epoch's valid_loss.
    assert printed == [
        f"Loss: {valid_loss:.4f}, Accuracy: {acc:.4f}"
        for valid_loss, acc in zip(
            learn.recorder.history.history["val_loss"],
            learn.recorder.history.history["val_accuracy"],
        )
    ]
    assert len(printed) == 2


def test_csv_logger_skips_an_epoch_cancelled_before_it_was_recorded(tmp_path):
    class SkipEpoch1(Callback):
        order = -20  # before the Recorder starts the epoch

        def before_epoch(self):
            if self.learn.epoch == 1:
                raise CancelEpochException()

    learn = scripted_learner([1.0, 2.0, 3.0, 4.0], n_train=1, n_valid=1, path=tmp_path)
    learn.fit(3, cbs=[SkipEpoch1(), CSVLogger()])
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert [line.split(",")[:3] for line in lines[1:]] == [["0", "1.0", "2.0"], ["2", "3.0", "4.0"]]


def test_callback_fns_fall_back_to_the_class_without_the_learner(tmp_path):
    learn = two_epochs(path=tmp_path, callback_fns=[TensorBoard, RemoteMonitor, BaseLogger])
    assert learn.tensor_board.log_dir.name == "runs"
    assert learn.remote_monitor.url == "http://localhost:9000/publish/epoch/end/"
    assert learn.base_logger.stateful_metrics == []
