"""Always-on bookkeeping: TrainEval (modes and counters), Recorder (losses, metrics, History)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._check import check_number
from .._util import KERAS_TO_CANONICAL, keras_name, save_png
from ..callback import Callback
from ..data import find_bs
from ..learner import DEFAULT_CBS
from ..metrics import AvgLoss, copy_metric, stack_scalars
from ..results import History
from . import plots
from .float_series import FloatSeries, SeriesDict
from .nan import TerminateOnNaN

# Training losses wait on the device in a buffer of at most this many batches, then are read
# in one transfer. 256: a 0-d tensor costs a few hundred bytes of host memory (on a GPU also a
# device allocation), so the buffer stays under ~100 KB; one read per 256 batches is one sync
# where a per-batch read would be 256, and a step would have to take under ~1 us for the read
# (a few us plus the pipeline drain) to show; and a bar redrawing a few times a second reads
# more often anyway.
FLUSH_EVERY = 256
# Key of the epoch's mean training loss (Keras's `loss`) in the values reduced across ranks.
_MEAN_LOSS = "_mean_train_loss"


class TrainEval(Callback):
    """Puts the model in train mode for training and eval mode for validation.

    The counters fastai's TrainEvalCallback keeps (`train_iter`, `pct_train`) are loop state
    here: the loop advances them after each training batch, before `after_batch` fires, so no
    callback runs for them per batch.
    """

    order = -10

    def before_train(self) -> None:
        self.learn.model.train()

    def before_validate(self) -> None:
        self.learn.model.eval()


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean()) if v.numel() != 1 else float(v.detach())
    return float(v)


def _fmt(v: Any) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "#na#" if math.isnan(v) else f"{v:.6f}"
    return str(v)


def format_time(seconds: float) -> str:
    """mm:ss (or h:mm:ss), like fastai's table."""
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Recorder(Callback):
    """Records per-batch losses and hyper-parameters and per-epoch values; builds the History.

    Per training batch, as fastai: `losses` (the smoothed loss), `raw_losses`, `lrs` and `hps`
    (`lr`, `mom`, and what a ParamScheduler adds), each a FloatSeries (8 bytes a value, read
    like a list). Losses stay on the device in a buffer of at most FLUSH_EVERY batches and are
    read in one transfer when it is full, at the end of the training phase, or when something
    reads them (`losses` mid-epoch, a progress bar redraw asking for `smooth_loss`).
    Per epoch: `values`, `rows`, `log`, `logs` (Keras keys); `train_loss` is the smoothed loss
    at the end of the epoch (fastai), Keras's `loss` the epoch mean weighted by batch size.

    Args:
        beta: smoothing of the per-batch loss (bias-corrected moving average).
        add_time: add a `time` column to the epoch table.
    """

    order = 50
    # 2: raw losses under "raw_losses", the epoch's running loss sums instead of per-batch sizes.
    state_version = 2

    def __init__(self, beta: float = 0.98, add_time: bool = True) -> None:
        check_number("beta", beta, 0, below=1, what="a number in [0, 1)", owner="Recorder")
        self.beta = beta
        self.add_time = add_time
        self._fitting = False
        self._warned_non_finite = False
        self._mom_key: str | None = None
        self._valid_loss = AvgLoss()
        self._valid_mets: list = []
        self._train_mets: list = []
        self.history = History()
        self.last_validation: dict[str, float] = {}
        self._reset_batches()
        self.values: list[list[float]] = []
        self.rows: list[dict[str, Any]] = []
        self.log: dict[str, Any] = {}
        self.logs: dict[str, float] = {}
        self.metrics: list[float] = []
        self.iters: list[int] = []
        # Set by LRFinder: then the batches recorded are an lr sweep and plot() draws loss vs lr.
        self.lr_find_result: Any = None
        # Set by DistributedTrainer for a fit: {name: (value, samples)} -> {name: value} over
        # all ranks, called once per epoch so every rank records the same values.
        self.reduce_fn: Callable[[dict], dict] | None = None
        self._counts: dict[str, int] = {}

    def _reset_batches(self) -> None:
        self._raw = FloatSeries()
        self._smooth = FloatSeries()
        # (loss, bs, lr, mom) per training batch whose loss is not read yet (at most
        # FLUSH_EVERY); the first `_moved` have their lr and mom copied to `hps` already.
        self._pending: list[tuple] = []
        self._moved = 0
        self._ema = 0.0
        # The current epoch's training: sum of loss * bs and of bs over the batches read.
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._train_mean = float("nan")
        self._valid_cancelled = False
        self._hps = SeriesDict()
        self._hps["lr"] = FloatSeries()

    # ---- names -----------------------------------------------------------------------------

    @property
    def metric_names(self) -> list[str]:
        """Columns of the epoch table: epoch, train_loss, [train_<m>], valid_loss, <m>, time."""
        learn = self.learn
        names = ["epoch", "train_loss"]
        if self._metrics_on_train():
            names += [f"train_{m.name}" for m in learn.metrics]
        if learn.dls.valid is not None:
            names += ["valid_loss"] + [self._valid_name(m.name) for m in learn.metrics]
        if self.add_time:
            names.append("time")
        return names

    @property
    def train_metrics(self) -> bool:
        """Also compute the metrics on the training set: fastai's `learn.recorder.train_metrics
        = True`, the same switch as `Learner(train_metrics=True)` (takes effect at the next fit).
        """
        learn = self.__dict__.get("learn")
        return bool(learn is not None and learn.train_metrics)

    @train_metrics.setter
    def train_metrics(self, value: bool) -> None:
        self.learn.train_metrics = bool(value)

    def _metrics_on_train(self) -> bool:
        # Keras computes the metrics on the training data: with no validation set they would
        # otherwise be computed nowhere.
        return self.train_metrics or self.learn.dls.valid is None

    def _valid_name(self, metric: str) -> str:
        # fastai: `valid_<metric>` beside `train_<metric>`, else the metric's bare name.
        return f"valid_{metric}" if self.train_metrics else metric

    def recorded_names(self) -> list[str]:
        """Names with a numeric per-epoch value (all columns but epoch and time)."""
        return [n for n in self.metric_names if n not in ("epoch", "time")]

    def resolve(self, name: str) -> str:
        """A fastai or Keras name -> the canonical recorded name; unknown names raise."""
        names = self.recorded_names()
        if name in names:
            return name
        canon = KERAS_TO_CANONICAL.get(name)
        if canon is None and name.startswith("val_"):
            canon = name[len("val_") :]
        if canon is None and self.train_metrics and f"valid_{name}" in names:
            # A bare metric name is the validation value (fastai), also beside train_<name>.
            canon = f"valid_{name}"
        if canon is not None and canon not in names and f"valid_{canon}" in names:
            canon = f"valid_{canon}"  # val_accuracy -> valid_accuracy
        if canon in names:
            return canon
        keras = [keras_name(n) for n in names]
        raise ValueError(
            f"monitor name {name!r} matches no recorded value; recorded names are "
            f"{', '.join(names)} (Keras spellings: {', '.join(keras)})"
        )

    def epoch_recorded(self) -> bool:
        """True when the current epoch's row is recorded (False if it was cut short early)."""
        return bool(self.rows) and self.rows[-1]["epoch"] == self.learn.epoch

    def keras_logs(self, current: bool = True) -> dict[str, float]:
        """The epoch's values under Keras keys (`loss`, `val_loss`, `val_accuracy`) as floats.

        With `current`, only the current epoch's ({} when it is not recorded); else the last
        one's.
        """
        if not self.rows or (current and not self.epoch_recorded()):
            return {}
        return {k: float(v) for k, v in self.logs.items()}

    def metric_object(self, name: str) -> Any:
        """The metric object behind a canonical name (None for losses)."""
        for m in self.learn.metrics:
            if name in (m.name, f"train_{m.name}", f"valid_{m.name}"):
                return m
        return None

    # ---- events ----------------------------------------------------------------------------

    def before_fit(self) -> None:
        learn = self.learn
        self._fitting = True
        self._warned_non_finite = False
        self._reset_batches()
        self.lr_find_result = None
        self._mom_key = None
        if learn.opt is not None:
            self._mom_key = _mom_key(learn.opt.param_groups[-1])
            if self._mom_key is not None:
                self._hps["mom"] = FloatSeries()
        self.values, self.rows, self.iters = [], [], []
        self.history = History(
            {"epochs": learn.n_epoch, "steps": learn.batches_per_epoch, "verbose": 1}
        )
        self._valid_loss = AvgLoss()
        self._valid_mets = list(learn.metrics)
        on_train = self._metrics_on_train()
        self._train_mets = [copy_metric(m) for m in learn.metrics] if on_train else []
        learn.logger(self._line(self.metric_names))

    def after_fit(self) -> None:
        self._fitting = False

    def after_exception(self) -> None:
        self._fitting = False

    def before_epoch(self) -> None:
        self._t0 = time.perf_counter()
        self._row: dict[str, Any] = {"epoch": self.learn.epoch}
        self._counts = {}
        self._epoch_done = False
        self._flush()  # normally empty: the last training phase read its losses
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._train_mean = float("nan")
        self._valid_cancelled = False

    def before_train(self) -> None:
        for m in self._train_mets:
            m.reset()

    def after_cancel_validate(self) -> None:
        if self._fitting and not self._epoch_done:
            self._valid_cancelled = True

    def before_validate(self) -> None:
        if not self._fitting:  # validate() / get_preds() outside fit
            self._valid_mets = list(self.learn.metrics)
        self._valid_loss.reset()
        for m in self._valid_mets:
            m.reset()

    def after_batch(self) -> None:
        # Runs for every batch, so it only appends (a device read once per FLUSH_EVERY
        # batches, see _flush), and one record per batch: a single append measured cheaper
        # than one per list.
        learn = self.learn
        loss = learn.loss
        if loss is None:
            return
        if learn.training:
            bs = find_bs(learn.yb or learn.xb)
            group = learn.opt.param_groups[-1]
            mom_key = self._mom_key
            mom = group[mom_key] if mom_key is not None else None
            pending = self._pending
            pending.append((loss, bs, group["lr"], mom))
            if len(pending) >= FLUSH_EVERY:
                self._flush()
            if self._train_mets:
                for m in self._train_mets:
                    m.accumulate(learn)
        else:
            self._valid_loss.accumulate(learn)
            for m in self._valid_mets:
                m.accumulate(learn)

    def after_train(self) -> None:
        if not self._fitting:
            return
        self._flush()
        total = self._epoch_count
        # fastai: the smoothed loss at the end of the epoch; Keras's `loss` is the epoch mean.
        self._row["train_loss"] = self._smooth[-1] if total else float("nan")
        self._train_mean = self._epoch_sum / total if total else float("nan")
        if total and not math.isfinite(self._train_mean):
            self._warn_non_finite()
        for m in self._train_mets:
            self._row[f"train_{m.name}"] = _to_float(m.value)
        self._counts.update(
            dict.fromkeys(
                ["train_loss", _MEAN_LOSS] + [f"train_{m.name}" for m in self._train_mets], total
            )
        )
        self.iters.append(len(self._raw))
        if self.learn.dls.valid is None:
            self._finish_epoch()

    def _warn_non_finite(self) -> None:
        # Read from the losses the epoch has read anyway: no extra device sync. Once per fit,
        # and not when TerminateOnNaN watches (it says so itself) or in a trial run (lr_find's
        # sweep diverges on purpose).
        learn = self.learn
        if self._warned_non_finite or learn.trial_run:
            return
        if any(isinstance(cb, TerminateOnNaN) for cb in learn.cbs):
            return
        self._warned_non_finite = True
        warnings.warn(
            f"epoch {learn.epoch}: the training loss is {self._train_mean} (a NaN or infinity "
            f"in the inputs or targets, or a learning rate too high); the steps taken on it may "
            f"have made the weights non-finite. Add TerminateOnNaN() to stop at the first "
            f"non-finite loss (this warning is shown once per fit)",
            RuntimeWarning,
            stacklevel=2,
        )

    def validation_values(self) -> dict[str, float]:
        """valid_loss and metrics of the current validation phase (final after its last batch).

        Keras-style `on_test_end` hooks read this before the Recorder's own after_validate runs.
        """
        vals = {"valid_loss": _to_float(self._valid_loss.value)}
        for m in self._valid_mets:
            vals[m.name] = _to_float(m.value)
        return vals

    def after_validate(self) -> None:
        vals = self.validation_values()
        self.last_validation = vals
        # An evaluation a callback runs inside the fit (validate(), Keras' evaluate()) is not
        # the epoch's validation phase.
        if self._fitting and not self._epoch_done and not self.learn.evaluating:
            cols = {k: k if k == "valid_loss" else self._valid_name(k) for k in vals}
            self._row.update({cols[k]: v for k, v in vals.items()})
            self._counts.update(dict.fromkeys(cols.values(), self._valid_loss.n_samples))
            self._finish_epoch()
            self.last_validation = {k: self._row[cols[k]] for k in vals}  # reduced across ranks

    def after_epoch(self) -> None:
        if not self._epoch_done:
            self._finish_epoch()

    def _finish_epoch(self) -> None:
        # Runs at the end of validation, so every after_epoch handler sees the complete epoch.
        self._epoch_done = True
        row = self._row
        if "train_loss" not in row:
            self._flush()
            row["train_loss"] = float("nan")
        for n in self.metric_names:
            if n not in row and n != "time":
                row[n] = float("nan")
        mean = self._train_mean
        if self.reduce_fn is not None:
            # One collective per epoch; a value without a count (resumed mid-epoch) weighs 1.
            counts = self._counts
            pairs = {n: (row[n], counts.get(n, 1)) for n in self.recorded_names()}
            pairs[_MEAN_LOSS] = (mean, counts.get(_MEAN_LOSS, 1))
            reduced = self.reduce_fn(pairs)
            mean = reduced.pop(_MEAN_LOSS)
            row.update(reduced)
        if self.add_time:
            row["time"] = format_time(time.perf_counter() - self._t0)
        self.rows.append(dict(row))
        self.log = {n: row[n] for n in self.metric_names}
        names = self.recorded_names()
        if self._valid_cancelled:
            # fastai: an epoch whose validation was cancelled (the LR finder's) records only
            # its training values; the table and `rows` keep every column.
            names = [n for n in names if n == "train_loss" or n.startswith("train_")]
        self.values.append([row[n] for n in names])
        self.metrics = self._metric_values(row)
        self.logs = {keras_name(n): row[n] for n in self.recorded_names()}
        self.logs["loss"] = mean  # Keras: the epoch mean, not fastai's smoothed train_loss
        self.history.append(row["epoch"], self.logs)
        self.learn.logger(self._line([row[n] for n in self.metric_names]))

    def _metric_values(self, row: dict) -> list[float]:
        # fastai's recorder.metrics: the validation value of each metric.
        names = [self._valid_name(m.name) for m in self.learn.metrics]
        return [row[n] for n in names if n in row]

    def _line(self, items: list) -> str:
        widths = [max(len(n), 9) for n in self.metric_names]
        return "  ".join(_fmt(v).ljust(w) for v, w in zip(items, widths)).rstrip()

    # ---- per-batch values, read lazily ------------------------------------------------------

    @property
    def hps(self) -> dict[str, FloatSeries]:
        """Per training batch: `lr` and `mom` of the last parameter group (and what a
        ParamScheduler adds, such as `wd`)."""
        self._move_hps()
        return self._hps

    def _move_hps(self) -> None:
        # Copy lr and mom out of the pending records; the losses stay on the device.
        pending, start = self._pending, self._moved
        if start == len(pending):
            return
        _, _, lr, mom = zip(*(pending[start:] if start else pending))
        self._hps["lr"].extend(lr)
        moms = self._hps.get("mom") if self._mom_key is not None else None
        if moms is not None:
            moms.extend([m[0] for m in mom] if self._mom_key == "betas" else mom)
        self._moved = len(pending)

    def _flush(self) -> None:
        # One host-device transfer for all losses recorded since the last read (at most
        # FLUSH_EVERY); the smoothing and the epoch's sums run on the host on the values read.
        if not self._pending:
            return
        self._move_hps()
        pending, self._pending, self._moved = self._pending, [], 0
        vals = stack_scalars([p[0] for p in pending]).float().tolist()
        self._raw.extend(vals)
        beta, ema, n = self.beta, self._ema, len(self._smooth)
        total, count = self._epoch_sum, self._epoch_count
        smooth = []
        for v, p in zip(vals, pending):
            n += 1
            ema = beta * ema + (1 - beta) * v
            smooth.append(ema / (1 - beta**n))
            total += v * p[1]
            count += p[1]
        self._smooth.extend(smooth)
        self._ema, self._epoch_sum, self._epoch_count = ema, total, count

    @property
    def losses(self) -> FloatSeries:
        """The smoothed training loss at each training batch so far (fastai's
        `recorder.losses`): length k at the k-th `after_batch` for callbacks that run after the
        Recorder. Reading it reads the losses still on the device (one transfer)."""
        self._flush()
        return self._smooth

    @property
    def smooth_losses(self) -> FloatSeries:
        """The bias-corrected moving average of the loss at each training batch (`losses`)."""
        return self.losses

    @property
    def raw_losses(self) -> FloatSeries:
        """The loss of each training batch so far, as computed (not smoothed)."""
        self._flush()
        return self._raw

    @property
    def n_losses(self) -> int:
        """Training batches recorded so far, without reading their losses from the device."""
        return len(self._raw) + len(self._pending)

    @property
    def smooth_loss(self) -> float:
        """The current smoothed training loss (reads pending losses from the device)."""
        smooth = self.losses
        return smooth[-1] if smooth else float("nan")

    @property
    def lrs(self) -> FloatSeries:
        """Learning rate of the last parameter group at each training batch."""
        return self.hps["lr"]

    def all_losses(self) -> FloatSeries:
        """Every training batch's raw loss so far (`raw_losses`)."""
        return self.raw_losses

    # ---- plots -----------------------------------------------------------------------------

    def plot_loss(
        self, skip_start: int = 5, with_valid: bool = True, fname: str | Path | None = None
    ) -> Any:
        """Plot training (raw and smoothed) and validation losses; save a PNG if `fname`."""
        raw, smooth = self.raw_losses, self.losses
        fig = plots.figure_class()(figsize=(6, 4))
        ax = fig.add_subplot()
        skip = min(skip_start, max(len(raw) - 1, 0))
        xs = list(range(skip, len(raw)))
        ax.plot(xs, raw[skip:], alpha=0.3, label="train (raw)")
        ax.plot(xs, smooth[skip:], label="train (smoothed)")
        valid = [r.get("valid_loss") for r in self.rows]
        if with_valid and self.iters and any(v is not None for v in valid):
            ax.plot(self.iters[: len(valid)], valid, marker="o", label="valid")
        ax.set_xlabel("training batch")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        if fname is not None:
            save_png(fig, fname)
        return fig

    # Thin wrappers; the plotting code lives in callbacks/plots.py.
    def plot(
        self,
        skip_start: int = 10,
        skip_end: int = 5,
        suggestion: bool = False,
        fname: str | Path | None = None,
    ) -> Any:
        """fastai v1: loss vs lr after `lr_find` (skipping the first and last points), otherwise
        the loss plot; `suggestion=True` marks the steepest point and sets `min_grad_lr`."""
        return plots.plot(self, skip_start, skip_end, suggestion, fname)

    def plot_lr_find(
        self, skip_end: int = 5, suggestions: Any = None, nms: Any = None, fname: Any = None
    ) -> Any:
        """fastai v2: smoothed loss vs lr (log x) after `lr_find`, suggestions marked."""
        return plots.plot_lr_find(self, 0, skip_end, suggestions, nms, fname)

    def plot_lr(self, show_moms: bool = False, fname: str | Path | None = None) -> Any:
        """fastai v1: learning rate per training batch, beside the momentum if `show_moms`."""
        return plots.plot_lr(self, show_moms, fname=fname)

    def plot_sched(
        self, keys: Any = None, figsize: Any = None, fname: str | Path | None = None
    ) -> Any:
        """fastai v2: each recorded hyper-parameter (`lr`, `mom`, ...) per training batch."""
        return plots.plot_sched(self, keys, figsize, fname)

    def plot_metrics(self, fname: str | Path | None = None) -> Any:
        """Per epoch: train and valid loss, then one panel per metric."""
        return plots.plot_metrics(self, fname)

    # ---- resume ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        raw = _as_tensor(self.raw_losses)  # first: it reads the losses still on the device
        return {
            "raw_losses": raw,
            "smooth_losses": _as_tensor(self._smooth),
            "ema": self._ema,
            "hps": {k: _as_tensor(v) for k, v in self.hps.items()},
            "rows": [dict(r) for r in self.rows],
            "iters": list(self.iters),
            "history": {
                "history": {k: list(v) for k, v in self.history.history.items()},
                "epoch": list(self.history.epoch),
                "params": dict(self.history.params),
            },
            "last_validation": dict(self.last_validation),
            "epoch_in_progress": self._epoch_state(),
        }

    def _epoch_state(self) -> dict | None:
        # A backup taken mid-epoch also needs the epoch's running values.
        if not self._fitting or not hasattr(self, "_row"):
            return None
        return {
            "row": dict(self._row),
            "done": self._epoch_done,
            "loss_sum": self._epoch_sum,
            "loss_count": self._epoch_count,
            "train_mean": self._train_mean,
            "elapsed": time.perf_counter() - self._t0,
            "train_mets": [_metric_state(m) for m in self._train_mets],
        }

    def load_state_dict(self, state: dict) -> None:
        self._raw = FloatSeries(state["raw_losses"])
        self._smooth = FloatSeries(state["smooth_losses"])
        self._ema = state["ema"]
        self._hps = SeriesDict()
        for k, v in state["hps"].items():
            self._hps[k] = FloatSeries(v)
        self._pending, self._moved = [], 0
        self.rows = [dict(r) for r in state["rows"]]
        self.iters = list(state["iters"])
        h = state["history"]
        self.history = History(h["params"])
        self.history.history = {k: list(v) for k, v in h["history"].items()}
        self.history.epoch = list(h["epoch"])
        names = self.recorded_names()
        self.values = [[r[n] for n in names if n in r] for r in self.rows]
        if self.rows:
            last = self.rows[-1]
            self.log = {n: last[n] for n in self.metric_names if n in last}
            self.logs = {keras_name(n): last[n] for n in names if n in last}
            if self.history.history.get("loss"):
                self.logs["loss"] = self.history.history["loss"][-1]  # the epoch mean
            self.metrics = self._metric_values(last)
        self.last_validation = dict(state.get("last_validation", {}))
        epoch = state.get("epoch_in_progress")
        if epoch is not None and self._fitting:
            # The time column counts the time spent on this epoch before the backup too.
            self._row, self._epoch_done = dict(epoch["row"]), epoch["done"]
            self._epoch_sum, self._epoch_count = epoch["loss_sum"], epoch["loss_count"]
            self._train_mean = epoch["train_mean"]
            self._t0 = time.perf_counter() - epoch["elapsed"]
            for m, saved in zip(self._train_mets, epoch["train_mets"]):
                if saved is not None:
                    m.load_state_dict(saved)

    def migrate_state_dict(self, state: dict, version: int) -> dict:
        """Version 1 kept the raw losses under "losses" and the size of every batch."""
        if version != 1:
            return super().migrate_state_dict(state, version)
        state = dict(state)
        raw, sizes = list(state.pop("losses")), list(state.pop("batch_bs"))
        state["raw_losses"] = raw
        epoch = state.get("epoch_in_progress")
        if epoch is not None:
            epoch = dict(epoch)
            start = epoch.pop("train_start")
            epoch["loss_sum"] = sum(v * b for v, b in zip(raw[start:], sizes[start:]))
            epoch["loss_count"] = sum(sizes[start:])
            row = epoch["row"] = dict(epoch["row"])
            # Version 1's train_loss was the epoch mean; the row now holds the smoothed loss.
            epoch["train_mean"] = row.get("train_loss", math.nan)
            if "train_loss" in row and state["smooth_losses"]:
                row["train_loss"] = state["smooth_losses"][-1]
            state["epoch_in_progress"] = epoch
        return state


def _as_tensor(values: FloatSeries) -> torch.Tensor:
    # float64, so a checkpoint keeps every value bit for bit in 8 bytes.
    return torch.from_numpy(np.asarray(values, dtype=np.float64))


def _metric_state(m: Any) -> dict | None:
    # Metrics without a state_dict (e.g. torchmetrics) restart at a mid-epoch resume.
    return m.state_dict() if hasattr(m, "state_dict") and hasattr(m, "load_state_dict") else None


def _mom_key(group: dict) -> str | None:
    if "momentum" in group:
        return "momentum"
    if "betas" in group:
        return "betas"
    return None


DEFAULT_CBS.extend([TrainEval, Recorder])

__all__ = ["Recorder", "TrainEval"]
