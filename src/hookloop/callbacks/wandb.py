"""Weights & Biases logging: fastai's WandbCallback and wandb's Keras WandbMetricsLogger."""

from __future__ import annotations

import importlib.util
import random
import warnings
from pathlib import Path
from typing import Any

import torch

from .._check import check_choice, check_int, is_int
from .._util import find_bs, unwrap_model
from ..callback import Callback
from ..hyper import get_hyper, hyper_names

_LOG_CHOICES = (None, "gradients", "parameters", "all")
# wandb's own exit hooks: 1 for an exception, 255 for Ctrl-C.
_EXIT_FAILED, _EXIT_KILLED = 1, 255


def _require_wandb(owner: str) -> None:
    # find_spec is None also when sys.modules["wandb"] is None (an import that must fail).
    try:
        found = importlib.util.find_spec("wandb") is not None
    except ValueError:  # a module in sys.modules without a spec
        found = True
    if not found:
        raise ImportError(
            f"{owner} needs wandb, which is not installed: pip install 'hookloop[wandb]'"
        )


def _check_optional_str(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name} must be a non-empty str or None, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


class _WandbRun(Callback):
    """The run's life cycle shared by both W&B callbacks: start or reuse, config, finish."""

    order = 51  # after the Recorder (50): the epoch's values are complete in after_epoch
    rank_zero_only = True

    def __init__(
        self,
        project: str | None,
        run_name: str | None,
        init_kwargs: dict[str, Any] | None,
    ) -> None:
        _require_wandb(type(self).__name__)
        _check_optional_str("project", project)
        _check_optional_str("run_name", run_name)
        if init_kwargs is not None and not isinstance(init_kwargs, dict):
            raise ValueError(f"init_kwargs must be a dict or None, got {init_kwargs!r}")
        self.project = project
        self.run_name = run_name
        self.init_kwargs = dict(init_kwargs or {})
        self.run: Any = None
        self.owns_run = False

    def before_fit(self) -> None:
        import wandb

        self.run = None
        if self.learn.trial_run:
            return  # an lr_find sweep is not a training run (fastai skips it too)
        if wandb.run is not None:
            self.run, self.owns_run = wandb.run, False
        else:
            kwargs = dict(self.init_kwargs)
            if self.project is not None:
                kwargs.setdefault("project", self.project)
            if self.run_name is not None:
                kwargs.setdefault("name", self.run_name)
            self.run, self.owns_run = wandb.init(**kwargs), True
        self.run.config.update(self.hyper_params(), allow_val_change=True)

    def hyper_params(self) -> dict[str, Any]:
        """The run config: `lr`, `epochs`, `bs`, `optimizer` (and `wd` when set)."""
        learn = self.learn
        train = learn.dls.train
        params = {
            "lr": learn.opt.param_groups[-1]["lr"],
            "epochs": learn.n_epoch,
            "bs": getattr(train, "bs", None) or getattr(train, "batch_size", None),
            "optimizer": type(learn.opt).__name__,
        }
        if learn.wd is not None:
            params["wd"] = learn.wd
        return params

    def after_fit(self) -> None:
        self._finish(0)

    def after_exception(self) -> None:
        killed = isinstance(self.learn.exception, KeyboardInterrupt)
        self._finish(_EXIT_KILLED if killed else _EXIT_FAILED)

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is not None and self.owns_run:
            run.finish(exit_code=exit_code)  # a run the user started is theirs to finish


