"""Logging callbacks: CSV, TensorBoard, HTTP, MLflow, LambdaCallback and Keras' BaseLogger."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..callback import Callback
from ..checkpoint import atomic_write_bytes
from ..data import find_bs
from ..events import EVENTS, KERAS_HOOKS

# After the Recorder, so an epoch cancelled before validation is complete here too.
_AFTER_RECORDER = 51  # the Recorder's order is 50


def _is_learner(obj: Any) -> bool:
    from ..learner import Learner

    return isinstance(obj, Learner)


def _check_path(name: str, value: Any) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or path, got {type(value).__name__}: {value!r}")


def _format_value(v: Any) -> str:
    # repr of a float round-trips exactly; time stays the Recorder's mm:ss string.
    if isinstance(v, torch.Tensor):
        v = v.item()
    return repr(v) if isinstance(v, float) else str(v)


class CSVLogger(Callback):
    """Writes one row per epoch (losses, metrics, time) to a CSV file, flushed every epoch.

    Columns are the Recorder's fastai names: `epoch` (0-based), `train_loss`, `valid_loss`,
    the metrics, `time`. The file lives at `learn.path / fname` (fastai), and a killed run loses
    at most the current epoch. fastai v1's `CSVLogger(learn, filename='history')` writes
    `history.csv`; the Keras keyword `filename=` is accepted too.

    Example:
        learn.fit(3, cbs=CSVLogger("history.csv"))
        learn.csv_logger.read_log()   # pandas DataFrame, or a list of dicts without pandas

    Args:
        fname: file name, relative to `learn.path` unless absolute.
        append: continue an existing file (no second header) instead of overwriting it.
        separator: the column separator, one character.
        filename: Keras (and fastai v1) spelling of `fname`.
    """

    order = _AFTER_RECORDER
    rank_zero_only = True

    def __init__(
        self,
        fname: str | os.PathLike | None = None,
        append: bool = False,
        separator: str = ",",
        filename: str | os.PathLike | None = None,
    ) -> None:
        v1 = _is_learner(fname)
        if v1:
            # fastai v1: CSVLogger(learn, filename='history', append=False), maybe positional.
            fname = None
            if isinstance(append, (str, os.PathLike)):
                filename, append = append, False
        if fname is not None and filename is not None:
            raise ValueError(
                f"give the file name once: fname={fname!r} or filename={filename!r}, not both"
            )
        name = fname if fname is not None else filename
        if name is None:
            name = "history" if v1 else "history.csv"
        _check_path("fname", name)
        name = Path(name)
        if v1 and name.suffix == "":
            name = name.with_suffix(".csv")
        if not isinstance(append, bool):
            raise TypeError(f"append must be a bool, got {append!r}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        self.fname = name
        self.append = append
        self.separator = separator
        self.file: Any = None
        self._file_path: Path | None = None
        self._lines: list[str] = []  # the file's content, one entry per line (header first)
        self._restored = False

    @property
    def log_path(self) -> Path:
        """Where the CSV is written: `learn.path / fname` (fname as is when absolute)."""
        if self.learn is not None:
            return self.fname if self.fname.is_absolute() else self.learn.path / self.fname
        return self._file_path if self._file_path is not None else self.fname

    def _line(self, values: Iterable[Any]) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.separator, lineterminator="").writerow(
            [_format_value(v) for v in values]
        )
        return buf.getvalue()

    def _rewrite(self) -> None:
        # The file starts from a known content (header, or a restored state), written atomically.
        self._close()
        text = "".join(line + "\n" for line in self._lines)
        atomic_write_bytes(self._file_path, text.encode())
        self.file = open(self._file_path, "a", encoding="utf-8", newline="")

    def before_fit(self) -> None:
        path = self._file_path = self.log_path
        header = self._line(self.learn.recorder.metric_names)
        if self._restored:
            self._restored = False
        elif self.append and path.exists() and path.stat().st_size > 0:
            self._lines = path.read_text(encoding="utf-8").splitlines()
            if self._lines[0] != header:
                raise ValueError(
                    f"CSVLogger(append=True): {str(path)!r} has the columns {self._lines[0]!r}, "
                    f"this run logs {header!r}; use another file or append=False"
                )
        else:
            self._lines = [header]
        self._rewrite()

    def after_epoch(self) -> None:
        if not self.learn.recorder.epoch_recorded():
            return
        rec = self.learn.recorder
        line = self._line(rec.log[n] for n in rec.metric_names)
        self._lines.append(line)
        self.file.write(line + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def _close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def after_fit(self) -> None:
        self._close()

    def after_exception(self) -> None:
        self._close()

    def state_dict(self) -> dict:
        """The file's lines so far (header included, time strings as written)."""
        return {"lines": list(self._lines)}

    def load_state_dict(self, state: dict) -> None:
        """Make the file hold exactly `state`'s lines: rows after the checkpoint are dropped."""
        self._lines = list(state["lines"])
        if self.file is not None:
            self._rewrite()
        else:
            self._restored = True  # the next before_fit rewrites the file with these lines

    def read_log(self) -> Any:
        """The CSV as a pandas DataFrame, or as a list of dicts when pandas is not installed."""
        path = self.log_path
        try:
            import pandas as pd
        except ImportError:
            pd = None
        if pd is not None:
            return pd.read_csv(path, sep=self.separator)
        with open(path, encoding="utf-8", newline="") as f:
            return [
                {k: _parse(k, v) for k, v in row.items()}
                for row in csv.DictReader(f, delimiter=self.separator)
            ]

    read_logged_file = read_log  # fastai v1 name


