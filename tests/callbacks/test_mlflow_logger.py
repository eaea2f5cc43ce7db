"""MLflowLogger: a real mlflow sqlite store in a temporary folder."""

from __future__ import annotations

import sys

import pytest
from logging_helpers import two_epochs

from hookloop import Callback, MLflowLogger


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    # One database for the module: creating an mlflow sqlite store takes seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_mlflow_logs_params_once_metrics_per_epoch_and_finishes_the_run(mlflow_uri):
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger("exp", tracking_uri=mlflow_uri, run_name="r1", log_model=True)
    two_epochs().fit(2, lr=0.01, cbs=logger)
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_name == "r1"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01", "epochs": "2", "bs": "1", "optimizer": "AdamW"}
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 3.0)]
    valid = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [(m.step, m.value) for m in valid] == [(0, 5.0), (1, 7.0)]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pth"]


def test_mlflow_run_ends_failed_when_the_fit_raises(mlflow_uri):
    from mlflow.tracking import MlflowClient

    class Boom(Callback):
        def after_epoch(self):
            if self.learn.epoch == 1:
                raise RuntimeError("boom")

    learn = two_epochs()
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(3, cbs=[MLflowLogger("failing", tracking_uri=mlflow_uri), Boom()])
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("failing").experiment_id])
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [0]  # Boom (order 0) raised before the logger's after_epoch of epoch 1


def test_mlflow_logger_without_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"pip install 'hookloop\[mlflow\]'"):
        MLflowLogger("exp")