class WandbMetricsLogger(_WandbRun):
    """Logs losses, metrics and the learning rate to Weights & Biases under wandb's Keras keys.

    Per epoch `epoch/epoch` (0-based), `epoch/<key>` for each Keras key (`epoch/loss`,
    `epoch/val_loss`, `epoch/val_accuracy`) and `epoch/learning_rate`, against `epoch/epoch`.
    With `log_freq='batch'` or an int N, also every N-th training batch of an epoch (batches 0,
    N, 2N, ...) `batch/loss` (the epoch's running mean so far, as Keras), `batch/learning_rate`
    and `batch/batch_step` (the global training batch), against `batch/batch_step`. The loss is
    read from the device only on the batches that log. The hyper-parameters go to the run
    config once. A run started with `wandb.init()` before the fit is used and left open;
    otherwise one is started and finished (exit code 0, or non-zero when the fit raises).

    Example:
        wandb.init(project="digits")
        learn.fit(3, cbs=WandbMetricsLogger(log_freq=10))

    Args:
        log_freq: 'epoch' (only per epoch), 'batch' (also every training batch), or an int N
            (also every N-th training batch of an epoch).
        project: the W&B project of a run this callback starts; None uses wandb's default.
        run_name: the name of a run this callback starts; None lets wandb pick one.
        init_kwargs: more `wandb.init` arguments for a run this callback starts.
    """

    def __init__(
        self,
        log_freq: str | int = "epoch",
        project: str | None = None,
        run_name: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if log_freq == "epoch":
            every = 0
        elif log_freq == "batch":
            every = 1
        elif is_int(log_freq) and log_freq > 0:
            every = log_freq
        else:
            raise ValueError(
                f"log_freq must be 'epoch', 'batch' or a positive int, got {log_freq!r}"
            )
        super().__init__(project, run_name, init_kwargs)
        self.log_freq = log_freq
        self._every = every
        self._loss_sum: Any = None
        self._seen = 0

    def before_fit(self) -> None:
        super().before_fit()
        if self.run is None:
            return
        self.run.define_metric("epoch/epoch")
        self.run.define_metric("epoch/*", step_metric="epoch/epoch")
        if self._every:
            self.run.define_metric("batch/batch_step")
            self.run.define_metric("batch/*", step_metric="batch/batch_step")

    def before_epoch(self) -> None:
        self._loss_sum, self._seen = None, 0

    def after_batch(self) -> None:
        learn = self.learn
        if not (self._every and self.run and learn.training and learn.loss is not None):
            return
        # The running sum stays on the device; it is read only on a batch that logs.
        bs = find_bs(learn.yb if learn.yb else learn.xb)
        loss = learn.loss.detach().float() * bs
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._seen += bs
        if learn.iter % self._every == 0:
            self.run.log(
                {
                    "batch/batch_step": learn.train_iter - 1,  # counted before after_batch
                    "batch/loss": float(self._loss_sum) / self._seen,
                    "batch/learning_rate": learn.opt.param_groups[-1]["lr"],
                }
            )

    def after_epoch(self) -> None:
        learn = self.learn
        if self.run is None or not learn.recorder.epoch_recorded():
            return
        row: dict[str, Any] = {"epoch/epoch": learn.epoch}
        row.update({f"epoch/{k}": v for k, v in learn.recorder.keras_logs().items()})
        row["epoch/learning_rate"] = learn.opt.param_groups[-1]["lr"]
        self.run.log(row)


class WandbCallback(_WandbRun):
    """Logs a fit to Weights & Biases as fastai's WandbCallback does, with fastai's names.

    Every `log_freq` training batches, and at the last training batch of each epoch, a row with
    `epoch` (progress in epochs: 0.5 is half way through the first), `train_loss` (the smoothed
    loss, as in fastai's table), `raw_loss` (the batch's loss) and each parameter group's
    hyper-parameters (`lr_0`, `mom_0`, `sqr_mom_0`, `wd_0`, `eps_0`). After each epoch a row
    with `epoch` (the epochs done), `valid_loss` and the metrics (`accuracy`, ...), as fastai.
    The hyper-parameters go to the run config once. A run started with `wandb.init()` before
    the fit is used and left open; otherwise one is started and finished (exit code 0, or
    non-zero when the fit raises).

    Example:
        wandb.init(project="pets")
        learn.fit(3, cbs=[SaveModel(), WandbCallback(log_model=True)])

    Args:
        log: what `wandb.watch` records about the model: 'gradients', 'parameters', 'all', or
            None (nothing).
        log_freq: the per-batch row, and `wandb.watch`'s histograms, every this many training
            batches (fastai logs every batch; each row reads the loss from the device).
        log_preds: at the end of the fit, log a `wandb.Table` of `n_preds` validation samples
            (index, target, prediction), drawn with `seed`.
        log_model: at the end of the fit, log the file SaveModel or ModelCheckpoint last wrote
            (the best model) as a wandb Artifact of type 'model'.
        model_name: the artifact's name; None uses fastai's `run-<run id>-model`.
        n_preds: how many validation samples `log_preds` logs.
        seed: the seed of the samples `log_preds` draws.
        project: the W&B project of a run this callback starts; None uses wandb's default.
        run_name: the name of a run this callback starts; None lets wandb pick one.
        init_kwargs: more `wandb.init` arguments for a run this callback starts.
    """

    def __init__(
        self,
        log: str | None = None,
        log_freq: int = 100,
        log_preds: bool = False,
        log_model: bool = False,
        model_name: str | None = None,
        n_preds: int = 36,
        seed: int = 12345,
        project: str | None = None,
        run_name: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_choice("log", log, _LOG_CHOICES)
        check_int("log_freq", log_freq, 1)
        _check_bool("log_preds", log_preds)
        _check_bool("log_model", log_model)
        _check_optional_str("model_name", model_name)
        check_int("n_preds", n_preds, 1)
        check_int("seed", seed)
        super().__init__(project, run_name, init_kwargs)
        self.log = log
        self.log_freq = log_freq
        self.log_preds = log_preds
        self.log_model = log_model
        self.model_name = model_name
        self.n_preds = n_preds
        self.seed = seed
        self._watched: Any = None

    def before_fit(self) -> None:
        super().before_fit()
        if self.run is None:
            return
        if self.log_model and self._saver() is None:
            warnings.warn(
                "WandbCallback(log_model=True) logs the file of a SaveModel or ModelCheckpoint "
                "callback, and this fit has none: no model will be logged",
                UserWarning,
                stacklevel=2,
            )
        if self.log is not None:
            self._watched = unwrap_model(self.learn.model)
            self.run.watch(self._watched, log=self.log, log_freq=self.log_freq)

    def _saver(self) -> Any:
        # SaveModel and ModelCheckpoint tell what they wrote through `last_saved_path`.
        for cb in self.learn.cbs:
            if "last_saved_path" in vars(cb):
                return cb
        return None

    def after_batch(self) -> None:
        learn = self.learn
        if self.run is None or not learn.training or learn.loss is None:
            return
        n_iter = learn.n_iter  # None for a loader with no length
        if learn.iter % self.log_freq and (n_iter is None or learn.iter != n_iter - 1):
            return
        row: dict[str, Any] = {
            "epoch": learn.epoch + ((learn.iter + 1) / n_iter if n_iter else 0),
            "train_loss": float(learn.smooth_loss),
            "raw_loss": float(learn.loss.detach()),
        }
        for name in hyper_names(learn.opt):  # fastai's names: lr, mom, sqr_mom, wd, eps
            for i, value in enumerate(get_hyper(learn.opt, name)):
                row[f"{name}_{i}"] = value
        self.run.log(row)

    def after_epoch(self) -> None:
        learn = self.learn
        if self.run is None or not learn.recorder.epoch_recorded():
            return
        rec = learn.recorder
        row: dict[str, Any] = {"epoch": learn.epoch + 1}
        # train_loss is the per-batch row's (smoothed, as fastai); the epoch's mean is not logged.
        names = [n for n in rec.recorded_names() if n != "train_loss"]
        row.update({name: float(rec.log[name]) for name in names})
        self.run.log(row)

    def after_fit(self) -> None:
        try:
            if self.run is None:
                return
            if self.log_preds:
                self._log_predictions()
            if self.log_model:
                self._log_model()
        finally:
            self._unwatch()
            super().after_fit()

    def after_exception(self) -> None:
        self._unwatch()
        super().after_exception()

    def _unwatch(self) -> None:
        model, self._watched = self._watched, None
        if model is not None and self.run is not None:
            self.run.unwatch(model)

    def _log_predictions(self) -> None:
        import wandb

        preds, targets = self.learn.get_preds()
        n = len(preds)
        rows = sorted(random.Random(self.seed).sample(range(n), min(self.n_preds, n)))
        data = [[i, _plain(targets[i]), _plain(preds[i])] for i in rows]
        table = wandb.Table(columns=["index", "target", "prediction"], data=data)
        self.run.log({"predictions": table})

    def _log_model(self) -> None:
        import wandb

        saver = self._saver()
        if saver is None:
            return  # before_fit warned already
        path = saver.last_saved_path
        if path is None or not Path(path).is_file():
            warnings.warn(
                f"WandbCallback(log_model=True) found no saved model to log (got {path!r})",
                UserWarning,
                stacklevel=2,
            )
            return
        path = Path(path)
        name = self.model_name or f"run-{self.run.id}-model"
        metadata = {k: v for k, v in self.learn.recorder.keras_logs(current=False).items()}
        artifact = wandb.Artifact(name, type="model", metadata=metadata)
        artifact.add_file(str(path), name=path.name)
        self.run.log_artifact(artifact)


def _plain(value: Any) -> Any:
    # One sample's target or prediction as a JSON value for the table.
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


__all__ = ["WandbCallback", "WandbMetricsLogger"]