def _parse(key: str, value: str) -> Any:
    if key == "epoch":
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


class TensorBoard(Callback):
    """Writes losses, metrics and the learning rate to TensorBoard event files.

    Per epoch, `epoch/<name>` for every recorded value (`epoch/train_loss`, `epoch/valid_loss`,
    `epoch/accuracy`) and `epoch/lr`, at step = epoch (0-based). With `update_freq='batch'` or
    an int N, also `batch/train_loss` and `batch/lr` every N training batches at step =
    `train_iter`; the losses are buffered on the device and read in one transfer per epoch
    (or per 64 points), so the event file gets them at epoch end.

    Example:
        learn.fit(3, cbs=TensorBoard("runs/exp1", update_freq="batch"))

    Args:
        log_dir: folder of the event files, relative to `learn.path` unless absolute.
        update_freq: 'epoch', 'batch' (every batch), or an int N (every N training batches).
        histogram_freq: write a histogram of every parameter each `histogram_freq` epochs
            (epochs 0, N, 2N, ...); 0 writes none.
    """

    order = _AFTER_RECORDER
    rank_zero_only = True

    def __init__(
        self,
        log_dir: str | os.PathLike = "runs",
        update_freq: str | int = "epoch",
        histogram_freq: int = 0,
    ) -> None:
        _check_path("log_dir", log_dir)
        if update_freq == "epoch":
            every = 0
        elif update_freq == "batch":
            every = 1
        elif isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq > 0:
            every = update_freq
        else:
            raise ValueError(
                f"update_freq must be 'epoch', 'batch' or a positive int, got {update_freq!r}"
            )
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int):
            raise TypeError(f"histogram_freq must be an int, got {histogram_freq!r}")
        if histogram_freq < 0:
            raise ValueError(f"histogram_freq must be >= 0, got {histogram_freq}")
        self.log_dir = Path(log_dir)
        self.update_freq = update_freq
        self.histogram_freq = histogram_freq
        self._every = every
        self.writer: Any = None
        self._pending: list[tuple[int, Any, float]] = []

    def before_fit(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoard needs the tensorboard package: pip install 'hookloop[tensorboard]'"
            ) from e
        log_dir = self.log_dir if self.log_dir.is_absolute() else self.learn.path / self.log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._pending = []

    def after_batch(self) -> None:
        learn = self.learn
        if self._every and learn._training and learn.loss is not None:
            if learn.train_iter % self._every == 0:
                lr = learn.opt.param_groups[-1]["lr"]
                self._pending.append((learn.train_iter, learn.loss, lr))
                if len(self._pending) >= 64:
                    self._write_batches()

    def _write_batches(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([loss.detach().float().reshape(()) for _, loss, _ in pending])
        for (step, _, lr), loss in zip(pending, losses.tolist()):
            self.writer.add_scalar("batch/train_loss", loss, step)
            self.writer.add_scalar("batch/lr", lr, step)

    def after_epoch(self) -> None:
        learn = self.learn
        epoch = learn.epoch
        self._write_batches()
        if not learn.recorder.epoch_recorded():
            return
        rec = learn.recorder
        for name in rec.recorded_names():
            self.writer.add_scalar(f"epoch/{name}", float(rec.log[name]), epoch)
        self.writer.add_scalar("epoch/lr", learn.opt.param_groups[-1]["lr"], epoch)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            from .._util import unwrap_model

            for name, p in unwrap_model(learn.model).named_parameters():
                self.writer.add_histogram(name, p.detach().float().cpu(), epoch)
        self.writer.flush()

    def _close(self) -> None:
        if self.writer is not None:
            self._write_batches()
            self.writer.close()
            self.writer = None

    def after_fit(self) -> None:
        self._close()

    def after_exception(self) -> None:
        self._close()


class RemoteMonitor(Callback):
    """POSTs each epoch's logs (`epoch` and Keras keys) to an HTTP server, as Keras does.

    By default the body is a form with one field (`field`) holding the JSON; with
    `send_as_json=True` the body is the JSON itself. A failed POST warns once per fit and
    never stops training.

    Example:
        learn.fit(3, cbs=RemoteMonitor("http://localhost:9000"))
        # each epoch: POST /publish/epoch/end/  data={"epoch": 0, "loss": 0.69, "val_loss": ...}

    Args:
        root: the server's URL (`http://` or `https://`).
        path: the path appended to `root`.
        field: the form field holding the JSON (ignored with `send_as_json=True`).
        headers: extra HTTP headers, a dict of str.
        send_as_json: send the JSON as the body (`Content-Type: application/json`).
        timeout: seconds to wait for the server before giving up on that epoch's POST.
    """

    order = _AFTER_RECORDER
    rank_zero_only = True

    def __init__(
        self,
        root: str = "http://localhost:9000",
        path: str = "/publish/epoch/end/",
        field: str = "data",
        headers: dict[str, str] | None = None,
        send_as_json: bool = False,
        timeout: float = 5.0,
    ) -> None:
        if not isinstance(root, str):
            raise TypeError(f"root must be a str URL, got {type(root).__name__}: {root!r}")
        if urllib.parse.urlsplit(root).scheme not in ("http", "https"):
            raise ValueError(f"root must be an http:// or https:// URL, got {root!r}")
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, got {path!r}")
        if not isinstance(field, str) or not field:
            raise ValueError(f"field must be a non-empty str, got {field!r}")
        if headers is not None and not isinstance(headers, dict):
            raise TypeError(f"headers must be a dict or None, got {headers!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.root = root
        self.path = path
        self.field = field
        self.headers = dict(headers or {})
        self.send_as_json = send_as_json
        self.timeout = timeout
        self._warned = False

    @property
    def url(self) -> str:
        """`root + path`, where each epoch's logs are posted."""
        return self.root + self.path

    def before_fit(self) -> None:
        self._warned = False

    def after_epoch(self) -> None:
        if not self.learn.recorder.epoch_recorded():
            return
        send = {"epoch": self.learn.epoch, **self.learn.recorder.keras_logs()}
        headers = dict(self.headers)
        if self.send_as_json:
            body = json.dumps(send).encode()
            headers.setdefault("Content-Type", "application/json")
        else:
            body = urllib.parse.urlencode({self.field: json.dumps(send)}).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"RemoteMonitor could not POST to {self.url}: {e}; training goes on "
                    f"(further failures in this fit are not reported)",
                    RuntimeWarning,
                    stacklevel=2,
                )


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

    order = _AFTER_RECORDER
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
                from .._util import unwrap_model

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


_VALID_LAMBDA_NAMES = tuple(e for e in EVENTS if e != "after_create") + tuple(KERAS_HOOKS)


class LambdaCallback(Callback):
    """A callback made of functions: fastai event names or Keras hook names.

    fastai events take no arguments (`after_epoch=lambda: ...`); Keras hooks take Keras
    arguments (`on_epoch_end=lambda epoch, logs: ...`, `on_train_batch_end=lambda batch,
    logs: ...`, `on_train_begin=lambda logs: ...`).

    Example:
        losses = []
        keep = LambdaCallback(on_epoch_end=lambda epoch, logs: losses.append(logs["loss"]))
        learn.fit(3, cbs=keep)

    Args:
        on_epoch_begin, on_epoch_end, on_train_begin, on_train_end, on_train_batch_begin,
        on_train_batch_end: Keras' positional arguments, in Keras' order.
        **hooks: any other fastai event (`before_fit`, `after_batch`, ...) or Keras hook
            (`on_batch_end`, `on_test_end`, `on_predict_batch_end`, ...).
    """

    def __init__(
        self,
        on_epoch_begin: Callable | None = None,
        on_epoch_end: Callable | None = None,
        on_train_begin: Callable | None = None,
        on_train_end: Callable | None = None,
        on_train_batch_begin: Callable | None = None,
        on_train_batch_end: Callable | None = None,
        **hooks: Callable,
    ) -> None:
        unknown = sorted(set(hooks) - set(_VALID_LAMBDA_NAMES))
        if unknown:
            raise ValueError(
                f"LambdaCallback got unknown hook name(s) {', '.join(unknown)}; valid names are "
                f"{', '.join(_VALID_LAMBDA_NAMES)}"
            )
        named = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
            **hooks,
        }
        for name, fn in named.items():
            if fn is None:
                continue
            if not callable(fn) or _is_learner(fn):
                raise TypeError(f"LambdaCallback {name} must be callable, got {fn!r}")
            # An instance attribute: the dispatch table finds it like a method.
            object.__setattr__(self, name, fn)


