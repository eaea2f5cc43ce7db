"""MLflowLogger: parameters once and every recorded value per epoch to an MLflow run."""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .._util import unwrap_model
from ..callback import Callback


class MLflowLogger(Callback):
    """Logs a fit to MLflow: parameters once, every recorded value per epoch (`step=epoch`).

    Parameters are `lr`, `epochs`, `bs`, `optimizer` (and `wd` when set). Metrics use the
    fastai names (`train_loss`, `valid_loss`, `accuracy`). The run ends FINISHED after the
    fit, FAILED (KILLED on Ctrl-C) when the fit raises. Needs the `mlflow` extra.

    Example:
        learn.fit(3, cbs=MLflowLogger("my-experiment", tracking_uri="sqlite:///mlflow.db"))

    Args:
        experiment_name: created when it does not exist.
        tracking_uri: the MLflow tracking server or store; None uses MLflow's default
            (`MLFLOW_TRACKING_URI`). MLflow 3 refuses `file:` stores unless
            `MLFLOW_ALLOW_FILE_STORE=true`; a `sqlite:///path/mlflow.db` URI works as is.
        run_name: name of the run; None lets MLflow pick one.
        log_model: at the end of the fit, log the model's weights (state dict, `model.pth`)
            as an artifact under `model/`.
    """

    # After the Recorder (order 50), so an epoch cancelled before validation is complete here too.
    order = 51
    rank_zero_only = True

    def __init__(
        self,
        experiment_name: str = "hookloop",
        tracking_uri: str | None = None,
        run_name: str | None = None,
        log_model: bool = False,
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ImportError(
                "MLflowLogger needs mlflow, which is not installed: pip install 'hookloop[mlflow]'"
            )
        if not isinstance(experiment_name, str):
            raise TypeError(f"experiment_name must be a str, got {experiment_name!r}")
        if not experiment_name:
            raise ValueError("experiment_name must be a non-empty str, got ''")
        if tracking_uri is not None and not isinstance(tracking_uri, str):
            raise TypeError(f"tracking_uri must be a str or None, got {tracking_uri!r}")
        if run_name is not None and not isinstance(run_name, str):
            raise TypeError(f"run_name must be a str or None, got {run_name!r}")
        self.experiment_name = experiment_name
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.log_model = log_model
        self.client: Any = None
        self.run_id: str | None = None

    def before_fit(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        learn = self.learn
        self.client = client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment_name)
        exp_id = (
            exp.experiment_id if exp is not None else client.create_experiment(self.experiment_name)
        )
        self.run_id = client.create_run(exp_id, run_name=self.run_name).info.run_id
        group = learn.opt.param_groups[-1]
        train = learn.dls.train
        params = {
            "lr": group["lr"],
            "epochs": learn.n_epoch,
            "bs": getattr(train, "bs", None) or getattr(train, "batch_size", None),
            "optimizer": type(learn.opt).__name__,
        }
        if learn.wd is not None:
            params["wd"] = learn.wd
        client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def after_epoch(self) -> None:
        from mlflow.entities import Metric

        if not self.learn.recorder.epoch_recorded():
            return
        rec = self.learn.recorder
        now = int(time.time() * 1000)
        epoch = self.learn.epoch
        metrics = [Metric(name, float(rec.log[name]), now, epoch) for name in rec.recorded_names()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def after_fit(self) -> None:
        if self.run_id is None:
            return
        try:
            if self.log_model:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.pth"
                    torch.save(unwrap_model(self.learn.model).state_dict(), path)
                    self.client.log_artifact(self.run_id, str(path), artifact_path="model")
        finally:
            self._end("FINISHED")

    def after_exception(self) -> None:
        if self.run_id is not None:
            killed = isinstance(self.learn.exception, KeyboardInterrupt)
            self._end("KILLED" if killed else "FAILED")

    def _end(self, status: str) -> None:
        run_id, self.run_id = self.run_id, None
        self.client.set_terminated(run_id, status=status)


__all__ = ["MLflowLogger"]
