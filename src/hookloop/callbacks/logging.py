"""Logging callbacks: CSVLogger (one row per epoch), LambdaCallback, and Keras' BaseLogger."""

from __future__ import annotations

import csv
import difflib
import io
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .._check import check_choice, check_path, check_writable_file
from .._util import keras_name
from ..callback import Callback
from ..checkpoint import atomic_write_bytes
from ..data import find_bs
from ..events import EVENTS, KERAS_HOOKS
from ..learner import Learner
from . import compat
from .tracker import resolve_monitor

_STYLES = ("fastai", "keras")


def _format_value(v: Any) -> str:
    # repr of a float round-trips exactly; time stays the Recorder's mm:ss string.
    if isinstance(v, torch.Tensor):
        v = v.item()
    return repr(v) if isinstance(v, float) else str(v)


class CSVLogger(Callback, metaclass=compat.LearnerFirst):
    """Writes one row per epoch (losses, metrics) to a CSV file, flushed every epoch.

    The file lives at `learn.path / fname`, and a killed run loses at most the current epoch.
    It comes in the two libraries' layouts (`style`), chosen by default from how the logger
    was called:

    - fastai's (`CSVLogger()`, `CSVLogger(fname=...)`, a `pathlib.Path` file name, fastai v1's
      `CSVLogger(learn, filename='history')` which writes `history.csv`): the Recorder's
      columns `epoch,train_loss,valid_loss,<metrics>,time`, header written when the fit starts.
    - Keras's (`CSVLogger('training.log')` with a str file name, `CSVLogger(filename=...)`,
      and Keras's positional order `CSVLogger(filename, separator, append)`): `epoch` then the
      epoch's Keras `logs` keys sorted (`epoch,loss,mse,val_loss,val_mse`; `learning_rate` too
      when `LearningRateScheduler` or `ReduceLROnPlateau` logs it), no time column.

    The header is written when the fit starts (Keras writes it with the first row).

    `epoch` is 0-based in both. `append=True` onto a file with other columns is an error.

    Example:
        learn.fit(3, cbs=CSVLogger())                      # history.csv, fastai's columns
        learn.fit(3, cbs=CSVLogger("training.log"))        # Keras's columns
        learn.csv_logger.read_log()   # pandas DataFrame, or a list of dicts without pandas

    Args:
        file: the file name given positionally (a str is Keras's call, a Path fastai's).
        append: continue an existing file (no second header) instead of overwriting it.
        separator: the column separator, one character.
        fname: fastai's keyword for the file name, relative to `learn.path` unless absolute.
        filename: Keras's keyword for the file name.
        style: "fastai" or "keras" (the columns above); None follows the call.
    """

    # After the Recorder (order 50), so an epoch cancelled before validation is complete here too.
    order = 51
    rank_zero_only = True
    # fastai v1's call CSVLogger(learn, ...): see compat.LearnerFirst.
    from_learner = classmethod(compat.csv_logger)

    def __init__(
        self,
        file: str | os.PathLike | None = None,
        /,
        append: bool = False,
        separator: str = ",",
        *,
        fname: str | os.PathLike | None = None,
        filename: str | os.PathLike | None = None,
        style: str | None = None,
    ) -> None:
        given = {k: v for k, v in (("file", file), ("fname", fname), ("filename", filename))}
        given = {k: v for k, v in given.items() if v is not None}
        if len(given) > 1:
            shown = " or ".join(f"{k}={v!r}" for k, v in given.items())
            raise ValueError(f"give the file name once: {shown}, not both")
        if isinstance(append, str) and len(append) == 1:
            # Keras's positional order (filename, separator, append): a separator came second.
            if separator != "," and not isinstance(separator, bool):
                raise ValueError(f"separator given twice: {append!r} and {separator!r}")
            append, separator = (separator if isinstance(separator, bool) else False), append
        arg, value = next(iter(given.items()), ("fname", "history.csv"))
        check_path(arg, value)
        name = Path(check_path(arg, value, empty=False))  # Path("") would be the folder "."
        if not isinstance(append, bool):
            raise TypeError(f"append must be a bool, got {append!r}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"separator must be one character, got {separator!r}")
        if style is None:
            keras_call = filename is not None or isinstance(file, str)
            style = "keras" if keras_call else "fastai"
        check_choice("style", style, _STYLES, owner="CSVLogger")
        self.fname = name
        self.append = append
        self.separator = separator
        self.style = style
        # Keras's attribute: the logged keys after `epoch`, known from the first row on.
        self.keys: list[str] | None = None
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
        check_writable_file(path, "CSVLogger")
        header = self._line(self._columns())
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

    def _columns(self) -> list[str]:
        rec = self.learn.recorder
        if self.style == "fastai":
            self.keys = None
            return rec.metric_names
        # Keras: epoch, then the epoch logs' keys sorted; Keras 3's lr callbacks add theirs.
        keys = [keras_name(n) for n in rec.recorded_names()]
        if any(getattr(type(cb), "logs_learning_rate", False) for cb in self.learn.cbs):
            keys.append("learning_rate")
        self.keys = sorted(keys)
        return ["epoch", *self.keys]

    def after_epoch(self) -> None:
        rec = self.learn.recorder
        if not rec.epoch_recorded():
            return
        if self.keys is None:
            line = self._line(rec.log[n] for n in rec.metric_names)
        else:  # Keras writes NA for a key the epoch's logs lack
            logs = rec.keras_logs()
            line = self._line([self.learn.epoch, *(logs.get(k, "NA") for k in self.keys)])
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
            (`on_batch_end`, `on_test_end`, `on_predict_batch_end`, ...). Any other keyword
            is kept as an attribute, as Keras does (`LambdaCallback(custom_method=f)` gives
            `cb.custom_method`); a name one typo away from a hook name warns.
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
        extra = {k: v for k, v in hooks.items() if k not in _VALID_LAMBDA_NAMES}
        for name, value in extra.items():
            # Keras keeps any other keyword as an attribute (`custom_method=f`); a near miss of
            # a hook name is most likely a typo that would silently never run.
            close = difflib.get_close_matches(name, _VALID_LAMBDA_NAMES, n=1, cutoff=0.9)
            if close:
                warnings.warn(
                    f"LambdaCallback: {name!r} is not a hook name (did you mean {close[0]!r}?); "
                    f"it is kept as an attribute and never called by the loop",
                    stacklevel=2,
                )
            object.__setattr__(self, name, value)
            del hooks[name]
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
            if not callable(fn) or isinstance(fn, Learner):
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
        self._stateful = {resolve_monitor(self.learn, n) for n in self.stateful_metrics}
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


__all__ = ["CSVLogger", "LambdaCallback", "BaseLogger"]