class BaseLogger(Callback):
    """Keras' BaseLogger: the epoch average of the training loss, weighted by batch size.

    The Recorder already averages every value (hookloop's `History`); BaseLogger is the
    Keras callback kept for code that adds it. It never replaces the Recorder. After each
    epoch `self.logs` holds the Recorder's Keras-keyed values with `loss` replaced by its
    own average (equal to the Recorder's `train_loss`), or by the last batch's loss when
    `'loss'` is in `stateful_metrics`; `self.history` holds one such dict per epoch.
    The running sum stays on the device: one read per epoch.

    Example:
        learn.fit(2, cbs=BaseLogger())
        learn.base_logger.logs["loss"]

    Args:
        stateful_metrics: names (fastai or Keras spelling) logged as they are, not averaged.
    """

    run_valid = False

    def __init__(self, stateful_metrics: Iterable[str] | None = None) -> None:
        if isinstance(stateful_metrics, str):
            raise TypeError(
                f"stateful_metrics must be a list of names, got the str {stateful_metrics!r}"
            )
        if stateful_metrics is not None and not isinstance(stateful_metrics, Iterable):
            raise TypeError(f"stateful_metrics must be a list of names, got {stateful_metrics!r}")
        names = list(stateful_metrics or ())
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"stateful_metrics must hold str names, got {n!r}")
        self.stateful_metrics = names
        self.logs: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._stateful: set[str] = set()
        self._total: Any = 0.0
        self._seen = 0
        self._last: Any = None

    def before_fit(self) -> None:
        rec = self.learn.recorder
        self._stateful = {rec.resolve(n) for n in self.stateful_metrics}
        self.logs, self.history = {}, []

    def before_epoch(self) -> None:
        self._total, self._seen, self._last = 0.0, 0, None

    def after_batch(self) -> None:
        learn = self.learn
        if learn.loss is None:
            return
        bs = find_bs(learn.yb if learn.yb else learn.xb)
        self._total = self._total + learn.loss.detach() * bs
        self._seen += bs
        self._last = learn.loss

    def after_epoch(self) -> None:
        if not self.learn.recorder.epoch_recorded():
            return
        logs = self.learn.recorder.keras_logs()
        if self._seen:
            if "train_loss" in self._stateful:
                logs["loss"] = float(self._last)
            else:
                logs["loss"] = float(self._total) / self._seen
        self.logs = logs
        self.history.append(dict(logs))


# fastai v2's name; its first argument (log_dir) means the same.
TensorBoardCallback = TensorBoard

__all__ = [
    "CSVLogger",
    "TensorBoard",
    "TensorBoardCallback",
    "RemoteMonitor",
    "MLflowLogger",
    "LambdaCallback",
    "BaseLogger",
]
