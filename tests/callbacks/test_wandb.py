"""W&B callbacks with the real wandb package, offline, read back from the run's .wandb file."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ScriptedLoss, tiny_learner
from hookloop import (
    Callback,
    DataLoaders,
    Learner,
    SaveModel,
    WandbCallback,
    WandbMetricsLogger,
    accuracy,
)

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """Every run of a test is written under tmp_path/wandb, offline and quiet."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    yield tmp_path
    if wandb.run is not None:  # a test that failed half way leaves no run behind
        wandb.finish()
    wandb.teardown()  # wandb reads WANDB_DIR once per process setup; the next test has its own


# wandb 0.31 writes each run as a LevelDB-style log of protobuf `Record`s (its "transaction
# log"; the Python DataStore that read it is gone from the package). The format: a 7-byte
# header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a crc32,
# a length and a kind (1 full, 2 first, 3 middle, 4 last); a block's tail under 7 bytes is zeros.
def records(run_dir: Path) -> list:
    [path] = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    out, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        body = data[pos + 7 : pos + 7 + length]
        assert crc == zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
        pos += 7 + length
        parts += body
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b""
    return out


def the_run(tmp_path: Path) -> Path:
    """The one run directory under tmp_path, once its .wandb file is complete."""
    # run.finish() returns before wandb-core has written everything; teardown (what the
    # process exit does) waits for it. Only the user's own run can still be open here.
    if wandb.run is None:
        wandb.teardown()
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    return run_dir


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history(run_dir: Path) -> list[dict]:
    """The logged rows, without wandb's own `_step`, `_runtime`, `_timestamp`."""
    rows = []
    for r in records(run_dir):
        if r.WhichOneof("record_type") == "history":
            row = {_key(i): json.loads(i.value_json) for i in r.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def config(run_dir: Path) -> dict:
    cfg = {}
    for r in records(run_dir):
        kind = r.WhichOneof("record_type")
        updates = (
            r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        )
        cfg.update({_key(i): json.loads(i.value_json) for i in updates})
    return cfg


def exit_code(run_dir: Path) -> int | None:
    codes = [r.exit.exit_code for r in records(run_dir) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def three_epochs_learner(**kwargs) -> Learner:
    """3 epochs of 2 training batches and 1 validation batch of 4 rows, with accuracy."""
    return tiny_learner(n_train=8, n_valid=4, bs=4, metrics=accuracy, **kwargs)


# ---- WandbMetricsLogger (Keras keys) ---------------------------------------------------------


def test_metrics_logger_logs_each_epoch_under_keras_keys_equal_to_the_recorder(offline_wandb):
    learn = three_epochs_learner()
    learn.fit(3, lr=0.01, cbs=WandbMetricsLogger(project="p"))
    run_dir = the_run(offline_wandb)
    rows = history(run_dir)
    values = learn.recorder.values  # per epoch: [train_loss, valid_loss, accuracy]
    means = learn.recorder.history.history["loss"]  # Keras's loss: the epoch mean
    assert rows == [
        {
            "epoch/epoch": e,
            "epoch/loss": pytest.approx(means[e]),
            "epoch/val_loss": pytest.approx(values[e][1]),
            "epoch/val_accuracy": pytest.approx(values[e][2]),
            "epoch/learning_rate": pytest.approx(0.01),
        }
        for e in range(3)
    ]
    assert exit_code(run_dir) == 0


def test_config_holds_lr_epochs_bs_and_optimizer_once(offline_wandb):
    learn = tiny_learner(n_train=8, n_valid=4, bs=4)
    learn.fit(2, lr=0.05, cbs=WandbMetricsLogger())
    cfg = config(the_run(offline_wandb))
    assert {k: cfg[k] for k in ("lr", "epochs", "bs", "optimizer")} == {
        "lr": 0.05,
        "epochs": 2,
        "bs": 4,
        "optimizer": "AdamW",
    }


def test_log_freq_2_logs_every_second_training_batch_with_the_running_mean_loss(offline_wandb):
    # 8 batches of 1 row per epoch, 2 epochs: batches 0, 2, 4, 6 of each epoch = 8 rows.
    losses = [float(i) for i in range(1, 9)] + [0.0] + [float(i) for i in range(9, 17)] + [0.0]
    x, y = torch.randn(8, 4), torch.zeros(8).long()
    dls = DataLoaders.from_tensors(
        x, y, valid=(x[:1], y[:1]), valid_pct=None, bs=1, valid_bs=1, shuffle=False
    )
    learn = Learner(nn.Linear(4, 2), dls, ScriptedLoss(losses), device="cpu", lr=0.1)
    learn.logger = lambda line: None
    learn.fit(2, cbs=WandbMetricsLogger(log_freq=2))
    batch_rows = [r for r in history(the_run(offline_wandb)) if "batch/batch_step" in r]
    assert [r["batch/batch_step"] for r in batch_rows] == [0, 2, 4, 6, 8, 10, 12, 14]
    # Keras' batch loss: the mean of the epoch's losses so far, (1 + 2 + 3) / 3 = 2 at batch 2.
    assert [r["batch/loss"] for r in batch_rows] == [1.0, 2.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0]
    assert all(r["batch/learning_rate"] == pytest.approx(0.1) for r in batch_rows)


def test_a_run_started_before_the_fit_is_used_and_left_open(offline_wandb):
    run = wandb.init(project="mine", config={"user": 1})
    try:
        tiny_learner().fit(2, cbs=WandbMetricsLogger())
        assert wandb.run is run  # still open: the user's run is the user's to finish
        run.log({"after_fit": 1.0})
    finally:
        run.finish()
    run_dir = the_run(offline_wandb)
    rows = history(run_dir)
    assert [r.get("epoch/epoch") for r in rows] == [0, 1, None]
    assert rows[-1] == {"after_fit": 1.0}
    assert config(run_dir)["user"] == 1 and config(run_dir)["epochs"] == 2


def test_an_exception_in_training_finishes_the_run_with_a_non_zero_exit_code(offline_wandb):
    class Boom(Callback):
        def after_epoch(self):
            if self.learn.epoch == 1:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_learner().fit(3, cbs=[WandbMetricsLogger(), Boom()])
    assert wandb.run is None
    run_dir = the_run(offline_wandb)
    assert exit_code(run_dir) == 1
    # Boom (order 0) raised before the logger's after_epoch of epoch 1.
    assert [r["epoch/epoch"] for r in history(run_dir)] == [0]


# ---- WandbCallback (fastai names) ------------------------------------------------------------


def test_wandb_callback_logs_fastai_names_per_batch_and_epoch_and_the_best_model(offline_wandb):
    learn = three_epochs_learner(path=offline_wandb)
    learn.fit(2, lr=0.01, cbs=[SaveModel(), WandbCallback(log_freq=1, log_model=True)])
    run_dir = the_run(offline_wandb)
    rows = history(run_dir)
    epoch_rows = [r for r in rows if "valid_loss" in r]
    assert epoch_rows == [
        {"epoch": e + 1, "valid_loss": pytest.approx(v[1]), "accuracy": pytest.approx(v[2])}
        for e, v in enumerate(learn.recorder.values)
    ]
    # 2 training batches per epoch, each logged: epoch progress 0.5, 1.0, 1.5, 2.0.
    batch_rows = [r for r in rows if "raw_loss" in r]
    assert [r["epoch"] for r in batch_rows] == [0.5, 1.0, 1.5, 2.0]
    assert [r["raw_loss"] for r in batch_rows] == pytest.approx(learn.recorder.raw_losses)
    assert [r["train_loss"] for r in batch_rows] == pytest.approx(learn.recorder.smooth_losses)
    assert all(r["lr_0"] == pytest.approx(0.01) for r in batch_rows)
    assert all(r["mom_0"] == pytest.approx(0.9) and r["sqr_mom_0"] == 0.999 for r in batch_rows)
    [artifact] = [r.artifact for r in records(run_dir) if r.WhichOneof("record_type") == "artifact"]
    assert (artifact.type, artifact.name) == ("model", f"run-{run_dir.name[-8:]}-model")
    assert [e.path for e in artifact.manifest.contents] == ["model.pth"]
    assert exit_code(run_dir) == 0


def test_keyboard_interrupt_finishes_the_run_with_exit_code_255(offline_wandb):
    class CtrlC(Callback):
        def after_batch(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_learner().fit(1, cbs=[WandbCallback(), CtrlC()])
    assert exit_code(the_run(offline_wandb)) == 255


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (WandbMetricsLogger, {"log_freq": "step"}, "log_freq"),
        (WandbMetricsLogger, {"log_freq": 0}, "log_freq"),
        (WandbMetricsLogger, {"init_kwargs": "x"}, "init_kwargs"),
        (WandbCallback, {"log": "weights"}, "log"),
        (WandbCallback, {"log_freq": -1}, "log_freq"),
        (WandbCallback, {"log_model": "yes"}, "log_model"),
        (WandbCallback, {"log_preds": 1}, "log_preds"),
        (WandbCallback, {"model_name": ""}, "model_name"),
        (WandbCallback, {"seed": 1.5}, "seed"),
        (WandbCallback, {"project": 3}, "project"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_them(cls, kwargs, match):
    [(name, value)] = kwargs.items()
    with pytest.raises(ValueError, match=rf"{match} .*{value!r}"):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [WandbCallback, WandbMetricsLogger])
def test_without_wandb_the_error_names_the_extra(cls, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'hookloop\[wandb\]'"):
        cls()


def test_log_all_records_gradient_and_parameter_histograms_then_unwatches(offline_wandb):
    learn = tiny_learner(n_train=8, bs=4)
    learn.fit(1, cbs=WandbCallback(log="all", log_freq=1))
    histograms = {
        k.removesuffix("/_type")
        for row in history(the_run(offline_wandb))
        for k, v in row.items()
        if k.endswith("/_type") and v == "histogram"
    }
    assert histograms == {
        "gradients/weight",
        "gradients/bias",
        "parameters/weight",
        "parameters/bias",
    }
    assert not learn.model._forward_hooks  # wandb's hooks are gone after the fit


def test_log_model_without_a_checkpoint_callback_warns_before_training(offline_wandb):
    with pytest.warns(UserWarning, match="SaveModel or ModelCheckpoint"):
        tiny_learner().fit(1, cbs=WandbCallback(log_model=True))


def test_log_preds_logs_a_table_of_n_preds_validation_samples(offline_wandb):
    learn = tiny_learner(n_valid=8)
    learn.fit(1, cbs=WandbCallback(log_preds=True, n_preds=3))
    [row] = [r for r in history(the_run(offline_wandb)) if "predictions/_type" in r]
    assert row["predictions/_type"] == "table-file"
    assert (row["predictions/nrows"], row["predictions/ncols"]) == (3, 3)


def test_lr_find_logs_no_run(offline_wandb):
    learn = tiny_learner(cbs=[WandbCallback(), WandbMetricsLogger()])
    learn.lr_find(num_it=6, show_plot=False, suggest_funcs=None)
    assert wandb.run is None
    assert not (offline_wandb / "wandb").exists()
